"""core.keyvault with the real azure-keyvault-secrets client against the sandbox vault (TLS,
401 challenge, patrol's own client-secret identity), including injected faults."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from core import config, entra
from core.errors import NotFoundError, ServerError, ThrottledError, UnavailableError
from core.keyvault import KeyVault
from core.secret import Secret
from sandbox.app import SandboxThread
from sandbox.http import Fault

pytestmark = pytest.mark.contract

VALUE_ONE = "first-secret-value-0123456789"
VALUE_TWO = "second-secret-value-9876543210"



@pytest.fixture(scope="module")
def vault(sandbox: SandboxThread, azure: config.AzureSettings) -> Iterator[KeyVault]:
    ready = sandbox.ready
    credential = entra.azure_credential(azure, {}, retry_total=0)
    with KeyVault(ready["keyvault_url"], credential, ca_bundle=ready["ca_bundle"],
                  verify_challenge_resource=False, retry_total=0) as kv:
        kv.get_properties("bot-azure-devops-email")       # challenge done once, before any fault
        yield kv
    entra.close_credential(credential)


@pytest.fixture
def faults(sandbox: SandboxThread) -> Iterator[list[str]]:
    added: list[str] = []
    yield added
    for fault_id in added:
        with contextlib.suppress(KeyError):              # a counted fault removes itself when used up
            sandbox.call(sandbox.world.faults.remove, fault_id)


def test_set_get_and_list_versions_with_expiry_and_tags(vault: KeyVault) -> None:
    exp_one = datetime(2030, 1, 1, tzinfo=UTC)
    exp_two = datetime(2030, 2, 1, 12, 30, tzinfo=UTC)
    first = vault.set_secret("patrol-contract", Secret(VALUE_ONE), expires_on=exp_one,
                             tags={"authorizationId": "auth-1", "rotation": "r1"})
    second = vault.set_secret("patrol-contract", Secret(VALUE_TWO), expires_on=exp_two,
                              tags={"authorizationId": "auth-2", "rotation": "r2"})
    assert first.name == second.name == "patrol-contract"
    assert first.version != second.version
    assert (second.expires_on, dict(second.tags), second.enabled) == (
        exp_two, {"authorizationId": "auth-2", "rotation": "r2"}, True)

    latest, value = vault.get_secret("patrol-contract")
    assert latest.version == second.version
    assert value == Secret(VALUE_TWO)
    older, old_value = vault.get_secret("patrol-contract", first.version)
    assert (older.expires_on, old_value) == (exp_one, Secret(VALUE_ONE))
    assert vault.get_properties("patrol-contract", first.version).tags["authorizationId"] == "auth-1"

    versions = vault.list_versions("patrol-contract")
    assert {v.version for v in versions} == {first.version, second.version}
    created = [v.created_on.timestamp() for v in versions if v.created_on]
    assert len(created) == len(versions)
    assert created == sorted(created, reverse=True)       # newest first (same second here: a tie)
    assert all(isinstance(v.tags, dict) for v in versions)


def test_missing_secret_is_not_found(vault: KeyVault) -> None:
    with pytest.raises(NotFoundError) as info:
        vault.get_secret("patrol-never-written")
    assert info.value.status == 404


def test_throttled_with_retry_after(sandbox: SandboxThread, vault: KeyVault, faults: list[str]) -> None:
    faults.append(sandbox.call(sandbox.world.faults.add, Fault(kind="throttle", service="keyvault",
                                                                path_regex="/secrets/patrol-throttled",
                                                                retry_after=7, remaining=1)))
    with pytest.raises(ThrottledError) as info:
        vault.set_secret("patrol-throttled", Secret(VALUE_ONE), expires_on=None, tags={})
    assert info.value.delay == 7.0
    assert VALUE_ONE not in str(info.value)
    vault.set_secret("patrol-throttled", Secret(VALUE_ONE), expires_on=None, tags={})   # fault used up


def test_server_error(sandbox: SandboxThread, vault: KeyVault, faults: list[str]) -> None:
    faults.append(sandbox.call(sandbox.world.faults.add, Fault(kind="status", service="keyvault", status=503,
                                                                path_regex="/secrets/patrol-contract")))
    with pytest.raises(ServerError) as info:
        vault.get_secret("patrol-contract")
    assert info.value.status == 503


def test_dropped_connection_is_unavailable(sandbox: SandboxThread, vault: KeyVault,
                                           faults: list[str]) -> None:
    faults.append(sandbox.call(sandbox.world.faults.add, Fault(kind="timeout", service="keyvault", delay=0.0,
                                                                path_regex="/secrets/patrol-contract")))
    with pytest.raises(UnavailableError):
        vault.list_versions("patrol-contract")


def test_unreachable_vault_is_unavailable(sandbox: SandboxThread) -> None:
    from core.keyvault import KeyVault as Vault

    class NoToken:
        def get_token(self, *scopes: str, **kwargs: object) -> object:
            raise AssertionError("never asked: the connection fails first")

    with Vault("https://127.0.0.1:9", NoToken(), ca_bundle=sandbox.ready["ca_bundle"],  # type: ignore[arg-type]
               verify_challenge_resource=False, retry_total=0) as dead, pytest.raises(UnavailableError):
        dead.get_secret("x")
