"""The rotation saga (docs/rotation.md): plan → create → deliver → switch → verify → drain → revoke →
confirm → record.

A PAT cannot be regenerated in place, so a rotation is a sequence of side effects in several
systems, any of which can fail or be interrupted. The saga is built so that is safe, and so
that a planned rotation harms nothing that uses the token:

- **Every step is idempotent** and re-derives what it needs from the world, so a resumed
  rotation (after a crash, or on the new Lease holder) simply runs all steps again: *create*
  finds the PAT it created earlier and reads the token back from a sink that holds it (or, if
  no sink does, revokes it and creates another); *deliver* skips sinks that already hold it;
  *switch* sets an annotation to the rotation id; *drain* waits from the delivery time the
  journal holds, so a restart resumes the same drain; *revoke* treats "already revoked" as done.
- **Progress is journaled** (one commit per step, :mod:`remediation.journal`), never a token.
- **Nothing is created before the plan is safe**: every sink is checked first (a Flux-managed
  Secret is refused, a missing one too), so a refusal costs nothing.
- **No build is killed by the switch**: a consumer's switch mode (``refresh`` changes no spec;
  ``bump`` changes the pod template) is ``bump`` under ``auto`` only where KEDA's effective
  rollout strategy keeps running Jobs (``gradual``).
- **The old PAT stays valid until nothing needs it**: it is revoked only after the new token
  authenticated for its scopes and every sink holds it (and bumped consumers are healthy), then
  only once the drain is over — every agent Job started before delivery has ended, every sink
  reader's refresh interval has passed, every pipeline run started before delivery finished,
  bounded by the drain maximum and the old PAT's expiry — and only if every sink holds the new
  PAT at that moment. When the old PAT is already invalid, or the rotation is marked
  compromised, there is nothing to protect and the drain is skipped.
- **The revoke is confirmed**: afterwards every consumer must be served by the new token (KEDA
  Ready, no failure since the revoke for two polling intervals, queued jobs picked up), or the
  rotation ends ``failed`` for a human.
- **Retries are data** (:class:`core.retry.Backoff`), clock and sleep are injected, and the
  Lease is consulted before every step and every drain round (``may_continue``): a worker that
  lost it stops.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Literal, TypeVar

from core import config
from core.ado import PatInfo
from core.errors import (
    NotFoundError,
    PatrolError,
    PermanentError,
    PolicyViolationError,
    ScopeMismatchError,
    TransientError,
)
from core.keda import is_auth_failure
from core.kube import KEDA_JOB_NAME_LABEL, ROLLOUT_GRADUAL, KedaScaler, KubeEvent, ScalerResource
from core.retry import Backoff, call_with_retry
from core.secret import Secret
from remediation.journal import Journal, Outcome, RotationRecord
from remediation.metrics import WorkerMetrics
from remediation.planner import COMPROMISED_TARGET, RotationRequest
from remediation.sinks import FluxManagedError, SinkState
from remediation.world import OrganizationApi, World

log = logging.getLogger("patrol.saga")
T = TypeVar("T")

SCALER_ANNOTATION = "patrol.io/rotation"
KEDA_API_VERSION = "keda.sh/v1alpha1"
EVENT_REASON_ROTATED = "PatRotated"
EVENT_REASON_FAILED = "PatRotationFailed"
KEDA_FAILURE_REASON = "KEDAScalerFailed"
_PAT_NOT_FOUND = frozenset({"authorizationNotFound", "tokenNotFound"})
API_BACKOFF = Backoff(delays=(0.5, 1.0, 2.0, 4.0))
DELIVER_BACKOFF = Backoff(delays=(1.0, 2.0, 4.0, 8.0, 16.0))
# The journal row (step drain) that keeps the delivery time, so a resumed drain keeps its start.
DELIVERED_TARGET = "delivered-at"
SwitchResolved = Literal["refresh", "bump"]


def switch_mode(consumer: config.KedaConsumer, scaler: KedaScaler) -> SwitchResolved:
    """The switch this consumer gets: its configured mode, with ``auto`` resolved.

    ``auto`` bumps only a ScaledJob whose effective rollout strategy is ``gradual``: a spec
    change then rebuilds KEDA's scaler at once and KEDA keeps the running Jobs. Under any other
    strategy KEDA deletes the previous generation's running Jobs (``deletePreviousVersionScaleJobs``,
    controllers/keda/scaledjob_controller.go, v2.20.0), so ``auto`` refreshes instead: no spec
    change, and KEDA re-reads the Secret when its first poll after the revoke fails
    (pkg/scaling/cache/scalers_cache.go: rebuild the scaler, retry once in the same poll).
    ScaledObjects have no Jobs and no spec patrol may change: always ``refresh``.
    """
    if consumer.kind != "keda-scaledjob":
        return "refresh"
    if consumer.switch == "auto":
        return "bump" if scaler.rollout_strategy == ROLLOUT_GRADUAL else "refresh"
    return consumer.switch


def rollout_warning(consumer: config.KedaConsumer, scaler: KedaScaler) -> str | None:
    """Why switching this consumer would abandon builds in flight, or None if it would not.

    Only an explicit ``switch: bump`` on a ScaledJob whose effective rollout strategy (the
    deprecated ``spec.rolloutStrategy`` when set, else ``spec.rollout.strategy``) is not
    ``gradual`` does that: KEDA deletes every running Job of the previous generation, so the
    agents running builds die mid-build. patrol still does what it was told; it says so first.
    """
    if switch_mode(consumer, scaler) != "bump" or scaler.rollout_strategy == ROLLOUT_GRADUAL:
        return None
    return (f"ScaledJob {consumer.cluster}/{consumer.namespace}/{consumer.name} uses rollout strategy "
            f"'{scaler.rollout_strategy}': the switch step (switch: bump) makes KEDA delete its running "
            "agent Jobs (builds in flight are abandoned); set spec.rollout.strategy: gradual on it, or "
            "use switch: auto")


def _where(consumer: config.KedaConsumer) -> str:
    return f"{consumer.cluster}/{consumer.namespace}/{consumer.name}"


def display_name(token: str, rotation_id: str) -> str:
    return f"patrol-{token}-{rotation_id}"


def patrol_pat_pattern(token: str) -> re.Pattern[str]:
    """Display names of PATs patrol created for ``token`` (rotation ids are 12 hex digits)."""
    return re.compile(rf"^patrol-{re.escape(token)}-(?P<rotation>[0-9a-f]{{12}})$")


class SagaStopped(Exception):
    """The worker may not continue (lost the Lease, shutting down); recovery will resume."""


class VerificationError(PermanentError):
    """The new PAT was not proven within the deadline; the old one was left valid."""


class DeliveryError(PermanentError):
    """At least one sink could not be written after its retries."""


class ConfirmationError(PermanentError):
    """After the revoke, a consumer was not shown to be served by the new PAT in time."""


@dataclass(frozen=True)
class SagaSettings:
    verify_deadline: float = 300.0                # seconds for the whole verify step
    verify_interval: float = 5.0                  # between verification rounds
    verify_settle: float = 30.0                   # conditions must hold this long after the switch
    api_backoff: Backoff = API_BACKOFF
    deliver_backoff: Backoff = DELIVER_BACKOFF
    create_attempts: int = 3
    validto_tolerance: float = 3600.0             # a validTo this much shorter counts as clamped
    drain_interval: float = 10.0                  # between drain rounds
    # A pod that starts just after delivery may still get the old value: the kubelet's and
    # controller-runtime's Secret caches lag the API by a few seconds.
    secret_settle: float = 5.0
    # An agent Job with no activeDeadlineSeconds is bounded by its build's job timeout
    # (ADO's default: 60 minutes).
    unbounded_job_drain: float = config.DEFAULT_PIPELINE_TIMEOUT.total_seconds()
    confirm_polls: int = 2                        # KEDA polling intervals to watch after the revoke

    @classmethod
    def from_config(cls, worker: config.WorkerSettings) -> SagaSettings:
        deadline = worker.verify_deadline.total_seconds()
        # KEDA polls every 30 s by default: hold the conditions for one poll, within the deadline.
        settle = min(30.0, deadline / 4)
        # The drain's rounds are cheap list calls; one every few seconds ends it soon after the
        # last holder is done, without hammering the APIs during an hour-long drain.
        return cls(verify_deadline=deadline, verify_settle=settle,
                   verify_interval=max(0.5, min(5.0, settle / 3)),
                   drain_interval=max(0.5, min(10.0, settle / 3)))


@dataclass(frozen=True)
class StepEvent:
    """Progress for a human (``patrol rotate``): one per step start/finish."""

    rotation_id: str
    token: str
    step: str
    status: str                                   # running | done | failed | skipped
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class SinkPreview:
    sink_id: str
    state: SinkState | None
    refusal: str | None                           # why it cannot be written (Flux, missing, error)


@dataclass(frozen=True)
class ConsumerPreview:
    consumer: config.KedaConsumer
    generation: int | None
    ready: bool | None
    problem: str | None
    rollout_strategy: str | None = None           # ScaledJobs: what KEDA does to running Jobs on a switch
    switch: str | None = None                     # the resolved switch mode: refresh | bump


@dataclass(frozen=True)
class RotationPreview:
    """What ``patrol rotate --dry-run`` shows: the plan, read from the world, changing nothing."""

    token: config.Token
    display_name: str
    valid_to: datetime
    sinks: tuple[SinkPreview, ...]
    consumers: tuple[ConsumerPreview, ...]
    would_revoke: tuple[str, ...]
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = ()                # the rotation would proceed, but read these first


@dataclass
class _Run:
    """What one run knows; rebuilt from the journal and the world on every (re)start."""

    token: config.Token
    record: RotationRecord
    old_ids: set[str] = field(default_factory=set)
    new: PatInfo | None = None
    value: Secret | None = None
    switched_at: float | None = None
    notes: list[str] = field(default_factory=list)
    modes: dict[str, SwitchResolved] = field(default_factory=dict)     # consumer → resolved switch
    scalers: dict[str, KedaScaler] = field(default_factory=dict)       # consumer → as read at switch
    delivered_at: float | None = None
    revoked_at: float | None = None
    failure_baseline: dict[str, dict[str, int]] = field(default_factory=dict)   # consumer → uid → count

    @property
    def rotation_id(self) -> str:
        return self.record.id


class RotationSaga:
    def __init__(
        self,
        cfg: config.Config,
        world: World,
        journal: Journal,
        *,
        settings: SagaSettings | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        may_continue: Callable[[], bool] = lambda: True,
        on_step: Callable[[StepEvent], None] | None = None,
        after_step: Callable[[str, str], None] | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.config = cfg
        self.world = world
        self.journal = journal
        self.settings = settings or SagaSettings.from_config(cfg.worker)
        self._clock = clock
        self._sleep = sleep
        self._may_continue = may_continue
        self._on_step = on_step
        self._after_step = after_step          # (rotation_id, step): tests inject crashes here
        self._metrics = metrics

    # -- public -----------------------------------------------------------------------------------

    def run(self, request: RotationRequest) -> Outcome | None:
        """Run (or resume) the rotation journaled as ``request.rotation_id``.

        Returns the outcome, or None if it stopped because the worker may not continue
        (the rotation stays unfinished in the journal and recovery resumes it).
        """
        record = self.journal.get(request.rotation_id)
        if record.outcome is not None:
            return record.outcome
        token = self.config.token(record.token)
        run = _Run(token=token, record=record)
        if record.old_authorization_id:
            run.old_ids.update(x for x in record.old_authorization_id.split(",") if x)
        steps: list[tuple[str, Callable[[_Run], str]]] = [
            ("plan", self._plan), ("create", self._create), ("deliver", self._deliver),
            ("switch", self._switch), ("verify", self._verify), ("drain", self._drain),
            ("revoke", self._revoke), ("confirm", self._confirm), ("record", self._record),
        ]
        log.info("rotation %s of %s %s (%s)", record.id, token.name,
                 "resumed" if record.step("plan").attempts else "started", record.reason,
                 extra=self._extra(run, "start"))
        current = "plan"
        try:
            for name, fn in steps:
                current = name
                if not self._may_continue():
                    raise SagaStopped(f"stopped before {name}: this worker may not continue")
                self._step(run, name, fn)
        except SagaStopped as stop:
            log.warning("rotation %s of %s paused: %s", record.id, token.name, stop,
                        extra=self._extra(run, current))
            return None
        except PatrolError as exc:
            self._fail(run, current, exc)
            return "failed"
        self.journal.finish(record.id, "succeeded")
        log.info("rotation %s of %s succeeded", record.id, token.name, extra=self._extra(run, "finish"))
        return "succeeded"

    def preview(self, token_name: str) -> RotationPreview:
        """The dry run: read sinks, consumers and PATs; create, write and revoke nothing."""
        token = self.config.token(token_name)
        problems: list[str] = []
        sinks: list[SinkPreview] = []
        current_ids: set[str] = set()
        for spec in token.sinks:
            sink = self.world.sink(spec)
            try:
                state = sink.check()
                sinks.append(SinkPreview(sink.id, state, None))
                if state.authorization_id:
                    current_ids.add(state.authorization_id)
            except PatrolError as exc:
                sinks.append(SinkPreview(sink.id, None, str(exc)))
                problems.append(f"{sink.id}: {exc}")
        consumers: list[ConsumerPreview] = []
        warnings: list[str] = []
        for consumer in token.consumers:
            try:
                scaler = self.world.cluster(consumer.cluster).get_scaler(
                    consumer.namespace, _resource(consumer), consumer.name)
                strategy = scaler.rollout_strategy if consumer.kind == "keda-scaledjob" else None
                consumers.append(ConsumerPreview(consumer, scaler.generation, scaler.ready, None, strategy,
                                                 switch_mode(consumer, scaler)))
                warning = rollout_warning(consumer, scaler)
                if warning is not None:
                    warnings.append(warning)
            except PatrolError as exc:
                consumers.append(ConsumerPreview(consumer, None, None, str(exc)))
                where = f"{consumer.cluster}/{consumer.namespace}/{consumer.name}"
                problems.append(f"{consumer.kind} {where}: {exc}")
        would_revoke = set(current_ids)
        try:
            would_revoke.update(p.authorization_id for p in self._patrol_pats(token))
        except PatrolError as exc:
            problems.append(f"PAT Lifecycle API: {exc}")
        valid_to = datetime.fromtimestamp(self._clock(), UTC) + token.lifetime
        return RotationPreview(token=token, display_name=display_name(token.name, "<rotation id>"),
                               valid_to=valid_to, sinks=tuple(sinks), consumers=tuple(consumers),
                               would_revoke=tuple(sorted(would_revoke)), problems=tuple(problems),
                               warnings=tuple(warnings))

    # -- step plumbing ----------------------------------------------------------------------------

    def _extra(self, run: _Run, step: str, **more: object) -> dict[str, object]:
        return {"token": run.token.name, "rotation_id": run.rotation_id, "step": step, **more}

    def _step(self, run: _Run, name: str, fn: Callable[[_Run], str]) -> None:
        self.journal.start_step(run.rotation_id, name)
        self._emit(StepEvent(run.rotation_id, run.token.name, name, "running"))
        started = time.monotonic()
        try:
            detail = fn(run)
        except PatrolError as exc:
            seconds = time.monotonic() - started
            self.journal.finish_step(run.rotation_id, name, "failed", str(exc))
            log.error("rotation step %s failed: %s", name, exc,
                      extra=self._extra(run, name, status="failed", seconds=round(seconds, 3)))
            self._emit(StepEvent(run.rotation_id, run.token.name, name, "failed", str(exc), seconds))
            raise
        seconds = time.monotonic() - started
        self.journal.finish_step(run.rotation_id, name, "done", detail)
        log.info("rotation step %s done: %s", name, detail,
                 extra=self._extra(run, name, status="done", seconds=round(seconds, 3)))
        self._emit(StepEvent(run.rotation_id, run.token.name, name, "done", detail, seconds))
        if self._after_step is not None:
            self._after_step(run.rotation_id, name)

    def _emit(self, event: StepEvent) -> None:
        if self._on_step is not None:
            self._on_step(event)

    def _retry(self, fn: Callable[[], T], what: str, backoff: Backoff | None = None) -> T:
        return call_with_retry(fn, backoff or self.settings.api_backoff, what=what, sleep=self._sleep,
                               logger=log)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _patrol_pats(self, token: config.Token) -> list[PatInfo]:
        pattern = patrol_pat_pattern(token.name)
        pats = self.world.pats(token.organization)
        listed = self._retry(lambda: pats.list("active", name_prefix=f"patrol-{token.name}-"),
                             f"list PATs of {token.name}")
        return [p for p in listed if pattern.match(p.display_name)]

    # -- 1. plan ----------------------------------------------------------------------------------

    def _plan(self, run: _Run) -> str:
        token = run.token
        refusals: list[str] = []
        held: list[str] = []
        new_id = self.journal.get(run.rotation_id).new_authorization_id
        for spec in token.sinks:
            sink = self.world.sink(spec)
            try:
                state = self._retry(sink.check, f"check {sink.id}")
            except FluxManagedError as exc:
                refusals.append(str(exc))
                continue
            if state.authorization_id and state.authorization_id != new_id:
                run.old_ids.add(state.authorization_id)
            held.append(f"{sink.id}={state.authorization_id or ('unknown' if state.exists else 'empty')}")
        if refusals:
            raise FluxManagedError(" | ".join(refusals))
        warnings: list[str] = []
        for consumer in token.consumers:
            cluster = self.world.cluster(consumer.cluster)
            scaler = self._retry(
                partial(cluster.get_scaler, consumer.namespace, _resource(consumer), consumer.name),
                f"read {consumer.k8s_kind} {consumer.namespace}/{consumer.name}")
            warning = rollout_warning(consumer, scaler)
            if warning is not None:
                warnings.append(warning)
                log.warning("rotation %s of %s: %s", run.rotation_id, token.name, warning,
                            extra=self._extra(run, "plan", cluster=consumer.cluster,
                                              namespace=consumer.namespace, consumer=consumer.name,
                                              rollout_strategy=scaler.rollout_strategy))
        if run.old_ids:
            self.journal.set_authorizations(run.rotation_id, old=",".join(sorted(run.old_ids)))
        previous = ",".join(sorted(run.old_ids)) or "unknown"
        return "; ".join([f"{len(token.sinks)} sink(s) writable ({'; '.join(held)})",
                          f"{len(token.consumers)} consumer(s) found", f"previous PAT: {previous}",
                          *(f"WARNING: {w}" for w in warnings)])

    # -- 2. create --------------------------------------------------------------------------------

    def _create(self, run: _Run) -> str:
        token = run.token
        pats = self.world.pats(token.organization)
        record = self.journal.get(run.rotation_id)
        name = display_name(token.name, run.rotation_id)
        if record.new_authorization_id:
            resumed = self._resume_created(run, record.new_authorization_id)
            if resumed is not None:
                return resumed
        # A PAT with our display name whose value we do not hold (an earlier attempt died after
        # ADO acted) is useless: revoke it before creating the one we will deliver.
        for stale in self._patrol_pats(token):
            if stale.display_name == name:
                self._retry(partial(pats.revoke, stale.authorization_id),
                            f"revoke unusable PAT {stale.authorization_id}")
                run.notes.append(f"revoked unusable earlier attempt {stale.authorization_id}")
        asked = self._now() + token.lifetime
        created = None
        for attempt in range(1, self.settings.create_attempts + 1):
            try:
                created = pats.create(name, token.scopes, asked, all_orgs=False)
                break
            except TransientError as exc:
                # ADO may have acted before failing: never leave a PAT we cannot use.
                for stale in self._patrol_pats(token):
                    if stale.display_name == name:
                        self._retry(partial(pats.revoke, stale.authorization_id),
                                    f"revoke PAT {stale.authorization_id} of a failed create")
                if attempt >= self.settings.create_attempts:
                    raise
                delays = self.settings.api_backoff.delays or (0.0,)
                delay = delays[min(attempt - 1, len(delays) - 1)]
                if exc.delay is not None:
                    delay = min(max(delay, exc.delay), self.settings.api_backoff.max_delay)
                log.info("create PAT attempt %d failed (%s); retrying in %.2fs", attempt, exc, delay,
                         extra=self._extra(run, "create", attempt=attempt))
                self._sleep(delay)
        assert created is not None
        info = created.info
        # Journal the id at once: from here on a crash must be able to find this PAT.
        self.journal.set_authorizations(run.rotation_id, new=info.authorization_id,
                                        new_valid_to=info.valid_to.timestamp())
        problem = self._check_created(token, info)
        if problem is not None:
            try:
                self._retry(partial(pats.revoke, info.authorization_id),
                            f"revoke rejected PAT {info.authorization_id}")
            except PatrolError as exc:
                # Keep the reason: the PAT is in no sink, so recovery revokes it as an orphan.
                raise type(problem)(f"{problem}; revoking it failed too ({exc}): the next "
                                    "reconcile revokes it, as no sink holds it") from exc
            raise type(problem)(f"{problem}; it was revoked")
        run.new, run.value = info, created.token
        notes = [f"created {info.authorization_id} ({name}), scopes {' '.join(info.scopes)}, "
                 f"validTo {info.valid_to:%Y-%m-%dT%H:%M:%SZ}"]
        if info.valid_to.timestamp() < asked.timestamp() - self.settings.validto_tolerance:
            notes.append(f"validTo clamped by policy (asked {asked:%Y-%m-%dT%H:%M:%SZ})")
            if info.valid_to - self._now() <= token.renew_before:
                notes.append("WARNING: the PAT lives shorter than renew_before and is due at once")
        return "; ".join(run.notes + notes)

    def _check_created(self, token: config.Token, info: PatInfo) -> PatrolError | None:
        if set(info.scopes) != set(token.scopes):
            return ScopeMismatchError(
                f"PAT {info.authorization_id} came back with scopes {' '.join(sorted(info.scopes)) or '-'}, "
                f"asked for {' '.join(sorted(token.scopes))}")
        if info.is_global:
            return PermanentError(f"PAT {info.authorization_id} came back valid for all organizations "
                                  "(allOrgs was false)")
        if info.valid_to <= self._now():
            return PermanentError(f"PAT {info.authorization_id} came back already expired "
                                  f"(validTo {info.valid_to:%Y-%m-%dT%H:%M:%SZ})")
        return None

    def _resume_created(self, run: _Run, new_id: str) -> str | None:
        """After a restart: use the PAT created earlier if a sink holds its value, else revoke it."""
        token = run.token
        pats = self.world.pats(token.organization)
        value: Secret | None = None
        source = ""
        for spec in token.sinks:
            sink = self.world.sink(spec)
            state, held = self._retry(sink.read, f"read {sink.id}")
            if state.authorization_id == new_id and held:
                value, source = held, sink.id
                break
        info: PatInfo | None
        try:
            info = self._retry(lambda: pats.get(new_id), f"read PAT {new_id}")
        except NotFoundError:
            info = None
        except PolicyViolationError as exc:
            if exc.code not in _PAT_NOT_FOUND:
                raise
            info = None
        alive = info is not None and info.valid_to > self._now()
        if value is not None and info is not None and alive:
            run.new, run.value = info, value
            return f"resumed: PAT {new_id} already created; token read back from {source}"
        if info is not None:
            self._retry(lambda: pats.revoke(new_id), f"revoke unusable PAT {new_id}")
        run.notes.append(f"PAT {new_id} of an interrupted attempt was in no sink: revoked it")
        return None

    # -- 3. deliver -------------------------------------------------------------------------------

    def _deliver(self, run: _Run) -> str:
        assert run.new is not None and run.value is not None
        new, value = run.new, run.value
        delivered: list[str] = []
        failed: list[str] = []
        for spec in run.token.sinks:
            sink = self.world.sink(spec)
            self.journal.set_target(run.rotation_id, "deliver", sink.id, "running")
            try:
                state = call_with_retry(
                    partial(sink.write, value, authorization_id=new.authorization_id,
                            expires_at=new.valid_to, rotation_id=run.rotation_id),
                    self.settings.deliver_backoff, what=f"deliver to {sink.id}", sleep=self._sleep,
                    logger=log)
            except PatrolError as exc:
                self.journal.set_target(run.rotation_id, "deliver", sink.id, "failed", str(exc))
                failed.append(f"{sink.id}: {exc}")
                continue
            self.journal.set_target(run.rotation_id, "deliver", sink.id, "done",
                                    f"version {state.version}" if state.version else "")
            delivered.append(sink.id)
        if failed:
            if not delivered:
                pats = self.world.pats(run.token.organization)
                self._retry(lambda: pats.revoke(new.authorization_id),
                            f"revoke undelivered PAT {new.authorization_id}")
                outcome = f"the new PAT {new.authorization_id} was delivered nowhere and was revoked"
            else:
                outcome = (f"the new PAT {new.authorization_id} is in {', '.join(delivered)}; the previous "
                           "PAT stays valid, so every consumer keeps a working token")
            raise DeliveryError(f"delivery failed: {'; '.join(failed)}; {outcome}")
        run.delivered_at = self._delivered_at(run)
        return f"delivered {new.authorization_id} to {', '.join(delivered)}"

    def _delivered_at(self, run: _Run) -> float:
        """When every sink first held the new PAT: journaled once, so a resumed rotation (which
        delivers again, writing nothing) drains from the first delivery, not from the restart."""
        record = self.journal.get(run.rotation_id)
        for target in record.targets:
            if target.step == "drain" and target.target == DELIVERED_TARGET:
                try:
                    return float(target.detail)
                except ValueError:
                    break
        now = self._clock()
        self.journal.set_target(run.rotation_id, "drain", DELIVERED_TARGET, "done", f"{now:.3f}")
        return now

    # -- 4. switch --------------------------------------------------------------------------------

    def _switch(self, run: _Run) -> str:
        run.switched_at = self._clock()
        done: list[str] = []
        for consumer in run.token.consumers:
            target = _where(consumer)
            cluster = self.world.cluster(consumer.cluster)
            scaler = self._retry(
                partial(cluster.get_scaler, consumer.namespace, _resource(consumer), consumer.name),
                f"read {consumer.k8s_kind} {target}")
            mode = switch_mode(consumer, scaler)
            run.modes[target] = mode
            run.scalers[target] = scaler
            if mode == "refresh":
                self.journal.set_target(run.rotation_id, "switch", target, "skipped",
                                        "refresh: KEDA re-reads the Secret on its first failed poll after the "
                                        "revoke")
                done.append(f"{target} (refresh)")
                continue
            scaler = self._retry(
                partial(cluster.bump_scaler, consumer.namespace, _resource(consumer), consumer.name,
                        annotation=SCALER_ANNOTATION, value=run.rotation_id),
                f"bump {consumer.k8s_kind} {target}")
            self.journal.set_target(run.rotation_id, "switch", target, "done",
                                    f"bump: generation {scaler.generation}")
            done.append(f"{target} (bump, generation {scaler.generation})")
        return f"switched {', '.join(done)}" if done else "no consumers to switch"

    def _bumped(self, run: _Run) -> list[config.KedaConsumer]:
        return [c for c in run.token.consumers if run.modes.get(_where(c)) == "bump"]

    # -- 5. verify --------------------------------------------------------------------------------

    def _verify(self, run: _Run) -> str:
        assert run.new is not None and run.value is not None
        switched_at = run.switched_at if run.switched_at is not None else self._clock()
        deadline = self._clock() + self.settings.verify_deadline
        token = run.token
        project = token.pipeline.project if token.pipeline else None
        bumped = self._bumped(run)
        client = self.world.organization_client(token.organization, run.value)
        try:
            rounds = 0
            while True:
                rounds += 1
                if not self._may_continue():
                    raise SagaStopped("stopped during verify: this worker may not continue")
                waiting = self._verify_round(run, client, project, switched_at, bumped)
                # Only a bumped consumer has switched to the new PAT yet, so only then is there a
                # KEDA poll to wait for; refreshed consumers still use the old (valid) PAT.
                settled = not bumped or self._clock() - switched_at >= self.settings.verify_settle
                if not waiting and settled:
                    return (f"new PAT authenticates for {' '.join(token.scopes)}; every sink holds it; "
                            f"{len(bumped)} bumped consumer(s) healthy after {rounds} round(s)")
                if self._clock() >= deadline:
                    reasons = "; ".join(waiting) or "conditions did not hold long enough"
                    raise VerificationError(
                        f"not verified within {self.settings.verify_deadline:g}s: {reasons}; the previous "
                        "PAT was not revoked, so consumers keep a working token")
                self._sleep(self.settings.verify_interval)
        finally:
            client.close()

    def _verify_round(self, run: _Run, client: OrganizationApi, project: str | None,
                      switched_at: float, bumped: list[config.KedaConsumer]) -> list[str]:
        """One look at every condition; returns what is still not satisfied."""
        assert run.new is not None and run.value is not None
        waiting: list[str] = []
        token = run.token
        try:
            probe = client.probe(token.scopes, project=project)
            if not probe.ok:
                waiting.append(f"new PAT does not authenticate yet ({probe.detail})")
        except PatrolError as exc:
            waiting.append(f"probe: {exc}")
        for spec in token.sinks:
            sink = self.world.sink(spec)
            try:
                state, _ = sink.read()
            except PatrolError as exc:
                waiting.append(f"{sink.id}: {exc}")
                continue
            if state.authorization_id != run.new.authorization_id or state.fingerprint != run.value.fingerprint:
                waiting.append(f"{sink.id} does not hold the new PAT (holds {state.authorization_id or 'unknown'})")
        settle_from = max(switched_at, self._clock() - self.settings.verify_settle)
        for consumer in bumped:
            target = f"{consumer.kind} {_where(consumer)}"
            try:
                reasons = self._consumer_waiting(consumer, settle_from)
                reasons += self._pool_waiting(client, consumer, switched_at)
                waiting.extend(f"{target}: {why}" for why in reasons)
            except PatrolError as exc:
                waiting.append(f"{target}: {exc}")
        return waiting

    def _consumer_waiting(self, consumer: config.KedaConsumer, since: float) -> list[str]:
        cluster = self.world.cluster(consumer.cluster)
        scaler = cluster.get_scaler(consumer.namespace, _resource(consumer), consumer.name)
        waiting = []
        if scaler.ready is not True:
            waiting.append(f"Ready is {scaler.ready} ({scaler.ready_reason or 'no reason'})")
        recent = [e for e in self._failure_events(consumer) if is_auth_failure(e.message)
                  and _activity(e) > int(since)]
        if recent:
            waiting.append(f"{len(recent)} authentication failure event(s) since "
                           f"{datetime.fromtimestamp(since, UTC):%H:%M:%S}")
        return waiting

    def _failure_events(self, consumer: config.KedaConsumer) -> list[KubeEvent]:
        selector = (f"involvedObject.kind={consumer.k8s_kind},involvedObject.name={consumer.name},"
                    f"reason={KEDA_FAILURE_REASON}")
        events, _ = self.world.cluster(consumer.cluster).list_events(consumer.namespace, field_selector=selector)
        return events

    def _pool_waiting(self, client: OrganizationApi, consumer: config.KedaConsumer,
                      since: float) -> list[str]:
        pool = client.find_pool(consumer.pool)
        jobs = client.list_job_requests(pool.id)
        stuck = [j for j in jobs if j.is_queued and j.queue_time is not None
                 and j.queue_time.timestamp() <= since]
        if not stuck:
            return []
        agents = client.list_agents(pool.id)
        if any(a.enabled and a.status == "online" for a in agents):
            return []
        return [f"pool {consumer.pool}: {len(stuck)} job(s) queued before "
                f"{datetime.fromtimestamp(since, UTC):%H:%M:%S} still wait, no agent online"]

    # -- 6. drain ---------------------------------------------------------------------------------

    def _compromised(self, run: _Run) -> bool:
        """Re-read from the journal: ``patrol rotate --compromised`` may mark a running rotation."""
        record = self.journal.get(run.rotation_id)
        return any(t.step == "plan" and t.target == COMPROMISED_TARGET for t in record.targets)

    def _still_valid(self, run: _Run) -> dict[str, PatInfo]:
        """The PATs the revoke would revoke that still authenticate (active, not expired).

        Read from the list of *active* PATs: a GET by id also answers for a revoked PAT, and
        PatInfo carries no status (docs/external-apis.md, "PAT Lifecycle API")."""
        assert run.new is not None
        pats = self.world.pats(run.token.organization)
        active = self._retry(lambda: pats.list("active"), f"list active PATs of {run.token.name}")
        pattern = patrol_pat_pattern(run.token.name)
        now = self._now()
        valid = {p.authorization_id: p for p in active
                 if (p.authorization_id in run.old_ids or pattern.match(p.display_name)) and p.valid_to > now}
        valid.pop(run.new.authorization_id, None)
        return valid

    def _drain_limit(self, run: _Run) -> tuple[float, str]:
        """How long after delivery the old PAT may be kept at most, and why that long."""
        token = run.token
        if token.drain_max is not None:
            return token.drain_max.total_seconds(), "drain_max"
        parts: list[tuple[float, str]] = [(0.0, "nothing holds it")]
        for consumer in token.consumers:
            if consumer.kind != "keda-scaledjob":
                continue
            scaler = run.scalers.get(_where(consumer))
            if scaler is None:
                cluster = self.world.cluster(consumer.cluster)
                scaler = self._retry(partial(cluster.get_scaler, consumer.namespace, _resource(consumer),
                                             consumer.name), f"read ScaledJob {_where(consumer)}")
            if scaler.active_deadline_seconds is not None:
                parts.append((float(scaler.active_deadline_seconds),
                              f"activeDeadlineSeconds of ScaledJob {_where(consumer)}"))
            else:
                parts.append((self.settings.unbounded_job_drain,
                              f"ScaledJob {_where(consumer)} has no activeDeadlineSeconds: the job timeout"))
        for spec in token.sinks:
            parts.append((spec.refresh_interval.total_seconds(), f"refresh_interval of {spec.id}"))
        if token.pipeline is not None:
            parts.append((token.pipeline.timeout.total_seconds(), "pipeline timeout"))
        return max(parts, key=lambda p: p[0])

    def _drain(self, run: _Run) -> str:
        """Keep the old PAT valid until nothing that holds it still needs it (module docstring)."""
        assert run.new is not None and run.value is not None
        if self._compromised(run):
            return "skipped: the rotation is marked compromised (the previous PAT is revoked at once)"
        valid = self._still_valid(run)
        if not valid:
            if run.old_ids:
                return "skipped: the previous PAT is already invalid (revoked or expired): nothing to drain"
            return "skipped: no previous PAT to revoke"
        delivered_at = run.delivered_at if run.delivered_at is not None else self._delivered_at(run)
        limit, why = self._drain_limit(run)
        end = delivered_at + limit
        expiry = min(p.valid_to.timestamp() for p in valid.values())
        if expiry < end:
            end, why = expiry, "the previous PAT's expiry"
        token = run.token
        gauge = self._metrics.draining.labels(token=token.name) if self._metrics else None
        if self._metrics is not None:
            self._metrics.drain_end.labels(token=token.name).set(end)
        client = self.world.organization_client(token.organization, run.value)
        rounds = 0
        try:
            if gauge is not None:
                gauge.set(1)
            while True:
                rounds += 1
                if not self._may_continue():
                    raise SagaStopped("stopped during drain: this worker may not continue (the next "
                                      "holder resumes the same drain)")
                if self._compromised(run):
                    return f"ended after {rounds - 1} round(s): the rotation was marked compromised"
                waiting = self._drain_round(run, client, delivered_at)
                now = self._clock()
                if not waiting:
                    return (f"nothing holds the previous PAT any more ({now - delivered_at:.0f}s after "
                            f"delivery, {rounds} round(s))")
                if now >= end:
                    note = (f"drain maximum reached ({why}, {end - delivered_at:.0f}s after delivery) while "
                            f"still waiting: {'; '.join(waiting)}; revoking anyway")
                    log.warning("rotation %s of %s: %s", run.rotation_id, token.name, note,
                                extra=self._extra(run, "drain"))
                    return note
                detail = f"waiting ({end - now:.0f}s left at most): {'; '.join(waiting)}"
                self.journal.note_step(run.rotation_id, "drain", detail)
                self._emit(StepEvent(run.rotation_id, token.name, "drain", "running", detail))
                self._sleep(max(0.0, min(self.settings.drain_interval, end - now)))
        finally:
            client.close()
            if gauge is not None:
                gauge.set(0)

    def _drain_round(self, run: _Run, client: OrganizationApi, delivered_at: float) -> list[str]:
        """What still holds the old PAT: agent Jobs, sink readers, pipeline runs."""
        token = run.token
        now = self._clock()
        waiting: list[str] = []
        cutoff = delivered_at + self.settings.secret_settle
        for consumer in token.consumers:
            if consumer.kind != "keda-scaledjob":
                continue
            cluster = self.world.cluster(consumer.cluster)
            try:
                jobs = cluster.list_jobs(consumer.namespace,
                                         label_selector=f"{KEDA_JOB_NAME_LABEL}={consumer.name}")
            except NotFoundError:
                jobs = []                     # the batch/v1 API is not served: no Jobs exist
            except PatrolError as exc:
                waiting.append(f"ScaledJob {_where(consumer)}: cannot list its Jobs ({exc})")
                continue
            holding = [j for j in jobs if j.running and (j.started is None or j.started.timestamp() < cutoff)]
            if holding:
                waiting.append(f"{len(holding)} agent Job(s) of {_where(consumer)} started before delivery "
                               "still running")
        for spec in token.sinks:
            left = delivered_at + spec.refresh_interval.total_seconds() - now
            if left > 0:
                waiting.append(f"readers of {spec.id}: {left:.0f}s left of their refresh interval")
        if token.pipeline is not None:
            pipeline = token.pipeline
            try:
                definition = client.find_build_definition(pipeline.project, pipeline.definition)
                builds = client.running_builds(pipeline.project, definition)
            except PatrolError as exc:
                waiting.append(f"pipeline {pipeline.definition}: cannot list its runs ({exc})")
            else:
                started = [b.start_time or b.queue_time for b in builds]
                holding_runs = [t for t in started if t is not None and t.timestamp() < delivered_at]
                if holding_runs:
                    waiting.append(f"{len(holding_runs)} run(s) of pipeline {pipeline.definition} started "
                                   "before delivery still running")
        if not waiting and token.consumers and now < cutoff:
            # Even with nothing else holding the old PAT (an idle cluster): KEDA re-reads the Secret
            # through controller-runtime's informer cache when its first poll after the revoke
            # fails, and that cache (like the kubelet's) may serve the old value for a moment after
            # delivery — then the poll fails for good.
            waiting.append(f"Secret caches (KEDA's informer, the kubelet): {cutoff - now:.0f}s left to "
                           "see the new value")
        return waiting

    # -- 7. revoke --------------------------------------------------------------------------------

    def _revoke(self, run: _Run) -> str:
        assert run.new is not None and run.value is not None
        new_id = run.new.authorization_id
        # Never revoke the only working token: every sink must hold the new PAT right now.
        for spec in run.token.sinks:
            sink = self.world.sink(spec)
            state, _ = self._retry(sink.read, f"read {sink.id}")
            if state.authorization_id != new_id or state.fingerprint != run.value.fingerprint:
                raise PermanentError(
                    f"{sink.id} no longer holds the new PAT {new_id} (holds "
                    f"{state.authorization_id or 'unknown'}): the previous PAT was not revoked")
        targets = set(run.old_ids)
        targets.update(p.authorization_id for p in self._patrol_pats(run.token))
        targets.discard(new_id)
        # What KEDA had reported before the revoke: confirm compares against it.
        for consumer in run.token.consumers:
            try:
                run.failure_baseline[_where(consumer)] = {e.uid: e.count for e in self._failure_events(consumer)}
            except PatrolError as exc:
                log.warning("could not read the Events of %s before the revoke: %s", _where(consumer), exc,
                            extra=self._extra(run, "revoke"))
        run.revoked_at = self._clock()
        if not targets:
            return ("no previous PAT known (none in sink metadata, no earlier patrol PAT): "
                    "revoke the hand-made PAT in Azure DevOps by hand")
        pats = self.world.pats(run.token.organization)
        for auth_id in sorted(targets):
            self._retry(partial(pats.revoke, auth_id), f"revoke PAT {auth_id}")
            self.journal.set_target(run.rotation_id, "revoke", auth_id, "done")
        run.revoked_at = self._clock()
        return f"revoked {', '.join(sorted(targets))}"

    # -- 8. confirm -------------------------------------------------------------------------------

    def _confirm(self, run: _Run) -> str:
        """Every consumer is served by the new PAT after the revoke, or the rotation fails.

        With ``refresh`` KEDA's first poll after the revoke fails, rebuilds the scaler from the
        Secret and retries in the same poll: no Event, Ready stays True. So a KEDA failure Event
        active after the revoke (eventTime or series.lastObservedTime later, or a count that
        grew: KEDA >= 2.20 flushes later series bumps only every 30 minutes), Ready not True, or
        queued jobs left waiting means a consumer did not recover. The consumers must stay quiet
        for ``confirm_polls`` KEDA polling intervals after the revoke (and after the last failure).
        """
        assert run.value is not None
        token = run.token
        if not token.consumers:
            return "no consumers to confirm"
        revoked_at = run.revoked_at if run.revoked_at is not None else self._clock()
        client = self.world.organization_client(token.organization, run.value)
        last_failure = revoked_at
        seen: dict[str, tuple[int, float]] = {}
        try:
            rounds = 0
            while True:
                rounds += 1
                if not self._may_continue():
                    raise SagaStopped("stopped during confirm: this worker may not continue")
                waiting: list[str] = []
                interval = 0
                for consumer in token.consumers:
                    where = f"{consumer.kind} {_where(consumer)}"
                    try:
                        scaler = self.world.cluster(consumer.cluster).get_scaler(
                            consumer.namespace, _resource(consumer), consumer.name)
                        interval = max(interval, scaler.polling_interval)
                        if scaler.ready is not True:
                            waiting.append(f"{where}: Ready is {scaler.ready} ({scaler.ready_reason or 'no reason'})")
                        failing = self._failures_since(run, consumer, revoked_at, seen)
                        if failing:
                            last_failure = max(last_failure, failing)
                            waiting.append(f"{where}: KEDA failed to poll after the revoke "
                                           f"(last seen {datetime.fromtimestamp(failing, UTC):%H:%M:%S})")
                        waiting.extend(f"{where}: {why}" for why in self._pool_waiting(client, consumer, revoked_at))
                    except PatrolError as exc:
                        waiting.append(f"{where}: {exc}")
                now = self._clock()
                watch = self.settings.confirm_polls * (interval or 30)
                quiet = now - last_failure >= watch and now - revoked_at >= watch
                if quiet and not [w for w in waiting if "failed to poll" not in w]:
                    return (f"{len(token.consumers)} consumer(s) served by the new PAT: quiet for "
                            f"{now - last_failure:.0f}s ({self.settings.confirm_polls} polling interval(s)) "
                            f"after the revoke, {rounds} round(s)")
                deadline = revoked_at + max(self.settings.verify_deadline, watch + self.settings.verify_interval)
                # Look at least twice per KEDA poll: the watch ends soon after KEDA proved itself.
                pause = min(self.settings.verify_interval, max(0.5, (interval or 30) / 2))
                if now >= deadline:
                    reasons = "; ".join(waiting) or "KEDA was not quiet long enough"
                    raise ConfirmationError(
                        f"not confirmed within {deadline - revoked_at:.0f}s of the revoke: {reasons}; every "
                        "sink holds the new PAT and the previous one is revoked: check the consumers "
                        "(kubectl describe the ScaledJob/ScaledObject and its Events), and if KEDA still "
                        "uses the old PAT restart the KEDA operator so it re-reads the Secret")
                self._sleep(min(pause, max(0.0, revoked_at + watch - now)) or pause)
        finally:
            client.close()

    def _failures_since(self, run: _Run, consumer: config.KedaConsumer, since: float,
                        seen: dict[str, tuple[int, float]]) -> float | None:
        """When KEDA last failed for ``consumer`` after ``since``, or None if it did not."""
        baseline = run.failure_baseline.get(_where(consumer), {})
        latest: float | None = None
        now = self._clock()
        for event in self._failure_events(consumer):
            activity = _activity(event)
            grew = event.count > baseline.get(event.uid, 0 if activity > since else event.count)
            if activity > since:
                when = activity
            elif grew:
                # A series bump with no newer timestamp: first noticed now.
                previous = seen.get(event.uid)
                when = previous[1] if previous is not None and previous[0] == event.count else now
            else:
                continue
            seen[event.uid] = (event.count, when)
            latest = when if latest is None else max(latest, when)
        return latest

    # -- 9. record --------------------------------------------------------------------------------

    def _record(self, run: _Run) -> str:
        assert run.new is not None
        message = (f"patrol rotated PAT {run.token.name} (rotation {run.rotation_id}): now "
                   f"{run.new.authorization_id}, valid to {run.new.valid_to:%Y-%m-%dT%H:%M:%SZ}")
        recorded = self._events(run, EVENT_REASON_ROTATED, message, "Normal")
        return f"{recorded} event(s) recorded"

    def _events(self, run: _Run, reason: str, message: str, type_: str) -> int:
        recorded = 0
        for consumer in run.token.consumers:
            try:
                cluster = self.world.cluster(consumer.cluster)
                scaler = cluster.get_scaler(consumer.namespace, _resource(consumer), consumer.name)
                cluster.create_event(consumer.namespace, involved_kind=consumer.k8s_kind,
                                     involved_name=consumer.name, involved_uid=scaler.uid,
                                     api_version=KEDA_API_VERSION, reason=reason, message=message,
                                     type_=type_, now=self._now())
                recorded += 1
            except PatrolError as exc:
                log.warning("could not record a %s event on %s/%s: %s", reason, consumer.namespace,
                            consumer.name, exc, extra=self._extra(run, "record"))
        return recorded

    def _fail(self, run: _Run, step: str, exc: PatrolError) -> None:
        error = f"{step}: {exc}"
        if isinstance(exc, PolicyViolationError):
            if exc.code not in error:
                error += f" (patTokenError={exc.code})"
            error += ("; an Azure DevOps PAT policy refused it: check the tenant/organization PAT "
                      "policies (lifespan, scopes, creation allow-list) against this token's config")
        self.journal.finish(run.rotation_id, "failed", error)
        self._events(run, EVENT_REASON_FAILED,
                     f"patrol could not rotate PAT {run.token.name} (rotation {run.rotation_id}): {error}",
                     "Warning")
        log.error("rotation %s of %s failed at %s: %s", run.rotation_id, run.token.name, step, exc,
                  extra=self._extra(run, step, status="failed"))


def _activity(event: KubeEvent) -> float:
    """The latest moment an Event says its failure happened (eventTime, lastTimestamp, or
    series.lastObservedTime, which :func:`core.kube.parse_event` folds into last_timestamp)."""
    times = [t.timestamp() for t in (event.event_time, event.last_timestamp) if t is not None]
    return max(times) if times else 0.0


def _resource(consumer: config.KedaConsumer) -> ScalerResource:
    return "scaledjobs" if consumer.kind == "keda-scaledjob" else "scaledobjects"
