"""core.entra with the real azure-identity/MSAL credentials against the running sandbox Entra.

Access tokens here live 4 minutes: less than the 5-minute margin MSAL and patrol keep, so every
token request after sign-in goes through the refresh-token grant — which is what makes a revoked
refresh token observable (otherwise MSAL would answer from its cached access token).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import config, entra, keyvault
from core.errors import AuthenticationRequiredError, UnauthorizedError
from core.secret import Secret
from sandbox.app import SandboxThread
from sandbox.scenarios import scenario

pytestmark = pytest.mark.contract

ADO_AUDIENCE = "499b84ac-1321-427f-aa17-267ca6975798"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxThread]:
    params = scenario("default", entra_token_lifetime=240.0, job_interval=None, pipeline_interval=None)
    with SandboxThread(str(tmp_path_factory.mktemp("sandbox")), params) as sb:
        yield sb



def user_credential(sandbox: SandboxThread, kind: config.CredentialKind,
                    **kw: object) -> config.UserCredential:
    bot = sandbox.ready["bot"]
    return config.UserCredential(kind=kind, tenant_id=bot["tenant_id"], client_id=bot["client_id"],
                                 authority=sandbox.ready["entra_authority"], **kw)  # type: ignore[arg-type]


def assert_bot_token(sandbox: SandboxThread, token: Secret) -> None:
    principal = sandbox.call(sandbox.world.entra.principal_for, token.reveal())
    assert principal is not None, "the sandbox Entra does not know this token"
    assert principal.kind == "user"
    assert principal.upn == sandbox.ready["bot"]["username"]
    assert principal.audience == ADO_AUDIENCE


ENV = {"BOT_USER": "", "BOT_PASS": ""}


def test_username_password_from_env(sandbox: SandboxThread, azure: config.AzureSettings) -> None:
    bot = sandbox.ready["bot"]
    cred = user_credential(sandbox, "username-password", username_env="BOT_USER", password_env="BOT_PASS")
    env = {"BOT_USER": bot["username"], "BOT_PASS": bot["password"]}
    with entra.user_token_provider(cred, azure=azure, secret_reader=None, retry_total=0,
                                   env=env) as provider:
        token = provider()
        assert_bot_token(sandbox, token)
        assert token.reveal() not in repr(token)


def test_username_password_from_key_vault_with_patrols_client_secret(sandbox: SandboxThread,
                                                                     azure: config.AzureSettings) -> None:
    ready = sandbox.ready
    ref = config.KeyVaultSecretRef(vault_url=ready["keyvault_url"], username_secret="bot-azure-devops-email",
                                   password_secret="bot-azure-devops-password")
    cred = user_credential(sandbox, "username-password", from_keyvault=ref)
    app_credential = entra.azure_credential(azure, {}, retry_total=0)
    try:
        with keyvault.reader(app_credential, ca_bundle=azure.ca_bundle, verify_challenge_resource=False,
                             retry_total=0) as read, \
                entra.user_token_provider(cred, azure=azure, secret_reader=read, env={},
                                          retry_total=0) as provider:
            assert_bot_token(sandbox, provider())
    finally:
        entra.close_credential(app_credential)


def test_wrong_password_is_unauthorized_and_the_password_is_not_in_the_message(
        sandbox: SandboxThread, azure: config.AzureSettings) -> None:
    wrong = "not-the-bots-password-0123"
    cred = user_credential(sandbox, "username-password", username_env="U", password_env="P")
    with entra.user_token_provider(cred, azure=azure, secret_reader=None, retry_total=0,
                                   env={"U": sandbox.ready["bot"]["username"], "P": wrong}) as provider, \
            pytest.raises(UnauthorizedError) as info:
        provider()
    assert "AADSTS50126" in str(info.value)
    assert wrong not in str(info.value)
    assert sandbox.ready["bot"]["password"] not in str(info.value)


def test_wrong_client_secret_for_key_vault_is_unauthorized(sandbox: SandboxThread, tmp_path: Path,
                                                           azure: config.AzureSettings) -> None:
    bad = tmp_path / "secret"
    bad.write_text("definitely-not-the-secret\n")
    settings = config.AzureSettings(credential="client-secret", tenant_id=azure.tenant_id,
                                    client_id=azure.client_id, client_secret_file=str(bad),
                                    authority=azure.authority, ca_bundle=azure.ca_bundle)
    credential = entra.azure_credential(settings, {}, retry_total=0)
    try:
        with keyvault.KeyVault(sandbox.ready["keyvault_url"], credential, ca_bundle=azure.ca_bundle,
                               verify_challenge_resource=False, retry_total=0) as vault, \
                pytest.raises(UnauthorizedError, match="AADSTS7000215") as info:
            vault.get_secret("bot-azure-devops-email")
        assert "definitely-not-the-secret" not in str(info.value)
    finally:
        entra.close_credential(credential)


SILENT_USE = textwrap.dedent("""
    import json, sys
    from core import config, entra
    args = json.loads(sys.argv[1])
    cred = config.UserCredential(kind="device-code", cache_name=args["cache_name"],
                                 record_file=args["record_file"])
    azure = config.AzureSettings(ca_bundle=args["ca_bundle"])
    with entra.user_token_provider(cred, azure=azure, secret_reader=None, env={}, retry_total=0) as provider:
        try:
            token = provider()
        except Exception as exc:
            print(type(exc).__name__ + ": " + str(exc))
            sys.exit(3)
    with open(args["out"], "w") as out:
        out.write(token.reveal())
""")


def run_silently(sandbox: SandboxThread, home: Path, record: Path,
                 out: Path) -> subprocess.CompletedProcess[str]:
    """Use the device-code credential in a fresh interpreter whose HOME holds the token cache."""
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    args = {"cache_name": "patrol-contract", "record_file": str(record),
            "ca_bundle": sandbox.ready["ca_bundle"], "out": str(out)}
    command = [sys.executable, "-W", "ignore::DeprecationWarning", "-c", SILENT_USE, json.dumps(args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_device_code_login_then_silent_use_in_a_new_process_until_revoked(
        sandbox: SandboxThread, azure: config.AzureSettings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # azure-identity puts the persistent cache under $HOME/.IdentityService: keep it in tmp_path.
    monkeypatch.setenv("HOME", str(tmp_path))
    record = tmp_path / "patrol" / "auth-record.json"
    cred = user_credential(sandbox, "device-code", cache_name="patrol-contract", record_file=str(record))
    username = sandbox.ready["bot"]["username"]
    prompts: list[str] = []

    def approve(message: str) -> None:
        prompts.append(message)
        code = re.search(r"enter the code (\S+)", message)
        assert code is not None, message
        sandbox.call(sandbox.world.entra.approve_device_code, code.group(1), username)

    entra.login_device_code(cred, azure=azure, record_file=str(record), prompt=approve, retry_total=0)
    assert len(prompts) == 1
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert username in record.read_text()
    assert (tmp_path / ".IdentityService" / "patrol-contract.nocae").exists()

    since = sandbox.call(lambda: sandbox.world.log.records("entra")[-1].time)
    out = tmp_path / "token"
    done = run_silently(sandbox, tmp_path, record, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_bot_token(sandbox, Secret(out.read_text()))
    paths = [r.path for r in sandbox.call(sandbox.world.log.records, "entra", since)]
    assert not any("devicecode" in p for p in paths), paths      # silent: no new device flow

    sandbox.call(sandbox.world.entra.revoke_refresh_tokens, username)
    done = run_silently(sandbox, tmp_path, record, tmp_path / "token2")
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith("AuthenticationRequiredError")
    assert "patrol login" in done.stdout

    # and in this process, through the same provider code path
    with entra.user_token_provider(cred, azure=azure, secret_reader=None, env={},
                                   retry_total=0) as provider, \
            pytest.raises(AuthenticationRequiredError, match="patrol login"):
        provider()


def test_device_code_without_login_needs_a_human(sandbox: SandboxThread, azure: config.AzureSettings,
                                                 tmp_path: Path) -> None:
    cred = user_credential(sandbox, "device-code", record_file=str(tmp_path / "absent.json"))
    with entra.user_token_provider(cred, azure=azure, secret_reader=None, env={}) as provider, \
            pytest.raises(AuthenticationRequiredError, match="patrol login"):
        provider()
