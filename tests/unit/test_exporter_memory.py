"""What keeps the exporter's runtime memory small (issue 10, "Memory"), checked by counting, not timing.

The figures themselves are bench/scrape.py's (docs/benchmarks.md); these tests guard the
mechanisms: a fan-out over many items holds a bounded number of pool tasks, and the process
caps glibc's malloc arenas before its threads start.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.arenas import ENV, EXPORTER_ARENAS, MMAP_ENV, WORKER_ARENAS, Trimmer, cap_arenas, fix_mmap_threshold
from core.errors import TransientError
from exporter.fanout import Fanout, Result

ROOT = Path(__file__).resolve().parents[2]


def test_a_map_over_many_items_queues_at_most_concurrency_tasks() -> None:
    fanout = Fanout(4)
    seen: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            seen.append(item)
        if item % 7 == 0:
            raise ValueError(f"item {item}")
        return item * 2

    try:
        results = fanout.map(work, range(1000))
    finally:
        fanout.close()
    assert fanout.submitted <= 4                          # not one future per item
    assert sorted(seen) == list(range(1000))              # every item ran exactly once
    assert [r.value for r in results if r.ok] == [i * 2 for i in range(1000) if i % 7]
    assert [str(r.error) for r in results if not r.ok] == [f"item {i}" for i in range(0, 1000, 7)]
    assert fanout.peak_in_flight <= 4


def test_a_map_still_runs_its_items_side_by_side() -> None:
    fanout = Fanout(3)
    barrier = threading.Barrier(3, timeout=10)
    try:
        results = fanout.map(lambda _i: barrier.wait(), range(3))    # deadlocks if run one by one
    finally:
        fanout.close()
    assert all(r.ok for r in results) and fanout.peak_in_flight == 3


# Counts glibc's arenas (malloc_info prints one <heap nr=...> per arena) after 12 threads
# each allocated: without a cap glibc gives each new thread its own arena, up to 8 per CPU.
ARENA_PROBE = textwrap.dedent("""
    import ctypes, os, re, sys, tempfile, threading
    from core.arenas import cap_arenas
    mode = sys.argv[1]
    print(cap_arenas({}, int(mode)) if mode != "none" else False)
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.fclose.argtypes = (ctypes.c_void_p,)
    go = threading.Barrier(12)
    def work():
        go.wait()                                     # all alive at once: no arena handed back
        blocks = [bytearray(4096) for _ in range(200)]
        go.wait()
    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads: t.start()
    for t in threads: t.join()
    with tempfile.NamedTemporaryFile() as out:
        fp = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        print(len(re.findall(r'<heap nr="', open(out.name).read())))
""")


def probe(code: str, mode: str) -> tuple[bool, int]:
    """Run ``code`` in a fresh interpreter (no MALLOC_* variables): what it prints, a bool and a count."""
    done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin"}, timeout=60, check=True)
    flag, count = done.stdout.split()
    return flag == "True", int(count)


def arenas_after_threads(mode: str) -> tuple[bool, int]:
    return probe(ARENA_PROBE, mode)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc arenas exist on Linux only")
@pytest.mark.parametrize("limit", [EXPORTER_ARENAS, WORKER_ARENAS])
def test_the_arena_cap_bounds_the_arenas_threads_allocate_from(limit: int) -> None:
    capped, arenas = arenas_after_threads(str(limit))
    _, uncapped = arenas_after_threads("none")
    assert capped
    assert arenas <= limit
    assert uncapped > arenas                              # the probe does see arenas multiply



# Frees a 600 KB block (what a /metrics body is), then takes another: mmapped (mallinfo2's hblks
# counts it) only if the threshold stayed at 128 KiB. glibc's dynamic threshold, once the first
# mmapped block is freed, serves the second from the heap.
MMAP_PROBE = textwrap.dedent("""
    import ctypes, sys
    from core.arenas import fix_mmap_threshold
    fixed = fix_mmap_threshold({}) if sys.argv[1] == "fix" else False
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.free(libc.malloc(600_000))
    before = libc.mallinfo2().hblks
    block = libc.malloc(600_000)
    print(fixed, libc.mallinfo2().hblks - before)
    libc.free(block)
""")


def mmapped_after_a_free(mode: str) -> tuple[bool, int]:
    return probe(MMAP_PROBE, mode)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc exists on Linux only")
def test_a_fixed_mmap_threshold_keeps_big_blocks_out_of_the_heap() -> None:
    assert mmapped_after_a_free("fix") == (True, 1)
    assert mmapped_after_a_free("none") == (False, 0)         # glibc's dynamic threshold moved


def test_an_operators_mmap_threshold_wins() -> None:
    assert fix_mmap_threshold({MMAP_ENV: "1048576"}) is False


def test_an_operators_malloc_arena_max_wins() -> None:
    assert cap_arenas({ENV: "4"}) is False


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        cap_arenas({}, 0)


def test_the_trimmer_trims_at_most_once_per_interval() -> None:
    now = [100.0]
    trim = Trimmer(10.0, monotonic=lambda: now[0])
    trim()
    trim()
    now[0] = 109.9
    trim()
    assert trim.trims == 1
    now[0] = 110.0
    trim()
    assert trim.trims == 2


class Later:
    """A fake timer queue: what the trimmer scheduled, run by hand."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, delay: float, fn: Callable[[], None]) -> Later:
        self.scheduled.append((delay, fn))
        return self

    def cancel(self) -> None:
        self.cancelled += 1


def test_a_trailing_trimmer_runs_one_trim_when_the_interval_is_up() -> None:
    now = [100.0]
    later = Later()
    trim = Trimmer(10.0, monotonic=lambda: now[0], trailing=True, later=later)
    trim()                                                # at once
    now[0] = 103.0
    trim()                                                # too soon: one trim scheduled, 7 s on
    now[0] = 105.0
    trim()                                                # still pending: nothing more
    assert trim.trims == 1 and [delay for delay, _ in later.scheduled] == [7.0]
    now[0] = 110.0
    later.scheduled[0][1]()                               # the timer fires
    assert trim.trims == 2
    now[0] = 111.0
    trim()                                                # a new burst schedules again
    assert [delay for delay, _ in later.scheduled] == [7.0, 9.0]


def test_closing_cancels_the_pending_trim_and_schedules_no_more() -> None:
    now = [100.0]
    later = Later()
    trim = Trimmer(10.0, monotonic=lambda: now[0], trailing=True, later=later)
    trim()
    now[0] = 101.0
    trim()
    trim.close()
    assert later.cancelled == 1
    later.scheduled[0][1]()                               # a timer that fired while closing
    now[0] = 102.0
    trim()
    assert trim.trims == 1 and len(later.scheduled) == 1



# Frees 60 MB of malloc'd blocks but every 100th (so glibc cannot give the heap's top back by
# itself), then reports RSS before and after one Trimmer call, in MB.
TRIM_PROBE = textwrap.dedent("""
    import re
    from pathlib import Path
    from core.arenas import Trimmer
    def rss():
        return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    blocks = [bytes(1500) + bytes([i % 256]) for i in range(40000)]
    kept = blocks[::100]
    del blocks
    before = rss()
    Trimmer()()
    print(before, rss())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_a_trim_gives_freed_memory_back() -> None:
    done = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin"}, timeout=60, check=True)
    before, after = map(float, done.stdout.split())
    assert before - after > 30, (before, after)


def test_closing_the_fanout_stops_a_map_between_items() -> None:
    fanout = Fanout(2)
    started = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    def work(item: int) -> int:
        ran.append(item)
        started.set()
        release.wait(10)
        return item

    out: list[list[Result[int]]] = []
    mapper = threading.Thread(target=lambda: out.append(fanout.map(work, range(100))))
    mapper.start()
    assert started.wait(10)
    closer = threading.Thread(target=fanout.close)
    closer.start()
    while not fanout.closing:
        time.sleep(0.01)
    release.set()
    closer.join(10)
    mapper.join(10)
    results = out[0]
    assert len(results) == 100 and len(ran) <= 2         # the two in flight finished, no other began
    assert all(r.ok for r in results[:len(ran)])
    assert all(isinstance(r.error, TransientError) and "stopping" in str(r.error)
               for r in results[len(ran):])
