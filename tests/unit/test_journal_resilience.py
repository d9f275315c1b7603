"""The journal never stops the worker (issue 10, defects 6-9).

A corrupt file is moved aside and a fresh journal started; a state dir that cannot be written
is a clear configuration error naming it; a full disk turns readiness off and back on when
space returns; and the journal's size is bounded (retention, decision budget). "Disk full" is
sqlite's own error raised at the journal boundary by an injected connection class.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
import urllib.request
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rotation_fakes import Clock, FakeWorld, make_config

from core.errors import ConfigError
from patrol import cli as patrol_cli
from remediation.journal import JOURNAL_FILE, DecisionBudget, Journal
from remediation.service import WorkerService, WorkerThread
from tests.sqlite_faults import full_disk


def service(tmp_path: Path, clock: Clock | None = None, **kwargs: Any) -> WorkerService:
    clock = clock or Clock()
    cfg = kwargs.pop("cfg", None) or make_config(tmp=str(tmp_path / "state"))
    return WorkerService(cfg, FakeWorld(clock), state_dir=tmp_path / "state", webhook_token="t0ken-for-tests",
                         clock=clock, sleep=clock.sleep, reconcile_interval=3600, **kwargs)


def sample(svc: WorkerService, name: str) -> float:
    value = svc.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# -- defect 7: a corrupt journal -------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_journal_started(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"this is not an sqlite database\n" * 200
    (state / JOURNAL_FILE).write_bytes(garbage)
    with caplog.at_level(logging.ERROR, "patrol.journal"), Journal.in_state_dir(state) as journal:
        assert journal.reset_from is not None and journal.resets == 1
        assert re.fullmatch(r"journal\.sqlite3\.corrupt-\d{8}T\d{6}Z", journal.reset_from.name)
        assert journal.reset_from.read_bytes() == garbage          # kept for a human to look at
        journal.create_rotation("r1", "keda", trigger="manual", reason="after the reset")
        assert journal.count() == 1
    [record] = [r for r in caplog.records if r.name == "patrol.journal"]
    assert record.levelno == logging.ERROR and "moved aside" in record.getMessage()
    assert record.exc_info is None                                  # loud, but no traceback
    with Journal.in_state_dir(state) as again:                      # the fresh one is kept
        assert again.reset_from is None and again.count() == 1


def test_a_malformed_database_fails_its_integrity_check_and_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    with Journal(path) as journal:
        for i in range(300):
            journal.record_decision(token="keda", alertname="A" * 150, fingerprint=f"f{i}", action="drop",
                                    reason="cooldown " * 20)
        journal.checkpoint()
    raw = bytearray(path.read_bytes())
    page = 4096
    assert len(raw) > 4 * page
    raw[2 * page:4 * page] = b"\xa5" * (2 * page)                    # two b-tree pages overwritten
    path.write_bytes(bytes(raw))
    with Journal(path) as fresh:
        assert fresh.resets == 1 and fresh.decisions() == []


def test_the_worker_starts_on_a_corrupt_journal_and_counts_the_reset(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / JOURNAL_FILE).write_bytes(b"\x00garbage" * 512)
    svc = service(tmp_path)
    try:
        assert sample(svc, "patrol_journal_reset_total") == 1
        assert svc.not_accepting_reason() is None
    finally:
        svc.stop()


# -- defect 8: a state dir that cannot be written ---------------------------------------------------


def test_a_state_dir_that_is_a_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as caught:
        Journal.in_state_dir(blocker)
    text = str(caught.value)
    assert str(blocker) in text and "writable" in text and "--state-dir" in text


def test_a_read_only_volume_is_a_config_error_naming_the_dir(tmp_path: Path) -> None:
    class ReadOnly(sqlite3.Connection):
        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            raise sqlite3.OperationalError("attempt to write a readonly database")

    with pytest.raises(ConfigError) as caught:
        Journal.in_state_dir(tmp_path / "ro", factory=ReadOnly)
    assert str(tmp_path / "ro") in str(caught.value) and "readonly" in str(caught.value)


def test_patrol_worker_on_an_unwritable_state_dir_exits_2_with_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_worker_cli import write_config

    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the state dir should be")
    cfg = write_config(tmp_path)
    code = patrol_cli.main(["worker", "--config", str(cfg), "--state-dir", str(blocker)],
                           env={"PATROL_WEBHOOK_TOKEN": "t0ken-for-tests", "PATH": os.environ.get("PATH", "")})
    err = capsys.readouterr().err
    assert code == 2
    assert str(blocker) in err and "fix:" in err and "Traceback" not in err


# -- defect 9: a full disk ---------------------------------------------------------------------------


def test_a_full_disk_marks_the_journal_unwritable_until_a_write_succeeds(tmp_path: Path) -> None:
    factory, full = full_disk()
    seen: list[BaseException] = []
    with Journal(tmp_path / JOURNAL_FILE, factory=factory) as journal:
        journal.on_write_error(seen.append)
        journal.create_rotation("r1", "keda", trigger="manual", reason="x")
        full.set()
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            journal.start_step("r1", "create")
        assert not journal.writable and journal.write_errors == 1 and len(seen) == 1
        assert not journal.probe() and journal.write_errors == 2
        assert journal.get("r1").state == "plan"                 # nothing half-written
        full.clear()
        assert journal.probe() and journal.writable
        journal.start_step("r1", "create")
        assert journal.get("r1").state == "create"


def test_a_constraint_violation_is_not_a_storage_failure(tmp_path: Path) -> None:
    with Journal(tmp_path / JOURNAL_FILE) as journal:
        journal.create_rotation("r1", "keda", trigger="manual", reason="x")
        with pytest.raises(sqlite3.IntegrityError):
            journal.create_rotation("r1", "keda", trigger="manual", reason="x")
        assert journal.writable and journal.write_errors == 0


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_readiness_follows_the_journal_and_recovers_when_space_returns(tmp_path: Path) -> None:
    factory, full = full_disk()
    svc = service(tmp_path, journal_factory=factory, journal_probe_interval=0.05)
    with WorkerThread(svc) as worker:
        assert get(worker.url + "/readyz")[0] == 200
        full.set()                                   # the volume fills up: the next probe notices
        wait_for(lambda: not svc.journal.writable)
        status, text = get(worker.url + "/readyz")
        assert status == 503 and "journal" in text and "disk is full" in text
        metrics = get(worker.url + "/metrics")[1]
        assert "patrol_journal_writable 0.0" in metrics
        assert sample(svc, "patrol_journal_write_errors_total") >= 1
        full.clear()                                 # space returns: ready again without a restart
        wait_for(lambda: svc.journal.writable)
        assert get(worker.url + "/readyz")[0] == 200
        assert "patrol_journal_writable 1.0" in get(worker.url + "/metrics")[1]


def test_the_journal_keeper_hands_free_heap_back_each_round(tmp_path: Path) -> None:
    svc = service(tmp_path, journal_probe_interval=0.05)
    assert svc.trim.trims == 0
    with WorkerThread(svc):
        wait_for(lambda: svc.trim.trims >= 3)      # one malloc_trim per keeper round, not just once


# -- defect 6: the journal's size is bounded -----------------------------------------------------


def test_prune_drops_old_decisions_sooner_than_rotations_and_never_unfinished_ones(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    with Journal(tmp_path / JOURNAL_FILE, clock=clock) as journal:
        journal.create_rotation("old", "keda", trigger="alert", reason="x", dedupe_keys=["k-old"])
        journal.finish("old", "succeeded")
        journal.create_rotation("stuck", "daily-checks", trigger="alert", reason="x")   # never finished
        journal.record_decision(token="keda", alertname="A", fingerprint="f", action="drop", reason="cooldown")
        clock.now = 10_000.0
        journal.create_rotation("new", "keda", trigger="alert", reason="x")
        journal.finish("new", "succeeded")
        journal.record_decision(token="keda", alertname="A", fingerprint="g", action="drop", reason="cooldown")
        removed = journal.prune(5_000.0, rotations_older_than=2_000.0)
        assert removed > 0
        assert [d.fingerprint for d in journal.decisions()] == ["g"]
        assert {r.id for r in journal.recent()} == {"stuck", "new"}
        assert journal.size()["steps"] == 2 * len(journal.get("new").steps)
        assert not journal.seen("k-old")


def test_the_decision_budget_caps_rows_per_minute_in_all_and_per_fingerprint(tmp_path: Path) -> None:
    tick = Clock(0.0)
    budget = DecisionBudget(50, clock=tick)
    with Journal(tmp_path / JOURNAL_FILE, decision_budget=budget) as journal:
        written = sum(journal.record_decision(token=None, alertname="Flood", fingerprint="same", action="drop",
                                              reason="not-remediable") for _ in range(100))
        assert written == 5                                            # a tenth per fingerprint
        for i in range(5_000):                                         # distinct fingerprints
            journal.record_decision(token=None, alertname="Flood", fingerprint=f"fp{i}", action="drop",
                                    reason="not-remediable")
        assert journal.size()["decisions"] == 50 and journal.decisions_dropped == 5_100 - 50
        tick.now += 60                                                 # the next minute has a fresh budget
        assert journal.record_decision(token=None, alertname="A", fingerprint="x", action="drop", reason="r")


def flood_body(start: int, n: int) -> bytes:
    alerts = [{"status": "firing", "labels": {"alertname": "Noise", "token": "keda"},
               "annotations": {}, "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
               "fingerprint": f"fp{start + i}", "generatorURL": ""} for i in range(n)]
    return json.dumps({"version": "4", "status": "firing", "receiver": "patrol", "groupKey": "g",
                       "alerts": alerts, "groupLabels": {}, "commonLabels": {}}).encode()


def test_a_webhook_flood_cannot_grow_the_journal_past_the_budget_and_is_pruned_on_schedule(
        tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    cfg = make_config(tmp=str(tmp_path / "state"))
    cfg = replace(cfg, worker=replace(cfg.worker, decisions_per_minute=20, decision_retention=timedelta(days=1)))
    svc = service(tmp_path, clock, cfg=cfg, journal_probe_interval=0.05, prune_interval=0.2)
    with WorkerThread(svc) as worker:
        for batch in range(20):                      # 2,000 distinct alerts nobody may rotate for
            req = urllib.request.Request(worker.url + "/webhook/alertmanager", data=flood_body(batch * 100, 100),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Bearer t0ken-for-tests"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 202
        assert svc.journal.size()["decisions"] <= 20
        assert sample(svc, "patrol_journal_decisions_dropped_total") >= 2_000 - 20
        clock.now += timedelta(days=2).total_seconds()   # past the retention: the next prune drops them
        wait_for(lambda: svc.journal.size()["decisions"] == 0)
        assert svc.journal.count() == 0

