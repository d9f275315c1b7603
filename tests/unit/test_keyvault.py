"""core.keyvault: SDK properties → SecretVersion, and the error table with real azure-core errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import AuthenticationRequiredError as AzureAuthRequired
from azure.keyvault.secrets import SecretProperties
from status_server import azure_response, status_server

from core import keyvault
from core.errors import (
    AuthenticationRequiredError,
    BadRequestError,
    NotFoundError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnavailableError,
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with status_server() as url:
        yield url


def test_secret_properties_become_a_secret_version() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    expires = datetime(2026, 2, 1, tzinfo=UTC)
    props = SecretProperties(SimpleNamespace(expires=expires, created=created, enabled=True),
                             "https://myvault.vault.azure.net/secrets/azure-devops-token/0123456789abcdef",
                             tags={"authorizationId": "a1", "rotation": "r1"})
    version = keyvault.secret_version(props)
    assert version == keyvault.SecretVersion(name="azure-devops-token", version="0123456789abcdef",
                                             expires_on=expires, created_on=created, enabled=True,
                                             tags={"authorizationId": "a1", "rotation": "r1"})


def test_missing_attributes_are_none() -> None:
    props = SecretProperties(None, "https://v.vault.azure.net/secrets/n/v1")
    version = keyvault.secret_version(props)
    assert (version.expires_on, version.created_on, version.enabled) == (None, None, None)
    assert dict(version.tags) == {}


@pytest.mark.parametrize(("status", "expected"), [
    (401, UnauthorizedError), (403, UnauthorizedError), (429, ThrottledError),
    (500, ServerError), (503, ServerError), (400, BadRequestError), (409, BadRequestError),
])
def test_http_status_table(server: str, status: int, expected: type[Exception]) -> None:
    response = azure_response(server, status, code="Forbidden", message="Access denied to the vault")
    exc_type = ClientAuthenticationError if status == 401 else HttpResponseError
    exc = exc_type(response=response)
    err = keyvault.translate_keyvault_error(exc, what="Key Vault get x", vault_url=server)
    assert type(err) is expected
    if status != 429:
        assert getattr(err, "status", None) == status
    assert err.service == "keyvault"  # type: ignore[attr-defined]


def test_not_found(server: str) -> None:
    exc = ResourceNotFoundError(response=azure_response(server, 404, code="SecretNotFound",
                                                        message="A secret with (name/id) x was not found"))
    err = keyvault.translate_keyvault_error(exc, what="Key Vault get x", vault_url=server)
    assert isinstance(err, NotFoundError)
    assert err.status == 404
    assert "SecretNotFound" in str(err)


def test_throttle_carries_retry_after(server: str) -> None:
    exc = HttpResponseError(response=azure_response(server, 429, retry_after="12"))
    err = keyvault.translate_keyvault_error(exc, what="Key Vault set x", vault_url=server)
    assert isinstance(err, ThrottledError)
    assert err.delay == 12.0


def test_server_error_carries_retry_after_if_given(server: str) -> None:
    err = keyvault.translate_keyvault_error(HttpResponseError(response=azure_response(server, 503,
                                                                                     retry_after="3")),
                                            what="x", vault_url=server)
    assert isinstance(err, ServerError)
    assert err.delay == 3.0


@pytest.mark.parametrize("exc_type", [ServiceRequestError, ServiceResponseError])
def test_connection_failures_are_unavailable(exc_type: type[Exception]) -> None:
    err = keyvault.translate_keyvault_error(exc_type("Connection reset"), what="x")
    assert isinstance(err, UnavailableError)


def test_credential_failures_are_told_apart_from_key_vault_refusals(server: str) -> None:
    # The credential's own failure (no response, or a response from another host: Entra)
    err = keyvault.translate_keyvault_error(AzureAuthRequired(["https://vault.azure.net/.default"]),
                                            what="x", vault_url="https://vault.example")
    assert isinstance(err, AuthenticationRequiredError)
    entra_refusal = ClientAuthenticationError(message="AADSTS7000215: Invalid client secret",
                                              response=azure_response(server, 401, shape="oauth",
                                                                         code="invalid_client"))
    err = keyvault.translate_keyvault_error(entra_refusal, what="x", vault_url="https://vault.example")
    assert isinstance(err, UnauthorizedError)
    assert "AADSTS7000215" in str(err)
    assert err.service == "entra"
