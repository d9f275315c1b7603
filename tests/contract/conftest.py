"""Shared fixtures for contract tests: a whole running sandbox (default scenario) per test module.

Module scope keeps modules independent (one module may revoke the seeded KEDA PAT or switch an
org policy without breaking another) while a sandbox starts in about a second.
"""

from __future__ import annotations

import gc
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from core import config
from sandbox.app import SandboxThread
from sandbox.scenarios import ScenarioParams, scenario

ADO_SCOPE = "499b84ac-1321-427f-aa17-267ca6975798/.default"


def sandbox_params() -> ScenarioParams:
    """The default scenario; the job generator and pipeline keep running, as in the demo."""
    return scenario("default")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxThread]:
    with SandboxThread(str(tmp_path_factory.mktemp("sandbox")), sandbox_params()) as sb:
        yield sb
        # Error responses kept alive by caught exceptions (azure-core, urllib3) hold client
        # sockets until collected: free them while the sandbox still runs, or its side of those
        # connections is reported unclosed (a ResourceWarning, an error under -W error).
        gc.collect()


@pytest.fixture(scope="module")
def azure(sandbox: SandboxThread) -> config.AzureSettings:
    """patrol's own app registration (client secret) in the sandbox's tenant, trusting its CA.
    ``verify_challenge_resource`` is off: the sandbox vault's resource is not *.vault.azure.net."""
    ready = sandbox.ready
    return config.AzureSettings(credential="client-secret", tenant_id=ready["bot"]["tenant_id"],
                                client_id=ready["patrol_client"]["client_id"],
                                client_secret_file=ready["patrol_client"]["client_secret_file"],
                                authority=ready["entra_authority"], ca_bundle=ready["ca_bundle"],
                                verify_challenge_resource=False)


def password_grant(
    sb: SandboxThread, scope: str = ADO_SCOPE, *, username: str | None = None, password: str | None = None
) -> dict[str, Any]:
    """A real token response from the sandbox Entra via the password grant (ROPC), over HTTPS."""
    bot = sb.ready["bot"]
    with httpx.Client(verify=ssl.create_default_context(cafile=sb.ready["ca_bundle"])) as client:
        resp = client.post(
            f"{sb.ready['entra_authority']}/{bot['tenant_id']}/oauth2/v2.0/token",
            data={
                "grant_type": "password",
                "client_id": bot["client_id"],
                "username": username or bot["username"],
                "password": password or bot["password"],
                "scope": f"{scope} offline_access openid profile",
                "client_info": "1",
            },
        )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


TokenGetter = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def entra_token(sandbox: SandboxThread) -> TokenGetter:
    """``entra_token(scope=ADO_SCOPE, username=None, password=None)`` → the token endpoint's JSON."""
    return lambda *args, **kwargs: password_grant(sandbox, *args, **kwargs)


@pytest.fixture(scope="module")
def bot_token(sandbox: SandboxThread) -> str:
    """A user-delegated Entra access token of the bot for the ADO resource."""
    return str(password_grant(sandbox)["access_token"])
