"""``patrol history`` shows a drain while it runs, and which rotations were compromised."""

from __future__ import annotations

from pathlib import Path

from remediation import cli
from remediation.journal import Journal
from remediation.planner import COMPROMISED_DETAIL, COMPROMISED_TARGET


def test_history_shows_a_running_drain_and_a_compromised_rotation(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="schedule", reason="renewal due")
        journal.set_authorizations("aaaaaaaaaaaa", old="old-id", new="new-id")
        journal.start_step("aaaaaaaaaaaa", "drain")
        journal.note_step("aaaaaaaaaaaa", "drain", "waiting (3500s left at most): 2 agent Job(s) of "
                                                   "c1/ado/agent started before delivery still running")
        journal.create_rotation("bbbbbbbbbbbb", "daily-checks", trigger="manual", reason="leak")
        journal.set_target("bbbbbbbbbbbb", "plan", COMPROMISED_TARGET, "done", COMPROMISED_DETAIL)
        text = cli.format_history(journal.recent(), steps=True)
        as_json = journal.get("aaaaaaaaaaaa").to_json()
    lines = text.splitlines()
    [keda] = [line for line in lines if line.startswith("aaaaaaaaaaaa")]
    assert "(drain)" in keda
    assert keda.endswith("old-id -> new-id; draining: waiting (3500s left at most): 2 agent Job(s) of "
                         "c1/ado/agent started before delivery still running")
    assert "    drain    running  waiting (3500s left at most)" in text
    [daily] = [line for line in lines if line.startswith("bbbbbbbbbbbb")]
    assert daily.endswith("COMPROMISED; leak")
    steps = {s["name"]: s for s in as_json["steps"]}  # type: ignore[attr-defined]
    assert steps["drain"]["status"] == "running" and "2 agent Job(s)" in steps["drain"]["detail"]
