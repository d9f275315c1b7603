"""Which alerts start a rotation, and which are dropped (and why).

Alertmanager delivers at least once and repeats firing groups (docs/external-apis.md,
"Alertmanager webhooks"), and several alerts can point at one token at once (PatInvalid for
each sink, KedaScalerAuthFailing for each consumer). The planner turns that stream into at
most one rotation per token at a time:

- only ``firing`` alerts with ``remediation="rotate"``, an alertname on the allow-list
  (``worker.rotate_alertnames``, by default patrol's own rotation alerts) and a configured
  ``token`` label count. The label alone is not trusted: kube-prometheus-stack's
  ``InfoInhibitor`` copies every label of an info alert such as PatRenewalDue, and any rule in
  the cluster can set it, so a rotation (which revokes a PAT) needs one of our alert names too;
- an alert episode (fingerprint + startsAt) that already started a rotation is a duplicate,
  remembered in the journal so a restart does not forget it; the hot path for duplicates is an
  in-memory set, so a storm of re-deliveries costs no database write;
- a token whose rotation is running, or that succeeded less than ``cooldown`` ago, is skipped;
- a *compromised* request (``compromised="true"`` label, ``patrol rotate --compromised``) ignores
  the cool-down, and if the token's rotation is running it marks that rotation compromised in
  the journal, so its drain ends at the next round and the old PAT is revoked at once.

Every drop is recorded with its reason (the journal, once per distinct drop; a log line).
Taking a token's lock is in-process (:class:`TokenLocks`); across replicas only the Lease
holder plans at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from core.config import DEFAULT_ROTATE_ALERTNAMES
from remediation.alerts import Alert, Notification
from remediation.journal import Journal, RotationRecord

log = logging.getLogger("patrol.planner")

Trigger = Literal["alert", "manual", "schedule", "recovery"]
_TRIGGERS = ("alert", "manual", "schedule", "recovery")
Action = Literal["start", "drop"]
REMEDIATION_LABEL = "remediation"
REMEDIATION_VALUE = "rotate"
TOKEN_LABEL = "token"
DEDUPE_RETENTION = timedelta(days=30)
# The journal row (step plan) that marks a rotation compromised; the saga re-reads it each drain round.
COMPROMISED_TARGET = "compromised"
COMPROMISED_DETAIL = "compromised: the previous PAT is revoked as soon as delivery is verified (no drain)"
_RECORDED_DROPS_MAX = 10_000


def new_rotation_id() -> str:
    """12 lowercase hex characters: short enough for a PAT display name, no hyphen in it."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class RotationRequest:
    token: str
    trigger: Trigger
    reason: str
    rotation_id: str
    received_at: float
    dedupe_keys: tuple[str, ...] = ()
    compromised: bool = False


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str                       # "accepted", "duplicate", "resolved", "cooldown", ...
    token: str | None = None
    alertname: str = ""
    fingerprint: str = ""
    rotation_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"action": self.action, "reason": self.reason, "token": self.token,
                "alertname": self.alertname, "fingerprint": self.fingerprint,
                "rotation_id": self.rotation_id}


@dataclass
class Plan:
    """What one delivery led to: decisions for every alert, and the rotations to start."""

    decisions: list[Decision] = field(default_factory=list)
    requests: list[RotationRequest] = field(default_factory=list)


class TokenLocks:
    """One rotation per token at a time: in this process, and (with ``lock_dir``) across the
    processes sharing a state dir, e.g. ``patrol rotate`` run beside the worker, through an
    advisory ``flock`` per token that the kernel drops if the process dies."""

    def __init__(self, lock_dir: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._files: dict[str, int] = {}
        self._dir = Path(lock_dir) if lock_dir is not None else None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)

    def try_acquire(self, token: str) -> bool:
        with self._lock:
            if token in self._held:
                return False
            if self._dir is not None:
                fd = os.open(self._dir / f"{token}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return False
                self._files[token] = fd
            self._held.add(token)
            return True

    def release(self, token: str) -> None:
        with self._lock:
            self._held.discard(token)
            fd = self._files.pop(token, None)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def held(self, token: str) -> bool:
        with self._lock:
            return token in self._held

    def running(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)


class Planner:
    def __init__(
        self,
        tokens: Iterable[str],
        journal: Journal,
        *,
        cooldown: timedelta,
        locks: TokenLocks | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_rotation_id,
        rotate_alertnames: Iterable[str] = DEFAULT_ROTATE_ALERTNAMES,
    ) -> None:
        self.tokens = frozenset(tokens)
        self.rotate_alertnames = frozenset(rotate_alertnames)
        self.journal = journal
        self.cooldown = cooldown.total_seconds()
        self.locks = locks or TokenLocks()
        self._clock = clock
        self._new_id = new_id
        self._mutex = threading.Lock()
        self._seen = journal.seen_keys(since=clock() - DEDUPE_RETENTION.total_seconds())
        self._recorded_drops: OrderedDict[tuple[str, str], None] = OrderedDict()

    # -- alerts --------------------------------------------------------------------------------

    def plan(self, notification: Notification) -> Plan:
        """Decide for every alert; for each token to rotate, take its lock and journal it.

        The caller must start (or :meth:`abandon`) every returned request.
        """
        plan = Plan()
        with self._mutex:
            by_token: dict[str, list[Alert]] = {}
            for alert in notification.alerts:
                decision = self._screen(alert)
                if decision is None:
                    by_token.setdefault(alert.labels[TOKEN_LABEL], []).append(alert)
                else:
                    plan.decisions.append(decision)
            try:
                for token, alerts in by_token.items():
                    self._plan_token(token, alerts, plan)
            except BaseException:
                # Nothing is half-admitted: the delivery fails as a whole and is retried.
                for request in plan.requests:
                    self._seen.difference_update(request.dedupe_keys)
                    self.locks.release(request.token)
                    with contextlib.suppress(Exception):
                        self.journal.finish(request.rotation_id, "skipped", "delivery failed; retried")
                        self.journal.forget(request.dedupe_keys)
                raise
        return plan

    def _screen(self, alert: Alert) -> Decision | None:
        """Drop what never concerns a rotation; ``None`` means the alert names a token to rotate."""
        token = alert.labels.get(TOKEN_LABEL)
        if alert.labels.get(REMEDIATION_LABEL) != REMEDIATION_VALUE:
            return self._drop(alert, "not-remediable", token)
        if alert.name not in self.rotate_alertnames:
            return self._drop(alert, "alertname-not-allowed", token)
        if not token:
            return self._drop(alert, "no-token-label", None)
        if token not in self.tokens:
            return self._drop(alert, "unknown-token", token)
        if alert.status != "firing":
            return self._drop(alert, "resolved", token)
        if self._is_duplicate(alert.dedupe_key):
            return Decision("drop", "duplicate", token, alert.name, alert.fingerprint)
        return None

    def _plan_token(self, token: str, alerts: list[Alert], plan: Plan) -> None:
        first = alerts[0]
        compromised = any(a.compromised for a in alerts)
        why = self._blocked(token, ignore_cooldown=compromised)
        if why is not None:
            if compromised and why == "already-running" and self._mark_compromised(token):
                why = "marked-compromised"
                self._seen.update(a.dedupe_key for a in alerts)
                self.journal.remember([a.dedupe_key for a in alerts], token)
            for alert in alerts:
                plan.decisions.append(self._drop(alert, why, token))
            return
        rotation_id = self._new_id()
        names = sorted({a.name for a in alerts})
        request = RotationRequest(
            token=token, trigger="alert",
            reason=f"alert {', '.join(names)}" + ("; compromised" if compromised else ""),
            rotation_id=rotation_id, received_at=self._clock(),
            dedupe_keys=tuple(a.dedupe_key for a in alerts), compromised=compromised,
        )
        if not self._admit(request):
            why = "already-running"
            if compromised and self._mark_compromised(token):
                why = "marked-compromised"
            for alert in alerts:
                plan.decisions.append(self._drop(alert, why, token))
            return
        self._seen.update(request.dedupe_keys)
        for alert in alerts:
            plan.decisions.append(Decision("start", "accepted", token, alert.name, alert.fingerprint,
                                           rotation_id))
        log.info("rotation %s of %s accepted (%s)", rotation_id, token, request.reason,
                 extra={"token": token, "rotation_id": rotation_id, "alertname": first.name})
        plan.requests.append(request)

    # -- manual / scheduled / recovery ----------------------------------------------------------

    def request(self, token: str, *, trigger: Trigger, reason: str, force: bool = False,
                rotation_id: str | None = None,
                compromised: bool = False) -> tuple[Decision, RotationRequest | None]:
        """Plan a rotation not driven by an alert; ``force`` ignores the cool-down (a human asked).

        ``compromised`` also ignores it; if the token's rotation is running, that rotation is
        marked compromised instead (Decision reason ``marked-compromised``, with its id).
        """
        with self._mutex:
            if token not in self.tokens:
                return Decision("drop", "unknown-token", token), None
            why = self._blocked(token, ignore_cooldown=force or compromised)
            request = None
            if why is None:
                request = RotationRequest(token=token, trigger=trigger, reason=reason,
                                          rotation_id=rotation_id or self._new_id(),
                                          received_at=self._clock(), compromised=compromised)
                if not self._admit(request):          # another process sharing the state dir runs it
                    why, request = "already-running", None
            if request is not None:
                return Decision("start", "accepted", token, rotation_id=request.rotation_id), request
            if why == "already-running" and compromised:
                marked = self._mark_compromised(token)
                if marked is not None:
                    log.info("rotation %s of %s marked compromised", marked, token,
                             extra={"token": token, "rotation_id": marked})
                    return Decision("drop", "marked-compromised", token, rotation_id=marked), None
            log.info("rotation of %s not started: %s", token, why, extra={"token": token})
            return Decision("drop", why or "already-running", token), None

    def resume(self, record: RotationRecord) -> RotationRequest | None:
        """Take the lock to continue an unfinished rotation; None if it is running already."""
        if not self.locks.try_acquire(record.token):
            return None
        trigger: Trigger = record.trigger if record.trigger in _TRIGGERS else "recovery"  # type: ignore[assignment]
        return RotationRequest(token=record.token, trigger=trigger, reason=record.reason,
                               rotation_id=record.id, received_at=record.received_at)

    def abandon(self, request: RotationRequest, why: str) -> None:
        """Undo an admitted request that could not be started (e.g. the worker is stopping)."""
        with self._mutex:
            self._seen.difference_update(request.dedupe_keys)
        self.journal.finish(request.rotation_id, "skipped", why)
        self.journal.forget(request.dedupe_keys)
        self.locks.release(request.token)

    # -- internals ------------------------------------------------------------------------------

    def _blocked(self, token: str, *, ignore_cooldown: bool = False) -> str | None:
        if self.locks.held(token):
            return "already-running"
        if not ignore_cooldown and self.cooldown > 0:
            last = self.journal.last_success(token)
            if last is not None and self._clock() - last < self.cooldown:
                return "cooldown"
        return None

    def _admit(self, request: RotationRequest) -> bool:
        """Take the token's lock and journal the rotation; False if another process holds it."""
        if not self.locks.try_acquire(request.token):
            return False
        try:
            self.journal.create_rotation(
                request.rotation_id, request.token, trigger=request.trigger, reason=request.reason,
                received_at=request.received_at, dedupe_keys=request.dedupe_keys)
            if request.compromised:
                self.journal.set_target(request.rotation_id, "plan", COMPROMISED_TARGET, "done",
                                        COMPROMISED_DETAIL)
        except BaseException:
            self.locks.release(request.token)
            raise
        return True

    def _mark_compromised(self, token: str) -> str | None:
        """Mark the token's unfinished rotation compromised (the journal is shared with the
        process running it); its id, or None if there is none to mark."""
        marked = None
        for record in self.journal.unfinished():
            if record.token == token:
                self.journal.set_target(record.id, "plan", COMPROMISED_TARGET, "done", COMPROMISED_DETAIL)
                marked = record.id
        return marked

    def _is_duplicate(self, key: str) -> bool:
        if key in self._seen:
            return True
        if self.journal.seen(key):            # written by another process sharing the state dir
            self._seen.add(key)
            return True
        return False

    def _drop(self, alert: Alert, reason: str, token: str | None) -> Decision:
        """Record a drop once per (alert episode, reason); repeats are only logged at debug."""
        alertname, fingerprint = alert.name, alert.fingerprint
        marker = (alert.dedupe_key, reason)
        if marker in self._recorded_drops:
            log.debug("alert %s dropped again: %s", alertname, reason)
        else:
            self._recorded_drops[marker] = None
            if len(self._recorded_drops) > _RECORDED_DROPS_MAX:
                self._recorded_drops.popitem(last=False)
            self.journal.record_decision(token=token, alertname=alertname, fingerprint=fingerprint,
                                         action="drop", reason=reason)
            log.info("alert %s dropped: %s", alertname, reason,
                     extra={"token": token or "", "alertname": alertname, "reason": reason})
        return Decision("drop", reason, token, alertname, fingerprint)
