"""The exporter's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

``/metrics`` returns bytes rendered by the refresher (:class:`~exporter.exposition.Exposition`),
gzip-compressed when the scraper accepts it (Prometheus does), so a scrape costs a memory copy
whatever the number of series. ``/healthz`` answers while the process serves; ``/readyz`` is 200
once every source has completed one refresh (503 naming the pending sources before that).
Default port 9877 (``exporter.listen`` in the configuration, ``--listen`` on the command line).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from exporter.exposition import CONTENT_TYPE, Exposition

DEFAULT_PORT = 9877

EXPOSITION_KEY = web.AppKey("exposition", Exposition)
PendingSources = Callable[[], list[str]]
PENDING_KEY: web.AppKey[PendingSources] = web.AppKey("pending")


def parse_listen(listen: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``[::1]:PORT`` or ``HOST`` → (host, port)."""
    text = listen.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"listen address {listen!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"listen address {listen!r}: port {number} is out of range")
    return host or "0.0.0.0", number


async def _metrics(request: web.Request) -> web.Response:
    exposition = request.app[EXPOSITION_KEY]
    wants_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    if exposition.stale:
        # Rare (the refresher renders eagerly); do not block the event loop while rendering.
        await asyncio.get_running_loop().run_in_executor(None, exposition.body)
    if wants_gzip:
        return web.Response(body=exposition.gzip_body(),
                            headers={"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip"})
    return web.Response(body=exposition.body(), headers={"Content-Type": CONTENT_TYPE})


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    pending = request.app[PENDING_KEY]()
    if pending:
        return web.Response(status=503, text="waiting for the first refresh of: " + ", ".join(pending) + "\n")
    return web.Response(text="ready\n")


def make_app(exposition: Exposition, pending: Callable[[], list[str]]) -> web.Application:
    app = web.Application()
    app[EXPOSITION_KEY] = exposition
    app[PENDING_KEY] = pending
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app``; returns the runner (call ``cleanup()`` to stop) and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    address = runner.addresses[0]
    return runner, int(address[1])
