"""The demo's event detector and summary, on snapshots recorded from a real ``patrol demo`` run.

``tests/fixtures/demo/timeline.json`` holds 27 one-second looks at the sandbox, the worker,
Prometheus and the exporter around an out-of-band revocation of the KEDA PAT (see its ``source``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from patrol.demo import Demo, _watch
from patrol.narrator import Narrator
from patrol.timeline import Event, Snapshot, Story, alert_name, detect, parse_alerts, poll_error, seconds

FIXTURE = Path(__file__).parent.parent / "fixtures" / "demo" / "timeline.json"


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FIXTURE.read_text())
    return doc


def _snapshots(doc: dict[str, Any]) -> list[Snapshot]:
    return [Snapshot.from_documents(s["at"], state=s["state"], rotations=s["rotations"], alerts=s["alerts"],
                                    metrics=s["metrics"]) for s in doc["snapshots"]]


def _replay(doc: dict[str, Any]) -> tuple[list[Event], Story]:
    story = Story(started_at=doc["started_at"])
    story.add([Event(doc["incident_at"], "incident", "incident", "bad")])
    previous: Snapshot | None = None
    for snap in _snapshots(doc):
        story.add(detect(previous, snap))
        story.last = previous = snap
    return story.events, story


def test_the_recorded_incident_reads_as_a_story_in_order(recorded: dict[str, Any]) -> None:
    events, _ = _replay(recorded)
    kinds = [e.kind for e in events]
    # the first time each kind appears, in the order the world went through it
    first = sorted({k: kinds.index(k) for k in kinds}.items(), key=lambda kv: kv[1])
    assert [k for k, _ in first] == [
        "incident", "keda-failing", "token-invalid", "alert-firing", "rotation-started", "step-finished",
        "step-started", "harm", "keda-ready", "alert-resolved", "token-valid", "rotation-finished"]
    texts = [e.text for e in events]
    assert ("KEDA on build-a: first failed poll for pool agents-a (HTTP 401 from Azure DevOps); "
            "ScaledJob Ready=False; harm.keda_failed_polls=2") in texts
    assert "alert KedaScalerAuthFailing{token=keda} firing" in texts
    assert "alert PatInvalid{token=keda} firing" in texts and "alert PatInvalid{token=keda} resolved" in texts
    assert "exporter: token keda no longer authenticates at build-a, build-b" in texts
    assert "rotation 30115604fe65 of keda started (alert KedaScalerAuthFailing)" in texts
    assert "rotation 30115604fe65 of keda succeeded in 16.4 s" in texts
    assert any(t.startswith("agent pool agents-a recovered: KEDA on build-a Ready again") for t in texts)
    assert "harm: builds_interrupted +2 (now 2)" in texts


def test_each_event_is_told_once(recorded: dict[str, Any]) -> None:
    events, _ = _replay(recorded)
    keyed = [(e.kind, e.text) for e in events]
    assert len(keyed) == len(set(keyed))
    # two ScaledJobs fail once each, although the recording holds three failed polls per ScaledJob
    assert sum(e.kind == "keda-failing" for e in events) == 2
    assert sum(e.kind == "keda-ready" for e in events) == 2


def test_every_step_the_worker_lists_is_told_with_its_duration(recorded: dict[str, Any]) -> None:
    events, _ = _replay(recorded)
    last = recorded["snapshots"][-1]["rotations"]["rotations"][0]
    finished = [e.text.split()[1] for e in events if e.kind == "step-finished"]
    assert finished == [s["name"] for s in last["steps"]]  # whatever steps the saga has, in its order
    verify = next(e for e in events if e.kind == "step-finished" and " verify " in e.text)
    assert verify.text.startswith("  30115604fe65 verify done in 16.1 s: new PAT authenticates")
    assert verify.at == last["steps"][4]["finished_at"]   # stamped with the worker's own time


def test_steps_are_read_generically_including_new_ones() -> None:
    """A step the demo has never heard of (``drain``, ``confirm``) is told like any other."""
    def rotation(steps: list[dict[str, Any]], outcome: str | None = None) -> dict[str, Any]:
        return {"id": "r1", "token": "keda", "reason": "alert PatInvalid", "created_at": 100.0,
                "finished_at": 130.0 if outcome else None, "outcome": outcome, "error": "", "steps": steps}

    before = Snapshot(at=110.0, rotations=[rotation([
        {"name": "drain", "status": "running", "started_at": 101.0, "finished_at": None, "detail": ""},
        {"name": "confirm", "status": "pending", "started_at": None, "finished_at": None, "detail": ""}])])
    after = Snapshot(at=131.0, rotations=[rotation([
        {"name": "drain", "status": "done", "started_at": 101.0, "finished_at": 125.0, "detail": "3 builds drained"},
        {"name": "confirm", "status": "failed", "started_at": 125.0, "finished_at": 129.5,
         "detail": "agents offline"}], outcome="failed")])
    first = detect(None, before)
    assert [e.text for e in first] == ["rotation r1 of keda started (alert PatInvalid)", "  r1 drain ..."]
    texts = [(e.text, e.tone) for e in detect(before, after)]
    assert texts == [("  r1 drain done in 24.0 s: 3 builds drained", "step"),
                     ("  r1 confirm failed in 4.5 s: agents offline", "bad"),
                     ("rotation r1 of keda failed in 30.0 s", "bad")]


def test_a_source_that_does_not_answer_changes_nothing(recorded: dict[str, Any]) -> None:
    snaps = _snapshots(recorded)
    firing = next(i for i, s in enumerate(snaps) if "firing" in (s.alerts or {}).values())
    silent = Snapshot(at=snaps[firing].at + 1).carry(snaps[firing])   # nothing answered
    assert silent.alerts == snaps[firing].alerts and silent.scaledjobs == snaps[firing].scaledjobs
    assert detect(snaps[firing], silent) == []
    # without the carry, an unanswered Prometheus is not read as "every alert resolved"
    assert detect(snaps[firing], Snapshot(at=silent.at)) == []


def test_the_summary_measures_recovery_from_the_incident_to_the_rotation_finishing(
        recorded: dict[str, Any]) -> None:
    _, story = _replay(recorded)
    found = story.recovery()
    assert found is not None
    took, rotation = found
    assert rotation["id"] == "30115604fe65"
    assert took == pytest.approx(rotation["finished_at"] - recorded["incident_at"])
    lines = story.summary("/tmp/logs", now=recorded["snapshots"][-1]["at"])
    text = "\n".join(lines)
    assert f"time to recovery: {took:.0f} s (incident at +16s, rotation 30115604fe65 finished at +38s" in text
    assert "KEDA Ready again after" in text
    assert "KedaScalerAuthFailing{token=keda}: fired +21s, resolved +24s" in text
    assert "30115604fe65 of keda (alert KedaScalerAuthFailing): succeeded in 16.4 s" in text
    assert "steps: plan 0.04 s, create 0.05 s, deliver 0.06 s, switch 0.07 s, verify 16.1 s" in text
    assert "sandbox harm: agent_unregister_failures=0, builds_interrupted=2, keda_failed_polls=6" in text
    assert lines[-1].startswith("  logs: /tmp/logs")


def test_the_summary_says_when_there_was_no_incident_or_no_recovery(recorded: dict[str, Any]) -> None:
    story = Story(started_at=0.0)
    story.last = Snapshot(at=5.0, rotations=[], harm={})
    assert "time to recovery: no incident was played" in story.summary("d", now=5.0)[1]
    story.add([Event(10.0, "incident", "x", "bad")])
    story.last = Snapshot(at=70.0, rotations=[{"id": "a", "token": "keda", "outcome": None, "state": "verify",
                                               "created_at": 12.0, "steps": []}], harm={})
    lines = story.summary("d", now=70.0)
    assert lines[1] == "  time to recovery: not recovered 1m00s after the incident (see worker.log)"
    assert "    a of keda (?): still running (verify)" in lines
    assert "  sandbox harm: none" in lines


def test_small_parsers() -> None:
    assert parse_alerts({"data": {"alerts": [
        {"labels": {"alertname": "PatInvalid", "token": "keda", "sink": "a"}, "state": "pending"},
        {"labels": {"alertname": "PatInvalid", "token": "keda", "sink": "b"}, "state": "firing"},
        {"labels": {"alertname": "AgentPoolStarved", "pool": "p"}, "state": "pending"}]}}) == {
        "PatInvalid{token=keda}": "firing", "AgentPoolStarved{pool=p}": "pending"}
    assert alert_name({"alertname": "Other"}) == "Other"
    assert poll_error("... status: 401 response: ") == "HTTP 401 from Azure DevOps"
    assert poll_error(None) == "no error text"
    assert poll_error("x" * 100).endswith("...") and len(poll_error("x" * 100)) == 80
    assert [seconds(v) for v in (0.041, 16.05, 125.0)] == ["0.04 s", "16.1 s", "2m05s"]


class RecordedDemo(Demo):
    """The demo's loop fed from the recording instead of live processes; it 'dies' at the end."""

    def __init__(self, doc: dict[str, Any], workdir: Path) -> None:
        super().__init__(workdir=workdir)
        self.doc = doc
        self.left = _snapshots(doc)

    def exited(self) -> list[tuple[str, int]]:
        return [] if self.left else [("sandbox", 3)]

    def incident(self) -> float:
        return float(self.doc["incident_at"])

    def snapshot(self, previous: Snapshot | None = None) -> Snapshot:
        return self.left.pop(0).carry(previous)


def test_the_loop_tells_the_recording_and_stops_when_a_process_dies(recorded: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    out = io.StringIO()
    narrator = Narrator(out, started_at=recorded["started_at"], status_every=5.0)
    story = Story(started_at=recorded["started_at"])
    code = _watch(RecordedDemo(recorded, tmp_path), narrator, story, duration=None, interval=0.0,
                  incident_after=0.0)
    text = out.getvalue()
    assert code == 1
    assert text.splitlines()[-1] == f"the sandbox exited with code 3 (see its log in {tmp_path}); stopping"
    assert "[  +15.6s] incident: the KEDA PAT held by build-a and build-b is revoked out of band" in text
    assert "[  +37.7s] rotation 30115604fe65 of keda succeeded in 16.4 s" in text
    assert story.recovery() is not None and story.last is not None
