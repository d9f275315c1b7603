"""The bot credential's failures: AADSTS codes → cause and fix, the ledger and its metrics, and
the once-only renewal of a rejected bearer token (over httpx.MockTransport; the real
azure-identity/MSAL path against the sandbox is tests/contract/test_credential_contract.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import AuthenticationRequiredError as AzureAuthRequired
from prometheus_client import CollectorRegistry, generate_latest

from core import entra
from core.ado import AdoClient, PatLifecycleClient
from core.errors import (
    AuthenticationRequiredError,
    CredentialError,
    PatrolError,
    ServerError,
    UnauthorizedError,
    UnavailableError,
)
from core.retry import Backoff
from core.secret import Secret
from remediation.metrics import WorkerMetrics

VSSPS = "https://vssps.dev.azure.com/fabrikam"
EMPTY_PAGE = {"patTokens": [], "continuationToken": ""}


def refused(code: int, description: str = "refused") -> ClientAuthenticationError:
    return ClientAuthenticationError(message=f"Authentication failed: AADSTS{code}: {description}")


# -- AADSTS → cause and fix -------------------------------------------------------------------

@pytest.mark.parametrize("code, cause, words", [
    (50076, "mfa_required", "MFA is required for the bot account (AADSTS50076): run `patrol login` "
                            "(device code) or exclude it via Conditional Access"),
    (50079, "mfa_enrollment_required", "enroll in MFA"),
    (53003, "conditional_access_blocked", "Conditional Access policy blocks"),
    (65001, "consent_missing", "user_impersonation"),
    (7000218, "public_client_flows_disabled", entra.AZURE_CLI_CLIENT_ID),
    (50126, "invalid_credentials", "username or password"),
    (50057, "account_disabled", "disabled"),
])
def test_a_known_refusal_is_a_credential_error_naming_cause_and_fix(code: int, cause: str, words: str) -> None:
    error = entra.translate_auth_error(refused(code), what="username-password credential")
    assert isinstance(error, CredentialError) and not isinstance(error, AuthenticationRequiredError)
    assert error.cause == cause
    assert str(error).startswith("username-password credential: ")
    assert words in str(error)
    assert f"AADSTS{code}" in str(error)


def test_every_cause_patrol_names_is_a_declared_label_value() -> None:
    assert {r.cause for r in entra.TENANT_REFUSALS.values()} <= set(entra.CREDENTIAL_CAUSES)
    assert "token_rejected" in entra.CREDENTIAL_CAUSES


def test_an_expired_refresh_token_asks_for_patrol_login() -> None:
    error = entra.translate_auth_error(refused(700082), what="device-code credential")
    assert isinstance(error, AuthenticationRequiredError)
    assert error.cause == "sign_in_required" and "patrol login" in str(error)


class ErrorBody:
    """An azure-core response whose body is Entra's error document (what MSAL's silent path keeps)."""

    reason = "Bad Request"

    def __init__(self, code: int) -> None:
        self.status_code = 400
        self._text = json.dumps({"error": "invalid_grant", "error_codes": [code],
                                 "error_description": f"AADSTS{code}: blocked"})

    def text(self) -> str:
        return self._text


def test_the_code_is_read_from_the_error_body_when_the_message_has_none() -> None:
    """A silent (refresh-token) refusal surfaces as AuthenticationRequiredError whose message says
    only "interactive authentication is required"; the AADSTS code is in its response."""
    exc = AzureAuthRequired([entra.ADO_SCOPE], response=ErrorBody(53003))  # type: ignore[arg-type]
    error = entra.translate_auth_error(exc, what="device-code credential")
    assert isinstance(error, CredentialError) and error.cause == "conditional_access_blocked"


def test_an_unknown_refusal_stays_a_plain_unauthorized_error() -> None:
    error = entra.translate_auth_error(refused(90099), what="x")
    assert type(error) is UnauthorizedError


# -- the ledger and its metrics -------------------------------------------------------------

def test_the_ledger_counts_permanent_failures_only_and_a_success_clears_ok() -> None:
    ledger = entra.CredentialLedger()
    ledger.declare("org")
    assert ledger.snapshot()["org"].ok is None
    ledger.failed("org", UnavailableError("entra unreachable"))
    ledger.failed("org", ServerError("entra 503", status=503))
    assert ledger.snapshot()["org"].failures == {}
    ledger.failed("org", CredentialError("MFA is required", cause="mfa_required"))
    ledger.failed("org", UnauthorizedError("no idea why"))
    state = ledger.snapshot()["org"]
    assert state.ok is False and state.failures == {"mfa_required": 1, "other": 1}
    assert state.reason == "no idea why"
    ledger.succeeded("org")
    state = ledger.snapshot()["org"]
    assert state.ok is True and state.reason is None and state.failures == {"mfa_required": 1, "other": 1}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_the_worker_exports_the_ledger_from_zero() -> None:
    ledger = entra.CredentialLedger()
    metrics = WorkerMetrics(credentials=ledger)
    assert b"patrol_credential" not in generate_latest(metrics.registry)     # nothing used yet
    ledger.declare("fabrikam")
    registry = metrics.registry
    for cause in entra.CREDENTIAL_CAUSES:
        assert sample(registry, "patrol_credential_failures_total", organization="fabrikam", cause=cause) == 0
    assert sample(registry, "patrol_credential_ok", organization="fabrikam") is None
    ledger.failed("fabrikam", CredentialError("blocked", cause="conditional_access_blocked"))
    assert sample(registry, "patrol_credential_ok", organization="fabrikam") == 0
    assert sample(registry, "patrol_credential_failures_total", organization="fabrikam",
                  cause="conditional_access_blocked") == 1
    assert sample(registry, "patrol_credential_refused", organization="fabrikam",
                  cause="conditional_access_blocked") == 1
    ledger.succeeded("fabrikam")
    assert sample(registry, "patrol_credential_ok", organization="fabrikam") == 1
    assert b"patrol_credential_refused" not in generate_latest(registry)   # absent while it works


def test_the_refused_gauge_names_the_latest_cause_not_the_most_frequent() -> None:
    ledger = entra.CredentialLedger()
    registry = WorkerMetrics(credentials=ledger).registry
    for _ in range(6):
        ledger.failed("fabrikam", CredentialError("MFA", cause="mfa_required"))
    ledger.succeeded("fabrikam")                                   # `patrol login` fixed it
    ledger.failed("fabrikam", CredentialError("blocked", cause="conditional_access_blocked"))
    assert sample(registry, "patrol_credential_refused", organization="fabrikam",
                  cause="conditional_access_blocked") == 1
    assert sample(registry, "patrol_credential_refused", organization="fabrikam", cause="mfa_required") is None
    assert ledger.snapshot()["fabrikam"].cause == "conditional_access_blocked"


def test_a_provider_records_its_outcomes_under_its_organization() -> None:
    ledger = entra.CredentialLedger()
    script: list[AccessToken | Exception] = [refused(50076), AccessToken("a-token-value-1", 10_000)]

    class Scripted:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            item = script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item

        def close(self) -> None:
            pass

    provider = entra.TokenProvider(Scripted, clock=lambda: 0.0, organization="fabrikam", ledger=ledger)
    with pytest.raises(CredentialError, match="MFA is required"):
        provider()
    assert ledger.snapshot()["fabrikam"].failures == {"mfa_required": 1}
    provider()
    assert ledger.snapshot()["fabrikam"].ok is True


# -- a rejected bearer token: dropped, renewed once ------------------------------------------

class RenewingTokens:
    """A fake RenewableToken: hands out token-1, token-2, ...; records what was rejected."""

    def __init__(self) -> None:
        self.issued = 0
        self.current: Secret | None = None
        self.rejected: list[str] = []
        self.again: list[UnauthorizedError] = []

    def __call__(self) -> Secret:
        if self.current is None:
            self.issued += 1
            self.current = Secret(f"token-{self.issued}-value")
        return self.current

    def reject(self, token: Secret) -> None:
        self.rejected.append(token.reveal())
        self.current = None

    def rejected_again(self, error: UnauthorizedError) -> PatrolError:
        self.again.append(error)
        return CredentialError(f"rejected twice: {error}", cause="token_rejected", status=error.status)


def pat_api(statuses: list[int]) -> tuple[Callable[[httpx.Request], httpx.Response], list[str]]:
    """A PAT API answering the statuses in turn; records the bearer token of each request."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"].removeprefix("Bearer "))
        status = statuses.pop(0)
        if status == 200:
            return httpx.Response(200, json=EMPTY_PAGE)
        return httpx.Response(status, headers={"X-TFS-ServiceError": "Access%20Denied"})

    return handler, seen


def pat_client(handler: Callable[[httpx.Request], httpx.Response],
               tokens: Callable[[], Secret]) -> PatLifecycleClient:
    return PatLifecycleClient(VSSPS, tokens, transport=httpx.MockTransport(handler),
                              backoff=Backoff(delays=()), sleep=lambda s: None)


def test_a_rejected_token_is_dropped_and_the_call_sent_once_more_with_a_new_one() -> None:
    tokens = RenewingTokens()
    handler, seen = pat_api([200, 401, 200, 200])
    with pat_client(handler, tokens) as client:
        client.list()
        client.list()
        client.list()
    assert seen == ["token-1-value", "token-1-value", "token-2-value", "token-2-value"]
    assert tokens.rejected == ["token-1-value"] and tokens.again == []


def test_a_create_is_sent_again_after_a_401_because_a_refused_call_did_nothing() -> None:
    from datetime import UTC, datetime

    tokens = RenewingTokens()
    created = {"patToken": {"authorizationId": "a1", "displayName": "x", "scope": "vso.agentpools",
                            "validFrom": "2026-01-01T00:00:00Z", "validTo": "2026-02-01T00:00:00Z",
                            "targetAccounts": None, "token": "new-pat-value-0123456789"},
               "patTokenError": "none"}
    answers = [httpx.Response(401), httpx.Response(200, json=created)]
    with pat_client(lambda request: answers.pop(0), tokens) as client:
        pat = client.create("x", ["vso.agentpools"], datetime(2026, 2, 1, tzinfo=UTC))
    assert pat.info.authorization_id == "a1" and tokens.issued == 2


def test_a_second_rejection_in_a_row_is_the_sources_credential_error_not_a_loop() -> None:
    tokens = RenewingTokens()
    handler, seen = pat_api([401, 401, 200])
    with pat_client(handler, tokens) as client, pytest.raises(CredentialError, match="rejected twice") as info:
        client.list()
    assert info.value.cause == "token_rejected"
    assert seen == ["token-1-value", "token-2-value"]
    assert len(tokens.again) == 1 and tokens.again[0].status == 401
    assert tokens.rejected == ["token-1-value", "token-2-value"]      # neither is reused
    with pat_client(handler, tokens) as client:
        client.list()
    assert seen[-1] == "token-3-value"


def test_403_is_a_permission_problem_and_is_not_renewed() -> None:
    tokens = RenewingTokens()
    handler, seen = pat_api([403])
    with pat_client(handler, tokens) as client, pytest.raises(UnauthorizedError) as info:
        client.list()
    assert not isinstance(info.value, CredentialError) and info.value.status == 403
    assert tokens.rejected == [] and len(seen) == 1


def test_a_plain_callable_is_not_renewed() -> None:
    handler, seen = pat_api([401])
    with pat_client(handler, lambda: Secret("fixed-token-value")) as client, pytest.raises(UnauthorizedError):
        client.list()
    assert seen == ["fixed-token-value"]


def test_the_org_client_with_a_bearer_renews_too() -> None:
    tokens = RenewingTokens()
    answers = [httpx.Response(401), httpx.Response(200, json={"value": [{"id": 7, "name": "pool"}],
                                                                "count": 1})]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return answers.pop(0)

    with AdoClient("https://dev.azure.com/fabrikam", tokens, auth="bearer", transport=httpx.MockTransport(handler),
                   backoff=Backoff(delays=()), sleep=lambda s: None) as client:
        assert client.find_pool("pool").id == 7
    assert seen == ["Bearer token-1-value", "Bearer token-2-value"]


# -- TokenProvider.reject ---------------------------------------------------------------------

class Counting:
    """A non-MSAL TokenCredential (as AzureCliCredential): rebuilt, not asked for claims."""

    built = 0

    def __init__(self) -> None:
        Counting.built += 1
        self.n = Counting.built
        self.kwargs: list[dict[str, object]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.kwargs.append(kwargs)
        return AccessToken(f"token-from-credential-{self.n}", 10_000)

    def close(self) -> None:
        pass


def test_reject_drops_only_the_token_sent_and_rebuilds_a_credential_without_claims() -> None:
    Counting.built = 0
    ledger = entra.CredentialLedger()
    provider = entra.TokenProvider(Counting, clock=lambda: 0.0, organization="o", ledger=ledger)
    first = provider()
    provider.reject(Secret("some-older-token-value"))          # a stale rejection: ignored
    assert provider() is first
    provider.reject(first)
    second = provider()
    assert second.reveal() == "token-from-credential-2"
    rebuilt = provider.rejected_again(UnauthorizedError("ado GET /x: HTTP 401", status=401))
    assert rebuilt.cause == "token_rejected" and "Basic access" in str(rebuilt)
    assert ledger.snapshot()["o"].failures == {"token_rejected": 1}
