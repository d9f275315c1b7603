"""Run sandbox servers on an asyncio loop in a background thread, for tests that use blocking clients.

The real ``kubernetes`` client is synchronous, while the sandbox lives on one event loop. Tests
start the loop in a thread, serve apps on 127.0.0.1 port 0, and touch sandbox state only through
:meth:`LoopThread.call` so every mutation still happens on the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sandbox-loop", daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if threading.current_thread() is self._thread:      # already on the loop (nested helper)
            return fn(*args, **kwargs)

        async def _call() -> T:
            return fn(*args, **kwargs)

        return self.run(_call())

    def serve(self, app: web.Application) -> int:
        async def _start() -> int:
            runner = web.AppRunner(app, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            server = site._server
            assert server is not None
            sockets = getattr(server, "sockets", None)
            assert sockets
            return int(sockets[0].getsockname()[1])

        return self.run(_start())

    def close(self) -> None:
        async def _stop() -> None:
            for runner in reversed(self._runners):
                await runner.cleanup()

        self.run(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop after ``delay`` seconds (e.g. while a test blocks in a watch)."""
        self.loop.call_soon_threadsafe(self.loop.call_later, delay, fn, *args)


class FakeClock:
    """A wall clock tests move by hand (unix seconds)."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
