"""Adopting a hand-pasted PAT: find which of the bot's PATs the sinks hold, prove it, label it.

Guarantees:

- The token value in a sink never changes. A Kubernetes Secret gets its ``patrol.io/*``
  annotations by a metadata-only patch guarded by the ``resourceVersion`` read with the value;
  a Key Vault secret gets its ``authorizationId``/``rotation`` tags and ``exp`` set on the
  version read (a ``PATCH`` of that version: no new version is written). The metadata is
  exactly what the worker writes after a rotation (:mod:`core.sinkmeta`), so from then on the
  exporter and the worker treat the token as one patrol rotated.
- Nothing is written unless a plan without a refusal was made first. A plan refuses when a
  sink holds nothing, when the sinks hold different values, when their token does not
  authenticate, when no active PAT of the bot fits, or when several fit and no
  ``authorizationId`` was given.
- Adopting an adopted token changes nothing and says so.
- No token value appears in a plan, a message or a log; sinks are compared by fingerprint.

Why proof is by elimination: the PAT Lifecycle API never returns a token's value, and ADO has
no "which PAT is this?" call for a PAT. What *can* be checked is checked: the sinks' token
authenticates with every configured scope (the same probe as the exporter's validity check);
it authenticates as the bot (``connectionData`` with the token and with the bot's own sign-in
name the same user; where ADO will not say, the plan says so);
a candidate is an active PAT of the bot with exactly those scopes, not expired, not a global
PAT once global PATs stopped authenticating (the sinks' token does authenticate), not already
recorded in another token's sinks, and with a ``validTo`` matching an expiry a sink already
records (a Key Vault ``exp`` set by hand). Exactly one such PAT left is the one in the sinks
(unless ADO would not say whose the token is and it is not the bot's); ``--authorization-id``
lets an operator settle what elimination cannot.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from core import config
from core.ado import ConnectionData, PatInfo, ProbeResult
from core.errors import ConflictError, NotFoundError, PatrolError, PermanentError
from core.keyvault import SecretVersion
from core.kube import KubeSecret
from core.retry import Backoff, call_with_retry
from core.secret import Secret
from core.sinkmeta import SinkMetadata, from_secret, from_vault, secret_annotations, vault_tags

log = logging.getLogger("patrol.adopt")

# Global (allOrgs) PATs stopped authenticating on this day (docs/external-apis.md, "PAT Lifecycle API").
GLOBAL_PAT_RETIREMENT = datetime(2026, 12, 1, tzinfo=UTC)
# A validTo within this of an expiry a sink already records is the same PAT (Key Vault keeps
# whole seconds; an operator typing an expiry by hand rounds to the day).
EXPIRY_TOLERANCE = timedelta(days=1)
CONFLICT_BACKOFF = Backoff(delays=(0.05, 0.1, 0.2, 0.4), retry_on=(ConflictError,))
ADOPT_ROTATION_PREFIX = "adopted-"


# -- ports ----------------------------------------------------------------------------------------

class PatReader(Protocol):
    """:class:`core.ado.PatLifecycleClient` as adoption reads it."""

    def list(self, display_filter: Literal["active", "revoked", "expired", "all"] = "active", *,
             name_prefix: str | None = None) -> builtins.list[PatInfo]: ...


class Identity(Protocol):
    """:class:`core.ado.AdoClient` as adoption asks ADO who a credential belongs to."""

    def connection_data(self) -> ConnectionData: ...

    def close(self) -> None: ...


class TokenProbe(Identity, Protocol):
    """:class:`core.ado.AdoClient` authenticated with the sinks' token."""

    def probe(self, scopes: str | Iterable[str], *, project: str | None = None) -> ProbeResult: ...


class SecretApi(Protocol):
    """:class:`core.kube.KubeCluster` as adoption reads and annotates Secrets."""

    def read_secret(self, ns: str, name: str) -> KubeSecret: ...

    def annotate_secret(self, ns: str, name: str, *, annotations: Mapping[str, str],
                        resource_version: str) -> KubeSecret: ...


class VaultApi(Protocol):
    """:class:`core.keyvault.KeyVault` as adoption reads and tags a version."""

    def get_secret(self, name: str, version: str | None = None) -> tuple[SecretVersion, Secret]: ...

    def update_properties(self, name: str, version: str, *, expires_on: datetime | None,
                          tags: Mapping[str, str]) -> SecretVersion: ...


class AdoptionWorld(Protocol):
    """What adoption touches; :class:`remediation.world.CoreWorld` is the production one."""

    def pats(self, organization: str) -> PatReader: ...

    def cluster(self, name: str) -> SecretApi: ...

    def vault(self, vault_url: str) -> VaultApi: ...

    def organization_client(self, organization: str, pat: Secret) -> TokenProbe: ...

    def bot_client(self, organization: str) -> Identity: ...


# -- what a plan holds ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Holding:
    """What one sink holds now: its value (never shown), patrol's metadata, and the version
    (``resourceVersion`` / Key Vault version) a write is guarded by."""

    sink_id: str
    value: Secret | None
    meta: SinkMetadata
    version: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str | None:
        return self.value.fingerprint if self.value else None


@dataclass(frozen=True)
class Candidate:
    """An active PAT of the bot with the token's scopes; ``objections`` say why it cannot be
    the one in the sinks (empty: it fits)."""

    pat: PatInfo
    objections: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.objections


@dataclass(frozen=True)
class AdoptionPlan:
    token: config.Token
    holdings: tuple[Holding, ...]
    probe: ProbeResult | None = None
    candidates: tuple[Candidate, ...] = ()
    chosen: PatInfo | None = None
    already_adopted: bool = False
    refusal: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def fitting(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.fits)


def adoption_rotation_id(now: datetime) -> str:
    """What ``patrol.io/rotation`` says on an adopted sink: when, and that no rotation wrote it."""
    return ADOPT_ROTATION_PREFIX + now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan_json(plan: AdoptionPlan) -> dict[str, Any]:
    """A plan as data (``patrol adopt --json``): identifiers, names, dates and reasons only.

    A sink says whether it holds a token, never the token nor a fingerprint of it."""
    chosen = plan.chosen
    return {
        "token": plan.token.name,
        "organization": plan.token.organization,
        "scopes": list(plan.token.scopes),
        "sinks": [{"id": h.sink_id, "holds_token": h.value is not None,
                   "recorded_authorization_id": h.meta.authorization_id,
                   "recorded_expiry": _when(h.meta.expires_at)} for h in plan.holdings],
        "probe": None if plan.probe is None else {"ok": plan.probe.ok, "detail": plan.probe.detail},
        "candidates": [{"authorization_id": c.pat.authorization_id, "display_name": c.pat.display_name,
                        "scopes": list(c.pat.scopes), "valid_to": _when(c.pat.valid_to),
                        "global": c.pat.is_global, "fits": c.fits, "objections": list(c.objections)}
                       for c in plan.candidates],
        "chosen": None if chosen is None else {"authorization_id": chosen.authorization_id,
                                               "display_name": chosen.display_name,
                                               "valid_to": _when(chosen.valid_to)},
        "already_adopted": plan.already_adopted,
        "refusal": plan.refusal,
        "notes": list(plan.notes),
    }


# -- the adopter ----------------------------------------------------------------------------------

class Adopter:
    """Plans and applies the adoption of one configured token (see the module docstring)."""

    def __init__(self, cfg: config.Config, world: AdoptionWorld, *,
                 clock: Callable[[], float] = time.time, backoff: Backoff = CONFLICT_BACKOFF,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = cfg
        self.world = world
        self._clock = clock
        self._backoff = backoff
        self._sleep = sleep

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- reading --------------------------------------------------------------------------------

    def read(self, spec: config.Sink) -> Holding:
        """One sink's holding; a missing Secret or Key Vault secret holds nothing."""
        if isinstance(spec, config.KubernetesSecretSink):
            try:
                secret = self.world.cluster(spec.cluster).read_secret(spec.namespace, spec.secret)
            except NotFoundError:
                return Holding(spec.id, None, SinkMetadata())
            value = secret.data.get(spec.key)
            return Holding(spec.id, value or None, from_secret(secret), secret.resource_version)
        try:
            props, value = self.world.vault(spec.vault_url).get_secret(spec.secret)
        except NotFoundError:
            return Holding(spec.id, None, SinkMetadata())
        return Holding(spec.id, value or None, from_vault(props), props.version, dict(props.tags))

    def _claimed_elsewhere(self, token: config.Token) -> dict[str, str]:
        """authorizationId → the other token whose sinks already record it (best effort: a sink
        that cannot be read claims nothing)."""
        claimed: dict[str, str] = {}
        own = {s.id for s in token.sinks}
        for other in self.config.tokens:
            if other.name == token.name or other.organization != token.organization:
                continue
            for spec in other.sinks:
                if spec.id in own:
                    continue
                try:
                    holding = self.read(spec)
                except PatrolError as exc:
                    log.warning("adopt %s: cannot read %s to rule out its PAT: %s", token.name, spec.id,
                                exc, extra={"token": token.name, "sink": spec.id})
                    continue
                if holding.meta.authorization_id:
                    claimed[holding.meta.authorization_id] = other.name
        return claimed

    # -- planning -------------------------------------------------------------------------------

    def plan(self, token_name: str, *, authorization_id: str | None = None) -> AdoptionPlan:
        """What adopting ``token_name`` would write, or why it must not (``refusal``)."""
        token = self.config.token(token_name)
        holdings = tuple(self.read(spec) for spec in token.sinks)
        base = AdoptionPlan(token=token, holdings=holdings)
        empty = [h.sink_id for h in holdings if h.value is None]
        if empty:
            return _refuse(base, f"{', '.join(empty)} hold{'s' if len(empty) == 1 else ''} no token: "
                           "there is nothing to adopt there. Put the same PAT in every sink, or let "
                           f"patrol create and deliver one: patrol rotate {token.name}")
        groups: dict[str | None, list[str]] = {}
        for h in holdings:
            groups.setdefault(h.fingerprint, []).append(h.sink_id)
        if len(groups) > 1:
            shown = "; ".join(" = ".join(ids) for ids in groups.values())
            return _refuse(base, f"the sinks hold different tokens ({shown}): one token is adopted "
                           "at a time. Make every sink hold the same PAT, or replace them all with a "
                           f"new one: patrol rotate {token.name}")
        value = holdings[0].value
        assert value is not None
        probe, owner = self._probe(token, value)
        base = AdoptionPlan(token=token, holdings=holdings, probe=probe)
        if not probe.ok:
            return _refuse(base, f"the token in the sinks does not authenticate ({probe.detail}): "
                           "adopting would label a dead PAT. Replace it with a new one: "
                           f"patrol rotate {token.name}")
        notes: list[str] = []
        ownership = self._ownership(token, owner)
        if isinstance(ownership, _Foreign):
            return _refuse(base, ownership.why)
        notes.append(ownership)
        if probe.unverified:
            notes.append(f"scopes {' '.join(probe.unverified)} have no read-only call: the probe "
                         "shows only that the token authenticates")
        active = self.world.pats(token.organization).list("active")
        by_id = {p.authorization_id: p for p in active}
        recorded = {h.meta.authorization_id for h in holdings}
        if len(recorded) == 1 and None not in recorded:
            (current,) = recorded
            assert current is not None
            pat = by_id.get(current)
            if pat is not None and all(h.meta.expires_at is not None for h in holdings):
                if authorization_id is not None and authorization_id != current:
                    return _refuse(base, f"{token.name} is already adopted as {current} "
                                   f"({pat.display_name}), not {authorization_id}: every sink "
                                   "records it. If that is wrong, rotate instead: "
                                   f"patrol rotate {token.name}")
                return AdoptionPlan(token=token, holdings=holdings, probe=probe,
                                    candidates=(Candidate(pat),), chosen=pat, already_adopted=True,
                                    notes=tuple(notes))
        candidates = tuple(self._candidates(token, active, holdings))
        notes.append("the PAT Lifecycle API never returns token values, so the PAT is found by "
                     "elimination: an active PAT of the bot with the same scopes, checked against "
                     "what the sinks and ADO say")
        base = AdoptionPlan(token=token, holdings=holdings, probe=probe, candidates=candidates,
                            notes=tuple(notes))
        if authorization_id is not None:
            return self._given(base, authorization_id, by_id)
        fitting = base.fitting
        if not fitting:
            return _refuse(base, f"no active PAT of the bot fits ({len(candidates)} with scopes "
                           f"{' '.join(sorted(token.scopes))}, none fitting): the token in the sinks "
                           "may belong to another account. Pass --authorization-id ID if you know "
                           f"it, or replace the token with one patrol owns: patrol rotate {token.name}")
        if len(fitting) > 1:
            ids = ", ".join(c.pat.authorization_id for c in fitting)
            return _refuse(base, f"{len(fitting)} active PATs of the bot fit ({ids}) and nothing tells "
                           "them apart: pass --authorization-id ID with the one the sinks hold")
        return AdoptionPlan(token=token, holdings=holdings, probe=probe, candidates=candidates,
                            chosen=fitting[0].pat, notes=tuple(notes))

    def _probe(self, token: config.Token, value: Secret) -> tuple[ProbeResult, ConnectionData | str]:
        """The probe, and who ADO says the token belongs to (or why it would not say)."""
        client = self.world.organization_client(token.organization, value)
        try:
            project = token.pipeline.project if token.pipeline else None
            result = client.probe(token.scopes, project=project)
            if not result.ok:
                return result, "not asked"
            try:
                return result, client.connection_data()
            except PermanentError as exc:      # e.g. VS30063 for an agent-pools-only PAT
                return result, str(exc)
        finally:
            client.close()

    def _ownership(self, token: config.Token, owner: ConnectionData | str) -> str | _Foreign:
        """A note on whose token it is, or why it cannot be the bot's (then nothing fits)."""
        if isinstance(owner, str) or owner.authenticated_user_id is None:
            why = owner if isinstance(owner, str) else "no authenticated user in the answer"
            return (f"ADO did not say whom the token belongs to (connectionData: {why}): that it "
                    "is the bot's rests on the elimination below")
        bot = self.world.bot_client(token.organization)
        try:
            me = bot.connection_data()
        finally:
            bot.close()
        if me.authenticated_user_id is None:
            return "ADO did not say who the bot is: that the token is the bot's rests on the elimination below"
        if owner.authenticated_user_id.lower() != me.authenticated_user_id.lower():
            return _Foreign(
                f"the token in the sinks belongs to {owner.authenticated_user_name or '?'} "
                f"({owner.authenticated_user_id}), not to the bot {me.authenticated_user_name or '?'} "
                f"({me.authenticated_user_id}): patrol manages the bot's PATs only, and the bot cannot "
                f"see or revoke this one. Replace it with a PAT of the bot: patrol rotate {token.name}")
        return f"ADO says the token belongs to the bot ({me.authenticated_user_name or me.authenticated_user_id})"

    def _candidates(self, token: config.Token, active: Sequence[PatInfo],
                    holdings: Sequence[Holding]) -> Iterable[Candidate]:
        now = self._now()
        wanted = set(token.scopes)
        claimed = self._claimed_elsewhere(token)
        recorded_expiry = {h.meta.expires_at for h in holdings if h.meta.expires_at is not None}
        for pat in sorted(active, key=lambda p: (p.valid_to, p.authorization_id)):
            if set(pat.scopes) != wanted or pat.valid_to <= now:
                continue
            objections: list[str] = []
            if pat.authorization_id in claimed:
                objections.append(f"the sinks of token {claimed[pat.authorization_id]} hold it")
            if pat.is_global and now >= GLOBAL_PAT_RETIREMENT:
                objections.append("a global PAT: those stopped authenticating on 2026-12-01, and the "
                                  "sinks' token authenticates")
            for when in recorded_expiry:
                if abs(pat.valid_to - when) > EXPIRY_TOLERANCE:
                    objections.append(f"validTo {pat.valid_to:%Y-%m-%dT%H:%MZ} but a sink records "
                                      f"expiry {when:%Y-%m-%dT%H:%MZ}")
            yield Candidate(pat, tuple(objections))

    def _given(self, base: AdoptionPlan, authorization_id: str,
               by_id: Mapping[str, PatInfo]) -> AdoptionPlan:
        token = base.token
        pat = by_id.get(authorization_id)
        if pat is None:
            return _refuse(base, f"{authorization_id} is not an active PAT of the bot (the PAT "
                           "Lifecycle API lists the signed-in account's PATs only): check the id with "
                           "the bot's PAT list")
        if set(pat.scopes) != set(token.scopes):
            return _refuse(base, f"{authorization_id} ({pat.display_name}) has scopes "
                           f"{' '.join(sorted(pat.scopes)) or '-'}, token {token.name} is configured "
                           f"with {' '.join(sorted(token.scopes))}: fix the configuration or adopt "
                           "the right PAT")
        if pat.valid_to <= self._now():
            return _refuse(base, f"{authorization_id} expired at {pat.valid_to:%Y-%m-%dT%H:%MZ}")
        candidate = next((c for c in base.candidates if c.pat.authorization_id == authorization_id),
                         Candidate(pat))
        notes = base.notes + tuple(f"{authorization_id}: given by the operator despite: {o}"
                                   for o in candidate.objections)
        return AdoptionPlan(token=token, holdings=base.holdings, probe=base.probe,
                            candidates=base.candidates, chosen=pat, notes=notes)

    # -- applying -------------------------------------------------------------------------------

    def apply(self, plan: AdoptionPlan) -> list[str]:
        """Write the chosen PAT's metadata into every sink; one line per sink says what changed.

        Raises :class:`PermanentError` if a sink's token changed since the plan was made (then
        nothing more is written; run ``patrol adopt`` again)."""
        return [line for _, line in self.apply_each(plan)]

    def apply_each(self, plan: AdoptionPlan) -> Iterator[tuple[str, str]]:
        """:meth:`apply` one sink at a time: yields (sink id, what changed) once that sink is
        written, so a caller knows which sinks were written when a later one fails."""
        if plan.refusal is not None or plan.chosen is None:
            raise PermanentError(f"adopt {plan.token.name}: {plan.refusal or 'no PAT chosen'}")
        if plan.already_adopted:
            return
        pat = plan.chosen
        rotation_id = adoption_rotation_id(self._now())
        for spec, holding in zip(plan.token.sinks, plan.holdings, strict=True):
            if isinstance(spec, config.KubernetesSecretSink):
                self._annotate(spec, holding, pat, rotation_id)
                line = (f"{spec.id}: annotated {pat.authorization_id}, expiry "
                        f"{pat.valid_to:%Y-%m-%dT%H:%M:%SZ} (value untouched)")
            else:
                self._tag(spec, holding, pat, rotation_id)
                line = (f"{spec.id}: tagged version {holding.version} with {pat.authorization_id}, "
                        f"exp {pat.valid_to:%Y-%m-%dT%H:%M:%SZ} (no new version)")
            log.info("adopt %s: %s now records %s", plan.token.name, spec.id, pat.authorization_id,
                     extra={"token": plan.token.name, "sink": spec.id,
                            "authorization_id": pat.authorization_id})
            yield spec.id, line

    def _annotate(self, spec: config.KubernetesSecretSink, holding: Holding, pat: PatInfo,
                  rotation_id: str) -> None:
        api = self.world.cluster(spec.cluster)
        annotations = secret_annotations(authorization_id=pat.authorization_id, expires_at=pat.valid_to,
                                         rotation_id=rotation_id)

        def attempt() -> None:
            secret = api.read_secret(spec.namespace, spec.secret)
            value = secret.data.get(spec.key)
            if value is None or value.fingerprint != holding.fingerprint:
                raise PermanentError(f"{spec.id}: its token changed while adopting (a rotation or an "
                                     "operator wrote it): nothing more written; run patrol adopt again")
            api.annotate_secret(spec.namespace, spec.secret, annotations=annotations,
                                resource_version=secret.resource_version)

        call_with_retry(attempt, self._backoff, what=f"annotate {spec.id}", sleep=self._sleep, logger=log)

    def _tag(self, spec: config.KeyVaultSink, holding: Holding, pat: PatInfo, rotation_id: str) -> None:
        vault = self.world.vault(spec.vault_url)
        tags = {**holding.tags, **vault_tags(authorization_id=pat.authorization_id, rotation_id=rotation_id)}
        vault.update_properties(spec.secret, holding.version, expires_on=pat.valid_to, tags=tags)
        latest, value = vault.get_secret(spec.secret)
        if latest.version != holding.version or value.fingerprint != holding.fingerprint:
            raise PermanentError(f"{spec.id}: a new version was written while adopting (version "
                                 f"{latest.version}, adopted {holding.version}): run patrol adopt again")


@dataclass(frozen=True)
class _Foreign:
    """The sinks' token authenticates as someone other than the bot."""

    why: str


def _refuse(plan: AdoptionPlan, why: str) -> AdoptionPlan:
    return AdoptionPlan(token=plan.token, holdings=plan.holdings, probe=plan.probe,
                        candidates=plan.candidates, notes=plan.notes, refusal=why)
