"""glibc's malloc in patrol's long-running processes: arenas capped, so what one thread frees the
next reuses; big blocks kept out of the heap (the exporter).

Guarantees:

- After :func:`cap_arenas` (called once by ``patrol exporter`` and ``patrol worker`` before any
  thread starts), every thread of the process allocates from at most :data:`EXPORTER_ARENAS` (the
  exporter: one, the main arena) or :data:`WORKER_ARENAS` (the worker) glibc arenas.
- After :func:`fix_mmap_threshold` (the exporter), every block of 128 KiB or more is its own
  ``mmap``, returned to the kernel when freed, however big the blocks freed before it.
- An operator's ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` wins: when it is set, glibc
  already applied it and nothing here changes it.
- :class:`Trimmer` hands the free pages of those arenas back to the kernel (``malloc_trim``)
  after the exporter's refreshes and each round of the worker's journal keeper, at most once per
  ``every`` seconds, so a refresh's transient peak (a page
  of parsed JSON, a thousand Key Vault answers) does not stay resident until the next one. The
  exporter's trims a request that came too soon once the interval is up, so the last refresh of
  a burst is trimmed too.
- Where there is no glibc (musl, macOS) nothing happens and the exporter runs as before.

Why: the exporter runs ~45 threads (one refresher thread per source, one Event watch per
namespace, the fan-out pool). glibc gives each new thread its own arena until there are 8 per
CPU, and memory freed in one arena is only reused by the threads bound to it. Each refresh
parses thousands of JSON objects on whichever thread runs it, so every arena grows to the peak
its threads ever saw and stays there: at the ``large`` benchmark scenario (1,000 tokens, 100
pools, 10 clusters) that was ~15 MB of the exporter's runtime growth (tracemalloc saw only 6 to
12 MB of live Python objects in a 30 MB RSS growth; with ``MALLOC_ARENA_MAX=2`` the growth fell
to 18 MB and with 1 to 13 MB — docs/benchmarks.md). The refresher's work is I/O-bound and
serialised by the GIL, so fewer arenas cost no measurable scrape latency. The exporter now uses
one arena and a fixed mmap threshold. At ``large``, with the Entra credentials' shared TLS
context (core/tls.py), its growth over the imports fell from 20.8 to 17.4 MB, and to 20.6 MB
without the fixed threshold (medians of 3 rounds in one run, ``bench/scrape.py --growth``; one
arena alone left 1.6 MB less than two in a harness without the HTTP server). The worker applies
the same cap (a thread per rotation in flight, the reconcile loop, the Lease, the journal
keeper); in the soak it did not change the worker's memory slope (docs/reliability.md), so
there it is a precaution, not a fix (the worker's growth was a TLS context per ADO client,
core/_ado_session.py).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

# <malloc.h>: mallopt(M_ARENA_MAX, n) — the same knob as the MALLOC_ARENA_MAX variable.
M_ARENA_MAX = -8
EXPORTER_ARENAS = 1
WORKER_ARENAS = 2
ENV = "MALLOC_ARENA_MAX"
# mallopt(M_MMAP_THRESHOLD, n) — the same knob as MALLOC_MMAP_THRESHOLD_. Setting it turns off
# glibc's dynamic threshold, which otherwise rises to the largest mmapped block ever freed.
M_MMAP_THRESHOLD = -3
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
EXPORTER_MMAP_THRESHOLD = 128 * 1024            # glibc's own starting value, kept fixed
TRIM_EVERY = 10.0                               # seconds between two malloc_trim calls, at most


def _libc_function(name: str) -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)  # this interpreter's C library
    except (OSError, AttributeError):
        return None
    return function


def cap_arenas(env: Mapping[str, str], limit: int = EXPORTER_ARENAS) -> bool:
    """Cap glibc's arenas at ``limit`` unless ``env`` sets :data:`ENV`; True if this call capped them.

    Call it before starting threads: a thread keeps the arena it was given.
    """
    if limit < 1:
        raise ValueError(f"arena limit must be at least 1, not {limit}")
    return _mallopt(env, ENV, M_ARENA_MAX, limit)


def _mallopt(env: Mapping[str, str], variable: str, param: int, value: int) -> bool:
    """``mallopt(param, value)`` unless ``env`` sets glibc's own ``variable`` for it (the operator's
    choice, already applied); True if glibc took the value."""
    mallopt = None if variable in env else _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(ctypes.c_int(param), ctypes.c_int(value)))


def fix_mmap_threshold(env: Mapping[str, str], threshold: int = EXPORTER_MMAP_THRESHOLD) -> bool:
    """Serve every block of ``threshold`` bytes or more with its own ``mmap``, for good, unless
    ``env`` sets :data:`MMAP_ENV`; True if this call set it.

    Why: glibc starts at 128 KiB but raises the threshold to the size of any mmapped block that is
    freed, so after the first ~0.6 MB ``/metrics`` body (and its copy in the socket's send
    buffer) every later one comes from the heap, and a heap with live blocks above them keeps
    their pages until ``malloc_trim``. With the threshold fixed, a big transient block goes back
    to the kernel the moment it is freed.
    """
    if threshold < 1:
        raise ValueError(f"mmap threshold must be at least 1 byte, not {threshold}")
    return _mallopt(env, MMAP_ENV, M_MMAP_THRESHOLD, threshold)


class Trimmer:
    """``malloc_trim(0)`` when asked, at most once per ``every`` seconds; callable from any thread.

    With ``trailing=True`` a request that comes too soon is not dropped: one trim runs when the
    interval is up (a daemon timer; :meth:`close` cancels it). The exporter's sources finish their
    refreshes in bursts, so without it the garbage of a burst's last refreshes stayed resident
    until the next refresh, minutes later for the slow sources.

    :attr:`trims` counts the calls made (tests). Without glibc it counts, and does nothing else.
    ``later(delay, fn)`` schedules the trailing trim (tests pass their own; default
    :class:`threading.Timer`) and returns something with ``cancel()``.
    """

    def __init__(self, every: float = TRIM_EVERY, *, monotonic: Callable[[], float] = time.monotonic,
                 trailing: bool = False,
                 later: Callable[[float, Callable[[], None]], Cancellable] | None = None) -> None:
        self._every = every
        self._monotonic = monotonic
        self._last: float | None = None
        self._lock = threading.Lock()
        self._trim = _libc_function("malloc_trim")
        self._trailing = trailing
        self._later = later or _timer
        self._pending: Cancellable | None = None
        self._closed = False
        self.trims = 0

    def __call__(self) -> None:
        if not self._lock.acquire(blocking=False):
            return                                # another thread is trimming right now
        try:
            now = self._monotonic()
            if self._last is not None and now - self._last < self._every:
                if self._trailing and self._pending is None and not self._closed:
                    delay = min(self._every, max(0.0, self._every - (now - self._last)))
                    self._pending = self._later(delay, self._run_pending)
                return
            self._run(now)
        finally:
            self._lock.release()

    def _run(self, now: float) -> None:
        self._last = now
        self.trims += 1
        if self._trim is not None:
            self._trim(ctypes.c_size_t(0))

    def _run_pending(self) -> None:
        with self._lock:
            self._pending = None
            if not self._closed:
                self._run(self._monotonic())

    def close(self) -> None:
        """Cancel a pending trailing trim; later requests schedule none."""
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def _timer(delay: float, fn: Callable[[], None]) -> Cancellable:
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.name = "patrol-malloc-trim"
    timer.start()
    return timer
