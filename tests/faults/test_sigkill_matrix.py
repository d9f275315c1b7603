"""The SIGKILL column of the fault matrix (tests/faults/matrix.py): real ``patrol worker``
processes against one sandbox for the module.

Each case: the sandbox holds the call for ``KILL_HOLD`` seconds before answering (a ``latency``
fault), so the server still acts after the worker is gone — the hard case: ADO created the PAT,
or the API server wrote the Secret, and nobody journaled the answer. A first worker is asked to
rotate (``POST /rotations``) and is SIGKILLed as soon as the call arrives; while nobody runs,
every sink must hold an active PAT. A second worker, started on the same state directory (its
process already imported and waiting, to keep the case short), must resume the rotation from
the journal and finish it (``GET /rotations/{id}``, ``patrol_rotations_total``). Then the
invariants of tests/faults/rig.py: sinks converge, no patrol PAT left active and unused, no
KEDA poll failed, no harm.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.test_rotation_sandbox import WEBHOOK_TOKEN, WORKER_MAIN
from tests.faults.matrix import CASES, Case, Fault
from tests.faults.rig import KILL_HOLD, Rig, fault_kwargs, metric, module_rig

KILL_CASES = [c for c in CASES if c.fault is Fault.SIGKILL]
# WORKER_MAIN, started at once but run only when the go-file appears: the second worker's
# imports overlap the first worker's life instead of adding to the case.
WAITING_MAIN = ("import pathlib, sys, time\n"
                "go = pathlib.Path(sys.argv[3])\n"
                "while not go.exists():\n"
                "    time.sleep(0.02)\n") + WORKER_MAIN


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    yield from module_rig(tmp_path_factory, "faults-sigkill")


@pytest.fixture(scope="module")
def config_path(rig: Rig) -> Path:
    """The sandbox's config with a short verification (settle 2 s: KEDA polls every second)."""
    doc = yaml.safe_load(Path(rig.sb.ready["config"]).read_text())
    doc["worker"]["verify_deadline"] = "8s"
    path = rig.tmp / "patrol-sigkill.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Worker:
    """A ``patrol worker`` child process (stderr to ``log``) that starts once ``go`` exists."""

    def __init__(self, config: Path, state_dir: Path, log: Path) -> None:
        self.log = log
        self.go = log.with_suffix(".go")
        env = {**os.environ, "PATROL_WEBHOOK_TOKEN": WEBHOOK_TOKEN}
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WAITING_MAIN, str(config), str(state_dir), str(self.go)],
                stdout=subprocess.DEVNULL, stderr=sink, env=env)

    def start(self) -> str:
        """Let it run; its URL once it listens."""
        self.go.touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "worker listening on" in text:
                port = int(text.split("worker listening on", 1)[1].split()[0].rsplit(":", 1)[1])
                return f"http://127.0.0.1:{port}"
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("worker did not start: " + self.log.read_text(errors="replace"))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"})


@pytest.mark.parametrize("case", KILL_CASES, ids=lambda c: c.id)
def test_worker_killed_during_the_call(rig: Rig, config_path: Path, case: Case, tmp_path: Path) -> None:
    token = case.call.token
    rig.world.remember_values()
    rig.world.assert_converged(token)
    before = rig.baseline()
    first = Worker(config_path, rig.state_dir, tmp_path / "first.log")
    second = Worker(config_path, rig.state_dir, tmp_path / "second.log")
    fault_id = rig.world.fault(**fault_kwargs(case.call, case.fault))
    try:
        url = first.start()
        asked = call(url, "POST", "/rotations", {"token": token, "force": True, "reason": case.id})
        assert asked.status_code == 202, asked.text
        rotation_id = asked.json()["rotation_id"]
        deadline = time.monotonic() + 60
        while not rig.requests(case.call, before.started):
            assert time.monotonic() < deadline, f"the rotation never reached {case.call.id}"
            assert first.process.poll() is None, first.log.read_text(errors="replace")
            time.sleep(0.02)
        first.kill()                                 # mid-call: the sandbox has not answered yet
        killed_at = time.time()
        [held] = rig.requests(case.call, before.started)
        assert held.status == 0, "the call was answered before the kill"
        # While nobody runs, every consumer still has a working token.
        rig.sinks_hold_active_pats(token)
        deadline = time.monotonic() + KILL_HOLD + 10      # let the server act on the orphaned call
        while rig.requests(case.call, before.started)[0].status == 0:
            assert time.monotonic() < deadline, "the held call never completed"
            time.sleep(0.05)
        rig.world.remember_values()
        rig.sinks_hold_active_pats(token)

        url = second.start()
        deadline = time.monotonic() + 90
        while True:
            got = call(url, "GET", f"/rotations/{rotation_id}")
            assert got.status_code == 200, got.text
            record = got.json()
            if record["outcome"] is not None:
                break
            assert time.monotonic() < deadline, f"not finished by the second worker: {json.dumps(record)}"
            time.sleep(0.2)
        metrics = call(url, "GET", "/metrics").text
        assert second.stop() == 0, second.log.read_text(errors="replace")
    finally:
        with contextlib.suppress(KeyError):
            rig.world.call(rig.sb.world.faults.remove, fault_id)
        first.kill()
        second.go.touch()
        with contextlib.suppress(subprocess.TimeoutExpired):
            second.stop()
        second.kill()
    assert record["outcome"] == "succeeded", record["error"]
    assert record["finished_at"] > killed_at                       # finished by the second worker
    assert metric(metrics, "patrol_rotations_total", token=token, result="succeeded") == 1.0
    held_id = rig.converged(token, before)
    assert record["new_authorization_id"] == held_id
