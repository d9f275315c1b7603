"""The bot credential against a real tenant's refusals, through the real azure-identity/MSAL
clients and the PAT Lifecycle client, over HTTPS to the sandbox.

Each tenant failure the sandbox's control API switches on (``POST /entra/failures``, answered
as Entra answers it; sandbox/tenant.py names the sources) must fail the first call fast, as a
:class:`CredentialError` naming the cause and the fix, counted in the ledger the metrics read.
A token revoked server-side (issue 10, defect 10) must be dropped and re-acquired once, and a
second rejection in a row must surface as the credential error.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core import config, entra
from core.ado import PatLifecycleClient
from core.config import load_config
from core.errors import CredentialError
from core.retry import Backoff
from exporter.assembly import CoreClients, build
from patrol.cli import main
from remediation.metrics import WorkerMetrics
from remediation.world import CoreWorld
from sandbox.app import SandboxThread
from sandbox.scenarios import scenario

pytestmark = pytest.mark.contract

NO_RETRY = Backoff(delays=())


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxThread]:
    params = scenario("default", job_interval=None, pipeline_interval=None, keyvault_reader_refresh=None)
    with SandboxThread(str(tmp_path_factory.mktemp("credential")), params) as sb:
        yield sb
        gc.collect()     # free client sockets held by caught errors while the servers still run


@pytest.fixture
def control(sandbox: SandboxThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.ready["control_url"], timeout=10) as client:
        yield client
        client.delete("/entra/failures")
        client.delete("/faults")


@pytest.fixture
def ledger() -> entra.CredentialLedger:
    return entra.CredentialLedger()


def provider(sandbox: SandboxThread, ledger: entra.CredentialLedger,
             **kw: object) -> entra.TokenProvider:
    """The bot's username/password provider, a fresh MSAL cache each time (as a new process)."""
    ready = sandbox.ready
    bot = ready["bot"]
    cred = config.UserCredential(kind="username-password", tenant_id=bot["tenant_id"], client_id=bot["client_id"],
                                 authority=ready["entra_authority"], username_env="U", password_env="P")
    azure = config.AzureSettings(ca_bundle=ready["ca_bundle"])
    return entra.user_token_provider(cred, azure=azure, secret_reader=None, retry_total=0,
                                     env={"U": bot["username"], "P": bot["password"]},
                                     organization="sandbox-org", ledger=ledger, **kw)  # type: ignore[arg-type]


def pats(sandbox: SandboxThread, tokens: entra.TokenProvider) -> PatLifecycleClient:
    return PatLifecycleClient(sandbox.ready["vssps_url"], tokens, backoff=NO_RETRY)


def requests(sandbox: SandboxThread, service: str, since: float) -> list[tuple[str, int, str]]:
    records = sandbox.call(sandbox.world.log.records, service, since)
    return [(r.path, r.status, r.headers.get("Authorization", "")) for r in records]


def now(sandbox: SandboxThread) -> float:
    """A time after every request logged so far (the log stamps arrivals with time.time())."""
    records = sandbox.call(sandbox.world.log.records)
    return max([time.time(), *(r.time + 1e-6 for r in records[-1:])])


@pytest.mark.parametrize("kind, cause, code, fix", [
    ("mfa_required", "mfa_required", "AADSTS50076",
     "MFA is required for the bot account (AADSTS50076): run `patrol login` (device code) or exclude it "
     "via Conditional Access"),
    ("mfa_enrollment_required", "mfa_enrollment_required", "AADSTS50079", "run `patrol login`"),
    ("conditional_access_blocked", "conditional_access_blocked", "AADSTS53003",
     "exclude the bot account"),
    ("consent_missing", "consent_missing", "AADSTS65001", "grant admin consent"),
    ("public_client_flows_disabled", "public_client_flows_disabled", "AADSTS7000218",
     "Allow public client flows"),
])
def test_each_tenant_refusal_fails_fast_with_its_cause_and_fix(
        sandbox: SandboxThread, control: httpx.Client, ledger: entra.CredentialLedger,
        kind: str, cause: str, code: str, fix: str) -> None:
    assert control.post("/entra/failures", json={"kind": kind}).status_code == 201
    since = now(sandbox)
    with provider(sandbox, ledger) as tokens, pats(sandbox, tokens) as client, \
            pytest.raises(CredentialError) as info:
        client.list()
    error = info.value
    assert error.cause == cause
    assert code in str(error) and fix in str(error)
    assert "username-password credential of organization sandbox-org" in str(error)
    assert sandbox.ready["bot"]["password"] not in str(error)
    # fail fast: one sign-in attempt, no blind retries, and the PAT API never called without a
    # token (the sandbox's KEDA keeps polling ADO with its PAT meanwhile: not ours)
    token_calls = [p for p, _, _ in requests(sandbox, "entra", since) if p.endswith("/token")]
    assert len(token_calls) == 1, token_calls
    assert not [p for p, _, _ in requests(sandbox, "ado", since) if "/_apis/tokens/pats" in p]
    state = ledger.snapshot()["sandbox-org"]
    assert state.ok is False and state.failures == {cause: 1}
    assert state.reason == str(error)


def test_a_refusal_then_a_fix_sets_the_credential_ok_again(
        sandbox: SandboxThread, control: httpx.Client, ledger: entra.CredentialLedger) -> None:
    control.post("/entra/failures", json={"kind": "consent_missing"})
    with provider(sandbox, ledger) as tokens, pats(sandbox, tokens) as client:
        with pytest.raises(CredentialError):
            client.list()
        control.delete("/entra/failures")
        assert client.list()
    state = ledger.snapshot()["sandbox-org"]
    assert state.ok is True and state.failures == {"consent_missing": 1} and state.reason is None


def test_a_token_revoked_server_side_is_dropped_and_acquired_again_once(
        sandbox: SandboxThread, control: httpx.Client, ledger: entra.CredentialLedger) -> None:
    """Issue 10 defect 10: before, the revoked token was reused (401) until it expired."""
    with provider(sandbox, ledger) as tokens, pats(sandbox, tokens) as client:
        before = client.list()
        revoked = control.post("/entra/failures", json={"kind": "access_tokens_revoked"})
        assert revoked.status_code == 200 and revoked.json()["revoked"] >= 1
        since = now(sandbox)
        after = client.list()                                 # succeeds on the retry
        assert [p.authorization_id for p in after] == [p.authorization_id for p in before]
        sent = [(status, auth) for path, status, auth in requests(sandbox, "ado", since)
                if path.endswith("/_apis/tokens/pats")]
        assert [status for status, _ in sent] == [401, 200]
        assert sent[0][1] != sent[1][1]                       # a different token the second time
        # MSAL's cache was bypassed: a new token came from Entra (refresh token grant)
        assert any(p.endswith("/token") for p, _, _ in requests(sandbox, "entra", since))
        since = now(sandbox)
        client.list()                                         # and the new token is kept
        assert [s for p, s, _ in requests(sandbox, "ado", since) if p.endswith("/_apis/tokens/pats")] == [200]
        assert not any(p.endswith("/token") for p, _, _ in requests(sandbox, "entra", since))
    state = ledger.snapshot()["sandbox-org"]
    assert state.ok is True and state.failures == {}


def test_a_second_rejection_in_a_row_is_the_credential_error(
        sandbox: SandboxThread, control: httpx.Client, ledger: entra.CredentialLedger) -> None:
    with provider(sandbox, ledger) as tokens, pats(sandbox, tokens) as client:
        client.list()
        fault = {"kind": "status", "service": "ado", "path_regex": "/_apis/tokens/pats", "status": 401,
                 "remaining": 2}
        assert control.post("/faults", json=fault).status_code == 201
        since = now(sandbox)
        with pytest.raises(CredentialError) as info:
            client.list()
        assert info.value.cause == "token_rejected"
        assert "rejected a newly acquired Entra token" in str(info.value)
        statuses = [s for p, s, _ in requests(sandbox, "ado", since) if p.endswith("/_apis/tokens/pats")]
        assert statuses == [401, 401]                         # one retry, not a loop
        state = ledger.snapshot()["sandbox-org"]
        assert state.ok is False and state.failures == {"token_rejected": 1}
        client.list()                 # the fault is used up: a new token works, and says so
    state = ledger.snapshot()["sandbox-org"]
    assert state.ok is True and state.failures == {"token_rejected": 1}


# -- where the message and the metric surface: the exporter and the worker's PAT client ---------

def test_the_exporter_shows_the_refusal_as_the_source_error_and_in_its_metrics(
        sandbox: SandboxThread, control: httpx.Client) -> None:
    cfg = load_config(sandbox.ready["config"])
    org = sandbox.params.org
    quick = Backoff(delays=(0.05,))
    control.post("/entra/failures", json={"kind": "mfa_required"})
    clients = CoreClients(cfg, {}, backoff=quick, probe_backoff=quick)
    made = build(cfg, clients, watch_timeout=1, credentials=clients.credentials)
    try:
        made.refresher.refresh_once()
        source = made.source(f"pat-lifecycle/{org}")
        assert not source.health.up
        assert source.health.reason is not None
        assert "MFA is required for the bot account (AADSTS50076): run `patrol login`" in source.health.reason
        registry = made.exposition.registry
        assert registry.get_sample_value("patrol_credential_ok", {"organization": org}) == 0
        failures = registry.get_sample_value("patrol_credential_failures_total",
                                             {"organization": org, "cause": "mfa_required"})
        assert failures is not None and failures >= 1
        assert sandbox.ready["bot"]["password"].encode() not in made.exposition.body()

        control.delete("/entra/failures")
        made.refresher.refresh_once()
        assert made.source(f"pat-lifecycle/{org}").health.up
        made.exposition.invalidate()
        assert registry.get_sample_value("patrol_credential_ok", {"organization": org}) == 1
    finally:
        made.close()


def test_the_workers_pat_client_records_in_the_process_ledger_its_metrics_read(
        sandbox: SandboxThread, control: httpx.Client) -> None:
    cfg = load_config(sandbox.ready["config"])
    org = sandbox.params.org
    metrics = WorkerMetrics()                         # reads entra.CREDENTIALS, as in the worker

    def failures() -> float:
        got = metrics.registry.get_sample_value("patrol_credential_failures_total",
                                                {"organization": org, "cause": "consent_missing"})
        return got or 0.0

    before = failures()
    control.post("/entra/failures", json={"kind": "consent_missing"})
    with CoreWorld(cfg, env={}) as world, pytest.raises(CredentialError, match="grant admin consent"):
        world.pats(org).list()
    assert failures() == before + 1
    assert metrics.registry.get_sample_value("patrol_credential_ok", {"organization": org}) == 0


def test_patrol_rotate_fails_fast_with_the_cause_and_fix_in_its_result_and_journal(
        sandbox: SandboxThread, control: httpx.Client, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    control.post("/entra/failures", json={"kind": "conditional_access_blocked"})
    since = now(sandbox)
    code = main(["rotate", "keda", "--config", sandbox.ready["config"], "--state-dir", str(tmp_path),
                 "--json", "--reason", "credential test"], env={})
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert code == 1 and result["outcome"] == "failed", result
    assert "a Conditional Access policy blocks the bot account's sign-in (AADSTS53003)" in result["message"]
    assert "AADSTS53003" in result["rotation"]["error"]                # what /rotations serves
    assert "Traceback" not in err
    # patrol's own sign-in (to read the bot's password from Key Vault) and one refused bot
    # sign-in: no blind retries, and the PAT API never called without a token
    token_calls = [p for p, _, _ in requests(sandbox, "entra", since) if p.endswith("/token")]
    assert len(token_calls) == 2, token_calls
    assert not [p for p, _, _ in requests(sandbox, "ado", since) if "/_apis/tokens/pats" in p]


def test_a_revoked_token_of_a_device_code_sign_in_is_renewed_from_its_refresh_token(
        sandbox: SandboxThread, control: httpx.Client, ledger: entra.CredentialLedger, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The MFA tenant's path: after `patrol login`, a revoked access token is replaced silently
    (the claims challenge makes MSAL redeem the cached refresh token, no person needed)."""
    monkeypatch.setenv("HOME", str(tmp_path))            # azure-identity's persistent cache lives there
    ready = sandbox.ready
    bot = ready["bot"]
    record = tmp_path / "auth-record.json"
    cred = config.UserCredential(kind="device-code", tenant_id=bot["tenant_id"], client_id=bot["client_id"],
                                 authority=ready["entra_authority"], cache_name="patrol-renewal",
                                 record_file=str(record))
    azure = config.AzureSettings(ca_bundle=ready["ca_bundle"])

    def approve(message: str) -> None:
        code = message.split("enter the code ", 1)[1].split(maxsplit=1)[0]
        sandbox.call(sandbox.world.entra.approve_device_code, code, bot["username"])

    control.post("/entra/failures", json={"kind": "mfa_required"})     # the reason for device code
    entra.login_device_code(cred, azure=azure, record_file=str(record), prompt=approve, retry_total=0)
    with entra.user_token_provider(cred, azure=azure, secret_reader=None, env={}, retry_total=0,
                                   organization="sandbox-org", ledger=ledger) as tokens, \
            pats(sandbox, tokens) as client:
        client.list()
        assert control.post("/entra/failures", json={"kind": "access_tokens_revoked"}).json()["revoked"] >= 1
        since = now(sandbox)
        client.list()
        statuses = [s for p, s, _ in requests(sandbox, "ado", since) if p.endswith("/_apis/tokens/pats")]
        assert statuses == [401, 200]
        assert not any("devicecode" in p for p, _, _ in requests(sandbox, "entra", since))
    assert ledger.snapshot()["sandbox-org"].ok is True
