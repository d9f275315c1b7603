"""Every Key Vault and Entra connection of a process verifies TLS with one shared context (core.tls).

requests hands urllib3 a CA path, and urllib3 built a new ``SSLContext`` and loaded the bundle
for each new connection, each live connection keeping its own copy (~1 MB with the public
bundle). Against the sandbox vault and tenant over real HTTPS, concurrent reads through two
clients and concurrent sign-ins through several credentials open several connections; all of
them must share one context, the bundle loaded once, and still refuse a server the bundle does
not trust.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError

from core import config, entra
from core.errors import UnavailableError
from core.keyvault import KeyVault
from core.tls import tls_context
from sandbox.app import SandboxThread

pytestmark = pytest.mark.contract

SECRET = "bot-azure-devops-email"


@pytest.fixture
def credential(azure: config.AzureSettings) -> Iterator[Any]:
    credential = entra.azure_credential(azure, {}, retry_total=0)
    yield credential
    entra.close_credential(credential)


def live_contexts(vault: KeyVault) -> list[ssl.SSLContext]:
    """The context of every TLS connection the vault's session keeps open."""
    session = vault._client._client._client._pipeline._transport.session
    contexts = []
    for adapter in {id(a): a for a in session.adapters.values()}.values():
        for key in adapter.poolmanager.pools.keys():  # noqa: SIM118  (the container refuses iteration)
            pool = adapter.poolmanager.pools[key]
            contexts += [conn.sock.context for conn in list(pool.pool.queue) if conn is not None and conn.sock]
    return contexts


def test_concurrent_reads_through_two_clients_share_one_context(
        sandbox: SandboxThread, credential: Any, ca_loads: list[object]) -> None:
    ready = sandbox.ready
    vaults = [KeyVault(ready["keyvault_url"], credential, ca_bundle=ready["ca_bundle"],
                       verify_challenge_resource=False, retry_total=0) for _ in range(2)]
    try:
        with ThreadPoolExecutor(8) as pool:
            names = list(pool.map(lambda i: vaults[i % 2].get_properties(SECRET).name, range(64)))
        assert names == [SECRET] * 64
        contexts = [c for v in vaults for c in live_contexts(v)]
        assert len(contexts) > 2                         # several connections were opened ...
        assert {id(c) for c in contexts} == {id(tls_context(ready["ca_bundle"]))}   # ... one context
        # one bundle load in all: the vault's connections and the credential's sign-in share it
        assert ca_loads == [{"cafile": ready["ca_bundle"]}]
        context = contexts[0]
        assert context.verify_mode == ssl.CERT_REQUIRED
    finally:
        for vault in vaults:
            vault.close()


def test_a_vault_the_bundle_does_not_trust_is_refused(
        sandbox: SandboxThread, credential: Any, ca_loads: list[object]) -> None:
    # certifi's public bundle does not hold the sandbox's CA: the shared context must verify.
    with KeyVault(sandbox.ready["keyvault_url"], credential, verify_challenge_resource=False,
                  retry_total=0) as vault, pytest.raises(UnavailableError):
        vault.get_properties(SECRET)


def test_concurrent_sign_ins_through_several_credentials_share_one_context(
        azure: config.AzureSettings, ca_loads: list[object]) -> None:
    # A cold exporter signs in from as many threads as it reads vaults; each credential here has
    # its own session, so 8 sign-ins open 8 connections. Before core.tls, each loaded the bundle.
    credentials = [entra.azure_credential(azure, {}, retry_total=0) for _ in range(8)]
    try:
        with ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(lambda c: c.get_token("https://vault.azure.net/.default"), credentials))
        assert len({t.token for t in tokens}) == 8 and all(t.expires_on > 0 for t in tokens)
        assert ca_loads == [{"cafile": azure.ca_bundle}]
    finally:
        for credential in credentials:
            entra.close_credential(credential)


def test_a_tenant_the_bundle_does_not_trust_is_refused(azure: config.AzureSettings) -> None:
    untrusting = dataclasses.replace(azure, ca_bundle=None)        # certifi's public bundle
    credential = entra.azure_credential(untrusting, {}, retry_total=0)
    try:
        with pytest.raises(ClientAuthenticationError, match=r"(?i)certificate verify failed"):
            credential.get_token("https://vault.azure.net/.default")
    finally:
        entra.close_credential(credential)
