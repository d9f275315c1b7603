"""The real azure-keyvault-secrets SecretClient and azure-identity against the sandbox Key Vault (TLS)."""

from __future__ import annotations

import datetime
import re
import warnings
from collections.abc import Iterator

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential, UsernamePasswordCredential
from azure.keyvault.secrets import SecretClient
from identity_world import (
    ADO_RESOURCE,
    APP_CLIENT,
    APP_SECRET,
    PASSWORD,
    PUBLIC_CLIENT,
    TENANT,
    USER,
    IdentityWorld,
    authority_port_hook,
    serve_identity,
)

pytestmark = pytest.mark.contract

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityWorld]:
    with serve_identity(str(tmp_path_factory.mktemp("keyvault"))) as w:
        yield w


@pytest.fixture
def http(world: IdentityWorld) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.vault_url, verify=world.tls.client_context()) as client:
        yield client



@pytest.fixture
def client(world: IdentityWorld) -> Iterator[SecretClient]:
    """A SecretClient authenticated as patrol's own app (client credentials), as production does."""
    credential = ClientSecretCredential(TENANT, APP_CLIENT, APP_SECRET, **world.credential_kwargs())
    with (
        credential,
        SecretClient(
            world.vault_url,
            credential,
            verify_challenge_resource=False,
            connection_verify=world.tls.ca_pem_path,
            retry_total=0,
        ) as secret_client,
    ):
        yield secret_client


def password_client(world: IdentityWorld, password: str) -> tuple[UsernamePasswordCredential, SecretClient]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ROPC; attributed to this module (stacklevel=2)
        credential = UsernamePasswordCredential(
            PUBLIC_CLIENT,
            USER,
            password,
            tenant_id=TENANT,
            raw_request_hook=authority_port_hook(world.authority),
            **world.credential_kwargs(),
        )
    return credential, SecretClient(
        world.vault_url,
        credential,
        verify_challenge_resource=False,
        connection_verify=world.tls.ca_pem_path,
        retry_total=0,
    )


# ---------------------------------------------------------------- challenge and tokens


def test_unauthenticated_request_gets_the_challenge_before_the_body_is_read(
    world: IdentityWorld, http: httpx.Client
) -> None:
    bodiless = http.put("/secrets/pat-a", params={"api-version": "7.6"}, headers={"Content-Length": "0"})
    garbage = http.put("/secrets/pat-a", params={"api-version": "7.6"}, content=b"{not json")

    for response in (bodiless, garbage):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer authorization="{world.authority}/{TENANT}", resource="https://vault.azure.net"'
        )
        assert response.json()["error"]["code"] == "Unauthorized"
        assert response.json()["error"]["message"].startswith("AKV10000")


def test_token_for_another_audience_is_refused(world: IdentityWorld, http: httpx.Client) -> None:
    ado_token = world.call(world.entra.issue_user_token, USER, ADO_RESOURCE)

    response = http.get(
        "/secrets", params={"api-version": "7.6"}, headers={"Authorization": f"Bearer {ado_token}"}
    )

    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers
    assert response.json()["error"]["message"].startswith("AKV10022")


def test_expired_token_is_refused(world: IdentityWorld, http: httpx.Client) -> None:
    token = world.call(world.entra.issue_app_token, APP_CLIENT, "https://vault.azure.net")
    ok = http.get("/secrets", params={"api-version": "7.6"}, headers={"Authorization": f"Bearer {token}"})
    world.call(world.entra.expire_access_tokens)

    expired = http.get(
        "/secrets", params={"api-version": "7.6"}, headers={"Authorization": f"Bearer {token}"}
    )

    assert ok.status_code == 200
    assert expired.status_code == 401


def test_sdk_answers_the_challenge_with_the_sandbox_tenant(
    world: IdentityWorld, client: SecretClient
) -> None:
    before = len(world.seen)

    client.set_secret("challenge-probe", "v")

    vault_calls = [s for s in world.seen[before:] if s.service == "keyvault"]
    token_calls = [
        s for s in world.seen[before:] if s.service == "entra" and "/oauth2/v2.0/token" in s.path_qs
    ]
    assert [s.status for s in vault_calls] == [401, 200]  # bodiless probe, then the real PUT with a bearer
    assert token_calls and all(s.path_qs.startswith(f"/{TENANT}/") for s in token_calls)


# ---------------------------------------------------------------- secrets through the real SDK


def test_set_with_expiry_and_tags_then_get_latest(world: IdentityWorld, client: SecretClient) -> None:
    expires = datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

    stored = client.set_secret(
        "pat-agents",
        "token-value-1",
        expires_on=expires,
        tags={"authorizationId": "auth-1"},
        content_type="text/plain",
    )
    latest = client.get_secret("pat-agents")

    assert stored.properties.version is not None and HEX32.match(stored.properties.version)
    assert latest.value == "token-value-1"
    assert latest.properties.version == stored.properties.version
    assert latest.properties.expires_on == expires
    assert latest.properties.tags == {"authorizationId": "auth-1"}
    assert latest.properties.content_type == "text/plain"
    assert latest.properties.enabled is True
    assert latest.properties.recovery_level == "Recoverable+Purgeable"
    assert latest.id == f"{world.vault_url}/secrets/pat-agents/{stored.properties.version}"
    assert world.requests("keyvault", "GET", "/secrets/pat-agents/?api-version=")  # the SDK's "latest" path
    assert world.call(world.kv.latest_value, "pat-agents") == "token-value-1"
    bundle = world.call(world.kv.latest, "pat-agents")
    assert bundle is not None and bundle["attributes"]["exp"] == int(expires.timestamp())


def test_get_by_version_and_list_versions_across_pages(world: IdentityWorld, client: SecretClient) -> None:
    versions = [client.set_secret("pat-rotating", f"value-{i}").properties.version for i in range(5)]
    pages_before = len(world.requests("keyvault", "GET", "/secrets/pat-rotating/versions"))

    second = client.get_secret("pat-rotating", versions[1])
    listed = list(client.list_properties_of_secret_versions("pat-rotating", max_page_size=2))

    assert second.value == "value-1"
    assert client.get_secret("pat-rotating").value == "value-4"
    assert [p.version for p in listed] == versions
    assert all(p.name == "pat-rotating" for p in listed)
    page_requests = world.requests("keyvault", "GET", "/secrets/pat-rotating/versions")[pages_before:]
    assert len(page_requests) == 3
    assert all("maxresults=2" in r.path_qs for r in page_requests)
    assert sum("$skiptoken=" in r.path_qs for r in page_requests) == 2


def test_next_link_is_absolute_https_on_the_vault(world: IdentityWorld, http: httpx.Client) -> None:
    for i in range(3):
        world.call(world.kv.set_secret, "pat-paged", f"v{i}")
    token = world.call(world.entra.issue_app_token, APP_CLIENT, "https://vault.azure.net")
    auth = {"Authorization": f"Bearer {token}"}

    first = http.get(
        "/secrets/pat-paged/versions", params={"api-version": "7.6", "maxresults": 2}, headers=auth
    )
    next_link = first.json()["nextLink"]
    second = http.get(next_link, headers=auth)

    assert next_link.startswith(f"{world.vault_url}/secrets/pat-paged/versions?api-version=7.6&$skiptoken=")
    assert len(first.json()["value"]) == 2 and "value" not in first.json()["value"][0]
    assert len(second.json()["value"]) == 1 and second.json()["nextLink"] is None
    too_many = http.get(
        "/secrets/pat-paged/versions", params={"api-version": "7.6", "maxresults": 26}, headers=auth
    )
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "BadParameter"


def test_update_properties_of_a_version(world: IdentityWorld, client: SecretClient) -> None:
    old = client.set_secret("pat-update", "old", tags={"authorizationId": "a-old"}).properties.version
    client.set_secret("pat-update", "new")

    updated = client.update_secret_properties("pat-update", old, enabled=False, tags={"revoked": "true"})

    assert updated.version == old and updated.enabled is False
    assert updated.tags == {"revoked": "true"}
    with pytest.raises(HttpResponseError) as caught:
        client.get_secret("pat-update", old)
    assert caught.value.status_code == 403
    assert client.get_secret("pat-update").value == "new"


def test_disabling_the_latest_version_hides_the_value(world: IdentityWorld, client: SecretClient) -> None:
    client.set_secret("pat-disabled", "v")

    client.update_secret_properties("pat-disabled", enabled=False)

    assert world.call(world.kv.latest_value, "pat-disabled") is None
    assert world.requests("keyvault", "PATCH", "/secrets/pat-disabled/?api-version=")


def test_missing_secret_is_resource_not_found(client: SecretClient) -> None:
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_secret("does-not-exist")

    assert caught.value.error is not None and caught.value.error.code == "SecretNotFound"


def test_list_delete_and_purge(world: IdentityWorld, client: SecretClient) -> None:
    client.set_secret("pat-doomed", "v", tags={"k": "v"})

    names = {p.name for p in client.list_properties_of_secrets()}
    deleted = client.begin_delete_secret("pat-doomed").result()

    assert "pat-doomed" in names
    assert deleted.name == "pat-doomed" and deleted.recovery_id and deleted.deleted_date
    with pytest.raises(ResourceNotFoundError):
        client.get_secret("pat-doomed")
    assert "pat-doomed" in {d.name for d in client.list_deleted_secrets()}
    with pytest.raises(HttpResponseError) as conflict:
        client.set_secret("pat-doomed", "again")
    assert conflict.value.status_code == 409
    client.purge_deleted_secret("pat-doomed")
    assert client.set_secret("pat-doomed", "again").value == "again"


def test_names_are_case_insensitive_like_the_service(world: IdentityWorld, client: SecretClient) -> None:
    client.set_secret("Pat-Case", "v1")

    assert client.get_secret("pat-case").value == "v1"
    assert str(client.get_secret("PAT-CASE").id).startswith(f"{world.vault_url}/secrets/Pat-Case/")


def test_user_token_also_accesses_the_vault(world: IdentityWorld) -> None:
    credential, secret_client = password_client(world, PASSWORD)
    with credential, secret_client:
        secret_client.set_secret("pat-user", "by-user")
        assert secret_client.get_secret("pat-user").value == "by-user"


def test_wrong_password_surfaces_as_client_authentication_error(world: IdentityWorld) -> None:
    credential, secret_client = password_client(world, "not-the-password")
    with credential, secret_client, pytest.raises(ClientAuthenticationError, match="AADSTS50126"):
        secret_client.get_secret("anything")


def test_forbidden_principal_gets_403(world: IdentityWorld, client: SecretClient) -> None:
    app_oid = world.call(world.entra.add_confidential_client, APP_CLIENT, APP_SECRET)
    world.call(world.kv.forbidden_oids.add, app_oid)
    try:
        with pytest.raises(HttpResponseError) as caught:
            client.get_secret("pat-agents")
    finally:
        world.call(world.kv.forbidden_oids.discard, app_oid)

    assert caught.value.status_code == 403
