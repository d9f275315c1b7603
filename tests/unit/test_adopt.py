"""Adopting a hand-pasted PAT (remediation/adopt.py) on in-memory fakes at the adapter boundary."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import pytest

from core import config
from core.ado import ConnectionData, ProbeResult
from core.errors import ConflictError, PatrolError, PermanentError, UnauthorizedError
from core.keyvault import SecretVersion
from core.kube import KubeSecret
from core.secret import Secret
from remediation.adopt import GLOBAL_PAT_RETIREMENT, Adopter, AdoptionPlan
from remediation.cli import print_adoption_plan
from tests.unit.rotation_fakes import (
    Clock,
    FakeCluster,
    FakeOrg,
    FakeVault,
    FakeWorld,
    PatRow,
    StoredSecret,
    make_config,
)

SCOPES = ("vso.agentpools_manage",)


class AdoptCluster(FakeCluster):
    def __init__(self, name: str, clock: Clock) -> None:
        super().__init__(name, clock)
        self.annotated = 0

    def annotate_secret(self, ns: str, name: str, *, annotations: Mapping[str, str],
                        resource_version: str) -> KubeSecret:
        stored = self.secrets[(ns, name)]
        if self.conflicts > 0:
            self.conflicts -= 1
            stored.rv += 1
            raise ConflictError("the object has been modified")
        if resource_version != str(stored.rv):
            raise ConflictError("stale resourceVersion")
        stored.annotations.update(annotations)
        stored.rv += 1
        self.annotated += 1
        return self.read_secret(ns, name)


class AdoptVault(FakeVault):
    def update_properties(self, name: str, version: str, *, expires_on: datetime | None,
                          tags: Mapping[str, str]) -> SecretVersion:
        versions = self.versions[name]
        for i, (props, value) in enumerate(versions):
            if props.version == version:
                updated = dataclasses.replace(props, expires_on=expires_on, tags=dict(tags))
                versions[i] = (updated, value)
                return updated
        raise PermanentError(f"no version {version}")


class AdoptWorld(FakeWorld):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.clusters = {"c1": AdoptCluster("c1", clock), "c2": AdoptCluster("c2", clock)}
        self.vault = AdoptVault()

    def cluster(self, name: str) -> AdoptCluster:
        cluster = self.clusters[name]
        assert isinstance(cluster, AdoptCluster)
        return cluster

    def vault_for(self, vault_url: str) -> AdoptVault:
        assert isinstance(self.vault, AdoptVault)
        return self.vault


BOT = ConnectionData(authenticated_user_id="BOT-OID", authenticated_user_name="Azure DevOps Bot", instance_id=None)


class Whoami:
    """connectionData as ADO answers it: the bot, someone else, or a refusal (VS30063)."""

    def __init__(self, answer: ConnectionData | PatrolError) -> None:
        self.answer = answer
        self.closed = False

    def connection_data(self) -> ConnectionData:
        if isinstance(self.answer, PatrolError):
            raise self.answer
        return self.answer

    def close(self) -> None:
        self.closed = True


class OwnedOrg(Whoami):
    """The fake org client with the PAT's owner: the bot unless the test says otherwise."""

    def __init__(self, org: FakeOrg, answer: ConnectionData | PatrolError) -> None:
        super().__init__(answer)
        self.org = org

    def probe(self, scopes: str | Iterable[str], *, project: str | None = None) -> ProbeResult:
        return self.org.probe(scopes, project=project)


class _World:
    """The :class:`remediation.adopt.AdoptionWorld` view of an :class:`AdoptWorld`."""

    def __init__(self, world: AdoptWorld) -> None:
        self.w = world
        self.pats = world.pats
        self.cluster = world.cluster
        self.owners: dict[str, ConnectionData | PatrolError] = {}     # token value -> connectionData

    def organization_client(self, organization: str, pat: Secret) -> OwnedOrg:
        lowered = dataclasses.replace(BOT, authenticated_user_id="bot-oid")      # ids compare case-blind
        return OwnedOrg(self.w.organization_client(organization, pat), self.owners.get(pat.reveal(), lowered))

    def bot_client(self, organization: str) -> Whoami:
        return Whoami(BOT)

    def vault(self, vault_url: str) -> AdoptVault:
        return self.w.vault_for(vault_url)


@pytest.fixture
def clock() -> Clock:
    return Clock(now=GLOBAL_PAT_RETIREMENT.timestamp() + 2 * 86400)


@pytest.fixture
def world(clock: Clock) -> AdoptWorld:
    return AdoptWorld(clock)


@pytest.fixture
def cfg() -> config.Config:
    return make_config()


def paste(world: AdoptWorld, cfg: config.Config, row: PatRow, *, vault_exp: datetime | None = None) -> None:
    """The hand-pasted world: the value in every sink, no patrol metadata."""
    for spec in cfg.tokens[0].sinks:
        if isinstance(spec, config.KubernetesSecretSink):
            world.clusters[spec.cluster].secrets[(spec.namespace, spec.secret)] = StoredSecret(
                data={spec.key: row.value})
        else:
            world.vault.set_secret(spec.secret, Secret(row.value), expires_on=vault_exp,
                                   tags={"owner": "platform"})


def adopter(cfg: config.Config, world: AdoptWorld, clock: Clock,
            owners: dict[str, ConnectionData | PatrolError] | None = None) -> Adopter:
    view = _World(world)
    view.owners.update(owners or {})
    return Adopter(cfg, view, clock=clock, sleep=clock.sleep)


def snapshot(world: AdoptWorld) -> object:
    return ({n: {k: dataclasses.replace(s, data=dict(s.data), annotations=dict(s.annotations))
                 for k, s in c.secrets.items()} for n, c in world.clusters.items()},
            {k: list(v) for k, v in world.vault.versions.items()})


def test_exactly_one_fitting_pat_is_adopted_into_every_sink_without_changing_values(
        cfg: config.Config, world: AdoptWorld, clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    world.pats_api.add("something-else", ("vso.build",))
    paste(world, cfg, row)
    a = adopter(cfg, world, clock)

    plan = a.plan("keda")
    assert plan.refusal is None and plan.chosen == row.info
    lines = a.apply(plan)

    assert len(lines) == 3
    for cluster in world.clusters.values():
        stored = cluster.secrets[("ado", "pat")]
        assert stored.data["token"] == row.value
        assert stored.annotations["patrol.io/authorization-id"] == row.info.authorization_id
        assert stored.annotations["patrol.io/expiry"] == f"{row.info.valid_to:%Y-%m-%dT%H:%M:%SZ}"
        assert stored.annotations["patrol.io/rotation"].startswith("adopted-")
    (props, value), = world.vault.versions["ado-pat"]
    assert value == row.value
    assert props.expires_on == row.info.valid_to
    assert props.tags["authorizationId"] == row.info.authorization_id
    assert props.tags["owner"] == "platform", "the operator's own tags are kept"

    again = a.plan("keda")
    assert again.already_adopted and again.refusal is None
    before = snapshot(world)
    assert a.apply(again) == []
    assert snapshot(world) == before


def test_two_fitting_pats_refuse_without_an_id_and_adopt_with_one(
        cfg: config.Config, world: AdoptWorld, clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    world.pats_api.add("keda-spare", SCOPES)
    paste(world, cfg, row)
    a = adopter(cfg, world, clock)

    plan = a.plan("keda")
    assert plan.refusal is not None and "2 active PATs of the bot fit" in plan.refusal
    with pytest.raises(PermanentError):
        a.apply(plan)

    given = a.plan("keda", authorization_id=row.info.authorization_id)
    assert given.refusal is None and given.chosen == row.info


def test_an_id_that_is_not_a_candidate_is_refused(cfg: config.Config, world: AdoptWorld, clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    build = world.pats_api.add("build-only", ("vso.build",))
    paste(world, cfg, row)
    a = adopter(cfg, world, clock)
    assert "has scopes vso.build" in (a.plan("keda", authorization_id=build.info.authorization_id).refusal or "")
    assert "is not an active PAT" in (a.plan("keda", authorization_id="nope").refusal or "")


def test_a_vault_expiry_rules_out_a_pat_with_another_valid_to(
        cfg: config.Config, world: AdoptWorld, clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    later = world.pats_api.add("keda-later", SCOPES)
    later.info = dataclasses.replace(later.info, valid_to=later.info.valid_to + timedelta(days=20))
    paste(world, cfg, row, vault_exp=row.info.valid_to)
    plan = adopter(cfg, world, clock).plan("keda")
    assert plan.chosen == row.info
    ruled_out = next(c for c in plan.candidates if c.pat.authorization_id == later.info.authorization_id)
    assert "a sink records expiry" in ruled_out.objections[0]


def test_a_global_pat_is_ruled_out_after_its_retirement(cfg: config.Config, world: AdoptWorld,
                                                        clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    glob = world.pats_api.add("keda-global", SCOPES)
    glob.info = dataclasses.replace(glob.info, target_accounts=None)
    paste(world, cfg, row)
    plan = adopter(cfg, world, clock).plan("keda")
    assert plan.chosen == row.info
    assert any("global PAT" in o for c in plan.candidates for o in c.objections)


def test_a_pat_recorded_in_another_tokens_sinks_is_ruled_out(world: AdoptWorld, clock: Clock) -> None:
    base = make_config(keyvault=False)
    keda = base.tokens[0]
    other = dataclasses.replace(keda, name="other", sinks=(config.KeyVaultSink("https://kv.example", "other"),))
    cfg = dataclasses.replace(base, tokens=(keda, other))
    row = world.pats_api.add("keda-by-hand", SCOPES)
    taken = world.pats_api.add("other-by-hand", SCOPES)
    paste(world, cfg, row)
    world.vault.set_secret("other", Secret(taken.value), expires_on=None,
                           tags={"authorizationId": taken.info.authorization_id})
    plan = adopter(cfg, world, clock).plan("keda")
    assert plan.chosen == row.info
    ruled_out = next(c for c in plan.candidates if c.pat.authorization_id == taken.info.authorization_id)
    assert ruled_out.objections == ("the sinks of token other hold it",)


@pytest.mark.parametrize("case", ["empty", "different", "dead", "none-fits"])
def test_refusals_write_nothing(case: str, cfg: config.Config, world: AdoptWorld, clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    paste(world, cfg, row)
    expected = {"empty": "no token: there is nothing to adopt", "different": "different tokens",
                "dead": "does not authenticate", "none-fits": "no active PAT of the bot fits"}[case]
    if case == "empty":
        world.clusters["c2"].secrets[("ado", "pat")].data = {}
    elif case == "different":
        world.clusters["c2"].secrets[("ado", "pat")].data = {"token": world.pats_api.add("x", SCOPES).value}
    elif case == "dead":
        world.pats_api.revoke(row.info.authorization_id)
    else:                                          # the token belongs to another account
        world.pats_api.rows.pop(row.info.authorization_id)
        world.pats_api.add("unrelated", ("vso.code",))
        world.pats_api.active_values = lambda: {row.value: "someone-else"}  # type: ignore[method-assign]
    before = snapshot(world)
    plan = adopter(cfg, world, clock).plan("keda")
    assert plan.refusal is not None and expected in plan.refusal
    assert row.value not in plan.refusal
    assert snapshot(world) == before
    out = io.StringIO()
    print_adoption_plan(plan, out)
    assert row.value not in out.getvalue()


def test_a_conflicting_write_is_retried_and_a_changed_value_stops_adoption(
        cfg: config.Config, world: AdoptWorld, clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    paste(world, cfg, row)
    a = adopter(cfg, world, clock)
    plan = a.plan("keda")
    world.clusters["c1"].conflicts = 1
    a.apply(plan)
    assert world.cluster("c1").annotated == 1

    fresh = AdoptWorld(clock)
    paste(fresh, cfg, row)
    fresh.pats_api = world.pats_api
    b = adopter(cfg, fresh, clock)
    plan = b.plan("keda")
    fresh.clusters["c1"].secrets[("ado", "pat")].data["token"] = "someone-rotated-it-meanwhile"
    with pytest.raises(PermanentError, match="changed while adopting"):
        b.apply(plan)
    assert "patrol.io/authorization-id" not in fresh.clusters["c1"].secrets[("ado", "pat")].annotations


def test_the_plan_printout_names_candidates_and_never_values(cfg: config.Config, world: AdoptWorld,
                                                            clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    paste(world, cfg, row)
    plan: AdoptionPlan = adopter(cfg, world, clock).plan("keda")
    out = io.StringIO()
    print_adoption_plan(plan, out)
    text = out.getvalue()
    assert row.info.authorization_id in text and "'keda-by-hand'" in text and "fits" in text
    assert "validTo" in text and "by elimination" in text
    assert row.value not in text


def test_a_token_of_another_account_is_refused(cfg: config.Config, world: AdoptWorld, clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    paste(world, cfg, row)
    someone = ConnectionData(authenticated_user_id="alice-oid", authenticated_user_name="Alice", instance_id=None)
    before = snapshot(world)
    plan = adopter(cfg, world, clock, {row.value: someone}).plan("keda")
    assert plan.refusal is not None
    assert "belongs to Alice (alice-oid), not to the bot Azure DevOps Bot (BOT-OID)" in plan.refusal
    assert "patrol rotate keda" in plan.refusal
    assert snapshot(world) == before


def test_when_ado_will_not_say_whose_token_it_is_the_plan_says_so(
        cfg: config.Config, world: AdoptWorld, clock: Clock) -> None:
    row = world.pats_api.add("keda-by-hand", SCOPES)
    paste(world, cfg, row)
    refused = UnauthorizedError("VS30063: You are not authorized to access https://dev.azure.com", status=401)
    plan = adopter(cfg, world, clock, {row.value: refused}).plan("keda")
    assert plan.refusal is None and plan.chosen == row.info
    assert any("ADO did not say whom the token belongs to" in n and "VS30063" in n for n in plan.notes)
    own = adopter(cfg, world, clock).plan("keda")
    assert any("belongs to the bot (Azure DevOps Bot)" in n for n in own.notes)
