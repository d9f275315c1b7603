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
