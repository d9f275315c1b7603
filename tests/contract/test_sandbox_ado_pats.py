"""PATs as real ADO treats them, over real HTTP (docs/external-apis.md, "PAT Lifecycle API"):

* a PAT is matched exactly as sent: ADO strips no whitespace (only KEDA trims one trailing
  newline, on its side), so ``pat + "\\n"`` is an unknown credential;
* global (``allOrgs``) PATs stop authenticating on 2026-12-01 (Microsoft devblog "Retirement of
  global personal access tokens in Azure DevOps"; the cut-over is the ``global_pat_cutoff``
  scenario parameter so a test can sit on either side);
* disabling the owner in Entra revokes their PATs (Microsoft Learn "Use personal access tokens":
  within up to an hour; ``disabled_user_revoke_delay``, 0 by default);
* an update's ``validTo`` is capped at the PAT's validFrom + the policy's maximum lifespan.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox.ado import GLOBAL_PAT_CUTOFF, parse_datetime
from sandbox.app import SandboxThread
from sandbox.scenarios import scenario

pytestmark = pytest.mark.contract

SUPPRESS = {"X-TFS-FedAuthRedirect": "Suppress"}
QUIET = {"job_interval": None, "pipeline_interval": None, "keyvault_reader_refresh": None}


def basic(pat: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f":{pat}".encode()).decode()}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _pat(sb: SandboxThread, *, all_orgs: bool = False, lifetime: float = 600.0) -> tuple[str, str]:
    world = sb.world
    auth_id, token = sb.call(world.ado.issue_pat, world.seeded.bot_oid, "t", ["vso.agentpools"],
                             time.time() + lifetime, all_orgs)
    return str(auth_id), str(token)


def _status(http: httpx.Client, sb: SandboxThread, token: str) -> int:
    url = f"{sb.ready['organization_url']}/_apis/connectionData"
    return http.get(url, headers=basic(token) | SUPPRESS).status_code


def test_a_pat_is_matched_exactly_as_sent(sandbox: SandboxThread, http: httpx.Client) -> None:
    _, token = _pat(sandbox)
    assert _status(http, sandbox, token) == 200
    for variant in (token + "\n", token + " ", " " + token, token + "\r\n", token.upper()):
        assert _status(http, sandbox, variant) == 401, repr(variant[-2:])


def test_the_default_cutoff_is_microsofts_date() -> None:
    assert parse_datetime("2026-12-01T00:00:00Z") == GLOBAL_PAT_CUTOFF
    assert scenario("default").global_pat_cutoff == GLOBAL_PAT_CUTOFF


@pytest.mark.parametrize("offset, global_status", [(3600.0, 200), (-1.0, 401)])
def test_a_global_pat_stops_authenticating_at_the_cutoff(
    tmp_path: Path, http: httpx.Client, offset: float, global_status: int
) -> None:
    params = scenario("default", global_pat_cutoff=time.time() + offset, **QUIET)
    with SandboxThread(str(tmp_path), params) as sb:
        _, global_token = _pat(sb, all_orgs=True)
        _, org_token = _pat(sb)
        assert _status(http, sb, global_token) == global_status
        assert _status(http, sb, org_token) == 200          # org-scoped PATs are not affected


def test_no_cutoff_keeps_global_pats_working(tmp_path: Path, http: httpx.Client) -> None:
    with SandboxThread(str(tmp_path), scenario("default", global_pat_cutoff=None, **QUIET)) as sb:
        _, global_token = _pat(sb, all_orgs=True)
        assert _status(http, sb, global_token) == 200


def _pats_by_id(http: httpx.Client, sb: SandboxThread) -> dict[str, dict[str, object]]:
    pats = http.get(f"{sb.ready['control_url']}/ado/pats").json()["pats"]
    return {str(p["authorizationId"]): p for p in pats}


def test_disabling_the_bot_revokes_its_pats_and_enabling_does_not_restore_them(
    tmp_path: Path, http: httpx.Client
) -> None:
    with SandboxThread(str(tmp_path), scenario("default", **QUIET)) as sb:
        control = sb.ready["control_url"]
        keda_id, daily_id = sb.world.seeded.keda_pat_id, sb.world.seeded.daily_pat_id
        keda_token = sb.call(sb.world.clusters["build-a"].secret_value, "azure-devops", "azure-devops-token",
                             "token")
        assert _status(http, sb, keda_token) == 200

        resp = http.post(f"{control}/entra/users/disable", json={})
        assert resp.status_code == 200 and resp.json() == {"username": sb.ready["bot"]["username"],
                                                           "enabled": False}
        assert _status(http, sb, keda_token) == 401
        pats = _pats_by_id(http, sb)
        assert pats[keda_id]["status"] == pats[daily_id]["status"] == "revoked"
        assert pats[keda_id]["revokedAt"] is not None

        assert http.post(f"{control}/entra/users/enable", json={}).json()["enabled"] is True
        assert _status(http, sb, keda_token) == 401          # a revocation that happened stays
        assert http.post(f"{control}/entra/users/disable", json={"username": "nobody@x"}).status_code == 404


def test_the_revocation_after_disabling_can_lag(tmp_path: Path, http: httpx.Client) -> None:
    with SandboxThread(str(tmp_path), scenario("default", disabled_user_revoke_delay=1.0, **QUIET)) as sb:
        control = sb.ready["control_url"]
        _, token = _pat(sb)
        http.post(f"{control}/entra/users/disable", json={})
        assert _status(http, sb, token) == 200              # ADO has not caught up yet
        deadline = time.monotonic() + 5
        while _status(http, sb, token) != 401:
            assert time.monotonic() < deadline, "PAT still authenticates after the revocation delay"
            time.sleep(0.1)

        # Re-enabling before the delay has run out cancels a revocation still pending.
        _, fresh = _pat(sb)
        http.post(f"{control}/entra/users/enable", json={})
        http.post(f"{control}/entra/users/disable", json={})
        http.post(f"{control}/entra/users/enable", json={})
        time.sleep(1.2)
        assert _status(http, sb, fresh) == 200


def test_update_caps_valid_to_at_valid_from_plus_the_maximum_lifespan(
    sandbox: SandboxThread, http: httpx.Client, bot_token: str
) -> None:
    control = sandbox.ready["control_url"]
    auth_id, _ = _pat(sandbox, lifetime=600)
    started = time.time() - 1800
    sandbox.call(setattr, sandbox.world.ado.pat(auth_id), "valid_from", started)
    assert http.patch(f"{control}/ado/policy", json={"max_lifespan": 3600}).status_code == 200
    try:
        url = f"{sandbox.ready['vssps_url']}/_apis/tokens/pats?api-version=7.1-preview.1"
        auth = {"Authorization": f"Bearer {bot_token}"} | SUPPRESS
        asked = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 7200))
        body = http.put(url, headers=auth, json={"authorizationId": auth_id, "validTo": asked}).json()
        assert body["patTokenError"] == "none"
        valid_to = parse_datetime(body["patToken"]["validTo"])
        assert valid_to == pytest.approx(started + 3600, abs=0.01)     # not now + 3600
        created = http.post(url, headers=auth, json={"displayName": "c", "scope": "vso.build",
                                                     "validTo": asked}).json()
        assert parse_datetime(created["patToken"]["validTo"]) == pytest.approx(time.time() + 3600, abs=5)
    finally:
        http.patch(f"{control}/ado/policy", json={"max_lifespan": None})
