"""Named starting worlds for the sandbox, with their knobs as data.

``default`` is the platform team's world in miniature (README.md): one ADO org, a bot user that
owns the PATs, two AKS clusters whose KEDA ScaledJobs poll their agent pools with a short-lived
PAT kept in a Secret, a daily-checks pipeline whose PAT lives in Key Vault, and the bot's
username/password in Key Vault as the real seed keeps them. The seed is *adopted*: the Secrets
are annotated with the PAT's id and expiry and the Key Vault secret tagged with its id, as an
operator does when adopting patrol (``annotate_seed=False`` gives the hand-pasted, un-annotated
Secrets). ``unadopted`` is the default world as a team has it before patrol: bare Secrets and a
bare Key Vault secret. Lifetimes are minutes instead of days so a whole rotation fits in a test.
``large`` is mostly static data sized for exporter benchmarks (1,000 PATs, 100 pools, 10 clusters), with the
actors slowed right down.

Every knob is a field of :class:`ScenarioParams` so a test can shorten or lengthen it
(``scenario("default", keda_pat_lifetime=30)``).
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sandbox.ado import GLOBAL_PAT_CUTOFF, AdoWorld
from sandbox.entra import Entra
from sandbox.keyvault import KeyVaultStore

KEDA_SCOPES = ("vso.agentpools_manage",)
DAILY_CHECKS_SCOPES = ("vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release")
ADO_AUDIENCE = "499b84ac-1321-427f-aa17-267ca6975798"


class ClusterSeedable(Protocol):
    """The part of sandbox.kube.ClusterState a scenario seeds."""

    def create_namespace(self, ns: str) -> None: ...
    def put_secret(self, ns: str, name: str, data: dict[str, str], *,
                   labels: dict[str, str] | None = ..., annotations: dict[str, str] | None = ...,
                   field_manager: str = ...) -> dict[str, Any]: ...
    def put_scaledjob(self, ns: str, name: str, *, organization_url: str, pool_name: str,
                      secret_name: str, secret_key: str, polling_interval: int,
                      rollout_strategy: str | None = ...,
                      active_deadline_seconds: int = ...) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    pool: str
    namespace: str = "azure-devops"
    secret: str = "azure-devops-token"
    key: str = "token"
    scaledjob: str = "azure-devops-agent"
    # spec.rollout.strategy of the ScaledJob; None leaves it out, so KEDA uses "default" and
    # deletes the running agent Jobs whenever patrol's switch step changes the spec.
    rollout_strategy: str | None = None


@dataclass(frozen=True)
class ScenarioParams:
    """Everything that shapes a scenario. Times are seconds unless the name says otherwise."""

    name: str = "default"
    org: str = "sandbox-org"
    project: str = "Operations"
    definition: str = "daily-checks"
    bot_username: str = "azure-devops-bot@sandbox.onmicrosoft.com"
    bot_password: str = ""                       # "" = a random one per run
    clusters: tuple[ClusterSpec, ...] = (ClusterSpec("build-a", "agents-a"),
                                         ClusterSpec("build-b", "agents-b"))
    keda_pat_name: str = "keda-seed"
    keda_pat_lifetime: float = 600.0             # the seeded KEDA PAT (short: rotation is due soon)
    # True: the seeded Secrets carry the seeded PAT's id and expiry and the Key Vault secret its
    # id tag and exp, as after adopting patrol (docs/adopt.md); False: pasted by hand, no
    # metadata anywhere (the un-adopted world, scenario ``unadopted``).
    annotate_seed: bool = True
    # True: the seeded Key Vault secret carries what patrol writes beside a value (tag
    # authorizationId and exp = the PAT's validTo); False: a bare secret, set by hand.
    tag_keyvault_seed: bool = True
    daily_pat_name: str = "daily-checks-seed"
    daily_pat_lifetime: float = 600.0
    keda_polling_interval: int = 2               # ScaledJob pollingInterval
    # KEDA, its agents and the API server as they really behave (docs/sandbox.md "Real-world
    # timings"; each default is the real value scaled down, the real one in the comment).
    keda_version: str = "2.20"                   # "2.16": the core/v1 Event recorder of KEDA <= 2.19
    secret_cache_lag: float = 0.5                # controller-runtime informer cache behind the API server
    build_duration: float = 12.0                 # one agent build (real: minutes)
    agent_unregister_retry: float = 3.0          # start.sh cleanup retry (real: 30 s)
    active_deadline_seconds: int = 60            # the seeded ScaledJobs' jobTargetRef (real: often 4 h)
    event_series_flush: float = 1800.0           # client-go tools/events refreshTime (real: 30 min)
    event_series_idle: float = 360.0             # client-go tools/events finishTime (real: 6 min)
    compaction_interval: float = 300.0           # kube-apiserver --etcd-compaction-interval (real: 5 min)
    job_interval: float | None = 4.0             # the job generator; None = no generator
    # Finished job requests each pool has at start (a busy pool's history; the sandbox keeps the
    # latest 200, ADO far more). 0: pools start empty and the history fills as jobs run, so what
    # patrol reads from /jobrequests grows for the first ~13 minutes at a job every 4 s.
    job_history: int = 0
    pipeline_interval: float | None = 20.0       # daily-checks pipeline period; None = not running
    # How long one daily-checks run lasts: it reads its PAT from Key Vault at its start and uses it
    # at its start, middle and end, so a rotation can happen during a run, as in production.
    pipeline_duration: float = 6.0
    # An External-Secrets-style reader of the Key Vault PAT: fetches the latest version every this
    # many seconds and calls ADO with what it holds every keyvault_reader_call_interval; None = none.
    keyvault_reader_refresh: float | None = 10.0
    keyvault_reader_call_interval: float = 2.0
    # Global (allOrgs) PATs stop authenticating at this unix time (2026-12-01T00:00:00Z, Microsoft's
    # retirement of global PATs); None = never, for a test that needs the world before it.
    global_pat_cutoff: float | None = GLOBAL_PAT_CUTOFF
    # Seconds between disabling a user in Entra and ADO revoking their PATs (real: up to 1 h).
    disabled_user_revoke_delay: float = 0.0
    entra_token_lifetime: float = 3600.0
    seed_builds: int = 3                         # completed daily-checks runs already in history
    extra_pats: int = 0                          # bot-owned PATs besides the two seeded ones
    extra_pools: int = 0                         # pools besides the clusters' pools
    agents_per_extra_pool: int = 0
    # What the generated patrol.yaml says (durations as in docs/configuration.md).
    config_lifetime: str = "10m"
    config_renew_before: str = "3m"
    config_pipeline_max_age: str = "2m"
    config_cooldown: str = "30s"                 # worker.cooldown: the least time between two rotations
    # keda_interval at or below keda_polling_interval: the exporter sees KEDA's first good poll
    # before its next one, so KedaScalerAuthFailing resolves within two polls plus a scrape.
    exporter_intervals: dict[str, str] = field(default_factory=lambda: {
        "pat_interval": "5s", "validity_interval": "5s", "keda_interval": "1s",
        "pools_interval": "3s", "pipeline_interval": "5s"})


def _large() -> ScenarioParams:
    return ScenarioParams(
        name="large",
        clusters=tuple(ClusterSpec(f"cluster-{i:02d}", f"pool-{i:02d}") for i in range(10)),
        keda_pat_lifetime=30 * 86400.0, daily_pat_lifetime=30 * 86400.0,
        keda_polling_interval=30, job_interval=None, pipeline_interval=600.0, keyvault_reader_refresh=None,
        seed_builds=50, extra_pats=998, extra_pools=90, agents_per_extra_pool=3,
        config_lifetime="30d", config_renew_before="7d", config_pipeline_max_age="26h",
        exporter_intervals={"pat_interval": "30s", "validity_interval": "30s", "keda_interval": "15s",
                            "pools_interval": "15s", "pipeline_interval": "30s"},
    )


def _unadopted() -> ScenarioParams:
    """The default world as a team has it before patrol: bare Secrets (no patrol.io annotations)
    and a bare Key Vault secret (no authorizationId tag, no exp), so nothing says which PAT a sink
    holds or when it expires until ``patrol adopt`` (or a rotation) writes it."""
    return ScenarioParams(name="unadopted", annotate_seed=False, tag_keyvault_seed=False)


def _soak() -> ScenarioParams:
    """``make soak``: PATs that live about a minute and are renewed at half-life, so planned
    rotations follow one another every ~30 s, with the default world's long builds running across
    them, the daily-checks pipeline and the External-Secrets-style Key Vault reader holding old
    values, and a cool-down short enough not to hold a due rotation back. Pools start with a
    busy pool's job history, so the memory the soak measures after its first rotation is that of
    a world at steady-state size (with empty pools, what patrol reads from ``jobrequests`` grew
    for ~13 minutes and the exporter's and worker's RSS with it)."""
    return ScenarioParams(name="soak", keda_pat_lifetime=60.0, daily_pat_lifetime=60.0,
                          config_lifetime="60s", config_renew_before="30s", config_cooldown="5s",
                          active_deadline_seconds=40, job_history=200)


SCENARIOS = ("default", "large", "unadopted", "soak")


def scenario(name: str = "default", **overrides: Any) -> ScenarioParams:
    """The named scenario's parameters, with any field overridden."""
    if name == "default":
        base = ScenarioParams()
    elif name == "large":
        base = _large()
    elif name == "unadopted":
        base = _unadopted()
    elif name == "soak":
        base = _soak()
    else:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return replace(base, **overrides)


@dataclass
class Seeded:
    """Ids a test may need after seeding (never token values)."""

    bot_oid: str
    bot_password: str
    bot_client_id: str
    patrol_client_id: str
    patrol_client_secret: str
    keda_pat_id: str
    daily_pat_id: str
    pools: dict[str, int]
    definition_id: int


def seed(params: ScenarioParams, *, ado: AdoWorld, entra: Entra, kv: KeyVaultStore,
         clusters: dict[str, ClusterSeedable], organization_url: str) -> Seeded:
    """Fill a fresh world with the scenario's identities, PATs, secrets, pools and history."""
    now = ado.clock()
    password = params.bot_password or secrets.token_urlsafe(18)
    bot_oid = entra.add_user(params.bot_username, password)
    ado.register_user(bot_oid, params.bot_username, "Azure DevOps Bot")
    bot_client_id = str(uuid.uuid4())
    entra.add_public_client(bot_client_id)
    patrol_client_id = str(uuid.uuid4())
    patrol_secret = secrets.token_urlsafe(30)
    entra.add_confidential_client(patrol_client_id, patrol_secret)

    # The bot's sign-in, where the real seed keeps it.
    kv.set_secret("bot-azure-devops-email", params.bot_username)
    kv.set_secret("bot-azure-devops-password", password)

    pools: dict[str, int] = {}
    for spec in params.clusters:
        if spec.pool not in pools:
            pools[spec.pool] = ado.add_pool(spec.pool)
    spacing = params.job_interval or 4.0
    for pool_id in pools.values():
        for i in range(params.job_history, 0, -1):
            ado.add_finished_job(pool_id, queued_at=now - i * spacing - params.build_duration,
                                 duration=params.build_duration)

    # One KEDA PAT, pasted by hand into every cluster's Secret (today's practice).
    keda_id, keda_token = ado.issue_pat(bot_oid, params.keda_pat_name, list(KEDA_SCOPES),
                                        now + params.keda_pat_lifetime)
    annotations = _adopted(keda_id, ado.pat(keda_id).valid_to) if params.annotate_seed else None
    for spec in params.clusters:
        cluster = clusters[spec.name]
        cluster.create_namespace(spec.namespace)
        cluster.put_secret(spec.namespace, spec.secret, {spec.key: keda_token}, annotations=annotations)
        cluster.put_scaledjob(spec.namespace, spec.scaledjob, organization_url=organization_url,
                              pool_name=spec.pool, secret_name=spec.secret, secret_key=spec.key,
                              polling_interval=params.keda_polling_interval,
                              rollout_strategy=spec.rollout_strategy,
                              active_deadline_seconds=params.active_deadline_seconds)

    daily_id, daily_token = ado.issue_pat(bot_oid, params.daily_pat_name, list(DAILY_CHECKS_SCOPES),
                                          now + params.daily_pat_lifetime)
    if params.annotate_seed and params.tag_keyvault_seed:
        kv.set_secret("azure-devops-token", daily_token, exp=int(ado.pat(daily_id).valid_to),
                      tags={"authorizationId": daily_id})
    else:                                        # pasted by hand: no expiry, no tags
        kv.set_secret("azure-devops-token", daily_token)

    definition_id = ado.add_definition(params.project, params.definition)
    period = params.pipeline_interval or 86400.0
    for i in range(params.seed_builds, 0, -1):
        queued = now - i * period
        ado.record_build(params.project, params.definition, result="succeeded", queue_time=queued,
                         start_time=queued + 1, finish_time=queued + min(5.0, period / 2))
    release_id = ado.add_release(params.project, "platform-release", created_on=now - 3600)
    ado.add_deployment(params.project, release_id, started_on=now - 3500, completed_on=now - 3400)

    _seed_bulk(params, ado, bot_oid, now)
    return Seeded(bot_oid=bot_oid, bot_password=password, bot_client_id=bot_client_id,
                  patrol_client_id=patrol_client_id, patrol_client_secret=patrol_secret,
                  keda_pat_id=keda_id, daily_pat_id=daily_id, pools=pools, definition_id=definition_id)


def _adopted(authorization_id: str, valid_to: float) -> dict[str, str]:
    """The annotations a Secret carries once its deployment adopted patrol (docs/rotation.md):
    the id of the PAT it holds and that PAT's expiry. Written out literally: the sandbox is the
    outside world and imports nothing of patrol's, so these are the names an operator types in
    ``kubectl annotate`` (patrol's own names live in core/sinkmeta.py)."""
    return {"patrol.io/authorization-id": authorization_id,
            "patrol.io/expiry": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(valid_to))}


def _seed_bulk(params: ScenarioParams, ado: AdoWorld, bot_oid: str, now: float) -> None:
    """Static volume for benchmarks: many PATs (some expired or revoked) and many pools."""
    scopes = [list(KEDA_SCOPES), list(DAILY_CHECKS_SCOPES), ["vso.build"], ["vso.code"]]
    for i in range(params.extra_pats):
        valid_to = now + (i % 90 - 10) * 86400.0 + 3600
        auth_id, _ = ado.issue_pat(bot_oid, f"bulk-{i:04d}", scopes[i % len(scopes)], valid_to)
        if i % 17 == 0:
            ado.revoke_pat(auth_id)
    for i in range(params.extra_pools):
        pool_id = ado.add_pool(f"extra-pool-{i:03d}")
        for a in range(params.agents_per_extra_pool):
            agent_id = ado.register_agent(pool_id, f"extra-{i:03d}-agent-{a}")
            if a == 0 and i % 3 == 0:
                ado.set_agent_status(agent_id, "offline")
        for _ in range(i % 4):
            ado.queue_job(pool_id)
