"""glibc's malloc arenas in the exporter process: capped, so what one thread frees the next reuses.

Guarantees:

- After :func:`cap_arenas` (called once by ``patrol exporter`` before any thread starts), every
  thread of the process allocates from at most :data:`EXPORTER_ARENAS` glibc arenas.
- An operator's ``MALLOC_ARENA_MAX`` wins: when it is set, glibc already applied it and nothing
  here changes it.
- Where there is no glibc (musl, macOS) nothing happens and the exporter runs as before.

Why: the exporter runs ~45 threads (one refresher thread per source, one Event watch per
namespace, the fan-out pool). glibc gives each new thread its own arena until there are 8 per
CPU, and memory freed in one arena is only reused by the threads bound to it. Each refresh
parses thousands of JSON objects on whichever thread runs it, so every arena grows to the peak
its threads ever saw and stays there: at the ``large`` benchmark scenario (1,000 tokens,
100 pools, 10 clusters) that was ~15 MB of the exporter's runtime growth (tracemalloc saw only
6 to 12 MB of live Python objects in a 30 MB RSS growth; with ``MALLOC_ARENA_MAX=2`` the growth
fell to 18 MB and with 1 to 13 MB — docs/benchmarks.md). The refresher's work is I/O-bound
and serialised by the GIL, so fewer arenas cost no measurable scrape latency.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Mapping

# <malloc.h>: mallopt(M_ARENA_MAX, n) — the same knob as the MALLOC_ARENA_MAX variable.
M_ARENA_MAX = -8
EXPORTER_ARENAS = 2
ENV = "MALLOC_ARENA_MAX"


def cap_arenas(env: Mapping[str, str], limit: int = EXPORTER_ARENAS) -> bool:
    """Cap glibc's arenas at ``limit`` unless ``env`` sets :data:`ENV`; True if this call capped them.

    Call it before starting threads: a thread keeps the arena it was given.
    """
    if limit < 1:
        raise ValueError(f"arena limit must be at least 1, not {limit}")
    if ENV in env or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt      # the C library this interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, limit))
