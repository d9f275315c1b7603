"""The demo's story as data: snapshots of the world, the events between two of them, the summary.

Guarantees: everything here is pure — no I/O, no clock — so the story ``make demo`` tells is
tested on snapshots recorded from a real run (``tests/fixtures/demo/timeline.json``).
:func:`detect` is a function of (previous snapshot, new snapshot) only: an event is reported once,
in the first snapshot that shows it, stamped with the time the source itself gives when it gives
one (a rotation step's ``started_at``/``finished_at``) and otherwise with the snapshot's time. A
source that did not answer is carried over from the previous snapshot (:meth:`Snapshot.carry`),
so an unreachable Prometheus never reads as "every alert resolved". Token values are never read:
the sources are the sandbox's ``GET /state`` (KEDA's ScaledJob stats, agent pools, harm counters),
the worker's ``GET /rotations``, Prometheus's ``GET /api/v1/alerts`` and the exporter's
``patrol_pat_valid`` samples.

Rotation steps are read generically from ``/rotations`` (whatever steps the saga has — ``drain``
and ``confirm`` included — in the order it lists them); no step name is known here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families

Tone = Literal["bad", "good", "warn", "info", "step"]
FINISHED_STEP = frozenset({"done", "failed", "skipped"})
# keda_failed_polls is told through the "first failed poll" event; the other counters each get one.
QUIET_HARM = frozenset({"keda_failed_polls"})


@dataclass(frozen=True)
class Event:
    """One thing that happened, at ``at`` (unix seconds)."""

    at: float
    kind: str           # incident, keda-failing, keda-ready, token-invalid, token-valid, alert-firing,
                        # alert-resolved, rotation-started, step-started, step-finished, rotation-finished, harm
    text: str
    tone: Tone = "info"
    subject: str = ""   # the alert, rotation id or ScaledJob the event is about


@dataclass(frozen=True)
class Snapshot:
    """One look at the world. ``None`` for a source means it did not answer this time."""

    at: float
    scaledjobs: Mapping[str, Mapping[str, Any]] | None = None   # cluster/ns/name -> KEDA stats
    pools: Mapping[int, str] | None = None                      # pool id -> name
    harm: Mapping[str, int] | None = None
    alerts: Mapping[str, str] | None = None                     # alert name -> pending | firing
    rotations: Sequence[Mapping[str, Any]] | None = None
    valid: Mapping[str, Mapping[str, float]] | None = None      # token -> sink -> 0/1

    @classmethod
    def from_documents(cls, at: float, *, state: Mapping[str, Any] | None = None,
                       rotations: Any = None, alerts: Mapping[str, Any] | None = None,
                       metrics: str | None = None) -> Snapshot:
        """Parse what the sources answered (any of them ``None`` when it did not)."""
        snap = cls(at=at)
        if state is not None:
            actors = state.get("actors") or {}
            snap = replace(snap, scaledjobs=dict(actors.get("scaledjobs") or {}),
                           pools={int(p["id"]): str(p["name"]) for p in state.get("pools") or []},
                           harm={str(k): int(v) for k, v in (state.get("harm") or {}).items()})
        if rotations is not None:
            items = rotations.get("rotations", []) if isinstance(rotations, Mapping) else rotations
            snap = replace(snap, rotations=list(items))
        if alerts is not None:
            snap = replace(snap, alerts=parse_alerts(alerts))
        if metrics is not None:
            snap = replace(snap, valid=parse_validity(metrics))
        return snap

    def carry(self, previous: Snapshot | None) -> Snapshot:
        """This snapshot with each source that did not answer taken from ``previous``."""
        if previous is None:
            return self
        return replace(self, **{name: getattr(previous, name) for name in
                                ("scaledjobs", "pools", "harm", "alerts", "rotations", "valid")
                                if getattr(self, name) is None})


def alert_name(labels: Mapping[str, str]) -> str:
    """``PatInvalid{token=keda}``: the alert with the label that says what it is about."""
    for key in ("token", "pool", "pipeline", "source"):
        if key in labels:
            return f"{labels.get('alertname', '?')}{{{key}={labels[key]}}}"
    return labels.get("alertname", "?")


def parse_alerts(doc: Mapping[str, Any]) -> dict[str, str]:
    """Prometheus ``/api/v1/alerts`` → alert name → ``firing`` (wins over ``pending``) or ``pending``."""
    out: dict[str, str] = {}
    for alert in (doc.get("data") or {}).get("alerts") or []:
        name = alert_name(alert.get("labels") or {})
        state = str(alert.get("state", ""))
        if state == "firing" or (state == "pending" and name not in out):
            out[name] = state
    return out


def parse_validity(text: str) -> dict[str, dict[str, float]]:
    """The exporter's ``patrol_pat_valid`` samples: token → sink → 1 (authenticates) or 0."""
    valid: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "patrol_pat_valid":
                valid.setdefault(sample.labels.get("token", "?"), {})[sample.labels.get("sink", "?")] = sample.value
    return valid


def short_sink(sink: str) -> str:
    """``kubernetes-secret/build-a/ns/name/key`` → ``build-a``; ``keyvault/host/name`` → ``keyvault``."""
    kind, _, rest = sink.partition("/")
    if kind == "kubernetes-secret":
        return rest.split("/", 1)[0]
    return kind or sink


def seconds(value: float) -> str:
    """A duration as a person reads it: ``0.04 s``, ``16.1 s``, ``2m05s``."""
    if value < 1:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    whole = round(value)
    return f"{whole // 60}m{whole % 60:02d}s"


def poll_error(message: str | None) -> str:
    """KEDA's scaler error, short: ``HTTP 401 from Azure DevOps`` when the status is in it."""
    if not message:
        return "no error text"
    found = re.search(r"status: (\d{3})", message)
    if found:
        return f"HTTP {found.group(1)} from Azure DevOps"
    return message if len(message) <= 80 else message[:77] + "..."


def _pool(snap: Snapshot, job: Mapping[str, Any]) -> str:
    pool_id = job.get("pool_id")
    name = (snap.pools or {}).get(int(pool_id)) if isinstance(pool_id, int) else None
    return name or str(job.get("name", "?"))


def _keda_events(prev: Snapshot, new: Snapshot) -> Iterable[Event]:
    if prev.scaledjobs is None or new.scaledjobs is None:
        return
    failed_polls = (new.harm or {}).get("keda_failed_polls")
    for key, job in sorted(new.scaledjobs.items()):
        before = prev.scaledjobs.get(key)
        if before is None:
            continue
        cluster, pool = job.get("cluster", key.split("/", 1)[0]), _pool(new, job)
        was_failing = before.get("ready") == "False"
        more_errors = int(job.get("poll_errors") or 0) > int(before.get("poll_errors") or 0)
        if not was_failing and (more_errors or job.get("ready") == "False"):
            counter = f"; harm.keda_failed_polls={failed_polls}" if failed_polls is not None else ""
            yield Event(new.at, "keda-failing",
                        f"KEDA on {cluster}: first failed poll for pool {pool} "
                        f"({poll_error(job.get('last_error'))}); ScaledJob Ready=False{counter}",
                        "bad", key)
        elif was_failing and job.get("ready") == "True":
            yield Event(new.at, "keda-ready",
                        f"agent pool {pool} recovered: KEDA on {cluster} Ready again, "
                        f"{job.get('agents_running', 0)} agent(s) running, queue {job.get('queue_length', '?')}",
                        "good", key)


def _validity_events(prev: Snapshot, new: Snapshot) -> Iterable[Event]:
    if prev.valid is None or new.valid is None:
        return
    for token, sinks in sorted(new.valid.items()):
        before = prev.valid.get(token, {})
        broke = sorted(short_sink(s) for s, v in sinks.items() if v < 1 and before.get(s, 1.0) >= 1)
        healed = sorted(short_sink(s) for s, v in sinks.items() if v >= 1 and before.get(s, 1.0) < 1)
        if broke:
            yield Event(new.at, "token-invalid",
                        f"exporter: token {token} no longer authenticates at {', '.join(broke)}", "bad", token)
        if healed:
            yield Event(new.at, "token-valid",
                        f"exporter: token {token} authenticates again at {', '.join(healed)}", "good", token)


def _alert_events(prev: Snapshot, new: Snapshot) -> Iterable[Event]:
    if prev.alerts is None or new.alerts is None:
        return
    for name in sorted(new.alerts):
        if new.alerts[name] == "firing" and prev.alerts.get(name) != "firing":
            yield Event(new.at, "alert-firing", f"alert {name} firing", "warn", name)
    for name in sorted(prev.alerts):
        if prev.alerts[name] == "firing" and new.alerts.get(name) != "firing":
            yield Event(new.at, "alert-resolved", f"alert {name} resolved", "good", name)


def _detail(text: str) -> str:
    first = text.split(";", 1)[0].strip()
    return first if len(first) <= 70 else first[:67] + "..."


def _rotation_events(prev: Snapshot, new: Snapshot) -> Iterable[Event]:
    if new.rotations is None:
        return
    before = {str(r.get("id")): r for r in prev.rotations or []}
    for rot in new.rotations:
        rid, token = str(rot.get("id", "?")), rot.get("token", "?")
        old = before.get(rid)
        if old is None:
            yield Event(float(rot.get("created_at") or new.at), "rotation-started",
                        f"rotation {rid} of {token} started ({rot.get('reason') or rot.get('trigger') or '?'})",
                        "info", rid)
        old_steps = {str(s.get("name")): str(s.get("status")) for s in (old or {}).get("steps") or []}
        for step in rot.get("steps") or []:
            name, status = str(step.get("name", "?")), str(step.get("status", ""))
            was = old_steps.get(name, "pending")
            started = step.get("started_at")
            if status == "running" and was == "pending":
                yield Event(float(started or new.at), "step-started", f"  {rid} {name} ...", "step", rid)
            elif status in FINISHED_STEP and was not in FINISHED_STEP:
                finished = float(step.get("finished_at") or new.at)
                took = f" in {seconds(finished - float(started))}" if started else ""
                detail = _detail(str(step.get("detail") or ""))
                yield Event(finished, "step-finished", f"  {rid} {name} {status}{took}"
                            + (f": {detail}" if detail else ""), "bad" if status == "failed" else "step", rid)
        outcome = rot.get("outcome")
        if outcome and (old is None or not old.get("outcome")):
            finished = float(rot.get("finished_at") or new.at)
            took = seconds(finished - float(rot.get("created_at") or finished))
            error = f": {rot['error']}" if rot.get("error") else ""
            yield Event(finished, "rotation-finished", f"rotation {rid} of {token} {outcome} in {took}{error}",
                        "good" if outcome == "succeeded" else "bad", rid)


def _harm_events(prev: Snapshot, new: Snapshot) -> Iterable[Event]:
    if prev.harm is None or new.harm is None:
        return
    for name, value in sorted(new.harm.items()):
        grew = value - prev.harm.get(name, 0)
        if grew > 0 and name not in QUIET_HARM:
            yield Event(new.at, "harm", f"harm: {name} +{grew} (now {value})", "warn", name)


def detect(prev: Snapshot | None, new: Snapshot) -> list[Event]:
    """The events between two looks at the world, in the order they happened."""
    base = prev if prev is not None else Snapshot(at=new.at)
    events = [*_keda_events(base, new), *_validity_events(base, new), *_alert_events(base, new),
              *_rotation_events(base, new), *_harm_events(base, new)]
    return sorted(events, key=lambda e: e.at)


@dataclass
class Story:
    """What the summary needs, accumulated as events arrive (still pure: fed, never fetching)."""

    started_at: float
    incident_at: float | None = None
    incident_token: str = "keda"
    events: list[Event] = field(default_factory=list)
    last: Snapshot | None = None

    def add(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.kind == "incident":
                self.incident_at = event.at
            self.events.append(event)

    def recovery(self) -> tuple[float, Mapping[str, Any]] | None:
        """(seconds, rotation): the first rotation of the incident's token, created after the
        incident, that succeeded — measured from the incident to that rotation finishing."""
        if self.incident_at is None or self.last is None:
            return None
        for rot in sorted(self.last.rotations or [], key=lambda r: float(r.get("created_at") or 0)):
            if (rot.get("token") == self.incident_token and rot.get("outcome") == "succeeded"
                    and float(rot.get("created_at") or 0) >= self.incident_at and rot.get("finished_at")):
                return float(rot["finished_at"]) - self.incident_at, rot
        return None

    def summary(self, logs: str, now: float) -> list[str]:
        """The closing lines: time to recovery, alerts, rotations, harm, logs."""
        lines = ["summary"]
        lines.append("  " + self._recovery_line(now))
        lines.extend("  " + line for line in self._alert_lines())
        lines.extend("  " + line for line in self._rotation_lines())
        harm = self.last.harm if self.last else None
        told = "unknown (the sandbox did not answer)" if harm is None else \
            ", ".join(f"{k}={v}" for k, v in sorted(harm.items())) or "none"
        lines.append(f"  sandbox harm: {told}")
        lines.append(f"  logs: {logs} (sandbox.log, exporter.log, worker.log, monitoring/*.log)")
        return lines

    def _recovery_line(self, now: float) -> str:
        if self.incident_at is None:
            return "time to recovery: no incident was played (stopped before it)"
        found = self.recovery()
        if found is None:
            return (f"time to recovery: not recovered {seconds(now - self.incident_at)} after the incident "
                    f"(see worker.log)")
        took, rot = found
        ready = [e.at for e in self.events if e.kind == "keda-ready" and e.at >= self.incident_at]
        pools = f"; KEDA Ready again after {ready[-1] - self.incident_at:.0f} s" if ready else ""
        return (f"time to recovery: {took:.0f} s (incident at +{self.incident_at - self.started_at:.0f}s, "
                f"rotation {rot.get('id')} finished at +{float(rot['finished_at']) - self.started_at:.0f}s{pools})")

    def _alert_lines(self) -> list[str]:
        fired: dict[str, list[str]] = {}
        for event in self.events:
            if event.kind in ("alert-firing", "alert-resolved"):
                word = "fired" if event.kind == "alert-firing" else "resolved"
                fired.setdefault(event.subject, []).append(f"{word} +{event.at - self.started_at:.0f}s")
        if not fired:
            return ["alerts: none fired"]
        return ["alerts:"] + [f"  {name}: {', '.join(when)}" for name, when in sorted(fired.items())]

    def _rotation_lines(self) -> list[str]:
        rotations = list((self.last.rotations if self.last else None) or [])
        if not rotations:
            return ["rotations: none"]
        out = ["rotations:"]
        for rot in sorted(rotations, key=lambda r: float(r.get("created_at") or 0)):
            outcome = rot.get("outcome") or f"still running ({rot.get('state') or '?'})"
            took = ""
            if rot.get("finished_at") and rot.get("created_at"):
                took = f" in {seconds(float(rot['finished_at']) - float(rot['created_at']))}"
            error = f": {rot['error']}" if rot.get("error") else ""
            out.append(f"  {rot.get('id')} of {rot.get('token')} ({rot.get('reason') or rot.get('trigger') or '?'}): "
                       f"{outcome}{took}{error}")
            steps = [f"{s.get('name')} {seconds(float(s['finished_at']) - float(s['started_at']))}"
                     for s in rot.get("steps") or [] if s.get("started_at") and s.get("finished_at")]
            if steps:
                out.append("    steps: " + ", ".join(steps))
        return out
