"""Where a rotated PAT is delivered: Key Vault secrets and Kubernetes Secrets.

A sink can say which PAT it holds without revealing it: the ``authorizationId`` (Key Vault tag
or the ``patrol.io/authorization-id`` annotation), its expiry and the rotation that wrote it.
That metadata is how the saga knows which PAT to revoke, and how recovery, after a crash, finds
a sink that already holds the new token and reads it back from there.

Writes are idempotent (a sink already holding the PAT is left alone) and guarded: a Kubernetes
Secret is patched with its ``resourceVersion`` as a precondition, re-read and retried on 409;
and a Secret that Flux manages is refused before anything is created, because Flux would revert
it at its next reconcile (docs/external-apis.md, "Flux"), unless the operator has opted in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from core import config
from core.errors import ConflictError, NotFoundError, PermanentError
from core.keyvault import SecretVersion
from core.kube import FLUX_MANAGER, FLUX_NAME_LABEL, FLUX_SSA_ANNOTATION, KubeSecret
from core.retry import Backoff, call_with_retry
from core.secret import Secret
from core.sinkmeta import from_secret, from_vault, secret_annotations, vault_tags

log = logging.getLogger("patrol.sinks")

FLUX_SSA_IF_NOT_PRESENT = "IfNotPresent"
CONFLICT_BACKOFF = Backoff(delays=(0.05, 0.1, 0.2, 0.4, 0.8), retry_on=(ConflictError,))


class FluxManagedError(PermanentError):
    """A Kubernetes Secret Flux would revert; the message says why and what to do instead."""


@dataclass(frozen=True)
class SinkState:
    """What a sink holds, without the value: enough to decide, log and journal."""

    sink_id: str
    exists: bool
    authorization_id: str | None = None
    expires_at: datetime | None = None
    rotation_id: str | None = None
    fingerprint: str | None = None              # sha256 prefix of the value (Secret.fingerprint)
    version: str = ""                           # resourceVersion / Key Vault version


class Sink(Protocol):
    @property
    def id(self) -> str: ...

    def check(self) -> SinkState:
        """Pre-flight, before any PAT is created: may we write here? Raises if not."""
        ...

    def read(self) -> tuple[SinkState, Secret | None]: ...

    def write(self, value: Secret, *, authorization_id: str, expires_at: datetime,
              rotation_id: str) -> SinkState:
        """Make the sink hold ``value`` (idempotent); returns the state read back."""
        ...


class SecretApi(Protocol):
    """The part of :class:`core.kube.KubeCluster` a Kubernetes Secret sink uses."""

    def read_secret(self, ns: str, name: str) -> KubeSecret: ...

    def patch_secret(self, ns: str, name: str, *, key: str, value: Secret,
                     annotations: Mapping[str, str], resource_version: str) -> KubeSecret: ...


class VaultApi(Protocol):
    """The part of :class:`core.keyvault.KeyVault` a Key Vault sink uses."""

    def get_secret(self, name: str, version: str | None = None) -> tuple[SecretVersion, Secret]: ...

    def set_secret(self, name: str, value: Secret, *, expires_on: datetime | None,
                   tags: Mapping[str, str]) -> SecretVersion: ...


def flux_refusal(secret: KubeSecret, spec: config.KubernetesSecretSink) -> str | None:
    """Why writing this Secret would be undone by Flux, or None if it is safe (or accepted)."""
    reasons = []
    if FLUX_NAME_LABEL in secret.labels:
        reasons.append(f"label {FLUX_NAME_LABEL}={secret.labels[FLUX_NAME_LABEL]}")
    if FLUX_MANAGER in secret.field_managers:
        reasons.append(f"field manager {FLUX_MANAGER}")
    if not reasons and not secret.flux_managed:
        return None
    if secret.flux_ssa == FLUX_SSA_IF_NOT_PRESENT:
        return None
    if spec.flux == "ignore-drift-risk":
        return None
    where = f"Secret {spec.namespace}/{spec.secret} in cluster {spec.cluster}"
    return (
        f"{where} is managed by Flux ({', '.join(reasons) or 'kustomize-controller'}): a value patrol "
        "writes there is reverted to the Git value at Flux's next reconcile, and KEDA would go back to "
        "the old (soon revoked) PAT. Nothing was created. Options: (1) make Key Vault the source of "
        "truth: deliver to a keyvault sink and let KEDA read it with TriggerAuthentication.spec."
        "azureKeyVault, or sync it into the cluster with External Secrets; (2) annotate the Secret in "
        f"Git with {FLUX_SSA_ANNOTATION}: {FLUX_SSA_IF_NOT_PRESENT} so Flux only creates it when "
        "missing; (3) set 'flux: ignore-drift-risk' on this sink to write it anyway."
    )


class KubernetesSecretSink:
    def __init__(self, spec: config.KubernetesSecretSink, cluster: SecretApi, *,
                 backoff: Backoff = CONFLICT_BACKOFF, sleep: Callable[[float], None] = time.sleep) -> None:
        self.spec = spec
        self._cluster = cluster
        self._backoff = backoff
        self._sleep = sleep

    @property
    def id(self) -> str:
        return self.spec.id

    def _state(self, secret: KubeSecret) -> tuple[SinkState, Secret | None]:
        value = secret.data.get(self.spec.key)
        meta = from_secret(secret)
        return SinkState(
            sink_id=self.id, exists=True,
            authorization_id=meta.authorization_id,
            expires_at=meta.expires_at,
            rotation_id=meta.rotation_id,
            fingerprint=value.fingerprint if value else None,
            version=secret.resource_version,
        ), (value or None)

    def read(self) -> tuple[SinkState, Secret | None]:
        try:
            secret = self._cluster.read_secret(self.spec.namespace, self.spec.secret)
        except NotFoundError:
            return SinkState(sink_id=self.id, exists=False), None
        return self._state(secret)

    def _read_checked(self) -> KubeSecret:
        try:
            secret = self._cluster.read_secret(self.spec.namespace, self.spec.secret)
        except NotFoundError as exc:
            raise PermanentError(
                f"Secret {self.spec.namespace}/{self.spec.secret} does not exist in cluster "
                f"{self.spec.cluster}: patrol updates an existing Secret (create it, with key "
                f"{self.spec.key!r}, from your manifests)") from exc
        refusal = flux_refusal(secret, self.spec)
        if refusal is not None:
            raise FluxManagedError(refusal)
        return secret

    def check(self) -> SinkState:
        return self._state(self._read_checked())[0]

    def write(self, value: Secret, *, authorization_id: str, expires_at: datetime,
              rotation_id: str) -> SinkState:
        annotations = secret_annotations(authorization_id=authorization_id, expires_at=expires_at,
                                         rotation_id=rotation_id)

        def attempt() -> SinkState:
            secret = self._read_checked()
            state, current = self._state(secret)
            if current == value and state.authorization_id == authorization_id:
                return state
            written = self._cluster.patch_secret(
                self.spec.namespace, self.spec.secret, key=self.spec.key, value=value,
                annotations=annotations, resource_version=secret.resource_version)
            return self._state(written)[0]

        state = call_with_retry(attempt, self._backoff, what=f"write {self.id}", sleep=self._sleep,
                                logger=log)
        if state.fingerprint != value.fingerprint or state.authorization_id != authorization_id:
            raise PermanentError(f"{self.id}: read back a different value or authorizationId after writing")
        return state


class KeyVaultSink:
    def __init__(self, spec: config.KeyVaultSink, vault: VaultApi) -> None:
        self.spec = spec
        self._vault = vault

    @property
    def id(self) -> str:
        return self.spec.id

    def read(self) -> tuple[SinkState, Secret | None]:
        try:
            props, value = self._vault.get_secret(self.spec.secret)
        except NotFoundError:
            return SinkState(sink_id=self.id, exists=False), None
        return self._state(props, value), (value or None)

    def _state(self, props: SecretVersion, value: Secret | None) -> SinkState:
        meta = from_vault(props)
        return SinkState(
            sink_id=self.id, exists=True,
            authorization_id=meta.authorization_id,
            expires_at=meta.expires_at,
            rotation_id=meta.rotation_id,
            fingerprint=value.fingerprint if value else None,
            version=props.version,
        )

    def check(self) -> SinkState:
        """Reading proves access now (a missing secret is fine: the first write creates it)."""
        return self.read()[0]

    def write(self, value: Secret, *, authorization_id: str, expires_at: datetime,
              rotation_id: str) -> SinkState:
        state, current = self.read()
        if current == value and state.authorization_id == authorization_id:
            return state
        props = self._vault.set_secret(self.spec.secret, value, expires_on=expires_at,
                                       tags=vault_tags(authorization_id=authorization_id,
                                                       rotation_id=rotation_id))
        return self._state(props, value)
