"""The soak and MTTR harnesses never leave processes behind when the loop fails to start.

Seen on a loaded machine: the exporter did not answer ``/healthz`` within 30 s, ``Demo.start``
raised, and the sandbox, exporter and worker it had already spawned kept running (and writing)
after the harness exited. The start now happens inside the harness's ``try``/``finally``.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from patrol import soak as soak_module
from patrol.demo import Demo


def _start_that_times_out(spawned: list[subprocess.Popen[bytes]]) -> object:
    def start(self: Demo) -> None:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.procs.append(proc)
        spawned.append(proc)
        raise TimeoutError("http://127.0.0.1:1/healthz did not answer within 30s")
    return start


@pytest.mark.parametrize("run", [
    lambda workdir: soak_module.soak(1, workdir=workdir, out=io.StringIO()),
    lambda workdir: soak_module.mttr(1, workdir=workdir, out=io.StringIO()),
], ids=["soak", "mttr"])
def test_a_start_that_fails_stops_what_it_spawned(run: object, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[subprocess.Popen[bytes]] = []
    monkeypatch.setattr(Demo, "start", _start_that_times_out(spawned))
    with pytest.raises(TimeoutError):
        run(tmp_path)  # type: ignore[operator]
    assert len(spawned) == 1
    assert spawned[0].poll() is not None, "the process spawned before the failure is still running"


def test_rss_growth_compares_medians_so_one_trim_swing_neither_fails_nor_passes_a_run() -> None:
    from patrol.soak import RssSample, SoakReport

    report = SoakReport(target=12)
    # a flat exporter whose samples swing by ±3 MB with malloc_trim's timing, ending on a high
    # swing; a worker that really grows 1 MB per rotation
    swings = [91.5, 94.8, 92.0, 95.1, 91.8, 94.9, 92.1, 95.0, 91.7, 94.7, 92.2, 95.2]
    report.rss = [RssSample(i + 1, swings[i], 90.0 + i) for i in range(12)]
    growth = report.rss_growth()
    assert growth["exporter"] == 94.7 / 92.0 - 1              # single samples said 95.2 / 91.5, +4 %
    assert growth["worker"] == 99.0 / 92.0 - 1                # medians of 90..94 and 97..101
    report.rss = report.rss[:3]                               # a short run: windows never overlap
    head, tail = report.rss_ends()
    assert (head.rotation, tail.rotation) == (1, 3)
