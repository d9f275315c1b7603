"""core.entra: error translation, authority settings, the user-realm port fix, token caching."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.identity import AuthenticationRequiredError as AzureAuthRequired
from azure.identity import CredentialUnavailableError
from status_server import azure_response, status_server

from core import config, entra
from core.errors import (
    AuthenticationRequiredError,
    ConfigError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnavailableError,
)
from core.secret import Secret
from core.tls import SharedContextAdapter

TOKEN_VALUE = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJib3QifQ.very-secret-access-token-tail"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with status_server() as url:
        yield url


# -- error translation ---------------------------------------------------------------------

def test_authentication_required_becomes_ours_and_says_patrol_login() -> None:
    err = entra.translate_auth_error(AzureAuthRequired([entra.ADO_SCOPE]), what="device-code credential")
    assert isinstance(err, AuthenticationRequiredError)
    assert "patrol login" in str(err)


def test_wrong_password_is_unauthorized_with_the_aadsts_code() -> None:
    exc = ClientAuthenticationError(message="Authentication failed: AADSTS50126: Error validating "
                                            "credentials due to invalid username or password.")
    err = entra.translate_auth_error(exc, what="username-password credential")
    assert isinstance(err, UnauthorizedError)
    assert "AADSTS50126" in str(err)
    assert err.service == "entra"


def test_credential_unavailable_is_unauthorized() -> None:
    err = entra.translate_auth_error(CredentialUnavailableError("Azure CLI not found on path"), what="cli")
    assert isinstance(err, UnauthorizedError)
    assert "Azure CLI not found" in str(err)


def test_connection_failure_in_the_cause_chain_is_unavailable() -> None:
    try:
        try:
            raise ServiceRequestError("Connection refused")
        except ServiceRequestError as inner:
            raise ClientAuthenticationError(message="Authentication failed: Connection refused") from inner
    except ClientAuthenticationError as exc:
        err = entra.translate_auth_error(exc, what="x")
    assert isinstance(err, UnavailableError)


def test_entra_429_and_5xx_are_transient(server: str) -> None:
    throttled = entra.translate_auth_error(
        ClientAuthenticationError(message="slow down", response=azure_response(server, 429, retry_after="7")),
        what="x")
    assert isinstance(throttled, ThrottledError)
    assert throttled.delay == 7.0
    failed = entra.translate_auth_error(
        ClientAuthenticationError(message="oops", response=azure_response(server, 503)), what="x")
    assert isinstance(failed, ServerError)
    assert failed.status == 503


def test_a_registered_token_value_in_an_sdk_message_is_masked() -> None:
    Secret(TOKEN_VALUE)
    err = entra.translate_auth_error(ClientAuthenticationError(message=f"bad token {TOKEN_VALUE}"), what="x")
    assert TOKEN_VALUE not in str(err)


# -- authority settings ----------------------------------------------------------------------

def shares_the_tls_context(transport: object) -> bool:
    """A transport from core.tls: its session verifies with the process's shared context."""
    if not isinstance(transport, RequestsTransport) or transport.session is None:
        return False
    return all(isinstance(transport.session.get_adapter(f"{scheme}://x"), SharedContextAdapter)
               for scheme in ("http", "https"))


def test_public_cloud_keeps_instance_discovery_and_gets_no_hook() -> None:
    kwargs = entra._authority_kwargs("https://login.microsoftonline.com", None, None, userrealm=True)
    transport = kwargs.pop("transport")
    assert kwargs == {"authority": "https://login.microsoftonline.com"}
    assert shares_the_tls_context(transport)
    assert transport.connection_config.verify is True          # requests' own default bundle


def test_local_authority_disables_discovery_and_passes_the_ca() -> None:
    kwargs = entra._authority_kwargs("https://127.0.0.1:8443/", "/tmp/ca.pem", 0, userrealm=True)
    assert kwargs["authority"] == "https://127.0.0.1:8443"
    assert kwargs["disable_instance_discovery"] is True
    assert shares_the_tls_context(kwargs["transport"])
    assert kwargs["transport"].connection_config.verify == "/tmp/ca.pem"
    assert "connection_verify" not in kwargs                  # the transport carries it
    assert kwargs["retry_total"] == 0
    assert callable(kwargs["raw_request_hook"])


def test_plain_http_authority_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="https"):
        entra._authority_kwargs("http://127.0.0.1:8080", None, None)


def _run_hook(authority: str, url: str) -> str:
    hook = entra._userrealm_port_hook(authority)
    assert hook is not None
    request = PipelineRequest(HttpRequest("GET", url), PipelineContext(None))
    hook(request)
    return request.http_request.url


def test_userrealm_probe_gets_the_authority_port_back() -> None:
    url = _run_hook("https://127.0.0.1:8443", "https://127.0.0.1/common/userrealm/bot@x?api-version=1.0")
    assert url == "https://127.0.0.1:8443/common/userrealm/bot@x?api-version=1.0"


def test_other_requests_are_left_alone() -> None:
    for url in ("https://127.0.0.1:8443/tenant/oauth2/v2.0/token",     # already has the port
                "https://127.0.0.1/tenant/oauth2/v2.0/token",          # not the user-realm probe
                "https://login.microsoftonline.com/common/userrealm/x"):  # another host
        assert _run_hook("https://127.0.0.1:8443", url) == url


def test_no_hook_on_the_default_port() -> None:
    assert entra._userrealm_port_hook("https://login.microsoftonline.com") is None
    assert entra._userrealm_port_hook("https://login.example:443") is None


# -- the token provider ----------------------------------------------------------------------

class ScriptedCredential:
    """A TokenCredential that answers from a script (our boundary; the SDK is tested for real
    in tests/contract)."""

    def __init__(self, script: list[AccessToken | Exception]) -> None:
        self.script = script
        self.calls: list[tuple[str, ...]] = []
        self.closed = False

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.calls.append(scopes)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def test_token_is_cached_until_five_minutes_before_expiry() -> None:
    now = [1000.0]
    credential = ScriptedCredential([AccessToken("token-one-value", 1000 + 3600),
                                     AccessToken("token-two-value", 1000 + 7200)])
    provider = entra.TokenProvider(lambda: credential, clock=lambda: now[0])
    assert provider().reveal() == "token-one-value"
    now[0] = 1000 + 3600 - 301
    assert provider().reveal() == "token-one-value"
    assert credential.calls == [(entra.ADO_SCOPE,)]
    now[0] = 1000 + 3600 - 299
    assert provider().reveal() == "token-two-value"
    assert len(credential.calls) == 2
    assert provider.expires_on == 1000 + 7200
    provider.close()
    assert credential.closed


def test_refusal_is_translated_and_the_credential_rebuilt() -> None:
    built: list[ScriptedCredential] = []

    def factory() -> ScriptedCredential:
        credential = ScriptedCredential([
            ClientAuthenticationError(message="Authentication failed: AADSTS50126: invalid password")
            if not built else AccessToken("fresh-token-value", 10_000)])
        built.append(credential)
        return credential

    provider = entra.TokenProvider(factory, clock=lambda: 0.0)
    with pytest.raises(UnauthorizedError, match="AADSTS50126") as info:
        provider()
    assert isinstance(info.value.__cause__, ClientAuthenticationError)
    assert built[0].closed
    assert provider().reveal() == "fresh-token-value"
    assert len(built) == 2


def test_invalidate_forgets_the_cached_token() -> None:
    credential = ScriptedCredential([AccessToken("first-token-value", 10_000),
                                     AccessToken("second-token-value", 10_000)])
    provider = entra.TokenProvider(lambda: credential, clock=lambda: 0.0)
    provider()
    provider.invalidate()
    assert provider().reveal() == "second-token-value"


# -- building user credentials -----------------------------------------------------------------

def test_username_password_from_env_needs_the_variables() -> None:
    cred = config.UserCredential(kind="username-password", username_env="BOT_USER", password_env="BOT_PASS")
    provider = entra.user_token_provider(cred, azure=config.AzureSettings(), secret_reader=None,
                                         env={"BOT_USER": "bot@example.com"})
    with pytest.raises(ConfigError, match="BOT_PASS"):
        provider()


def test_username_password_from_keyvault_needs_a_reader() -> None:
    cred = config.UserCredential(kind="username-password", from_keyvault=config.KeyVaultSecretRef(
        vault_url="https://v.vault.azure.net", username_secret="u", password_secret="p"))
    provider = entra.user_token_provider(cred, azure=config.AzureSettings(), secret_reader=None, env={})
    with pytest.raises(ConfigError, match="Key Vault"):
        provider()


def test_device_code_without_a_record_asks_for_patrol_login(tmp_path: Path) -> None:
    cred = config.UserCredential(kind="device-code", record_file=str(tmp_path / "missing.json"))
    provider = entra.user_token_provider(cred, azure=config.AzureSettings(), secret_reader=None, env={})
    with pytest.raises(AuthenticationRequiredError, match="patrol login"):
        provider()


def test_device_code_with_a_broken_record_asks_for_patrol_login(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"nonsense": True}))
    cred = config.UserCredential(kind="device-code", record_file=str(record))
    provider = entra.user_token_provider(cred, azure=config.AzureSettings(), secret_reader=None, env={})
    with pytest.raises(AuthenticationRequiredError, match="not valid"):
        provider()


def test_default_record_file_lives_under_home() -> None:
    assert entra.default_record_file("/home/bot") == "/home/bot/.config/patrol/auth-record.json"
    cred = config.UserCredential(kind="device-code", record_file="~/rec.json")
    assert entra._record_path(cred, "/home/bot") == "/home/bot/rec.json"


def test_environment_kind_reads_the_given_env_not_os_environ() -> None:
    with pytest.raises(ConfigError, match="AZURE_"):
        entra.azure_credential(config.AzureSettings(credential="environment"), {})
    credential = entra.azure_credential(
        config.AzureSettings(credential="environment"),
        {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s3cret-value"})
    try:
        assert type(credential).__name__ == "ClientSecretCredential"
    finally:
        entra.close_credential(credential)


def test_client_secret_prefers_the_mounted_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-file\n")
    settings = config.AzureSettings(credential="client-secret", tenant_id="t", client_id="c",
                                    client_secret_file=str(secret_file), client_secret_env="NOPE")
    assert entra._client_secret(settings, {}).reveal() == "from-the-file"
    settings = config.AzureSettings(credential="client-secret", tenant_id="t", client_id="c",
                                    client_secret_env="KV_SECRET")
    assert entra._client_secret(settings, {"KV_SECRET": "from-env"}).reveal() == "from-env"
    with pytest.raises(ConfigError, match="KV_SECRET"):
        entra._client_secret(settings, {})
