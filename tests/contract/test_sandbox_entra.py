"""The real, unpatched azure-identity/MSAL credentials against the sandbox Entra over TLS."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import (
    AuthenticationRecord,
    ClientSecretCredential,
    DeviceCodeCredential,
    TokenCachePersistenceOptions,
    UsernamePasswordCredential,
)
from identity_world import (
    ADO_RESOURCE,
    ADO_SCOPE,
    APP_CLIENT,
    APP_SECRET,
    PASSWORD,
    PUBLIC_CLIENT,
    TENANT,
    USER,
    VAULT_SCOPE,
    IdentityWorld,
    authority_port_hook,
    serve_identity,
)

from sandbox.entra import Entra, Principal, audience_for_scope

pytestmark = pytest.mark.contract

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
CACHE_NAME = "patrol-contract"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityWorld]:
    with serve_identity(str(tmp_path_factory.mktemp("entra")), token_lifetime=1800) as w:
        yield w


@pytest.fixture
def http(world: IdentityWorld) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.authority, verify=world.tls.client_context()) as client:
        yield client



def password_credential(
    world: IdentityWorld, password: str = PASSWORD, **extra: Any
) -> UsernamePasswordCredential:
    with warnings.catch_warnings():
        # UsernamePasswordCredential warns with stacklevel=2, i.e. attributed to *this* module.
        warnings.simplefilter("ignore", DeprecationWarning)
        return UsernamePasswordCredential(
            PUBLIC_CLIENT, USER, password, tenant_id=TENANT, **world.credential_kwargs(), **extra
        )


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def token_posts(world: IdentityWorld) -> int:
    return len(world.requests("entra", "POST", "/oauth2/v2.0/token"))


# ---------------------------------------------------------------- discovery and wire shapes


@pytest.mark.parametrize("tenant", [TENANT, "organizations", "common"])
def test_openid_configuration_names_the_endpoints_msal_needs(http: httpx.Client, tenant: str) -> None:
    response = http.get(f"/{tenant}/v2.0/.well-known/openid-configuration")

    assert response.status_code == 200
    config = response.json()
    base = str(http.base_url).rstrip("/")
    assert config["token_endpoint"] == f"{base}/{tenant}/oauth2/v2.0/token"
    assert config["authorization_endpoint"] == f"{base}/{tenant}/oauth2/v2.0/authorize"
    assert config["device_authorization_endpoint"] == f"{base}/{tenant}/oauth2/v2.0/devicecode"
    assert config["issuer"].endswith("/v2.0")


def test_unknown_tenant_is_refused_like_aad(http: httpx.Client) -> None:
    response = http.get("/00000000-0000-0000-0000-000000000000/v2.0/.well-known/openid-configuration")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_tenant"
    assert response.json()["error_codes"] == [90002]


def test_userrealm_reports_managed_accounts(http: httpx.Client) -> None:
    known = http.get(f"/common/userrealm/{USER}", params={"api-version": "1.0"}).json()
    unknown = http.get("/common/userrealm/nobody@elsewhere.example", params={"api-version": "1.0"}).json()

    assert known["account_type"] == "Managed"
    assert unknown["account_type"] == "Unknown"


def test_password_grant_response_has_the_fields_msal_relies_on(
    http: httpx.Client, world: IdentityWorld
) -> None:
    response = http.post(
        f"/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "password",
            "client_id": PUBLIC_CLIENT,
            "username": USER,
            "password": PASSWORD,
            "scope": f"{ADO_SCOPE} offline_access openid profile",
            "client_info": "1",
        },
    )

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == ADO_SCOPE
    assert body["expires_in"] == 1800
    assert body["refresh_token"]
    client_info = claims("x." + body["client_info"])
    user_oid = world.call(world.entra.user_oid, USER)
    assert user_oid is not None
    assert client_info == {"uid": user_oid, "utid": TENANT}
    id_token = claims(body["id_token"])
    assert id_token["aud"] == PUBLIC_CLIENT
    assert id_token["iss"] == f"{world.authority}/{TENANT}/v2.0"
    assert id_token["tid"] == TENANT
    assert id_token["oid"] == user_oid
    assert id_token["preferred_username"] == USER
    principal = world.call(world.entra.principal_for, body["access_token"])
    assert principal == Principal(
        oid=user_oid, tenant_id=TENANT, kind="user", upn=USER, audience=ADO_RESOURCE
    )


def test_scopes_for_two_resources_are_refused(http: httpx.Client) -> None:
    response = http.post(
        f"/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "password",
            "client_id": PUBLIC_CLIENT,
            "username": USER,
            "password": PASSWORD,
            "scope": f"{ADO_SCOPE} {VAULT_SCOPE}",
        },
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_unknown_client_is_refused(http: httpx.Client) -> None:
    response = http.post(
        f"/{TENANT}/oauth2/v2.0/token",
        data={"grant_type": "password", "client_id": "nope", "username": USER, "password": PASSWORD},
    )

    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"
    assert "AADSTS700016" in response.json()["error_description"]


def test_device_code_wire_flow_pending_then_tokens_then_redeemed(
    http: httpx.Client, world: IdentityWorld
) -> None:
    flow = http.post(
        f"/{TENANT}/oauth2/v2.0/devicecode",
        data={"client_id": PUBLIC_CLIENT, "scope": f"{ADO_SCOPE} offline_access"},
    ).json()
    assert {"device_code", "user_code", "verification_uri", "expires_in", "interval", "message"} <= set(flow)
    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": PUBLIC_CLIENT}
    poll["device_code"] = flow["device_code"]

    pending = http.post(f"/{TENANT}/oauth2/v2.0/token", data=poll)
    approved = http.post("/_sandbox/device/approve", json={"user_code": flow["user_code"], "username": USER})
    done = http.post(f"/{TENANT}/oauth2/v2.0/token", data=poll)
    again = http.post(f"/{TENANT}/oauth2/v2.0/token", data=poll)

    assert (pending.status_code, pending.json()["error"]) == (400, "authorization_pending")
    assert approved.status_code == 200
    assert done.status_code == 200
    assert done.json()["scope"] == ADO_SCOPE  # echoed from /devicecode: the poll carries no scope
    principal = world.call(world.entra.principal_for, done.json()["access_token"])
    assert principal is not None and principal.upn == USER and principal.audience == ADO_RESOURCE
    assert (again.status_code, again.json()["error"]) == (400, "bad_verification_code")


def test_device_approval_checks_the_password_when_given(http: httpx.Client) -> None:
    flow = http.post(
        f"/{TENANT}/oauth2/v2.0/devicecode", data={"client_id": PUBLIC_CLIENT, "scope": ADO_SCOPE}
    ).json()

    wrong = http.post(
        "/_sandbox/device/approve", json={"user_code": flow["user_code"], "username": USER, "password": "x"}
    )
    unknown = http.post("/_sandbox/device/approve", json={"user_code": "NOTACODE", "username": USER})

    assert wrong.status_code == 403
    assert unknown.status_code == 404


# ---------------------------------------------------------------- real credentials


def test_username_password_credential_gets_user_tokens_per_resource(world: IdentityWorld) -> None:
    with password_credential(world, raw_request_hook=authority_port_hook(world.authority)) as credential:
        before = time.time()
        ado = credential.get_token(ADO_SCOPE)
        vault = credential.get_token(VAULT_SCOPE)
        ado_again = credential.get_token(ADO_SCOPE)

    assert before + 1700 < ado.expires_on <= time.time() + 1800
    assert ado_again.token == ado.token  # served from MSAL's cache
    ado_principal = world.call(world.entra.principal_for, ado.token)
    vault_principal = world.call(world.entra.principal_for, vault.token)
    assert ado_principal is not None and vault_principal is not None
    assert (ado_principal.kind, ado_principal.upn, ado_principal.audience) == ("user", USER, ADO_RESOURCE)
    assert vault_principal.audience == "https://vault.azure.net"
    assert world.requests("entra", "GET", f"/common/userrealm/{USER}")


def test_username_password_credential_needs_the_port_hook(world: IdentityWorld) -> None:
    """MSAL drops the port for user-realm discovery: without the hook it calls 127.0.0.1:443."""
    with (
        password_credential(world) as credential,
        pytest.raises(ClientAuthenticationError, match="port=443"),
    ):
        credential.get_token(ADO_SCOPE)


def test_wrong_password_raises_client_authentication_error(world: IdentityWorld) -> None:
    with (
        password_credential(
            world, "wrong", raw_request_hook=authority_port_hook(world.authority)
        ) as credential,
        pytest.raises(ClientAuthenticationError) as caught,
    ):
        credential.get_token(ADO_SCOPE)

    assert "AADSTS50126" in str(caught.value)
    assert "wrong" not in str(caught.value).replace("wrong password", "")


def test_mfa_required_reaches_msal_as_aadsts50076(world: IdentityWorld) -> None:
    """A tenant condition (sandbox/tenant.py) is what a real client sees: MSAL raises with the code."""
    world.call(world.entra.set_condition, "mfa_required", username=USER)
    try:
        with (
            password_credential(world, raw_request_hook=authority_port_hook(world.authority)) as credential,
            pytest.raises(ClientAuthenticationError) as caught,
        ):
            credential.get_token(ADO_SCOPE)
    finally:
        world.call(world.entra.conditions.clear)
    assert "AADSTS50076" in str(caught.value)


def test_client_secret_credential_gets_app_tokens_for_the_vault(world: IdentityWorld) -> None:
    with ClientSecretCredential(TENANT, APP_CLIENT, APP_SECRET, **world.credential_kwargs()) as credential:
        token = credential.get_token(VAULT_SCOPE)

    principal = world.call(world.entra.principal_for, token.token)
    assert principal is not None
    assert (principal.kind, principal.upn, principal.audience) == ("app", None, "https://vault.azure.net")


def test_wrong_client_secret_is_invalid_client(world: IdentityWorld) -> None:
    with (
        ClientSecretCredential(TENANT, APP_CLIENT, "not-the-secret", **world.credential_kwargs()) as credential,
        pytest.raises(ClientAuthenticationError) as caught,
    ):
        credential.get_token(VAULT_SCOPE)

    assert "AADSTS7000215" in str(caught.value)
    refused = world.requests("entra", "POST", "/oauth2/v2.0/token")[-1]
    assert refused.status == 401


def test_device_code_credential_declined_login_fails(world: IdentityWorld) -> None:
    def decline(verification_uri: str, user_code: str, expires_on: object) -> None:
        world.call(world.entra.decline_device_code, user_code)

    with (
        DeviceCodeCredential(
            PUBLIC_CLIENT, tenant_id=TENANT, prompt_callback=decline, **world.credential_kwargs()
        ) as credential,
        pytest.raises(ClientAuthenticationError, match="declined"),
    ):
        credential.get_token(ADO_SCOPE)


SILENT_CHILD = r"""
import json, sys
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import AuthenticationRecord, AuthenticationRequiredError, DeviceCodeCredential
from azure.identity import TokenCachePersistenceOptions

record_path, ca, cache_name, *scopes = sys.argv[1:]
with open(record_path) as f:
    record = AuthenticationRecord.deserialize(f.read())
credential = DeviceCodeCredential(
    record.client_id,
    authentication_record=record,
    tenant_id=record.tenant_id,
    disable_instance_discovery=True,
    connection_verify=ca,
    retry_total=0,
    disable_automatic_authentication=True,
    cache_persistence_options=TokenCachePersistenceOptions(name=cache_name, allow_unencrypted_storage=True),
)
out = []
with credential:
    for scope in scopes:
        try:
            out.append({"token": credential.get_token(scope).token})
        except AuthenticationRequiredError as e:
            out.append({"error": "AuthenticationRequiredError", "scopes": list(e.scopes)})
        except ClientAuthenticationError as e:
            out.append({"error": type(e).__name__, "message": str(e)})
print(json.dumps(out))
"""


def run_silent_child(
    world: IdentityWorld, home: Path, record_path: Path, *scopes: str
) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-c", SILENT_CHILD, str(record_path), world.tls.ca_pem_path, CACHE_NAME, *scopes],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
        check=True,
    )
    answer: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_device_code_login_then_silent_use_from_a_new_process(
    world: IdentityWorld, http: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    prompts: list[str] = []

    def approve(verification_uri: str, user_code: str, expires_on: object) -> None:
        prompts.append(verification_uri)
        assert (
            http.post("/_sandbox/device/approve", json={"user_code": user_code, "username": USER}).status_code
            == 200
        )

    persistence = TokenCachePersistenceOptions(name=CACHE_NAME, allow_unencrypted_storage=True)
    with DeviceCodeCredential(
        PUBLIC_CLIENT,
        tenant_id=TENANT,
        prompt_callback=approve,
        cache_persistence_options=persistence,
        **world.credential_kwargs(),
    ) as credential:
        record = credential.authenticate(scopes=[ADO_SCOPE])
        signed_in = credential.get_token(ADO_SCOPE)

    assert prompts == [f"{world.authority}/_sandbox/devicelogin"]
    assert (record.username, record.tenant_id, record.client_id) == (USER, TENANT, PUBLIC_CLIENT)
    assert record.authority == world.authority.removeprefix("https://")
    cache_file = tmp_path / ".IdentityService" / f"{CACHE_NAME}.nocae"
    assert cache_file.exists()
    record_path = tmp_path / "record.json"
    record_path.write_text(record.serialize())
    assert "refresh" not in record_path.read_text().lower()
    assert AuthenticationRecord.deserialize(record_path.read_text()).home_account_id == record.home_account_id

    posts_before = token_posts(world)
    cached, refreshed = run_silent_child(world, tmp_path, record_path, ADO_SCOPE, VAULT_SCOPE)

    assert cached == {"token": signed_in.token}  # straight from the persistent cache
    assert token_posts(world) == posts_before + 1  # only the vault token needed the refresh grant
    vault_principal = world.call(world.entra.principal_for, refreshed["token"])
    assert vault_principal is not None
    assert (vault_principal.upn, vault_principal.audience) == (USER, "https://vault.azure.net")

    world.call(world.entra.revoke_refresh_tokens, USER)
    (after_revocation,) = run_silent_child(world, tmp_path, record_path, GRAPH_SCOPE)

    assert after_revocation == {"error": "AuthenticationRequiredError", "scopes": [GRAPH_SCOPE]}
    refused = world.requests("entra", "POST", "/oauth2/v2.0/token")[-1]
    assert refused.status == 400


# ---------------------------------------------------------------- state without HTTP


def test_access_tokens_expire_by_the_injected_clock() -> None:
    now = [1_000_000.0]
    entra = Entra(TENANT, clock=lambda: now[0], token_lifetime=600)
    entra.add_user(USER, PASSWORD)
    token = entra.issue_user_token(USER, ADO_RESOURCE)

    assert entra.principal_for(token) is not None
    now[0] += 599
    assert entra.principal_for(token) is not None
    now[0] += 1
    assert entra.principal_for(token) is None
    assert entra.principal_for("forged." + token) is None


def test_disabled_user_tokens_stop_working() -> None:
    entra = Entra(TENANT)
    entra.add_user(USER, PASSWORD)
    token = entra.issue_user_token(USER, ADO_RESOURCE)

    entra.set_user_enabled(USER, False)

    assert entra.principal_for(token) is None


@pytest.mark.parametrize(
    ("scope", "audience"),
    [
        (ADO_SCOPE, ADO_RESOURCE),
        (f"{ADO_RESOURCE}/user_impersonation", ADO_RESOURCE),
        (VAULT_SCOPE, "https://vault.azure.net"),
        ("https://vault.azure.net/user_impersonation", "https://vault.azure.net"),
        ("https://vault.azure.net", "https://vault.azure.net"),
        ("User.Read", "00000003-0000-0000-c000-000000000000"),
    ],
)
def test_audience_derived_from_scope(scope: str, audience: str) -> None:
    assert audience_for_scope(scope) == audience
