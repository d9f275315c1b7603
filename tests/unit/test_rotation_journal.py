"""The rotation journal: typed records, step transitions, dedupe keys, restarts, threads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from remediation.journal import STEPS, Journal


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_wal_mode_and_file_under_state_dir(tmp_path: Path) -> None:
    with Journal.in_state_dir(tmp_path / "state") as journal:
        journal.create_rotation("r1", "keda", trigger="manual", reason="test")
    path = tmp_path / "state" / "journal.sqlite3"
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_rotation_lifecycle_is_a_typed_record(tmp_path: Path) -> None:
    clock = Clock()
    with Journal(tmp_path / "j.db", clock=clock) as journal:
        rec = journal.create_rotation("r1", "keda", trigger="alert", reason="alert PatRenewalDue",
                                      received_at=990.0, dedupe_keys=["fp@t"])
        assert rec.state == "plan"
        assert [s.name for s in rec.steps] == list(STEPS)
        assert all(s.status == "pending" for s in rec.steps)
        assert not rec.finished
        clock.now = 1_001.0
        journal.start_step("r1", "create")
        journal.set_authorizations("r1", new="auth-new", new_valid_to=5_000.0)
        journal.finish_step("r1", "create", "done", "validTo clamped")
        journal.start_step("r1", "deliver")
        journal.set_target("r1", "deliver", "keyvault/v/s", "done", "version abc")
        journal.set_target("r1", "deliver", "keyvault/v/s", "failed", "retry")
        journal.set_authorizations("r1", old="auth-old")
        clock.now = 1_010.0
        journal.finish("r1", "failed", "deliver: boom")
        rec = journal.get("r1")
    assert rec.outcome == "failed"
    assert rec.finished_at == 1_010.0
    assert rec.received_at == 990.0
    assert rec.error == "deliver: boom"
    assert rec.new_authorization_id == "auth-new"
    assert rec.old_authorization_id == "auth-old"
    assert rec.new_valid_to == 5_000.0
    create = rec.step("create")
    assert (create.status, create.detail, create.attempts, create.started_at) == (
        "done", "validTo clamped", 1, 1_001.0)
    assert rec.step("deliver").status == "failed"        # was running when the rotation ended
    assert rec.step("verify").status == "skipped"
    assert [(t.target, t.status) for t in rec.targets] == [("keyvault/v/s", "failed")]
    assert rec.to_json()["steps"][1]["name"] == "create"  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown step"):
        Journal(tmp_path / "j.db").start_step("r1", "explode")


def test_free_text_is_redacted_before_it_is_stored(tmp_path: Path) -> None:
    pat = "a" * 52
    with Journal(tmp_path / "j.db") as journal:
        journal.create_rotation("r1", "keda", trigger="manual", reason=f"because {pat}")
        journal.finish("r1", "failed", f"Authorization: Basic {pat}")
        rec = journal.get("r1")
    assert pat not in rec.reason and pat not in rec.error
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("j.db*"))
    assert b"Authorization" in raw
    assert pat.encode() not in raw


def test_survives_a_reopen(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "j.db", clock=clock)
    journal.create_rotation("r1", "keda", trigger="alert", reason="x", dedupe_keys=["k1", "k2"])
    journal.start_step("r1", "create")
    journal.record_decision(token="keda", alertname="A", fingerprint="f", action="drop", reason="cooldown")
    journal.close()                                           # a crash loses nothing committed
    with Journal(tmp_path / "j.db", clock=clock) as again:
        assert [r.id for r in again.unfinished()] == ["r1"]
        assert again.get("r1").state == "create"
        assert again.seen("k1") and again.seen("k2") and not again.seen("k3")
        assert again.seen_keys(since=0) == {"k1", "k2"}
        assert again.decisions()[0].reason == "cooldown"
        again.forget(["k1"])
        assert not again.seen("k1")
        clock.now += 100
        again.prune(older_than=clock.now)
        assert again.seen_keys(since=0) == set() and again.decisions() == []


def test_last_success_recent_and_count(tmp_path: Path) -> None:
    clock = Clock()
    with Journal(tmp_path / "j.db", clock=clock) as journal:
        assert journal.last_success("keda") is None
        for i, outcome in enumerate(("succeeded", "failed", "succeeded")):
            clock.now = 1_000.0 + i
            journal.create_rotation(f"r{i}", "keda", trigger="manual", reason="x")
            journal.finish(f"r{i}", outcome)  # type: ignore[arg-type]
        journal.create_rotation("other", "daily", trigger="manual", reason="x")
        assert journal.last_success("keda") == 1_002.0
        assert [r.id for r in journal.recent("keda")] == ["r2", "r1", "r0"]
        assert [r.id for r in journal.recent(limit=1)] == ["other"]
        assert journal.count() == 4 and journal.count("keda") == 3
        assert journal.find("nope") is None
        with pytest.raises(KeyError):
            journal.get("nope")


def test_concurrent_threads(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as journal:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(20):
                    rid = f"t{n}-{i}"
                    journal.create_rotation(rid, f"tok{n}", trigger="manual", reason="x",
                                            dedupe_keys=[f"k{n}-{i}"])
                    for step in STEPS:
                        journal.start_step(rid, step)
                        journal.finish_step(rid, step)
                    journal.finish(rid, "succeeded")
                    journal.recent(limit=5)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert journal.count() == 160
        assert len(journal.seen_keys(since=0)) == 160
        assert all(s.status == "done" for s in journal.get("t3-7").steps)
