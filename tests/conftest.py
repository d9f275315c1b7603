"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _fresh_keyvault_challenges() -> Iterator[None]:
    """azure-keyvault-secrets caches each vault's 401 challenge (its tenant) per host:port for the
    whole process. Every test's sandbox has a new tenant and may reuse an earlier sandbox's port,
    so a stale entry would send the next test to the wrong tenant. Real vaults never change
    tenant, so production code keeps the cache; only tests clear it."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.clear()
    yield


@pytest.fixture(autouse=True)
def _fresh_credential_ledger() -> Iterator[None]:
    """core.entra.CREDENTIALS is the process's record of the bot credential, shared by the
    exporter's and the worker's metrics (one of each per process in production). Tests run many
    worlds in one process: a tenant refusal simulated by one test must not leave
    patrol_credential_ok at 0 — and PatrolCredentialBroken firing — in the next."""
    from core.entra import CREDENTIALS

    CREDENTIALS.clear()
    yield


@pytest.fixture
def ca_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every CA-bundle load (``ssl.SSLContext.load_verify_locations``) while the test runs, by its
    arguments, with the process's shared TLS contexts (ADO's, and core.tls's for Key Vault and Entra) built afresh."""
    import ssl

    from core._ado_session import tls_context
    from core.tls import forget_tls_contexts

    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args or kwargs)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    tls_context.cache_clear()
    forget_tls_contexts()
    yield loads
    tls_context.cache_clear()
    forget_tls_contexts()
