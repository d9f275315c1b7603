"""Level-triggered recovery: make the world and the journal agree, at start and periodically.

The journal says what patrol meant to do; ADO, the sinks and the clusters say what is true.
A crash can leave a rotation half done, or a PAT created that no sink holds. Recovery re-reads
the world and:

- hands every unfinished rotation back to the saga, which resumes it idempotently (a token
  that reached some sinks is read back from one of them; one that reached none is revoked and
  created again);
- revokes PATs patrol created (display name ``patrol-<token>-<rotation id>``) that no sink
  holds, once no unfinished rotation can still claim them — except the previous PAT of a
  rotation that failed before its new PAT was proven, which may still be what KEDA uses, and
  the previous PAT of an unfinished rotation (it is draining: builds still hold it);
- warns where the journal and the world disagree (e.g. a sink changed outside patrol);
- starts a rotation of its own (trigger ``schedule``) when a sink's PAT is due for renewal
  (expiry - ``renew_before``), so rotation does not depend on Alertmanager alone.

It acts only while this worker may rotate (Lease holder), and skips tokens being rotated now.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from core import config
from core.errors import PatrolError
from core.retry import Backoff, call_with_retry
from remediation.journal import Journal, RotationRecord
from remediation.planner import Planner, RotationRequest
from remediation.saga import patrol_pat_pattern
from remediation.world import World

log = logging.getLogger("patrol.recovery")

RECOVERY_BACKOFF = Backoff(delays=(0.5, 1.0, 2.0))
DEFAULT_ORPHAN_GRACE = 600.0


@dataclass
class RecoveryReport:
    resumed: list[str] = field(default_factory=list)           # rotation ids handed to the saga
    revoked: list[str] = field(default_factory=list)           # authorizationIds of orphans
    kept: list[str] = field(default_factory=list)              # orphans deliberately left alone
    scheduled: list[str] = field(default_factory=list)         # rotation ids started as due
    warnings: list[str] = field(default_factory=list)


class Recovery:
    def __init__(
        self,
        cfg: config.Config,
        world: World,
        journal: Journal,
        planner: Planner,
        *,
        submit: Callable[[RotationRequest], bool],
        may_act: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        orphan_grace: float = DEFAULT_ORPHAN_GRACE,
    ) -> None:
        self.config = cfg
        self.world = world
        self.journal = journal
        self.planner = planner
        self._submit = submit
        self._may_act = may_act
        self._clock = clock
        self._sleep = sleep
        self.orphan_grace = orphan_grace

    def reconcile(self) -> RecoveryReport:
        report = RecoveryReport()
        if not self._may_act():
            return report
        self._resume_unfinished(report)
        for token in self.config.tokens:
            if not self._may_act():
                break
            if self.planner.locks.held(token.name):
                continue
            try:
                self._sweep(token, report)
            except PatrolError as exc:
                report.warnings.append(f"{token.name}: recovery could not read the world: {exc}")
        for warning in report.warnings:
            log.warning("recovery: %s", warning)
        if report.resumed or report.revoked:
            log.info("recovery resumed %d rotation(s), revoked %d orphan PAT(s)", len(report.resumed),
                     len(report.revoked), extra={"resumed": ",".join(report.resumed),
                                                 "revoked": ",".join(report.revoked)})
        return report

    # -- unfinished rotations ---------------------------------------------------------------------

    def _resume_unfinished(self, report: RecoveryReport) -> None:
        configured = {t.name for t in self.config.tokens}
        for record in self.journal.unfinished():
            if record.token not in configured:
                self.journal.finish(record.id, "failed", "token is no longer configured")
                report.warnings.append(f"rotation {record.id}: token {record.token} is no longer configured")
                continue
            request = self.planner.resume(record)
            if request is None:
                continue                                    # running in this process right now
            if self._submit(request):
                report.resumed.append(record.id)
                log.info("resuming rotation %s of %s", record.id, record.token,
                         extra={"token": record.token, "rotation_id": record.id})
            else:
                self.planner.locks.release(record.token)

    # -- orphan PATs ------------------------------------------------------------------------------

    def _sweep(self, token: config.Token, report: RecoveryReport) -> None:
        pats = self.world.pats(token.organization)
        pattern = patrol_pat_pattern(token.name)
        listed = call_with_retry(partial(pats.list, "active", name_prefix=f"patrol-{token.name}-"),
                                 RECOVERY_BACKOFF, what=f"list PATs of {token.name}", sleep=self._sleep)
        ours = [p for p in listed if pattern.match(p.display_name)]
        held: set[str] = set()
        expiries: list[float] = []
        for spec in token.sinks:
            sink = self.world.sink(spec)
            state, _ = call_with_retry(sink.read, RECOVERY_BACKOFF, what=f"read {sink.id}", sleep=self._sleep)
            if state.authorization_id:
                held.add(state.authorization_id)
            if state.expires_at is not None:
                expiries.append(state.expires_at.timestamp())
        latest = self.journal.recent(token.name, limit=1)
        protected = self._protected(latest[0] if latest else None)
        # A rotation still running (perhaps draining, perhaps in another process sharing the
        # state dir) keeps its previous PAT valid on purpose: that one is not an orphan.
        draining = {x for r in self.journal.unfinished() if r.token == token.name
                    for x in (r.old_authorization_id or "").split(",") if x}
        self._check_journal(token, held, report)
        for pat in ours:
            if pat.authorization_id in held:
                continue
            match = pattern.match(pat.display_name)
            rotation_id = match.group("rotation") if match else ""
            record = self.journal.find(rotation_id)
            if record is not None and record.outcome is None:
                continue                                    # its rotation resumes and handles it
            if pat.authorization_id in draining:
                report.kept.append(pat.authorization_id)
                continue
            if pat.authorization_id in protected:
                report.kept.append(pat.authorization_id)
                report.warnings.append(
                    f"{token.name}: kept PAT {pat.authorization_id} ({pat.display_name}), in no sink: it was "
                    f"the previous PAT of rotation {latest[0].id}, which failed before the new one was "
                    "proven; rotate again, or revoke it by hand once consumers are healthy")
                continue
            age = self._clock() - pat.valid_from.timestamp()
            if record is None and age < self.orphan_grace:
                report.kept.append(pat.authorization_id)
                report.warnings.append(
                    f"{token.name}: PAT {pat.authorization_id} ({pat.display_name}) is in no sink and "
                    f"unknown to this journal; it is {age:.0f}s old, revoking it after "
                    f"{self.orphan_grace:.0f}s")
                continue
            if not self._may_act():
                return
            call_with_retry(partial(pats.revoke, pat.authorization_id), RECOVERY_BACKOFF,
                            what=f"revoke orphan PAT {pat.authorization_id}", sleep=self._sleep)
            report.revoked.append(pat.authorization_id)
            self.journal.record_decision(token=token.name, alertname="", fingerprint="", action="revoke",
                                         reason=f"recovery revoked orphan PAT {pat.authorization_id} "
                                                f"({pat.display_name}): in no sink",
                                         rotation_id=record.id if record else None)
            log.info("revoked orphan PAT %s (%s): in no sink", pat.authorization_id, pat.display_name,
                     extra={"token": token.name, "authorization_id": pat.authorization_id})
        if expiries:
            self._schedule_if_due(token, min(expiries), report)

    def _schedule_if_due(self, token: config.Token, expires: float, report: RecoveryReport) -> None:
        due = expires - token.renew_before.total_seconds()
        if self._clock() < due or not self._may_act():
            return
        when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        decision, request = self.planner.request(token.name, trigger="schedule",
                                                 reason=f"renewal due: a sink's PAT expires {when}")
        if request is None:
            log.info("renewal of %s due, not started: %s", token.name, decision.reason,
                     extra={"token": token.name})
            return
        if self._submit(request):
            report.scheduled.append(request.rotation_id)
        else:
            self.planner.abandon(request, "worker stopping")

    @staticmethod
    def _protected(latest: RotationRecord | None) -> set[str]:
        """Previous PATs of the latest rotation, if it failed before proving the new one."""
        if latest is None or latest.outcome != "failed" or not latest.old_authorization_id:
            return set()
        if latest.step("verify").status == "done":
            return set()
        return {x for x in latest.old_authorization_id.split(",") if x}

    def _check_journal(self, token: config.Token, held: set[str], report: RecoveryReport) -> None:
        for record in self.journal.recent(token.name, limit=20):
            if record.outcome == "succeeded" and record.new_authorization_id:
                if record.new_authorization_id not in held:
                    report.warnings.append(
                        f"{token.name}: the journal's last successful rotation {record.id} delivered "
                        f"{record.new_authorization_id}, but the sinks hold "
                        f"{', '.join(sorted(held)) or 'no known PAT'} (changed outside patrol?)")
                return
