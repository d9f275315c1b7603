"""Reading what each sink holds: one source per Key Vault and per cluster's Secrets.

Three other sources need to know what the sinks hold: the PAT expiry source (which PAT a sink
holds, by the ``authorizationId`` patrol wrote beside it, and the expiry written there as a
fallback), the validity source (the token itself, to probe it) and the pipeline source (the
daily-checks token, to read builds with it). Reading each sink once per cycle and sharing the
result on a :class:`SinkBoard` keeps the cost at one read per sink, and lets an unreachable
vault or cluster be *its own* source that is down while the others keep working.

A sink whose secret (or key) does not exist is read successfully as *empty*: it holds nothing
that authenticates. A sink that cannot be read (no connection, no permission) keeps its last
reading and marks its source down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from prometheus_client.metrics_core import Metric

from core import config
from core.errors import NotFoundError
from core.keyvault import SecretVersion
from core.kube import KubeSecret
from core.secret import Secret
from core.sinkmeta import from_secret, from_vault
from exporter.fanout import Fanout
from exporter.source import SourceCollector

ExpirySource = Literal["keyvault", "annotation"]


@dataclass(frozen=True)
class SinkReading:
    """What one sink held when it was last read. ``value`` is None when the sink is empty."""

    sink_id: str
    value: Secret | None
    authorization_id: str | None
    expires_at: datetime | None
    expiry_source: ExpirySource

    @property
    def fingerprint(self) -> str | None:
        return self.value.fingerprint if self.value else None


class SinkBoard:
    """The latest reading of every sink, published by the sink sources (thread-safe)."""

    def __init__(self) -> None:
        self._readings: dict[str, SinkReading] = {}
        self._lock = threading.Lock()

    def publish(self, readings: Iterable[SinkReading]) -> None:
        with self._lock:
            updated = dict(self._readings)
            updated.update((r.sink_id, r) for r in readings)
            self._readings = updated

    def get(self, sink_id: str) -> SinkReading | None:
        return self._readings.get(sink_id)

    def snapshot(self) -> Mapping[str, SinkReading]:
        return self._readings


class VaultApi(Protocol):
    """:class:`core.keyvault.KeyVault` as the exporter reads it."""

    def get_secret(self, name: str, version: str | None = None) -> tuple[SecretVersion, Secret]: ...


class SecretApi(Protocol):
    """:class:`core.kube.KubeCluster` as the exporter reads Secrets."""

    def read_secret(self, ns: str, name: str) -> KubeSecret: ...


class _SinkSource(SourceCollector):
    """Reads its sinks concurrently, publishes what it could read, fails if any read failed."""

    def __init__(self, name: str, sinks: Sequence[config.Sink], *, board: SinkBoard, fanout: Fanout,
                 interval: float, clock: Callable[[], float], monotonic: Callable[[], float]) -> None:
        super().__init__(name, interval, clock=clock, monotonic=monotonic)
        self.sinks = tuple({s.id: s for s in sinks}.values())
        self._board = board
        self._fanout = fanout

    def read(self, sink: config.Sink) -> SinkReading:
        raise NotImplementedError

    def fetch(self) -> None:
        results = self._fanout.map(self.read, self.sinks)
        self._board.publish(r.value for r in results if r.value is not None)
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise errors[0]           # core's messages already name the secret that failed

    def samples(self) -> Iterable[Metric]:
        return ()


class KeyVaultSinks(_SinkSource):
    """Every configured sink in one Key Vault; source ``keyvault/<vault host>``."""

    def __init__(self, vault_url: str, sinks: Sequence[config.KeyVaultSink], vault: VaultApi, *,
                 board: SinkBoard, fanout: Fanout, interval: float,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        host = vault_url.split("://", 1)[-1].rstrip("/")
        super().__init__(f"keyvault/{host}", sinks, board=board, fanout=fanout, interval=interval,
                         clock=clock, monotonic=monotonic)
        self._vault = vault

    def read(self, sink: config.Sink) -> SinkReading:
        assert isinstance(sink, config.KeyVaultSink)
        try:
            props, value = self._vault.get_secret(sink.secret)
        except NotFoundError:
            return SinkReading(sink.id, None, None, None, "keyvault")
        meta = from_vault(props)
        return SinkReading(sink.id, value if value else None, meta.authorization_id, meta.expires_at, "keyvault")


class KubernetesSinks(_SinkSource):
    """Every configured Secret sink in one cluster; source ``kubernetes/<cluster>``."""

    def __init__(self, cluster: str, sinks: Sequence[config.KubernetesSecretSink], api: SecretApi, *,
                 board: SinkBoard, fanout: Fanout, interval: float,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(f"kubernetes/{cluster}", sinks, board=board, fanout=fanout, interval=interval,
                         clock=clock, monotonic=monotonic)
        self._api = api

    def read(self, sink: config.Sink) -> SinkReading:
        assert isinstance(sink, config.KubernetesSecretSink)
        try:
            secret = self._api.read_secret(sink.namespace, sink.secret)
        except NotFoundError:
            return SinkReading(sink.id, None, None, None, "annotation")
        value = secret.data.get(sink.key)
        meta = from_secret(secret)
        return SinkReading(sink.id, value if value else None, meta.authorization_id, meta.expires_at, "annotation")
