"""Azure Key Vault secrets, as patrol needs them: a sink for rotated PATs and a source of the
bot's username/password.

Why a wrapper: the services must not see ``azure.*`` types, and Key Vault's failures must become
patrol's errors (a 429 with its ``Retry-After`` becomes a :class:`ThrottledError` the saga can
wait on). A secret version is returned as a frozen :class:`SecretVersion`; a value only ever as a
:class:`~core.secret.Secret`.

Against a local vault (the sandbox) the SDK needs ``verify_challenge_resource=False`` and the
CA bundle (docs/external-apis.md, "Key Vault"); both are constructor arguments with production defaults.

TLS: every Key Vault connection of the process verifies with one ``SSLContext`` per CA bundle
(:mod:`core.tls`, shared with the Entra credentials): requests would otherwise have urllib3 load
the bundle again for every new connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError
from azure.keyvault.secrets import SecretClient, SecretProperties

from core.entra import translate_auth_error
from core.errors import (
    BadRequestError,
    NotFoundError,
    PatrolError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnavailableError,
)
from core.logs import redact
from core.secret import Secret
from core.tls import requests_transport

SERVICE = "keyvault"


@dataclass(frozen=True)
class SecretVersion:
    """One version of a Key Vault secret, without its value."""

    name: str
    version: str
    expires_on: datetime | None
    created_on: datetime | None
    enabled: bool | None
    tags: Mapping[str, str] = field(default_factory=dict)


def secret_version(props: SecretProperties) -> SecretVersion:
    """The SDK's ``SecretProperties`` as our record (pure)."""
    return SecretVersion(
        name=props.name or "",
        version=props.version or "",
        expires_on=props.expires_on,
        created_on=props.created_on,
        enabled=props.enabled,
        tags=dict(props.tags or {}),
    )


def _retry_after(error: HttpResponseError) -> float | None:
    headers = getattr(error.response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_text(error: HttpResponseError) -> str:
    code = getattr(getattr(error, "error", None), "code", None)
    message = getattr(getattr(error, "error", None), "message", None)
    if code or message:
        return redact(f"{code or ''}: {message or ''}".strip(": "))
    first = (str(error.message or error.reason or "").strip().splitlines() or [""])[0]
    return redact(first)


def _from_credential(exc: BaseException, vault_url: str | None) -> bool:
    """True if a ClientAuthenticationError came from the credential, not from Key Vault itself."""
    if not isinstance(exc, ClientAuthenticationError):
        return False
    if isinstance(exc, CredentialUnavailableError) or exc.response is None:
        return True
    request = getattr(exc.response, "request", None)
    url = str(getattr(request, "url", "") or "")
    return bool(vault_url) and not url.startswith(str(vault_url))


def translate_keyvault_error(exc: BaseException, *, what: str, vault_url: str | None = None) -> PatrolError:
    """Map an azure-core exception from a Key Vault call to patrol's errors.

    404 → NotFound; 401/403 → Unauthorized; 429 → Throttled (Retry-After); 5xx → Server;
    other 4xx → BadRequest; no connection → Unavailable; the credential failing on its own
    (Entra refused, sign-in required) → whatever :func:`core.entra.translate_auth_error` says.
    """
    if _from_credential(exc, vault_url):
        return translate_auth_error(exc, what=f"{what}: credential")
    if isinstance(exc, ResourceNotFoundError):
        return NotFoundError(f"{what}: not found ({_error_text(exc)})", service=SERVICE, status=404)
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return UnavailableError(f"{what}: cannot reach Key Vault: {type(exc).__name__}", service=SERVICE)
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        status = exc.status_code
        text = _error_text(exc)
        if status in (401, 403):
            return UnauthorizedError(f"{what}: HTTP {status} {text}", service=SERVICE, status=status)
        if status == 429:
            return ThrottledError(f"{what}: throttled (HTTP 429) {text}", service=SERVICE,
                                  delay=_retry_after(exc))
        if status >= 500:
            return ServerError(f"{what}: HTTP {status} {text}", service=SERVICE, status=status,
                               delay=_retry_after(exc))
        return BadRequestError(f"{what}: HTTP {status} {text}", service=SERVICE, status=status)
    first = (redact(str(exc)).strip().splitlines() or [""])[0]
    return ServerError(f"{what}: {type(exc).__name__}: {first}", service=SERVICE)


@contextmanager
def _translated(what: str, vault_url: str) -> Iterator[None]:
    try:
        yield
    except PatrolError:
        raise
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
        raise translate_keyvault_error(exc, what=what, vault_url=vault_url) from exc


class KeyVault:
    """One vault, one ``SecretClient``. Close it (or use ``with``) to release the HTTP session."""

    def __init__(self, vault_url: str, credential: TokenCredential, *, ca_bundle: str | None = None,
                 verify_challenge_resource: bool = True, retry_total: int | None = None) -> None:
        connection: dict[str, Any] = {"connection_verify": ca_bundle} if ca_bundle else {}
        kwargs: dict[str, Any] = {"verify_challenge_resource": verify_challenge_resource,
                                  "transport": requests_transport(**connection)}
        if retry_total is not None:
            kwargs["retry_total"] = retry_total
        self.vault_url = vault_url.rstrip("/")
        self._client = SecretClient(self.vault_url, credential, **kwargs)

    def set_secret(self, name: str, value: Secret, *, expires_on: datetime | None,
                   tags: Mapping[str, str]) -> SecretVersion:
        """Write a new version of ``name`` (each call creates one)."""
        with _translated(f"Key Vault set {name}", self.vault_url):
            result = self._client.set_secret(name, value.reveal(), expires_on=expires_on,
                                             tags=dict(tags), content_type="text/plain")
        return secret_version(result.properties)

    def get_secret(self, name: str, version: str | None = None) -> tuple[SecretVersion, Secret]:
        """The latest (or the given) version of ``name`` and its value."""
        with _translated(f"Key Vault get {name}", self.vault_url):
            result = self._client.get_secret(name, version)
        return secret_version(result.properties), Secret(result.value or "")

    def update_properties(self, name: str, version: str, *, expires_on: datetime | None,
                          tags: Mapping[str, str]) -> SecretVersion:
        """Set the expiry and tags of one existing version (``PATCH``); the value and the version
        stay the same, so nothing that reads the secret sees a change of token."""
        with _translated(f"Key Vault update {name}", self.vault_url):
            props = self._client.update_secret_properties(name, version, expires_on=expires_on,
                                                          tags=dict(tags))
        return secret_version(props)

    def get_properties(self, name: str, version: str | None = None) -> SecretVersion:
        """A version's attributes and tags. The REST API has no value-less GET of one version,
        so this reads the secret and drops the value at once."""
        props, _ = self.get_secret(name, version)
        return props

    def list_versions(self, name: str) -> list[SecretVersion]:
        """Every version of ``name``, newest first (by ``created_on``)."""
        with _translated(f"Key Vault list versions of {name}", self.vault_url):
            versions = [secret_version(p) for p in self._client.list_properties_of_secret_versions(name)]
        return sorted(versions, key=lambda v: v.created_on.timestamp() if v.created_on else float("-inf"),
                      reverse=True)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KeyVault:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class KeyVaultReader:
    """``secret_reader(vault_url, name) -> Secret`` over one :class:`KeyVault` per vault.

    This is what :func:`core.entra.user_token_provider` takes to read the bot's
    username/password from Key Vault.
    """

    def __init__(self, credential: TokenCredential, *, ca_bundle: str | None = None,
                 verify_challenge_resource: bool = True, retry_total: int | None = None) -> None:
        self._credential = credential
        self._options: dict[str, Any] = {"ca_bundle": ca_bundle,
                                         "verify_challenge_resource": verify_challenge_resource,
                                         "retry_total": retry_total}
        self._vaults: dict[str, KeyVault] = {}
        self._lock = threading.Lock()

    def vault(self, vault_url: str) -> KeyVault:
        key = vault_url.rstrip("/")
        with self._lock:
            if key not in self._vaults:
                self._vaults[key] = KeyVault(key, self._credential, **self._options)
            return self._vaults[key]

    def __call__(self, vault_url: str, name: str) -> Secret:
        return self.vault(vault_url).get_secret(name)[1]

    def close(self) -> None:
        with self._lock:
            vaults, self._vaults = list(self._vaults.values()), {}
        for vault in vaults:
            vault.close()

    def __enter__(self) -> KeyVaultReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def reader(credential: TokenCredential, *, ca_bundle: str | None = None,
           verify_challenge_resource: bool = True,
           retry_total: int | None = None) -> KeyVaultReader:
    """A ``secret_reader`` for :func:`core.entra.user_token_provider` (a :class:`KeyVaultReader`)."""
    return KeyVaultReader(credential, ca_bundle=ca_bundle,
                          verify_challenge_resource=verify_challenge_resource, retry_total=retry_total)
