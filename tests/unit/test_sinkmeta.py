"""The metadata contract between the worker (writes it) and the exporter (reads it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.keyvault import SecretVersion
from core.kube import KubeSecret
from core.sinkmeta import SinkMetadata, format_expiry, from_secret, from_vault, secret_annotations, vault_tags

WHEN = datetime(2026, 12, 1, 23, 46, 23, tzinfo=UTC)


def test_what_the_worker_writes_on_a_secret_the_exporter_reads_back() -> None:
    annotations = secret_annotations(authorization_id="a1", expires_at=WHEN, rotation_id="r1")
    secret = KubeSecret(name="s", namespace="n", resource_version="1", data={}, labels={},
                        annotations=annotations, field_managers=(), flux_managed=False, flux_ssa=None)
    assert from_secret(secret) == SinkMetadata("a1", WHEN, "r1")


def test_what_the_worker_writes_on_a_vault_version_the_exporter_reads_back() -> None:
    props = SecretVersion(name="s", version="v", expires_on=WHEN, created_on=WHEN, enabled=True,
                          tags=vault_tags(authorization_id="a1", rotation_id="r1"))
    assert from_vault(props) == SinkMetadata("a1", WHEN, "r1")


def test_a_sink_patrol_never_wrote_has_no_metadata() -> None:
    secret = KubeSecret(name="s", namespace="n", resource_version="1", data={}, labels={},
                        annotations={"other": "x"}, field_managers=(), flux_managed=False, flux_ssa=None)
    assert from_secret(secret) == SinkMetadata()


def test_expiry_is_written_in_utc_and_needs_an_aware_time() -> None:
    assert format_expiry(WHEN.astimezone(timezone(timedelta(hours=2)))) == "2026-12-01T23:46:23Z"
    with pytest.raises(ValueError):
        format_expiry(datetime(2026, 1, 1))
