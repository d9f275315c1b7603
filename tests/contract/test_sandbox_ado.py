"""The sandbox ADO over real HTTP with httpx: KEDA's exact requests, auth failure modes, scopes,
the PAT lifecycle API with its policies, paging, dates, and the swagger shapes."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from sandbox.app import SandboxThread

pytestmark = pytest.mark.contract

SPECS = Path(__file__).resolve().parents[1] / "fixtures" / "specs" / "azure-devops"
SUPPRESS = {"X-TFS-FedAuthRedirect": "Suppress"}
EXPIRED_HEADER = "Access%20Denied%3A%20The%20Personal%20Access%20Token%20used%20has%20expired."
ADO_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$")


def basic(pat: str, user: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pat}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def urls(sandbox: SandboxThread) -> dict[str, str]:
    r = sandbox.ready
    return {
        "org": r["organization_url"],
        "vssps": r["vssps_url"],
        "vsrm": r["vsrm_url"],
        "control": r["control_url"],
    }


def new_pat(
    sb: SandboxThread, scopes: list[str], lifetime: float = 600.0, name: str = "test"
) -> tuple[str, str]:
    """(authorizationId, token) of a fresh bot-owned PAT, seeded directly in the world."""
    world = sb.world
    auth_id, token = sb.call(world.ado.issue_pat, world.seeded.bot_oid, name, scopes, time.time() + lifetime)
    return str(auth_id), str(token)


def keda_pat(sb: SandboxThread) -> str:
    value = sb.call(sb.world.clusters["build-a"].secret_value, "azure-devops", "azure-devops-token", "token")
    assert isinstance(value, str)
    return value


# ---------------------------------------------------------------- swagger validation


@functools.cache
def _validator(spec_file: str, definition: str) -> jsonschema.Draft4Validator:
    """Swagger 2.0 schemas are JSON Schema draft 4; `#/definitions/...` refs resolve in the document."""
    spec = json.loads((SPECS / spec_file).read_text(encoding="utf-8-sig"))
    schema = {"$ref": f"#/definitions/{definition}", "definitions": spec["definitions"]}
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _without_nulls(value: Any) -> Any:
    """Swagger 2.0 has no 'nullable'; ADO sends explicit nulls for absent optional values."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def validate(body: Any, spec_file: str, definition: str, *, keep_nulls: bool = False) -> None:
    _validator(spec_file, definition).validate(body if keep_nulls else _without_nulls(body))


def test_validator_rejects_a_wrong_shape() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate({"patToken": {"validTo": 5}, "patTokenError": "none"}, "tokens-7.1.json", "PatTokenResult")
    with pytest.raises(jsonschema.ValidationError):
        validate({"patTokenError": "sessionTokenRequired"}, "tokens-7.1.json", "PatTokenResult")


# ---------------------------------------------------------------- KEDA's requests


def test_keda_pool_lookup_and_queue_poll_exactly_as_keda_sends_them(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    pat = keda_pat(sandbox)
    resp = http.get(f"{urls['org']}/_apis/distributedtask/pools?poolName=agents-a", headers=basic(pat))
    assert resp.status_code == 200
    body = resp.json()
    assert body["count"] == 1 and len(body["value"]) == 1
    pool = body["value"][0]
    assert pool["name"] == "agents-a"
    validate(pool, "taskAgent71.json", "TaskAgentPool")

    sandbox.call(sandbox.world.ado.queue_job, pool["id"])
    resp = http.get(
        f"{urls['org']}/_apis/distributedtask/pools/{pool['id']}/jobrequests?$top=250", headers=basic(pat)
    )
    assert resp.status_code == 200
    jobs = resp.json()
    assert jobs["count"] == len(jobs["value"]) >= 1
    for job in jobs["value"]:
        assert {
            "requestId",
            "queueTime",
            "demands",
            "definition",
            "owner",
            "data",
            "poolId",
            "orchestrationId",
            "priority",
            "planType",
            "planId",
            "jobId",
            "scopeId",
            "hostId",
            "serviceOwner",
        } <= set(job)
        assert job["poolId"] == pool["id"]
        assert "matchedAgents" not in job  # $top changes the format (KEDA #4387)
        assert all(isinstance(d, str) for d in job["demands"])
        assert ADO_DATE.match(job["queueTime"])
        if "result" in job:
            assert job["result"] in (
                "succeeded",
                "succeededWithIssues",
                "failed",
                "canceled",
                "skipped",
                "abandoned",
            )
    ids = [j["requestId"] for j in jobs["value"]]
    assert ids == sorted(ids, reverse=True)

    records = sandbox.call(sandbox.world.log.records, "ado", 0)
    polled = [
        r for r in records if r.path.endswith(f"/pools/{pool['id']}/jobrequests") and r.query == "$top=250"
    ]
    assert polled and all("api-version" not in r.query for r in polled)


def test_pool_lookup_by_id_and_by_ids(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    pat = keda_pat(sandbox)
    pool_id = sandbox.call(sandbox.world.ado.pool_by_name, "agents-b")
    resp = http.get(f"{urls['org']}/_apis/distributedtask/pools?poolID={pool_id}", headers=basic(pat))
    assert resp.status_code == 200 and resp.json()["id"] == pool_id
    missing = http.get(f"{urls['org']}/_apis/distributedtask/pools?poolID=99999", headers=basic(pat))
    assert missing.status_code == 404
    resp = http.get(
        f"{urls['org']}/_apis/distributedtask/pools?poolIds=1,{pool_id}&api-version=7.1", headers=basic(pat)
    )
    assert sorted(p["id"] for p in resp.json()["value"]) == [1, pool_id]
    resp = http.get(f"{urls['org']}/_apis/distributedtask/pools/{pool_id}", headers=basic(pat))
    assert resp.json()["name"] == "agents-b"
    # a space in a pool name comes as '+' from Go's url.QueryEscape
    space_id = sandbox.call(sandbox.world.ado.add_pool, "linux agents")
    resp = http.get(f"{urls['org']}/_apis/distributedtask/pools?poolName=linux+agents", headers=basic(pat))
    assert [p["id"] for p in resp.json()["value"]] == [space_id]
    resp = http.get(f"{urls['org']}/_apis/distributedtask/pools?poolName=nope", headers=basic(pat))
    assert resp.json() == {"count": 0, "value": []}


def test_jobrequests_unfinished_only_and_matched_agents(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    world = sandbox.world
    pool_id = sandbox.call(world.ado.add_pool, "quiet-pool")
    agent_id = sandbox.call(world.ado.register_agent, pool_id, "agent-a")
    first = sandbox.call(world.ado.queue_job, pool_id)
    second = sandbox.call(world.ado.queue_job, pool_id)
    assert sandbox.call(world.ado.assign_job, pool_id, agent_id) == first
    sandbox.call(world.ado.finish_job, first, "succeeded")
    assert sandbox.call(world.ado.queued_jobs, pool_id) == 1
    pat = keda_pat(sandbox)
    base = f"{urls['org']}/_apis/distributedtask/pools/{pool_id}/jobrequests"
    everything = http.get(base, headers=basic(pat)).json()["value"]
    assert [j["requestId"] for j in everything] == [second, first]
    assert all(j["matchedAgents"][0]["name"] == "agent-a" for j in everything)
    done = everything[1]
    assert done["result"] == "succeeded" and done["reservedAgent"]["id"] == agent_id
    assert {"assignTime", "receiveTime", "finishTime"} <= set(done)
    unfinished = http.get(f"{base}?completedRequestCount=0", headers=basic(pat)).json()["value"]
    assert [j["requestId"] for j in unfinished] == [second]
    assert "result" not in unfinished[0] and "receiveTime" not in unfinished[0]


def test_agents_with_assigned_request_match_swagger(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    world = sandbox.world
    pool_id = sandbox.call(world.ado.add_pool, "agents-pool")
    online = sandbox.call(world.ado.register_agent, pool_id, "agent-online")
    offline = sandbox.call(world.ado.register_agent, pool_id, "agent-offline")
    sandbox.call(world.ado.set_agent_status, offline, "offline")
    job = sandbox.call(world.ado.queue_job, pool_id)
    sandbox.call(world.ado.assign_job, pool_id, online)
    _, pat = new_pat(sandbox, ["vso.agentpools"])
    resp = http.get(
        f"{urls['org']}/_apis/distributedtask/pools/{pool_id}/agents?includeAssignedRequest=true"
        "&includeCapabilities=true&api-version=7.1",
        headers=basic(pat) | SUPPRESS,
    )
    assert resp.status_code == 200
    agents = {a["name"]: a for a in resp.json()["value"]}
    assert agents["agent-online"]["status"] == "online" and agents["agent-online"]["enabled"] is True
    assert agents["agent-offline"]["status"] == "offline"
    assert agents["agent-online"]["assignedRequest"]["requestId"] == job
    assert "assignedRequest" not in agents["agent-offline"]
    for agent in agents.values():
        # on the wire demands are strings ("Agent.Version -gtVersion 2.182.1"); swagger: Demand objects
        shaped = {k: v for k, v in agent.items() if k != "assignedRequest"}
        validate(shaped, "taskAgent71.json", "TaskAgent")
    pool = http.get(f"{urls['org']}/_apis/distributedtask/pools/{pool_id}", headers=basic(pat)).json()
    assert pool["size"] == 2
    validate(pool, "taskAgent71.json", "TaskAgentPool")


# ---------------------------------------------------------------- authentication failure modes


def test_expiry_by_the_clock_401_with_service_error_or_203_sign_in(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    _, pat = new_pat(sandbox, ["vso.agentpools_manage"], lifetime=0.6)
    url = f"{urls['org']}/_apis/distributedtask/pools?poolName=agents-a"
    assert http.get(url, headers=basic(pat) | SUPPRESS).status_code == 200
    time.sleep(0.8)
    resp = http.get(url, headers=basic(pat) | SUPPRESS)
    assert resp.status_code == 401
    assert resp.headers["X-TFS-ServiceError"] == EXPIRED_HEADER
    assert "Basic" in resp.headers["WWW-Authenticate"]
    # KEDA never sends the suppress header: by default a bad PAT still gets 401 (kedacore/keda
    # #3159 shows real ADO answering KEDA with 401) ...
    keda_style = http.get(url, headers=basic(pat))
    assert keda_style.status_code == 401
    assert keda_style.headers["X-TFS-ServiceError"] == EXPIRED_HEADER
    # ... and the sign-in-page reading (UNVERIFIED which one ADO picks) is one switch away
    behaviour = f"{urls['control']}/ado/behaviour"
    assert http.patch(behaviour, json={"basic_pat_failure": "sign-in-page"}).status_code == 200
    try:
        keda_style = http.get(url, headers=basic(pat))
        assert keda_style.status_code == 203
        assert keda_style.headers["Content-Type"].startswith("text/html")
        assert "Sign In" in keda_style.text
        with pytest.raises(json.JSONDecodeError):
            json.loads(keda_style.text)
        assert http.get(url, headers=basic(pat) | SUPPRESS).status_code == 401
    finally:
        http.patch(behaviour, json={"basic_pat_failure": "401"})
    assert http.patch(behaviour, json={"basic_pat_failure": "302"}).status_code == 400


def test_revoked_and_unknown_pats_are_refused(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    auth_id, pat = new_pat(sandbox, ["vso.agentpools_manage"])
    url = f"{urls['org']}/_apis/distributedtask/pools"
    assert http.get(url, headers=basic(pat, user="anything")).status_code == 200  # any user name
    resp = http.post(f"{urls['control']}/ado/pats/{auth_id}/revoke")
    assert resp.status_code == 200 and resp.json()["status"] == "revoked"
    revoked = http.get(url, headers=basic(pat) | SUPPRESS)
    assert revoked.status_code == 401 and "X-TFS-ServiceError" not in revoked.headers
    assert http.get(url, headers=basic(pat)).status_code == 401
    assert http.get(url, headers=basic("not-a-pat") | SUPPRESS).status_code == 401
    assert http.get(url, headers=SUPPRESS).status_code == 401
    assert http.get(url).status_code == 203


def test_auth_failure_body_can_be_tf400813_json(urls: dict[str, str], http: httpx.Client) -> None:
    behaviour = f"{urls['control']}/ado/behaviour"
    assert http.patch(behaviour, json={"auth_failure_body": "json"}).status_code == 200
    try:
        resp = http.get(f"{urls['org']}/_apis/distributedtask/pools", headers=basic("unknown") | SUPPRESS)
        assert resp.status_code == 401
        assert resp.json()["message"].startswith("TF400813")
        assert resp.json()["typeKey"] == "UnauthorizedRequestException"
    finally:
        http.patch(behaviour, json={"auth_failure_body": "empty"})
    assert http.patch(behaviour, json={"auth_failure_body": "xml"}).status_code == 400
    empty = http.get(f"{urls['org']}/_apis/distributedtask/pools", headers=basic("unknown") | SUPPRESS)
    assert empty.status_code == 401 and empty.content == b""


def test_scopes_are_enforced_per_endpoint(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    project = "Operations"
    endpoints = {
        "pools": f"{urls['org']}/_apis/distributedtask/pools",
        "builds": f"{urls['org']}/{project}/_apis/build/builds?api-version=7.1",
        "releases": f"{urls['vsrm']}/{project}/_apis/release/releases?api-version=7.1",
        "deployments": f"{urls['vsrm']}/{project}/_apis/release/deployments",
        "connection": f"{urls['org']}/_apis/connectionData",
    }
    daily = sandbox.call(sandbox.world.kv.latest_value, "azure-devops-token")
    keda = keda_pat(sandbox)
    _, build_only = new_pat(sandbox, ["vso.build"])
    _, full = new_pat(sandbox, ["app_token"])
    expected = {
        daily: {"pools": 200, "builds": 200, "releases": 200, "deployments": 200, "connection": 200},
        keda: {"pools": 200, "builds": 401, "releases": 401, "deployments": 401, "connection": 200},
        build_only: {"pools": 401, "builds": 200, "releases": 401, "deployments": 401, "connection": 200},
        full: {"pools": 200, "builds": 200, "releases": 200, "deployments": 200, "connection": 200},
    }
    for pat, answers in expected.items():
        got = {
            name: http.get(url, headers=basic(pat) | SUPPRESS).status_code for name, url in endpoints.items()
        }
        assert got == answers
    denied = http.get(endpoints["builds"], headers=basic(keda) | SUPPRESS)
    assert denied.json()["message"].startswith("VS30063: You are not authorized to access")
    assert http.get(endpoints["builds"], headers=basic(keda)).status_code == 401


def test_entra_bearer_of_the_bot_works_on_org_apis(
    sandbox: SandboxThread,
    urls: dict[str, str],
    http: httpx.Client,
    bot_token: str,
    entra_token: Callable[..., dict[str, Any]],
) -> None:
    resp = http.get(f"{urls['org']}/_apis/distributedtask/pools?api-version=7.1", headers=bearer(bot_token))
    assert resp.status_code == 200 and resp.json()["count"] >= 4
    me = http.get(f"{urls['org']}/_apis/connectionData", headers=bearer(bot_token)).json()
    assert me["authenticatedUser"]["id"] == sandbox.world.seeded.bot_oid
    assert me["authenticatedUser"]["properties"]["Account"]["$value"] == sandbox.ready["bot"]["username"]
    vault = entra_token("https://vault.azure.net/.default")["access_token"]
    assert (
        http.get(f"{urls['org']}/_apis/distributedtask/pools", headers=bearer(vault) | SUPPRESS).status_code
        == 401
    )


# ---------------------------------------------------------------- the PAT lifecycle API


def pats_url(urls: dict[str, str], casing: str = "tokens/pats", version: str | None = "7.1-preview.1") -> str:
    url = f"{urls['vssps']}/_apis/{casing}"
    return f"{url}?api-version={version}" if version else url


def test_pat_lifecycle_create_get_update_list_revoke(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client, bot_token: str
) -> None:
    auth = bearer(bot_token) | SUPPRESS
    created = http.post(
        pats_url(urls, "Tokens/Pats", "6.1-preview"),
        headers=auth,
        json={
            "displayName": "lifecycle",
            "scope": "vso.agentpools_manage",
            "validTo": "2099-12-01T23:46:23.319Z",
            "allOrgs": False,
        },
    )
    assert created.status_code == 200, created.text
    body = created.json()
    validate(body, "tokens-7.1.json", "PatTokenResult")
    token, pat = body["patToken"]["token"], body["patToken"]
    assert body["patTokenError"] == "none" and token
    assert pat["targetAccounts"] == [sandbox.world.ado.org_id]
    assert pat["validTo"] == "2099-12-01T23:46:23.32Z"  # ADO keeps 1/300 s, like the SPEC example
    assert ADO_DATE.match(pat["validFrom"])
    auth_id = pat["authorizationId"]
    pools = f"{urls['org']}/_apis/distributedtask/pools"
    assert http.get(pools, headers=basic(token)).status_code == 200

    got = http.get(pats_url(urls) + f"&authorizationId={auth_id}", headers=auth).json()
    assert got["patToken"]["token"] is None and got["patToken"]["displayName"] == "lifecycle"
    validate(got, "tokens-7.1.json", "PatTokenResult", keep_nulls=False)

    updated = http.put(
        pats_url(urls),
        headers=auth,
        json={
            "authorizationId": auth_id,
            "displayName": "lifecycle-2",
            "validTo": "2099-12-25T23:46:23.1033333Z",
        },
    )
    assert updated.status_code == 200
    upd = updated.json()
    assert upd["patTokenError"] == "none" and upd["patToken"]["token"] is None
    assert upd["patToken"]["validTo"] == "2099-12-25T23:46:23.1033333Z"  # 7 fractional digits
    assert upd["patToken"]["displayName"] == "lifecycle-2"
    assert http.get(pools, headers=basic(token)).status_code == 200  # same token still works

    listed = http.get(pats_url(urls) + "&displayFilterOption=active", headers=auth).json()
    validate(listed, "tokens-7.1.json", "PagedPatTokens", keep_nulls=False)
    mine = [p for p in listed["patTokens"] if p["authorizationId"] == auth_id]
    assert len(mine) == 1 and mine[0]["token"] is None

    revoked = http.delete(pats_url(urls) + f"&authorizationId={auth_id}", headers=auth)
    assert revoked.status_code == 204 and revoked.content == b""
    assert http.get(pools, headers=basic(token) | SUPPRESS).status_code == 401
    listed = http.get(pats_url(urls) + "&displayFilterOption=revoked", headers=auth).json()
    assert auth_id in [p["authorizationId"] for p in listed["patTokens"]]
    # the value never appears again
    assert token not in http.get(pats_url(urls) + "&displayFilterOption=all", headers=auth).text


def test_pat_api_refuses_everything_but_a_user_entra_token(
    sandbox: SandboxThread,
    urls: dict[str, str],
    http: httpx.Client,
    entra_token: Callable[..., dict[str, Any]],
) -> None:
    url = pats_url(urls)
    pat = keda_pat(sandbox)
    sign_in = http.get(url, headers=basic(pat))
    assert sign_in.status_code == 203 and sign_in.headers["Content-Type"].startswith("text/html")
    assert http.get(url, headers=basic(pat) | SUPPRESS).status_code == 401
    assert http.get(url, headers=SUPPRESS).status_code == 401
    vault_user = entra_token("https://vault.azure.net/.default")["access_token"]
    assert http.get(url, headers=bearer(vault_user) | SUPPRESS).status_code == 401
    # a service principal (client credentials) cannot manage PATs
    client_id = sandbox.ready["patrol_client"]["client_id"]
    secret = Path(sandbox.ready["patrol_client"]["client_secret_file"]).read_text().strip()
    with httpx.Client(verify=ssl.create_default_context(cafile=sandbox.ready["ca_bundle"])) as tls:
        app_token = tls.post(
            f"{sandbox.ready['entra_authority']}/{sandbox.ready['bot']['tenant_id']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                "scope": "499b84ac-1321-427f-aa17-267ca6975798/.default",
            },
        ).json()["access_token"]
    assert http.get(url, headers=bearer(app_token) | SUPPRESS).status_code == 403


def test_pat_api_needs_a_preview_api_version(
    urls: dict[str, str], http: httpx.Client, bot_token: str
) -> None:
    resp = http.get(pats_url(urls, version="7.1"), headers=bearer(bot_token) | SUPPRESS)
    assert resp.status_code == 400
    assert resp.json()["typeKey"] == "VssInvalidPreviewVersionException"
    assert http.get(pats_url(urls, version=None), headers=bearer(bot_token)).status_code == 200


def test_pat_list_paging_and_sorting(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client, bot_token: str
) -> None:
    for i in range(7):
        new_pat(sandbox, ["vso.build"], name=f"paging-{i}")
    auth = bearer(bot_token) | SUPPRESS
    query = "&displayFilterOption=all&sortByOption=displayName&isSortAscending=false&$top=3"
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        url = pats_url(urls) + query + (f"&continuationToken={token}" if token else "")
        page = http.get(url, headers=auth).json()
        validate(page, "tokens-7.1.json", "PagedPatTokens")
        assert len(page["patTokens"]) <= 3
        names += [p["displayName"] for p in page["patTokens"]]
        pages += 1
        token = page["continuationToken"]
        if not token:
            break
    everyone = http.get(pats_url(urls) + "&displayFilterOption=all", headers=auth).json()["patTokens"]
    assert len(names) == len(everyone) and pages == -(-len(everyone) // 3)
    assert names == sorted(names, key=str.lower, reverse=True)
    assert [n for n in names if n.startswith("paging-")] == [f"paging-{i}" for i in range(6, -1, -1)]
    big = http.get(pats_url(urls) + "&displayFilterOption=all&$top=500", headers=auth).json()
    assert len(big["patTokens"]) == min(100, len(everyone))
    bad = http.get(pats_url(urls) + "&continuationToken=%%%", headers=auth)
    assert bad.status_code == 400


def test_expired_filter_follows_the_clock(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client, bot_token: str
) -> None:
    auth_id, _ = new_pat(sandbox, ["vso.build"], lifetime=600, name="soon-expired")
    resp = http.post(f"{urls['control']}/ado/pats/{auth_id}/expire")
    assert resp.status_code == 200 and resp.json()["status"] == "expired"
    auth = bearer(bot_token) | SUPPRESS
    expired = http.get(pats_url(urls) + "&displayFilterOption=expired", headers=auth).json()["patTokens"]
    active = http.get(pats_url(urls) + "&displayFilterOption=active", headers=auth).json()["patTokens"]
    assert auth_id in [p["authorizationId"] for p in expired]
    assert auth_id not in [p["authorizationId"] for p in active]
    extend = http.put(
        pats_url(urls), headers=auth, json={"authorizationId": auth_id, "validTo": "2099-01-01T00:00:00Z"}
    )
    assert extend.json()["patTokenError"] == "expiredPatCannotBeExtended"


@pytest.fixture
def policy(urls: dict[str, str], http: httpx.Client) -> Iterator[None]:
    yield
    http.put(
        f"{urls['control']}/ado/policy",
        json={
            "max_lifespan": None,
            "lifespan_mode": "clamp",
            "restrict_full_scope": False,
            "restrict_global": False,
            "error_status": 200,
        },
    )


@pytest.mark.usefixtures("policy")
def test_lifespan_policy_clamps_valid_to(urls: dict[str, str], http: httpx.Client, bot_token: str) -> None:
    assert http.patch(f"{urls['control']}/ado/policy", json={"max_lifespan": 3600}).status_code == 200
    before = time.time()
    resp = http.post(
        pats_url(urls),
        headers=bearer(bot_token),
        json={
            "displayName": "clamped",
            "scope": "vso.build",
            "validTo": "2099-01-01T00:00:00Z",
            "allOrgs": False,
        },
    )
    body = resp.json()
    assert resp.status_code == 200 and body["patTokenError"] == "none"
    valid_to = _epoch(body["patToken"]["validTo"])
    assert before + 3600 - 1 <= valid_to <= time.time() + 3600 + 1


def _epoch(text: str) -> float:
    from datetime import datetime

    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + (float("0." + frac) if frac else 0.0)


@pytest.mark.usefixtures("policy")
@pytest.mark.parametrize("error_status", [200, 400])
@pytest.mark.parametrize(
    ("policy_change", "request_body", "error"),
    [
        (
            {"max_lifespan": 3600, "lifespan_mode": "reject"},
            {"scope": "vso.build", "validTo": "2099-01-01T00:00:00Z"},
            "patLifespanPolicyViolation",
        ),
        ({"restrict_full_scope": True}, {"scope": "app_token"}, "fullScopePatPolicyViolation"),
        ({"restrict_global": True}, {"scope": "vso.build", "allOrgs": True}, "globalPatPolicyViolation"),
    ],
)
def test_policy_violations_in_both_wire_modes(
    urls: dict[str, str],
    http: httpx.Client,
    bot_token: str,
    error_status: int,
    policy_change: dict[str, Any],
    request_body: dict[str, Any],
    error: str,
) -> None:
    resp = http.put(f"{urls['control']}/ado/policy", json={**policy_change, "error_status": error_status})
    assert resp.status_code == 200, resp.text
    body = {"displayName": "violating", "validTo": "2099-01-01T00:00:00Z", "allOrgs": False, **request_body}
    answer = http.post(pats_url(urls), headers=bearer(bot_token), json=body)
    assert answer.status_code == error_status
    assert answer.json() == {"patToken": None, "patTokenError": error}
    validate(answer.json(), "tokens-7.1.json", "PatTokenResult")


def test_global_pat_has_null_target_accounts_and_create_validation(
    urls: dict[str, str], http: httpx.Client, bot_token: str
) -> None:
    auth = bearer(bot_token)
    body = http.post(
        pats_url(urls),
        headers=auth,
        json={
            "displayName": "global",
            "scope": "vso.build",
            "validTo": "2099-01-01T00:00:00Z",
            "allOrgs": True,
        },
    ).json()
    assert body["patTokenError"] == "none" and body["patToken"]["targetAccounts"] is None
    validate(body, "tokens-7.1.json", "PatTokenResult")
    cases = [
        ({"scope": "vso.build"}, "displayNameRequired"),
        ({"displayName": "x", "scope": "not a scope!"}, "invalidScope"),
        ({"displayName": "x", "scope": "vso.build", "validTo": "2001-01-01T00:00:00Z"}, "invalidValidTo"),
        ({"displayName": "x", "scope": "vso.build", "validTo": "tomorrow"}, "invalidValidTo"),
    ]
    for request_body, error in cases:
        assert http.post(pats_url(urls), headers=auth, json=request_body).json()["patTokenError"] == error
    assert (
        http.put(pats_url(urls), headers=auth, json={"displayName": "x"}).json()["patTokenError"]
        == "invalidAuthorizationId"
    )
    unknown = "4ab5764f-4193-4f1d-b995-64144880b7d7"
    assert (
        http.get(pats_url(urls) + f"&authorizationId={unknown}", headers=auth).json()["patTokenError"]
        == "authorizationNotFound"
    )
    assert http.delete(pats_url(urls) + f"&authorizationId={unknown}", headers=auth).status_code == 404


# ---------------------------------------------------------------- builds and releases


def test_daily_checks_latest_run_query_and_paging(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    pat = sandbox.call(sandbox.world.kv.latest_value, "azure-devops-token")
    project = f"{urls['org']}/Operations/_apis/build"
    defs = http.get(f"{project}/definitions?name=daily-checks&api-version=7.1", headers=basic(pat)).json()
    assert defs["count"] == 1
    def_id = defs["value"][0]["id"]
    latest = http.get(
        f"{project}/builds?definitions={def_id}&$top=1&queryOrder=finishTimeDescending"
        "&statusFilter=completed&api-version=7.1",
        headers=basic(pat),
    )
    assert latest.status_code == 200
    build = latest.json()["value"][0]
    validate(build, "build71.json", "Build")
    assert build["definition"]["id"] == def_id and build["status"] == "completed"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$", build["finishTime"])
    all_builds = http.get(
        f"{project}/builds?definitions={def_id}&queryOrder=finishTimeDescending&statusFilter=completed",
        headers=basic(pat),
    ).json()["value"]
    assert build["id"] == all_builds[0]["id"]
    finish_times = [b["finishTime"] for b in all_builds]
    assert finish_times == sorted(finish_times, reverse=True)

    seen: list[int] = []
    token = None
    while True:
        url = f"{project}/builds?definitions={def_id}&$top=1&queryOrder=queueTimeAscending"
        resp = http.get(url + (f"&continuationToken={token}" if token else ""), headers=basic(pat))
        seen += [b["id"] for b in resp.json()["value"]]
        token = resp.headers.get("x-ms-continuationtoken")
        if token is None:
            break
    assert len(seen) == len(set(seen)) >= 3
    failed = http.get(f"{project}/builds?resultFilter=failed&definitions={def_id}", headers=basic(pat)).json()
    assert all(b["result"] == "failed" for b in failed["value"])
    missing = http.get(f"{urls['org']}/NoSuchProject/_apis/build/builds", headers=basic(pat) | SUPPRESS)
    assert missing.status_code == 404


def test_releases_and_deployments_are_lists(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client
) -> None:
    pat = sandbox.call(sandbox.world.kv.latest_value, "azure-devops-token")
    releases = http.get(
        f"{urls['vsrm']}/Operations/_apis/release/releases?api-version=7.1", headers=basic(pat)
    ).json()
    assert releases["count"] >= 1 and releases["value"][0]["status"] in (
        "active",
        "draft",
        "abandoned",
        "undefined",
    )
    deployments = http.get(
        f"{urls['vsrm']}/Operations/_apis/release/deployments", headers=basic(pat)
    ).json()
    assert deployments["count"] >= 1 and {"startedOn", "completedOn", "deploymentStatus"} <= set(
        deployments["value"][0]
    )


# ---------------------------------------------------------------- throttling and faults


def test_throttling_429_and_delayed_200(
    urls: dict[str, str], http: httpx.Client, sandbox: SandboxThread
) -> None:
    pat = keda_pat(sandbox)
    url = f"{urls['org']}/_apis/distributedtask/pools?poolName=agents-b&sandbox-test=throttle"
    fault = http.post(
        f"{urls['control']}/faults",
        json={
            "kind": "throttle",
            "service": "ado",
            "path_regex": "sandbox-test=throttle",
            "retry_after": 7,
            "remaining": 1,
        },
    )
    assert fault.status_code == 201
    blocked = http.get(url, headers=basic(pat))
    assert blocked.status_code == 429
    assert blocked.headers["Retry-After"] == "7" and blocked.headers["X-RateLimit-Remaining"] == "0"
    for header in ("X-RateLimit-Resource", "X-RateLimit-Limit", "X-RateLimit-Reset"):
        assert header in blocked.headers
    assert blocked.json()["message"].startswith("TF400733")
    assert http.get(url, headers=basic(pat)).status_code == 200  # remaining counted down
    http.post(
        f"{urls['control']}/faults",
        json={
            "kind": "latency",
            "service": "ado",
            "path_regex": "sandbox-test=throttle",
            "delay": 0.3,
            "retry_after": 3,
            "remaining": 1,
        },
    )
    started = time.monotonic()
    delayed = http.get(url, headers=basic(pat))
    assert time.monotonic() - started >= 0.3
    assert delayed.status_code == 200 and delayed.json()["count"] == 1
    assert delayed.headers["Retry-After"] == "3" and delayed.headers["X-RateLimit-Delay"] == "0.300"


def test_status_and_timeout_faults(urls: dict[str, str], http: httpx.Client, sandbox: SandboxThread) -> None:
    pat = keda_pat(sandbox)
    url = f"{urls['org']}/_apis/distributedtask/pools?sandbox-test=faults"
    fid = http.post(
        f"{urls['control']}/faults",
        json={
            "kind": "status",
            "service": "ado",
            "path_regex": "sandbox-test=faults",
            "status": 503,
            "method": "GET",
        },
    ).json()["id"]
    assert http.get(url, headers=basic(pat)).status_code == 503
    assert http.get(url, headers=basic(pat)).status_code == 503
    listed = http.get(f"{urls['control']}/faults").json()["faults"]
    assert [f["hits"] for f in listed if f["id"] == fid] == [2]
    assert http.delete(f"{urls['control']}/faults/{fid}").status_code == 204
    assert http.get(url, headers=basic(pat)).status_code == 200
    http.post(
        f"{urls['control']}/faults",
        json={
            "kind": "timeout",
            "service": "ado",
            "path_regex": "sandbox-test=faults",
            "delay": 0.2,
            "remaining": 1,
        },
    )
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(url, headers=basic(pat))
    records = sandbox.call(sandbox.world.log.records, "ado", 0)
    assert any(r.status == 0 and r.query == "sandbox-test=faults" for r in records)
    assert (
        http.post(f"{urls['control']}/faults", json={"kind": "explode", "service": "ado"}).status_code == 400
    )


def test_request_log_never_holds_credentials(
    sandbox: SandboxThread, urls: dict[str, str], http: httpx.Client, bot_token: str
) -> None:
    since = time.time()
    pat = keda_pat(sandbox)
    http.get(f"{urls['org']}/_apis/distributedtask/pools?sandbox-test=log", headers=basic(pat))
    http.get(pats_url(urls), headers=bearer(bot_token))
    resp = http.get(f"{urls['control']}/requests", params={"service": "ado", "since": since})
    assert resp.status_code == 200
    assert pat not in resp.text and bot_token not in resp.text
    records = resp.json()["requests"]
    mine = [r for r in records if r["query"] == "sandbox-test=log"]
    assert len(mine) == 1 and mine[0]["status"] == 200
    assert (
        mine[0]["headers"]["Authorization"]
        == f"Basic <redacted {hashlib.sha256(pat.encode()).hexdigest()[:12]}>"
    )
    assert all(r["service"] == "ado" and r["time"] >= since for r in records)
    state = http.get(f"{urls['control']}/state").text
    assert pat not in state and bot_token not in state
