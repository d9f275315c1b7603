"""core.ado's clients over real HTTP against the running sandbox ADO, with a real Entra token.

The bot's access token comes from azure-identity's UsernamePasswordCredential against the
sandbox Entra (as patrol's worker gets it); PATs are created through the lifecycle API and then
used by :class:`AdoClient` exactly as the exporter and the rotation verifier use them.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from azure.identity import UsernamePasswordCredential

from core.ado import AdoClient, CreatedPat, PatLifecycleClient
from core.errors import PolicyViolationError, UnauthorizedError
from core.retry import Backoff
from core.secret import Secret
from sandbox.app import SandboxThread
from sandbox.http import Fault

pytestmark = pytest.mark.contract

ADO_SCOPE = "499b84ac-1321-427f-aa17-267ca6975798/.default"
KEDA = ["vso.agentpools_manage"]
DAILY = ["vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release"]
FAST = Backoff(delays=(0.01, 0.01, 0.01))


def authority_port_hook(authority: str) -> Callable[[Any], None]:
    """Put the authority's port back on MSAL's port-less user-realm URL (/tmp/entra-client-notes)."""
    a = urlsplit(authority)

    def hook(request: Any) -> None:
        req = request.http_request
        u = urlsplit(req.url)
        if u.scheme == "https" and u.hostname == a.hostname and u.port is None and a.port not in (None, 443):
            req.url = urlunsplit(u._replace(netloc=a.netloc))
    return hook


@pytest.fixture(scope="module")
def token_provider(sandbox: SandboxThread) -> Iterator[Callable[[], Secret]]:
    ready, bot = sandbox.ready, sandbox.ready["bot"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # ROPC is deprecated upstream
        credential = UsernamePasswordCredential(
            bot["client_id"], bot["username"], bot["password"], authority=ready["entra_authority"],
            tenant_id=bot["tenant_id"], disable_instance_discovery=True, connection_verify=ready["ca_bundle"],
            raw_request_hook=authority_port_hook(ready["entra_authority"]), retry_total=0)
    yield lambda: Secret(credential.get_token(ADO_SCOPE).token)
    credential.close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def pats(sandbox: SandboxThread, token_provider: Callable[[], Secret],
         sleeps: list[float]) -> Iterator[PatLifecycleClient]:
    with PatLifecycleClient(sandbox.ready["vssps_url"], token_provider, backoff=FAST,
                            sleep=sleeps.append) as client:
        yield client


@pytest.fixture
def make_ado(sandbox: SandboxThread, sleeps: list[float]) -> Iterator[Callable[..., AdoClient]]:
    clients: list[AdoClient] = []

    def make(credential: Secret | Callable[[], Secret], **kw: Any) -> AdoClient:
        client = AdoClient(sandbox.ready["organization_url"], credential, vsrm_url=sandbox.ready["vsrm_url"],
                           backoff=FAST, sleep=sleeps.append, **kw)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def faults(sandbox: SandboxThread) -> Iterator[Callable[[Fault], str]]:
    added: list[str] = []

    def add(fault: Fault) -> str:
        fault_id: str = sandbox.call(sandbox.world.faults.add, fault)
        added.append(fault_id)
        return fault_id

    yield add
    for fault_id in added:
        with contextlib.suppress(KeyError):                # used up (remaining reached 0)
            sandbox.call(sandbox.world.faults.remove, fault_id)


def new_pat(pats: PatLifecycleClient, scopes: list[str], minutes: int = 30) -> CreatedPat:
    valid_to = datetime.now(UTC) + timedelta(minutes=minutes)
    return pats.create(f"h4-contract-{uuid.uuid4().hex[:8]}", scopes, valid_to)


# -- PAT Lifecycle API ----------------------------------------------------------------------------


def test_pat_lifecycle_round_trip(pats: PatLifecycleClient, sandbox: SandboxThread) -> None:
    valid_to = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=20)
    created = pats.create("h4-contract-round-trip", DAILY, valid_to)
    auth_id = created.info.authorization_id
    assert created.info.scopes == tuple(DAILY) and created.info.valid_to == valid_to
    assert created.info.target_accounts is not None                  # org-scoped, never global
    assert sandbox.call(sandbox.world.ado.authenticate, created.token.reveal()).result == "ok"

    listed = pats.list(name_prefix="h4-contract-round-trip")
    assert [p.authorization_id for p in listed] == [auth_id]
    assert pats.get(auth_id) == created.info

    later = valid_to + timedelta(minutes=5)
    updated = pats.update(auth_id, display_name="h4-contract-round-trip-2", valid_to=later)
    assert updated.display_name == "h4-contract-round-trip-2" and updated.valid_to == later
    assert updated.scopes == tuple(DAILY)

    pats.revoke(auth_id)
    pats.revoke(auth_id)                                                # idempotent
    pats.revoke(str(uuid.uuid4()))                                      # never existed: fine too
    assert auth_id not in {p.authorization_id for p in pats.list("active")}
    assert auth_id in {p.authorization_id for p in pats.list("revoked")}
    assert sandbox.call(sandbox.world.ado.authenticate, created.token.reveal()).result == "revoked"


def test_list_pages_across_more_than_one_page(pats: PatLifecycleClient, sandbox: SandboxThread) -> None:
    bot_oid = sandbox.world.seeded.bot_oid
    far = datetime.now(UTC).timestamp() + 3600
    for i in range(105):                                                # the API pages by 100
        sandbox.call(functools.partial(sandbox.world.ado.issue_pat, bot_oid, f"h4-bulk-{i:03d}",
                                       ["vso.build"], far))
    before = pats.requests_made
    bulk = pats.list(name_prefix="h4-bulk-")
    assert len(bulk) == 105 and pats.requests_made - before >= 2


@pytest.mark.parametrize("status", [200, 400])
def test_policy_violation_with_either_status(pats: PatLifecycleClient, sandbox: SandboxThread,
                                             status: int) -> None:
    set_policy = sandbox.world.ado.set_policy
    sandbox.call(functools.partial(set_policy, restrict_full_scope=True, error_status=status))
    try:
        with pytest.raises(PolicyViolationError) as caught:
            new_pat(pats, ["app_token"])
        assert caught.value.code == "fullScopePatPolicyViolation" and caught.value.status == status
    finally:
        sandbox.call(functools.partial(set_policy, restrict_full_scope=False, error_status=200))


def test_lifespan_policy_clamps_valid_to(pats: PatLifecycleClient, sandbox: SandboxThread) -> None:
    sandbox.call(functools.partial(sandbox.world.ado.set_policy, max_lifespan=600.0))
    try:
        created = pats.create("h4-contract-clamped", KEDA, datetime.now(UTC) + timedelta(days=30))
        assert created.info.valid_to <= datetime.now(UTC) + timedelta(minutes=11)
        pats.revoke(created.info.authorization_id)
    finally:
        sandbox.call(functools.partial(sandbox.world.ado.set_policy, max_lifespan=None))


def test_a_pat_cannot_use_the_lifecycle_api(sandbox: SandboxThread, pats: PatLifecycleClient) -> None:
    created = new_pat(pats, KEDA)
    with (PatLifecycleClient(sandbox.ready["vssps_url"], lambda: created.token, backoff=FAST) as wrong,
          pytest.raises(UnauthorizedError) as caught):
        wrong.list()
    assert caught.value.status == 401
    assert created.token.reveal() not in str(caught.value) + repr(caught.value)
    pats.revoke(created.info.authorization_id)


# -- organization reads with PATs ----------------------------------------------------------------


def test_keda_pat_reads_pools_agents_and_job_requests(pats: PatLifecycleClient, make_ado: Any,
                                                      sandbox: SandboxThread) -> None:
    ado_world = sandbox.world.ado

    def seed_pool() -> tuple[int, int, int, int, int]:
        pool_id = ado_world.add_pool("h4-contract-pool")
        agent_id = ado_world.register_agent(pool_id, "h4-agent")
        running = ado_world.queue_job(pool_id)
        ado_world.assign_job(pool_id, agent_id)
        waiting = ado_world.queue_job(pool_id)
        canceled = ado_world.queue_job(pool_id)
        ado_world.finish_job(canceled, "canceled")
        return pool_id, agent_id, running, waiting, canceled

    pool_id, agent_id, running, waiting, canceled = sandbox.call(seed_pool)
    created = new_pat(pats, KEDA)
    ado = make_ado(created.token)

    pool = ado.find_pool("h4-contract-pool")
    assert pool.id == pool_id
    assert ado.find_pool("H4-CONTRACT-POOL") == pool                   # the service ignores case
    assert ado.find_pool("agents-a").id == sandbox.world.seeded.pools["agents-a"]
    [agent] = ado.list_agents(pool_id)
    assert (agent.id, agent.name, agent.assigned_request_id) == (agent_id, "h4-agent", running)
    jobs = {j.request_id: j for j in ado.list_job_requests(pool_id)}
    assert set(jobs) == {running, waiting, canceled}
    assert [r for r, j in jobs.items() if j.is_queued] == [waiting]
    assert sandbox.call(ado_world.queued_jobs, pool_id) == 1
    assert jobs[running].receive_time is not None and jobs[running].result is None
    assert jobs[canceled].result == "canceled" and jobs[waiting].queue_time is not None
    data = ado.connection_data()
    assert data.authenticated_user_id == sandbox.world.seeded.bot_oid

    records = [r for r in sandbox.call(sandbox.world.log.records, "ado")
               if r.headers.get("User-Agent", "").startswith("ado-patrol/")]
    assert records and all(r.headers.get("X-TFS-FedAuthRedirect") == "Suppress" for r in records)
    pats.revoke(created.info.authorization_id)


def test_daily_checks_pat_reads_builds_and_releases(pats: PatLifecycleClient, make_ado: Any,
                                                    sandbox: SandboxThread) -> None:
    created = new_pat(pats, DAILY)
    ado = make_ado(created.token)
    params = sandbox.world.params
    definition_id = ado.find_build_definition(params.project, params.definition)
    assert definition_id == sandbox.world.seeded.definition_id
    [latest] = ado.latest_builds(params.project, definition_id)
    assert latest.status == "completed" and latest.definition_id == definition_id
    assert latest.finish_time is not None and latest.finish_time.tzinfo is UTC
    three = ado.latest_builds(params.project, definition_id, top=3, result_filter="succeeded")
    finish = [b.finish_time for b in three]
    assert len(three) >= 2 and all(f is not None for f in finish)
    assert finish == sorted((f for f in finish if f is not None), reverse=True)
    deployments = ado.latest_release_deployments(params.project)
    assert len(deployments) == 1 and deployments[0].release_id is not None

    result = ado.probe(DAILY, project=params.project)
    assert result.ok, result.detail
    assert result.unverified == ("vso.pipelineresources_use",)
    pats.revoke(created.info.authorization_id)


def test_probe_spots_a_missing_scope(pats: PatLifecycleClient, make_ado: Any,
                                     sandbox: SandboxThread) -> None:
    created = new_pat(pats, KEDA)
    result = make_ado(created.token).probe(DAILY, project=sandbox.world.params.project)
    assert result.scopes["vso.agentpools"] is True
    assert result.scopes["vso.build"] is False and result.scopes["vso.release"] is False
    assert not result.ok and "VS30063" in result.detail
    pats.revoke(created.info.authorization_id)


def test_expired_and_revoked_pats_are_unauthorized(pats: PatLifecycleClient, make_ado: Any,
                                                   sandbox: SandboxThread) -> None:
    expired, revoked = new_pat(pats, KEDA), new_pat(pats, KEDA)
    sandbox.call(sandbox.world.ado.expire_pat, expired.info.authorization_id)
    pats.revoke(revoked.info.authorization_id)

    with pytest.raises(UnauthorizedError, match="has expired") as caught:
        make_ado(expired.token).find_pool("agents-a")
    assert expired.token.reveal() not in str(caught.value) + repr(caught.value)
    with pytest.raises(UnauthorizedError) as caught:
        make_ado(revoked.token).list_agents(1)
    assert caught.value.status == 401
    probe = make_ado(revoked.token).probe(KEDA)
    assert probe.scopes == {"vso.agentpools_manage": False} and not probe.ok


def test_bearer_auth_for_the_bot(make_ado: Any, token_provider: Callable[[], Secret]) -> None:
    ado = make_ado(token_provider, auth="bearer")
    assert ado.find_pool("agents-b").name == "agents-b"


# -- rate limits and faults ----------------------------------------------------------------------


def test_throttled_then_retried(pats: PatLifecycleClient, make_ado: Any, faults: Any,
                                sleeps: list[float]) -> None:
    created = new_pat(pats, KEDA)
    ado = make_ado(created.token)
    faults(Fault(kind="throttle", service="ado", path_regex="/distributedtask/pools/?$", retry_after=2,
                 remaining=1))
    assert ado.find_pool("agents-a").name == "agents-a"
    assert sleeps == [2.0] and ado.requests_made == 2
    pats.revoke(created.info.authorization_id)


def test_delayed_200_slows_the_next_request(pats: PatLifecycleClient, make_ado: Any, faults: Any,
                                            sleeps: list[float]) -> None:
    created = new_pat(pats, KEDA)
    ado = make_ado(created.token)
    faults(Fault(kind="latency", service="ado", path_regex="/distributedtask/pools/?$", delay=0.05,
                 retry_after=30, remaining=1))
    pool = ado.find_pool("agents-a")
    assert sleeps == [] and ado.throttle_until > 0
    ado.list_agents(pool.id)
    assert len(sleeps) == 1 and 25 < sleeps[0] <= 30
    pats.revoke(created.info.authorization_id)


def test_server_errors_are_retried(pats: PatLifecycleClient, make_ado: Any, faults: Any,
                                   sleeps: list[float]) -> None:
    created = new_pat(pats, KEDA)
    ado = make_ado(created.token)
    faults(Fault(kind="status", service="ado", path_regex="/agents/?$", status=503, remaining=2))
    ado.list_agents(1)
    assert sleeps == [0.01, 0.01] and ado.requests_made == 3
    pats.revoke(created.info.authorization_id)
