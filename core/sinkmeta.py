"""The metadata patrol writes beside every token it delivers, and how to read it back.

A sink never reveals its token to say which PAT it holds: the worker writes the PAT's
``authorizationId``, its expiry and the rotation id beside the value (Kubernetes annotations on
the Secret, tags and ``exp`` on the Key Vault version). The worker reads this to decide what to
revoke and to resume after a crash; the exporter reads it to match a sink to the PAT Lifecycle
API and, failing that, to report the expiry itself. Both sides use this one module, so the
names can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from core.keyvault import SecretVersion
from core.kube import KubeSecret, parse_time

ANNOTATION_AUTHORIZATION_ID = "patrol.io/authorization-id"
ANNOTATION_EXPIRY = "patrol.io/expiry"
ANNOTATION_ROTATION = "patrol.io/rotation"
TAG_AUTHORIZATION_ID = "authorizationId"
TAG_ROTATION = "rotation"


@dataclass(frozen=True)
class SinkMetadata:
    authorization_id: str | None = None
    expires_at: datetime | None = None
    rotation_id: str | None = None


def format_expiry(when: datetime) -> str:
    """RFC 3339, whole seconds, UTC: how ``patrol.io/expiry`` is written."""
    if when.tzinfo is None:
        raise ValueError("expiry needs an aware datetime")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_secret(secret: KubeSecret) -> SinkMetadata:
    annotations = secret.annotations
    return SinkMetadata(
        authorization_id=annotations.get(ANNOTATION_AUTHORIZATION_ID) or None,
        expires_at=parse_time(annotations.get(ANNOTATION_EXPIRY)),
        rotation_id=annotations.get(ANNOTATION_ROTATION) or None,
    )


def from_vault(props: SecretVersion) -> SinkMetadata:
    return SinkMetadata(
        authorization_id=props.tags.get(TAG_AUTHORIZATION_ID) or None,
        expires_at=props.expires_on,
        rotation_id=props.tags.get(TAG_ROTATION) or None,
    )


def secret_annotations(*, authorization_id: str, expires_at: datetime, rotation_id: str) -> dict[str, str]:
    return {ANNOTATION_AUTHORIZATION_ID: authorization_id, ANNOTATION_EXPIRY: format_expiry(expires_at),
            ANNOTATION_ROTATION: rotation_id}


def vault_tags(*, authorization_id: str, rotation_id: str) -> dict[str, str]:
    return {TAG_AUTHORIZATION_ID: authorization_id, TAG_ROTATION: rotation_id}
