"""Entra ID credentials: the bot user's token for ADO, and patrol's own for Key Vault.

Guarantees: a tenant's refusal (MFA, Conditional Access, consent, public client flows, an
expired refresh token, ...) leaves here at once, unretried, as a :class:`CredentialError`
whose ``cause`` is a fixed word and whose message names the fix (:data:`TENANT_REFUSALS`); a
token a service rejected is never handed out again (:meth:`TokenProvider.reject` also skips
MSAL's own cache); every outcome of the bot's sign-in is recorded in a :class:`CredentialLedger`
for ``patrol_credential_*``; no message holds a token, refresh token or password.

Why this module exists: the PAT Lifecycle API takes only a *user-delegated* Entra token
(docs/external-apis.md, "PAT Lifecycle API"), so patrol signs in as the bot account; and patrol reaches Key Vault with
its own (workload/managed/service-principal) identity. Both go through the real
``azure-identity`` credential classes; this is the only module that builds them, and every
exception they raise leaves here as a :mod:`core.errors` type whose message holds no token,
refresh token or password.

A local authority (the sandbox, an air-gapped cloud) needs three things the public cloud does
not (docs/external-apis.md, "Entra sign-in as the bot"): ``disable_instance_discovery=True``, the CA bundle as
``connection_verify``, and — for username/password only — a fix for MSAL's user-realm probe,
which drops the port. See :func:`_userrealm_port_hook`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest
from azure.identity import (
    AuthenticationRecord,
    AzureCliCredential,
    CertificateCredential,
    ClientSecretCredential,
    CredentialUnavailableError,
    DefaultAzureCredential,
    DeviceCodeCredential,
    ManagedIdentityCredential,
    TokenCachePersistenceOptions,
    UsernamePasswordCredential,
)
from azure.identity import (
    AuthenticationRequiredError as AzureAuthenticationRequiredError,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import config
from core.errors import (
    AuthenticationRequiredError,
    ConfigError,
    CredentialError,
    PatrolError,
    PermanentError,
    ServerError,
    ThrottledError,
    UnauthorizedError,
    UnavailableError,
)
from core.logs import redact
from core.secret import Secret
from core.tls import requests_transport

log = logging.getLogger("patrol.entra")

ADO_SCOPE = config.ADO_RESOURCE_SCOPE
# A token with less than this left is treated as expired (MSAL and azure-identity use 5 min too).
REFRESH_MARGIN_SECONDS = 300.0
# Hosts of the public and sovereign Microsoft clouds: instance discovery works only for these.
PUBLIC_AUTHORITY_HOSTS = frozenset({
    "login.microsoftonline.com",
    "login.microsoft.com",
    "login.windows.net",
    "sts.windows.net",
    "login.microsoftonline.us",
    "login.usgovcloudapi.net",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
})
DEFAULT_RECORD_FILE = ".config/patrol/auth-record.json"
SERVICE = "entra"


# --------------------------------------------------------------------------------------------
# Error translation
# --------------------------------------------------------------------------------------------

def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return chain


def _is_connection_failure(exc: BaseException) -> bool:
    return isinstance(exc, (ServiceRequestError, ServiceResponseError,
                            requests.exceptions.ConnectionError, requests.exceptions.Timeout))


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class TenantRefusal:
    """What an ``AADSTS`` code means for patrol: the ``cause`` label, what happened, the fix."""

    cause: str
    problem: str
    fix: str


AZURE_CLI_CLIENT_ID = config.DEFAULT_PUBLIC_CLIENT_ID   # the Azure CLI's public client id
_LOGIN_FIX = ("run `patrol login` (device code; set the organization's credential.kind: device-code) "
              "so a person signs in once")
# Microsoft Learn, "Microsoft Entra authentication and authorization error codes":
# https://learn.microsoft.com/entra/identity-platform/reference-error-codes
TENANT_REFUSALS: Mapping[int, TenantRefusal] = {
    50076: TenantRefusal("mfa_required", "MFA is required for the bot account",
                         "run `patrol login` (device code) or exclude it via Conditional Access"),
    50079: TenantRefusal("mfa_enrollment_required", "the bot account must enroll in MFA",
                         "run `patrol login` (device code) and complete the enrollment in the browser, "
                         "or exclude the account from the MFA registration policy"),
    50072: TenantRefusal("mfa_enrollment_required", "the bot account must enroll in MFA",
                         "run `patrol login` (device code) and complete the enrollment in the browser, "
                         "or exclude the account from the MFA registration policy"),
    53003: TenantRefusal("conditional_access_blocked",
                         "a Conditional Access policy blocks the bot account's sign-in",
                         "ask an Entra admin to exclude the bot account (or patrol's network location) "
                         "from the policy named in the sign-in logs; `patrol login` cannot pass a block"),
    65001: TenantRefusal("consent_missing", "the app has no consent to sign the bot in to Azure DevOps",
                         "grant admin consent for the app registration's delegated Azure DevOps "
                         "user_impersonation permission (API permissions > Grant admin consent), or run "
                         "`patrol login` once so the bot consents in the browser"),
    7000218: TenantRefusal("public_client_flows_disabled",
                           "the app registration does not allow public client flows",
                           "enable \"Allow public client flows\" under Authentication on the app "
                           "registration, or set credential.client_id to the Azure CLI's "
                           f"{AZURE_CLI_CLIENT_ID}"),
    50126: TenantRefusal("invalid_credentials", "Entra refused the bot's username or password",
                         "put the bot's current password where credential names it (Key Vault or env)"),
    50034: TenantRefusal("invalid_credentials", "the bot account does not exist in the tenant",
                         "check the username and credential.tenant_id"),
    50055: TenantRefusal("password_expired", "the bot account's password has expired",
                         "set a new password (and a non-expiring password policy for the bot) and store it "
                         "where credential names it"),
    50057: TenantRefusal("account_disabled", "the bot account is disabled in Entra",
                         "re-enable it (ADO revoked its PATs when it was disabled: rotate every token after)"),
    50053: TenantRefusal("account_locked", "the bot account is locked (too many failed sign-ins)",
                         "wait for the lockout to end and check nothing else signs in with an old password"),
    50173: TenantRefusal("sign_in_required", "the bot's refresh token was revoked", _LOGIN_FIX),
    700082: TenantRefusal("sign_in_required", "the bot's refresh token expired (unused for ~90 days)",
                          _LOGIN_FIX),
    70043: TenantRefusal("sign_in_required", "a sign-in frequency policy expired the bot's refresh token",
                         _LOGIN_FIX),
    700016: TenantRefusal("app_not_found", "the app registration (credential.client_id) is not in the tenant",
                          "check credential.client_id and credential.tenant_id"),
}
_AADSTS = re.compile(r"AADSTS(\d+)")


def _refusal_code(chain: list[BaseException]) -> int | None:
    """The first ``AADSTSnnnn`` in the chain's messages or in the Entra error body they carry."""
    for e in chain:
        texts = [getattr(e, "message", None) or str(e)]
        response = getattr(e, "response", None)
        text_of = getattr(response, "text", None)
        if callable(text_of):
            with contextlib.suppress(Exception):
                texts.append(str(text_of()))
        for text in texts:
            found = _AADSTS.search(text or "")
            if found:
                return int(found.group(1))
    return None


def translate_auth_error(exc: BaseException, *, what: str) -> PatrolError:
    """Map an azure-identity/azure-core failure to patrol's errors (message safe to log).

    An Entra refusal whose ``AADSTS`` code patrol knows (:data:`TENANT_REFUSALS`) →
    :class:`CredentialError` naming the cause and the fix; ``AuthenticationRequiredError`` (a
    human must sign in again) → :class:`AuthenticationRequiredError`; a connection failure
    anywhere in the cause chain → :class:`UnavailableError`; an Entra answer of 429/5xx →
    :class:`ThrottledError`/:class:`ServerError`; any other refusal
    (``ClientAuthenticationError``, ``CredentialUnavailableError``) → :class:`UnauthorizedError`.
    """
    chain = _causes(exc)
    detail = redact(getattr(exc, "message", None) or str(exc)).strip().splitlines()
    text = detail[0] if detail else type(exc).__name__
    code = _refusal_code(chain)
    refusal = TENANT_REFUSALS.get(code) if code is not None else None
    if refusal is not None:
        message = f"{what}: {refusal.problem} (AADSTS{code}): {refusal.fix}"
        if refusal.cause == "sign_in_required":
            return AuthenticationRequiredError(message)
        return CredentialError(message, cause=refusal.cause, service=SERVICE)
    if any(isinstance(e, AzureAuthenticationRequiredError) for e in chain):
        return AuthenticationRequiredError(
            f"{what}: interactive sign-in required (no usable cached token or refresh token); "
            "run `patrol login` for this organization")
    for e in chain:
        if _is_connection_failure(e):
            return UnavailableError(f"{what}: cannot reach Entra ID: {type(e).__name__}", service=SERVICE)
    for e in chain:
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(e, HttpResponseError) and isinstance(status, int):
            if status == 429:
                return ThrottledError(f"{what}: Entra ID throttled the request: {text}",
                                      service=SERVICE, delay=_retry_after(response))
            if status >= 500:
                return ServerError(f"{what}: Entra ID answered {status}: {text}", service=SERVICE,
                                   status=status, delay=_retry_after(response))
    if isinstance(exc, CredentialUnavailableError):
        return UnauthorizedError(f"{what}: credential unavailable: {text}", service=SERVICE)
    return UnauthorizedError(f"{what}: {text}", service=SERVICE)


# --------------------------------------------------------------------------------------------
# Client settings for an authority
# --------------------------------------------------------------------------------------------

def _authority_url(authority: str) -> str:
    parts = urlsplit(authority if "://" in authority else f"https://{authority}")
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError("configuration", "credential.authority",
                          f"authority {authority!r} is not an https URL",
                          "use https://<host>[:port] (Entra refuses plain http)")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def is_public_authority(authority: str) -> bool:
    host = urlsplit(_authority_url(authority)).hostname or ""
    return host.lower() in PUBLIC_AUTHORITY_HOSTS


def _userrealm_port_hook(authority: str) -> Callable[[PipelineRequest[Any]], None] | None:
    """Re-target MSAL's user-realm probe to the authority's port; None when no fix is needed.

    MSAL builds ``https://{host}/common/userrealm/{user}`` from the authority's *host name*
    (``msal.authority.Authority.user_realm_discovery``), so on a non-443 port the probe goes to
    port 443 and fails. Of the three ways out (the authority on port 443, MSAL's
    per-process set of hosts without user realm pre-filled, or re-targeting the call) we use azure-core's public
    ``raw_request_hook``: it is a documented per-pipeline hook, it touches only this
    credential's own requests, and it is installed only when the authority names a port other
    than 443 — so production (login.microsoftonline.com) never sees it. Pre-filling MSAL's
    private, process-wide ``_domains_without_user_realm_discovery`` set would silently change
    every other MSAL client in the process and break on an MSAL refactor; a custom transport
    would replace azure-core's connection handling for one URL.
    """
    parts = urlsplit(_authority_url(authority))
    if parts.port is None or parts.port == 443:
        return None
    host = (parts.hostname or "").lower()
    netloc = parts.netloc

    def hook(request: PipelineRequest[Any]) -> None:
        url = urlsplit(request.http_request.url)
        if (url.scheme == "https" and (url.hostname or "").lower() == host and url.port is None
                and url.path.startswith("/common/userrealm/")):
            request.http_request.url = urlunsplit(url._replace(netloc=netloc))

    return hook


def _transport_kwargs(ca_bundle: str | None, retry_total: int | None) -> dict[str, Any]:
    """A credential's own transport, verifying with the process's shared context for
    ``ca_bundle`` (:mod:`core.tls`): azure-identity's default transport would load the bundle again
    for every new connection, and a cold exporter asks for as many tokens at once as it reads
    vaults. Each credential owns its transport (closing the credential closes it)."""
    connection: dict[str, Any] = {"connection_verify": ca_bundle} if ca_bundle else {}
    kwargs: dict[str, Any] = {"transport": requests_transport(**connection)}
    if retry_total is not None:
        kwargs["retry_total"] = retry_total
    return kwargs


def _authority_kwargs(authority: str, ca_bundle: str | None, retry_total: int | None,
                      *, userrealm: bool = False) -> dict[str, Any]:
    url = _authority_url(authority)
    kwargs = _transport_kwargs(ca_bundle, retry_total)
    kwargs["authority"] = url
    if not is_public_authority(url):
        kwargs["disable_instance_discovery"] = True
    hook = _userrealm_port_hook(url) if userrealm else None
    if hook is not None:
        kwargs["raw_request_hook"] = hook
    return kwargs


# --------------------------------------------------------------------------------------------
# Token provider (what the ADO client calls for a bearer token)
# --------------------------------------------------------------------------------------------

@dataclass
class CredentialState:
    """One organization's bot credential as this process last saw it."""

    ok: bool | None = None                   # None: no token asked for yet
    failures: dict[str, int] = field(default_factory=dict)     # permanent failures by cause
    reason: str | None = None                # the last failure's message (safe to log)
    cause: str | None = None                 # the last failure's cause while refused, else None


class CredentialLedger:
    """What happened to each organization's bot credential, for the metrics to read.

    Guarantees: thread-safe; a success sets ``ok``; a *permanent* failure (a
    :class:`PermanentError`: the tenant refused, the service kept rejecting the token) clears it
    and counts one under its cause (:attr:`CredentialError.cause`, else ``"other"``); a
    transient failure (Entra unreachable, throttled) changes nothing, because retrying fixes it.
    Holds no token. :data:`CREDENTIALS` is the process's ledger, the default of every
    :class:`TokenProvider` and of the exporter's and worker's metrics, so that both see the
    same credential without being wired to each other.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, CredentialState] = {}

    def declare(self, organization: str) -> None:
        """Make the organization known (so its counters export zeros before any failure)."""
        with self._lock:
            self._states.setdefault(organization, CredentialState())

    def succeeded(self, organization: str) -> None:
        with self._lock:
            state = self._states.setdefault(organization, CredentialState())
            state.ok = True
            state.reason = None
            state.cause = None

    def failed(self, organization: str, error: PatrolError) -> None:
        if not isinstance(error, PermanentError):
            return
        cause = error.cause if isinstance(error, CredentialError) else "other"
        with self._lock:
            state = self._states.setdefault(organization, CredentialState())
            state.ok = False
            state.failures[cause] = state.failures.get(cause, 0) + 1
            state.reason = str(error)
            state.cause = cause

    def clear(self) -> None:
        """Forget every organization (a process that starts over: tests running many worlds)."""
        with self._lock:
            self._states.clear()

    def snapshot(self) -> dict[str, CredentialState]:
        """A copy, safe to read while providers keep recording."""
        with self._lock:
            return {org: CredentialState(s.ok, dict(s.failures), s.reason, s.cause) for org, s in self._states.items()}


CREDENTIALS = CredentialLedger()

CREDENTIAL_OK = "patrol_credential_ok"
CREDENTIAL_FAILURES = "patrol_credential_failures"        # exposed as ..._total
CREDENTIAL_REFUSED = "patrol_credential_refused"
# Every cause patrol names (the label's values); each is exported from zero per organization so
# increase() sees the first failure. "other" is a refusal patrol has no advice for.
CREDENTIAL_CAUSES = (
    "mfa_required", "mfa_enrollment_required", "conditional_access_blocked", "consent_missing",
    "public_client_flows_disabled", "token_rejected", "sign_in_required", "invalid_credentials",
    "password_expired", "account_disabled", "account_locked", "app_not_found", "other",
)


class CredentialCollector:
    """``patrol_credential_ok{organization}``, ``patrol_credential_refused{organization,cause}``
    and ``patrol_credential_failures_total{organization, cause}`` from a :class:`CredentialLedger`
    (a prometheus_client collector; reads memory only).

    ``patrol_credential_refused`` is 1, with the cause of the *latest* refusal, while the
    credential is refused, and absent otherwise: the alert names what is wrong now. Reading the
    cause off the counters (the one that rose most in the last hour) named a cause already fixed
    when a second one followed within the hour (MFA fixed by ``patrol login``, then Conditional
    Access blocking the sign-in still showed "mfa_required").

    Registered by the exporter and the worker alike: each reports the bot credentials it uses.
    ``patrol_credential_ok`` appears once the organization's credential was first used.
    """

    def __init__(self, ledger: CredentialLedger | None = None) -> None:
        self._ledger = ledger if ledger is not None else CREDENTIALS

    def collect(self) -> Iterator[Metric]:
        states = self._ledger.snapshot()
        ok = GaugeMetricFamily(CREDENTIAL_OK, "1 if the bot credential's last sign-in or token use "
                               "succeeded, 0 after a permanent refusal (see the failures' cause)",
                               labels=["organization"])
        failures = CounterMetricFamily(CREDENTIAL_FAILURES, "Permanent refusals of the bot credential by "
                                       "cause (MFA, Conditional Access, consent, rejected token, ...)",
                                       labels=["organization", "cause"])
        refused = GaugeMetricFamily(CREDENTIAL_REFUSED, "1 while the bot credential is refused, labelled "
                                    "with the latest refusal's cause (absent when it works)",
                                    labels=["organization", "cause"])
        for org, state in sorted(states.items()):
            if state.ok is not None:
                ok.add_metric([org], 1.0 if state.ok else 0.0)
            if state.ok is False and state.cause is not None:
                refused.add_metric([org, state.cause], 1.0)
            for cause in (*CREDENTIAL_CAUSES, *sorted(set(state.failures) - set(CREDENTIAL_CAUSES))):
                failures.add_metric([org, cause], float(state.failures.get(cause, 0)))
        yield from (family for family in (ok, refused, failures) if family.samples)

# The claims challenge a resource sends when it has revoked a token (continuous access
# evaluation: "token issued after this time"); asking for it makes MSAL skip its cached access
# token and redeem the refresh token (or sign in again). Microsoft Learn, "How to use Continuous
# Access Evaluation enabled APIs in your applications":
# https://learn.microsoft.com/entra/identity-platform/app-resilience-continuous-access-evaluation
def _issued_after(when: float) -> str:
    return json.dumps({"access_token": {"nbf": {"essential": True, "value": str(int(when))}}},
                      separators=(",", ":"))


class TokenProvider:
    """A ``Callable[[], Secret]`` yielding an access token for one scope, cached in memory.

    The credential is built on first use (so a Key Vault hiccup at startup is not fatal) and
    rebuilt after an :class:`UnauthorizedError` (so a password rotated in Key Vault is re-read).
    A cached token is reused until less than :data:`REFRESH_MARGIN_SECONDS` remain, or until a
    service rejects it (:meth:`reject`): then it is dropped here *and* in the credential's own
    MSAL cache, and the next call acquires a new one. Every outcome is recorded in ``ledger``
    under ``organization`` (the ``patrol_credential_*`` metrics).
    """

    def __init__(self, factory: Callable[[], TokenCredential], *, scope: str = ADO_SCOPE,
                 what: str = "entra token", clock: Callable[[], float] = time.time,
                 organization: str = "", ledger: CredentialLedger | None = None) -> None:
        self._factory = factory
        self._scope = scope
        self._what = what
        self._clock = clock
        self._organization = organization
        self._ledger = ledger if ledger is not None else CREDENTIALS
        self._lock = threading.Lock()
        self._credential: TokenCredential | None = None
        self._token: Secret | None = None
        self._expires_on = 0.0
        self._rejected_at: float | None = None     # a service refused the token acquired before this
        if organization:
            self._ledger.declare(organization)

    @property
    def expires_on(self) -> float | None:
        """Unix time the cached token expires, or None before the first token."""
        return self._expires_on if self._token is not None else None

    def __call__(self) -> Secret:
        with self._lock:
            if self._token is not None and self._expires_on - self._clock() >= REFRESH_MARGIN_SECONDS:
                return self._token
            try:
                token = self._acquire()
            except PatrolError as error:
                self._ledger.failed(self._organization, error)
                raise
            self._ledger.succeeded(self._organization)
            return token

    def _acquire(self) -> Secret:
        try:
            if self._credential is None:
                self._credential = self._factory()
            credential = self._credential
            if self._rejected_at is not None and isinstance(credential, _MSAL_USER_CREDENTIALS):
                access: AccessToken = credential.get_token(self._scope,
                                                           claims=_issued_after(self._rejected_at))
            else:
                access = credential.get_token(self._scope)
        except PatrolError:
            self._drop_credential()
            raise
        except Exception as exc:
            error = translate_auth_error(exc, what=self._what)
            if isinstance(error, UnauthorizedError):
                self._drop_credential()
            raise error from exc
        self._rejected_at = None
        self._token = Secret(access.token)
        self._expires_on = float(access.expires_on)
        return self._token

    def reject(self, token: Secret) -> None:
        """A service answered 401 to ``token``: drop it, so the next call acquires a new one.

        Only the token that was sent is dropped (another thread may already hold a newer one).
        The credential's MSAL cache would hand the same token back until it expires, so the next
        acquisition asks for a token issued after now (a claims challenge); a credential that
        cannot take one (Azure CLI, anything else) is rebuilt instead.
        """
        with self._lock:
            if self._token is None or self._token.reveal() != token.reveal():
                return
            self._token = None
            self._expires_on = 0.0
            self._rejected_at = self._clock()
            if not isinstance(self._credential, _MSAL_USER_CREDENTIALS):
                self._drop_credential()
        log.info("%s: a service rejected the access token; acquiring a new one", self._what,
                 extra={"organization": self._organization})

    def rejected_again(self, error: UnauthorizedError) -> CredentialError:
        """The error for a freshly acquired token the service rejected too (recorded as a failure)."""
        refused = CredentialError(
            f"{self._what}: {error}: the service rejected a newly acquired Entra token for the bot account "
            "as well (fix: check the account still has Basic access in the organization and is not "
            "blocked; Entra sign-in logs show why its tokens are revoked)",
            cause="token_rejected", service=error.service, status=error.status)
        self._ledger.failed(self._organization, refused)
        return refused

    def invalidate(self) -> None:
        """Forget the cached token (the next call asks the credential, which may reuse its cache)."""
        with self._lock:
            self._token = None
            self._expires_on = 0.0

    def _drop_credential(self) -> None:
        credential, self._credential = self._credential, None
        if credential is not None:
            _close(credential)

    def close(self) -> None:
        with self._lock:
            self._drop_credential()
            self._token = None

    def __enter__(self) -> TokenProvider:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# Credentials built on MSAL's public client (azure-identity's InteractiveCredential): they keep
# their own access-token cache and skip it when asked for claims.
_MSAL_USER_CREDENTIALS = (UsernamePasswordCredential, DeviceCodeCredential)


def _close(credential: object) -> None:
    close = getattr(credential, "close", None)
    if callable(close):
        close()


def _env_value(env: Mapping[str, str], name: str | None, key: str) -> str:
    if not name:
        raise ConfigError("configuration", key, "no environment variable named",
                          "set it, or use credential.from_keyvault")
    value = env.get(name)
    if not value:
        raise ConfigError("environment", name, "variable is not set or empty",
                          f"export {name} (named by {key})")
    return value


def _username_password(cred: config.UserCredential, *,
                       secret_reader: Callable[[str, str], Secret] | None,
                       env: Mapping[str, str]) -> tuple[str, Secret]:
    if cred.from_keyvault is not None:
        if secret_reader is None:
            raise ConfigError("configuration", "credential.from_keyvault",
                              "no Key Vault reader was provided for the bot's username/password",
                              "configure azure: so patrol can reach Key Vault")
        ref = cred.from_keyvault
        username = secret_reader(ref.vault_url, ref.username_secret).reveal()
        password = secret_reader(ref.vault_url, ref.password_secret)
        return username.strip(), password
    username = _env_value(env, cred.username_env, "credential.username_env")
    password = Secret(_env_value(env, cred.password_env, "credential.password_env"))
    return username.strip(), password


def _username_password_credential(client_id: str, username: str, password: Secret, *,
                                  tenant_id: str | None, authority: str, ca_bundle: str | None,
                                  retry_total: int | None) -> UsernamePasswordCredential:
    kwargs = _authority_kwargs(authority, ca_bundle, retry_total, userrealm=True)
    # ROPC is deprecated upstream (no MFA); the bot account uses it on purpose (docs/external-apis.md).
    # The warning names our caller's module, so it is silenced here, at the one construction site.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return UsernamePasswordCredential(client_id, username, password.reveal(),
                                          tenant_id=tenant_id, **kwargs)


def _environment_credential(env: Mapping[str, str], *, authority: str, ca_bundle: str | None,
                            retry_total: int | None, user: bool) -> TokenCredential:
    """What ``EnvironmentCredential`` builds, but from the ``env`` we were given.

    patrol reads its environment in one place (the CLI) and passes it down; azure-identity's
    ``EnvironmentCredential`` would read ``os.environ`` behind our back. Same variables, same
    precedence: client secret, then certificate, then username/password.
    """
    authority = env.get("AZURE_AUTHORITY_HOST") or authority
    tenant, client = env.get("AZURE_TENANT_ID"), env.get("AZURE_CLIENT_ID")
    kwargs = _authority_kwargs(authority, ca_bundle, retry_total)
    if tenant and client and env.get("AZURE_CLIENT_SECRET"):
        return ClientSecretCredential(tenant, client, env["AZURE_CLIENT_SECRET"], **kwargs)
    if tenant and client and env.get("AZURE_CLIENT_CERTIFICATE_PATH"):
        return CertificateCredential(tenant, client, env["AZURE_CLIENT_CERTIFICATE_PATH"],
                                     password=env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD"), **kwargs)
    if client and env.get("AZURE_USERNAME") and env.get("AZURE_PASSWORD"):
        return _username_password_credential(client, env["AZURE_USERNAME"], Secret(env["AZURE_PASSWORD"]),
                                             tenant_id=tenant, authority=authority, ca_bundle=ca_bundle,
                                             retry_total=retry_total)
    wanted = ("AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH)"
              if not user else "AZURE_CLIENT_ID + AZURE_USERNAME + AZURE_PASSWORD")
    raise ConfigError("environment", "AZURE_*", "credential kind 'environment' found no complete set",
                      f"set {wanted}")


def default_record_file(home: str | None = None) -> str:
    """Where ``patrol login`` keeps the AuthenticationRecord when the config names no file."""
    base = home if home is not None else os.path.expanduser("~")
    return str(Path(base) / DEFAULT_RECORD_FILE)


def _record_path(cred: config.UserCredential, home: str | None) -> str:
    if not cred.record_file:
        return default_record_file(home)
    if home is not None and cred.record_file.startswith("~/"):
        return str(Path(home) / cred.record_file[2:])
    return os.path.expanduser(cred.record_file)


def _cache_options(cred: config.UserCredential) -> TokenCachePersistenceOptions:
    # Without libsecret the cache is a plaintext file $HOME/.IdentityService/<name>.nocae: it
    # holds the bot's refresh token, so it must live on a private volume (docs/external-apis.md).
    return TokenCachePersistenceOptions(name=cred.cache_name, allow_unencrypted_storage=True)


def _device_code_credential(cred: config.UserCredential, *, ca_bundle: str | None,
                            retry_total: int | None, home: str | None) -> DeviceCodeCredential:
    path = _record_path(cred, home)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise AuthenticationRequiredError(
            f"device-code credential: no sign-in record at {path}; run `patrol login`") from exc
    except OSError as exc:
        raise AuthenticationRequiredError(
            f"device-code credential: cannot read sign-in record {path}: {exc.strerror}") from exc
    try:
        record = AuthenticationRecord.deserialize(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthenticationRequiredError(
            f"device-code credential: sign-in record {path} is not valid; run `patrol login`") from exc
    # The record carries authority, tenant and client id; passing authority= too is a TypeError.
    kwargs = _transport_kwargs(ca_bundle, retry_total)
    if not is_public_authority(record.authority):
        kwargs["disable_instance_discovery"] = True
    return DeviceCodeCredential(authentication_record=record,
                                cache_persistence_options=_cache_options(cred),
                                disable_automatic_authentication=True, **kwargs)


def user_token_provider(cred: config.UserCredential, *, azure: config.AzureSettings,
                        secret_reader: Callable[[str, str], Secret] | None,
                        env: Mapping[str, str], home: str | None = None,
                        clock: Callable[[], float] = time.time,
                        retry_total: int | None = None, organization: str = "",
                        ledger: CredentialLedger | None = None) -> TokenProvider:
    """A callable yielding the bot user's Entra access token for Azure DevOps (a Secret).

    ``organization`` names the credential in messages and in ``ledger`` (default: the process's
    :data:`CREDENTIALS`, which the exporter's and worker's metrics read).

    ``home`` resolves ``~`` in ``cred.record_file`` and the default record location
    (``~/.config/patrol/auth-record.json``). The device-code token cache itself lives where
    azure-identity puts it, ``$HOME/.IdentityService/`` of the process.
    """
    ca_bundle = azure.ca_bundle
    what = f"{cred.kind} credential" + (f" of organization {organization}" if organization else "")

    def factory() -> TokenCredential:
        if cred.kind == "username-password":
            username, password = _username_password(cred, secret_reader=secret_reader, env=env)
            return _username_password_credential(cred.client_id, username, password,
                                                 tenant_id=cred.tenant_id, authority=cred.authority,
                                                 ca_bundle=ca_bundle, retry_total=retry_total)
        if cred.kind == "device-code":
            return _device_code_credential(cred, ca_bundle=ca_bundle, retry_total=retry_total, home=home)
        if cred.kind == "azure-cli":
            return AzureCliCredential(tenant_id="" if cred.tenant_id == "organizations" else cred.tenant_id)
        if cred.kind == "environment":
            return _environment_credential(env, authority=cred.authority, ca_bundle=ca_bundle,
                                           retry_total=retry_total, user=True)
        raise ConfigError("configuration", "credential.kind", f"unknown credential kind {cred.kind!r}",
                          "use username-password, device-code, azure-cli or environment")

    return TokenProvider(factory, scope=ADO_SCOPE, what=what, clock=clock, organization=organization,
                         ledger=ledger)


def _write_private(path: str, text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def login_device_code(cred: config.UserCredential, *, azure: config.AzureSettings, record_file: str,
                      prompt: Callable[[str], None], timeout: int | None = None,
                      retry_total: int | None = None) -> None:
    """``patrol login``: the one interactive sign-in, leaving a refresh token for silent use.

    Runs the device-code flow for the ADO scope into the persistent token cache named
    ``cred.cache_name``, tells the user what to do through ``prompt``, and writes the
    AuthenticationRecord (no secret in it) to ``record_file`` with mode 0600.
    """

    def on_code(verification_uri: str, user_code: str, expires_on: datetime) -> None:
        prompt(f"To sign in as the patrol bot, open {verification_uri} and enter the code {user_code} "
               f"(valid until {expires_on:%H:%M:%S} UTC).")

    kwargs = _authority_kwargs(cred.authority, azure.ca_bundle, retry_total)
    credential = DeviceCodeCredential(cred.client_id, tenant_id=cred.tenant_id, timeout=timeout,
                                      prompt_callback=on_code,
                                      cache_persistence_options=_cache_options(cred), **kwargs)
    try:
        record = credential.authenticate(scopes=[ADO_SCOPE])
    except Exception as exc:
        raise translate_auth_error(exc, what="device-code sign-in") from exc
    finally:
        credential.close()
    _write_private(record_file, record.serialize())
    log.info("signed in as %s; sign-in record written", record.username,
             extra={"record_file": record_file, "tenant": record.tenant_id})


def azure_credential(azure: config.AzureSettings, env: Mapping[str, str], *,
                     retry_total: int | None = None) -> TokenCredential:
    """patrol's own identity for Azure data planes (Key Vault), per ``azure.credential``."""
    ca_bundle = azure.ca_bundle
    kind = azure.credential
    if kind == "default":
        # The SDK's chain (workload identity, managed identity, CLI, ...) reads os.environ itself.
        kwargs = _authority_kwargs(azure.authority, ca_bundle, retry_total)
        if azure.client_id:
            kwargs["managed_identity_client_id"] = azure.client_id
        if azure.tenant_id:
            kwargs["workload_identity_tenant_id"] = azure.tenant_id
        return DefaultAzureCredential(**kwargs)
    if kind == "client-secret":
        if not azure.tenant_id or not azure.client_id:
            raise ConfigError("configuration", "azure.tenant_id/azure.client_id",
                              "credential 'client-secret' needs both",
                              "set azure.tenant_id and azure.client_id")
        secret = _client_secret(azure, env)
        return ClientSecretCredential(azure.tenant_id, azure.client_id, secret.reveal(),
                                      **_authority_kwargs(azure.authority, ca_bundle, retry_total))
    if kind == "managed-identity":
        mi_kwargs = _transport_kwargs(ca_bundle, retry_total)
        if azure.client_id:
            mi_kwargs["client_id"] = azure.client_id
        return ManagedIdentityCredential(**mi_kwargs)
    if kind == "azure-cli":
        return AzureCliCredential(tenant_id=azure.tenant_id or "")
    if kind == "environment":
        return _environment_credential(env, authority=azure.authority, ca_bundle=ca_bundle,
                                       retry_total=retry_total, user=False)
    raise ConfigError("configuration", "azure.credential", f"unknown credential kind {kind!r}",
                      "use default, client-secret, managed-identity, azure-cli or environment")


def _client_secret(azure: config.AzureSettings, env: Mapping[str, str]) -> Secret:
    if azure.client_secret_file:
        try:
            value = Path(azure.client_secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("configuration", "azure.client_secret_file",
                              f"cannot read {azure.client_secret_file}: {exc.strerror}",
                              "mount the client secret there") from exc
        if not value:
            raise ConfigError("configuration", "azure.client_secret_file",
                              f"{azure.client_secret_file} is empty", "mount the client secret there")
        return Secret(value)
    return Secret(_env_value(env, azure.client_secret_env, "azure.client_secret_env"))


def close_credential(credential: object) -> None:
    """Close a credential returned by :func:`azure_credential` (releases its HTTP session)."""
    _close(credential)
