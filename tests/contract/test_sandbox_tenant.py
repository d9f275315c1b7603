"""Tenant failures through the control API (``POST /entra/failures``), answered over real HTTPS as
a real Entra tenant answers them (sources in sandbox/tenant.py): the wire shape per AADSTS code,
which grants each condition stops and which way out still works (device-code sign-in for MFA and
consent), and server-side revoked access tokens that ADO then refuses. The check through the real
azure-identity/MSAL credential is in test_sandbox_entra.py.
"""

from __future__ import annotations

import gc
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from identity_world import ADO_SCOPE

from sandbox.app import SandboxThread
from sandbox.tenant import CA_POLICY_ID

pytestmark = pytest.mark.contract

SCOPE = f"{ADO_SCOPE} offline_access openid profile"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxThread]:
    from sandbox.scenarios import scenario

    params = scenario("default", job_interval=None, pipeline_interval=None, keyvault_reader_refresh=None)
    with SandboxThread(str(tmp_path_factory.mktemp("tenant")), params) as sandbox:
        yield sandbox
        gc.collect()     # free client sockets held by caught errors while the servers still run


@pytest.fixture
def entra(sb: SandboxThread) -> Iterator[httpx.Client]:
    verify = ssl.create_default_context(cafile=sb.ready["ca_bundle"])
    with httpx.Client(base_url=sb.ready["entra_authority"], verify=verify, timeout=10) as client:
        yield client


@pytest.fixture
def control(sb: SandboxThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sb.ready["control_url"], timeout=10) as client:
        yield client
        client.delete("/entra/failures")


def _token_url(sb: SandboxThread) -> str:
    return f"/{sb.ready['bot']['tenant_id']}/oauth2/v2.0/token"


def _ropc(sb: SandboxThread, entra: httpx.Client) -> httpx.Response:
    bot = sb.ready["bot"]
    return entra.post(_token_url(sb), data={"grant_type": "password", "client_id": bot["client_id"],
                                            "username": bot["username"], "password": bot["password"],
                                            "scope": SCOPE})


def _refresh(sb: SandboxThread, entra: httpx.Client, refresh_token: str) -> httpx.Response:
    return entra.post(_token_url(sb), data={"grant_type": "refresh_token", "client_id": sb.ready["bot"]["client_id"],
                                            "refresh_token": refresh_token, "scope": SCOPE})


def _device_code(sb: SandboxThread, entra: httpx.Client) -> httpx.Response:
    bot = sb.ready["bot"]
    flow = entra.post(f"/{bot['tenant_id']}/oauth2/v2.0/devicecode",
                      data={"client_id": bot["client_id"], "scope": SCOPE}).json()
    approved = entra.post("/_sandbox/device/approve", json={"user_code": flow["user_code"],
                                                             "username": bot["username"]})
    assert approved.status_code == 200
    return entra.post(_token_url(sb), data={"grant_type": DEVICE_GRANT, "client_id": bot["client_id"],
                                            "device_code": flow["device_code"]})


def _refused(resp: httpx.Response, status: int, error: str, code: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert {"timestamp", "trace_id", "correlation_id", "error_uri"} <= set(body)
    assert "access_token" not in body
    return body


@pytest.mark.parametrize(
    "kind, code, suberror",
    [("mfa_required", 50076, "basic_action"), ("mfa_enrollment_required", 50079, "basic_action"),
     ("conditional_access_blocked", 53003, "message_only"), ("consent_missing", 65001, "consent_required")],
)
def test_user_conditions_refuse_the_password_grant_as_entra_does(
    sb: SandboxThread, entra: httpx.Client, control: httpx.Client, kind: str, code: int, suberror: str
) -> None:
    assert _ropc(sb, entra).status_code == 200
    added = control.post("/entra/failures", json={"kind": kind})
    assert added.status_code == 201 and added.json() == {"kind": kind, "username": sb.ready["bot"]["username"]}
    assert control.get("/entra/failures").json()["failures"][0]["kind"] == kind

    body = _refused(_ropc(sb, entra), 400, "invalid_grant", code)
    assert body["suberror"] == suberror
    if kind == "conditional_access_blocked":
        assert json.loads(body["claims"]) == {"access_token": {"capolids": {"essential": True,
                                                                            "values": [CA_POLICY_ID]}}}
    else:
        assert "claims" not in body
    if kind.startswith("mfa"):
        assert "499b84ac-1321-427f-aa17-267ca6975798" in body["error_description"]   # the resource asked for

    assert control.delete("/entra/failures").status_code == 204
    assert _ropc(sb, entra).status_code == 200


def test_public_client_flows_disabled_is_invalid_client_7000218(
    sb: SandboxThread, entra: httpx.Client, control: httpx.Client
) -> None:
    added = control.post("/entra/failures", json={"kind": "public_client_flows_disabled"})
    assert added.status_code == 201 and added.json()["client_id"] == "*"
    _refused(_ropc(sb, entra), 401, "invalid_client", 7000218)
    flow = entra.post(f"/{sb.ready['bot']['tenant_id']}/oauth2/v2.0/devicecode",
                      data={"client_id": sb.ready["bot"]["client_id"], "scope": SCOPE})
    assert flow.status_code == 200                       # the code is handed out; redeeming it fails
    # A confidential client (patrol's own app registration) is not affected.
    patrol = sb.ready["patrol_client"]
    secret = Path(patrol["client_secret_file"]).read_text().strip()
    app = entra.post(_token_url(sb), data={"grant_type": "client_credentials", "client_id": patrol["client_id"],
                                           "client_secret": secret, "scope": "https://vault.azure.net/.default"})
    assert app.status_code == 200


def test_mfa_and_consent_leave_the_device_code_sign_in_working(
    sb: SandboxThread, entra: httpx.Client, control: httpx.Client
) -> None:
    old_refresh = _ropc(sb, entra).json()["refresh_token"]
    for kind, code in (("mfa_required", 50076), ("consent_missing", 65001)):
        control.post("/entra/failures", json={"kind": kind})
        device = _device_code(sb, entra)
        assert device.status_code == 200, device.text      # MFA / consent done in the browser
        assert _refresh(sb, entra, device.json()["refresh_token"]).status_code == 200
        _refused(_refresh(sb, entra, old_refresh), 400, "invalid_grant", code)   # from ROPC: no MFA/consent
        control.delete("/entra/failures")


def test_conditional_access_blocks_the_device_code_sign_in_too(
    sb: SandboxThread, entra: httpx.Client, control: httpx.Client
) -> None:
    control.post("/entra/failures", json={"kind": "conditional_access_blocked"})
    body = _refused(_device_code(sb, entra), 400, "invalid_grant", 53003)
    assert "device_code" not in body and "refresh_token" not in body

def test_revoked_access_tokens_are_refused_by_ado_until_a_new_one_is_acquired(
    sb: SandboxThread, entra: httpx.Client, control: httpx.Client
) -> None:
    token = _ropc(sb, entra).json()["access_token"]
    url = f"{sb.ready['organization_url']}/_apis/connectionData"
    headers = {"X-TFS-FedAuthRedirect": "Suppress"}
    with httpx.Client(timeout=10) as ado:
        assert ado.get(url, headers=headers | {"Authorization": f"Bearer {token}"}).status_code == 200
        revoked = control.post("/entra/failures", json={"kind": "access_tokens_revoked"})
        assert revoked.status_code == 200 and revoked.json()["revoked"] >= 1
        assert ado.get(url, headers=headers | {"Authorization": f"Bearer {token}"}).status_code == 401
        fresh = _ropc(sb, entra).json()["access_token"]
        assert ado.get(url, headers=headers | {"Authorization": f"Bearer {fresh}"}).status_code == 200


def test_bad_failure_requests_are_refused_with_the_reason(control: httpx.Client) -> None:
    bad_kind = control.post("/entra/failures", json={"kind": "mfa"})
    assert bad_kind.status_code == 400 and "mfa_required" in bad_kind.json()["error"]
    no_user = control.post("/entra/failures", json={"kind": "mfa_required", "username": "nobody@x"})
    assert no_user.status_code == 404
    assert control.delete("/entra/failures?kind=nope").status_code == 400
