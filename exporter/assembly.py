"""Putting the exporter together from a configuration: which sources exist, with which clients.

Sources, one per unit that can fail on its own (docs/metrics.md, "The exporter's sources";
names are the ``source`` label):

==============================  ======================================  ==========================
source                          reads                                   interval
==============================  ======================================  ==========================
``keyvault/<vault host>``       the Key Vault sinks in that vault       ``validity_interval``
``kubernetes/<cluster>``        the Secret sinks in that cluster        ``validity_interval``
``pat-lifecycle/<org>``         one PAT listing of the organization     ``pat_interval``
``validity/<org>``              a probe per distinct token              ``validity_interval``
``keda/<cluster>``              KEDA objects and their Events           ``keda_interval``
``agent-pools/<org>``           the pools the consumers serve           ``pools_interval``
``pipeline/<project>/<def>``    a token's daily-checks pipeline         ``pipeline_interval``
==============================  ======================================  ==========================

The sink sources form the first stage: the others need what the sinks hold.

:class:`Clients` is the seam between the exporter and the outside world: production uses
:class:`CoreClients` (the :mod:`core` adapters, built lazily and closed on stop); tests pass
in-memory fakes shaped like the same adapters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from core import config
from core.ado import AdoClient, PatLifecycleClient
from core.arenas import Trimmer
from core.build import BuildInfo, build_info
from core.entra import (
    CredentialCollector,
    CredentialLedger,
    TokenProvider,
    azure_credential,
    close_credential,
    user_token_provider,
)
from core.keyvault import KeyVaultReader
from core.kube import KubeCluster
from core.retry import Backoff
from core.secret import Secret
from exporter.exposition import Exposition
from exporter.fanout import Fanout
from exporter.keda import ConsumerInfo, Keda, KedaApi
from exporter.pats import PatExpiry, PatLister
from exporter.pipelines import BuildApi, Pipeline
from exporter.pools import AgentPools, PoolApi
from exporter.refresher import Refresher
from exporter.sinks import KeyVaultSinks, KubernetesSinks, SecretApi, SinkBoard, VaultApi
from exporter.source import SourceCollector
from exporter.validity import PROBE_BACKOFF, AdoProber, Prober, Validity

log = logging.getLogger("patrol.exporter")

# Key Vault through azure-core: a couple of quick retries; the next refresh is the real retry.
KEYVAULT_RETRY_TOTAL = 2
# ADO: a few quick retries of transient failures (Retry-After is still honoured, up to a minute);
# a source that stays unreachable is reported down within seconds, and retried next cycle.
ADO_BACKOFF = Backoff(delays=(0.5, 1.0, 2.0))


class Clients(Protocol):
    """Factories for every external handle the sources use, one per organization/vault/cluster."""

    def pat_lister(self, org: config.Organization) -> PatLister: ...
    def pool_api(self, org: config.Organization) -> PoolApi: ...
    def prober(self, org: config.Organization) -> Prober: ...
    def build_api(self, org: config.Organization, value: Secret) -> BuildApi: ...
    def vault(self, vault_url: str) -> VaultApi: ...
    def secrets(self, cluster: config.Cluster) -> SecretApi: ...
    def keda(self, cluster: config.Cluster) -> KedaApi: ...
    def close(self) -> None: ...


class CoreClients:
    """The production :class:`Clients`: :mod:`core` adapters, one per org/vault/cluster, cached."""

    def __init__(self, cfg: config.Config, env: Mapping[str, str], *, backoff: Backoff = ADO_BACKOFF,
                 probe_backoff: Backoff = PROBE_BACKOFF) -> None:
        self._config = cfg
        self._env = env
        self._backoff = backoff
        self._probe_backoff = probe_backoff
        self._credential: object | None = None
        self._reader: KeyVaultReader | None = None
        self._tokens: dict[str, TokenProvider] = {}
        self._pats: dict[str, PatLifecycleClient] = {}
        self._ado: dict[str, AdoClient] = {}
        self._probers: dict[str, AdoProber] = {}
        self._clusters: dict[str, KubeCluster] = {}
        # what the bot credentials did (patrol_credential_*): pass to build(credentials=...)
        self.credentials = CredentialLedger()

    def _key_vault_reader(self) -> KeyVaultReader:
        """patrol's own identity on every vault: the sinks, and the bot's sign-in secrets."""
        if self._reader is None:
            azure = self._config.azure
            credential = azure_credential(azure, self._env, retry_total=KEYVAULT_RETRY_TOTAL)
            self._credential = credential
            self._reader = KeyVaultReader(credential, ca_bundle=azure.ca_bundle,
                                          verify_challenge_resource=azure.verify_challenge_resource,
                                          retry_total=KEYVAULT_RETRY_TOTAL)
        return self._reader

    def _bot_token(self, org: config.Organization) -> TokenProvider:
        if org.name not in self._tokens:
            self._tokens[org.name] = user_token_provider(
                org.credential, azure=self._config.azure, secret_reader=self._key_vault_reader(),
                env=self._env, organization=org.name, ledger=self.credentials)
        return self._tokens[org.name]

    def pat_lister(self, org: config.Organization) -> PatLister:
        if org.name not in self._pats:
            self._pats[org.name] = PatLifecycleClient(org.vssps_url, self._bot_token(org), backoff=self._backoff)
        return self._pats[org.name]

    def pool_api(self, org: config.Organization) -> PoolApi:
        if org.name not in self._ado:
            self._ado[org.name] = AdoClient(org.url, self._bot_token(org), auth="bearer",
                                            vsrm_url=org.vsrm_url, backoff=self._backoff)
        return self._ado[org.name]

    def prober(self, org: config.Organization) -> Prober:
        if org.name not in self._probers:
            self._probers[org.name] = AdoProber(org, backoff=self._probe_backoff)
        return self._probers[org.name]

    def build_api(self, org: config.Organization, value: Secret) -> BuildApi:
        return AdoClient(org.url, value, auth="pat", vsrm_url=org.vsrm_url, backoff=self._probe_backoff)

    def vault(self, vault_url: str) -> VaultApi:
        return self._key_vault_reader().vault(vault_url)

    def _cluster(self, cluster: config.Cluster) -> KubeCluster:
        if cluster.name not in self._clusters:
            self._clusters[cluster.name] = KubeCluster(cluster)
        return self._clusters[cluster.name]

    def secrets(self, cluster: config.Cluster) -> SecretApi:
        return self._cluster(cluster)

    def keda(self, cluster: config.Cluster) -> KedaApi:
        return self._cluster(cluster)

    def close(self) -> None:
        closers: list[Callable[[], None]] = [
            *(c.close for c in self._pats.values()), *(c.close for c in self._ado.values()),
            *(p.close for p in self._probers.values()),
            *(t.close for t in self._tokens.values()),
            *(k.close for k in self._clusters.values())]
        if self._reader is not None:
            closers.append(self._reader.close)
        if self._credential is not None:
            credential = self._credential
            closers.append(lambda: close_credential(credential))
        for close in closers:
            try:
                close()
            except Exception:
                log.warning("closing a client failed", exc_info=True)
        self._pats.clear()
        self._ado.clear()
        self._probers.clear()
        self._tokens.clear()
        self._clusters.clear()
        self._reader = None
        self._credential = None


class _Common(TypedDict):
    fanout: Fanout
    clock: Callable[[], float]
    monotonic: Callable[[], float]


@dataclass
class Exporter:
    """The assembled exporter: its sources, their refresher and the rendered exposition."""

    sources: tuple[SourceCollector, ...]
    refresher: Refresher
    exposition: Exposition
    fanout: Fanout
    clients: Clients
    trim: Trimmer                             # the refreshes' malloc_trim; closed with the exporter
    board: SinkBoard = field(default_factory=SinkBoard)

    def source(self, name: str) -> SourceCollector:
        return next(s for s in self.sources if s.name == name)

    def start(self) -> None:
        self.refresher.start()

    def close(self) -> None:
        """Stop refreshing, stop watches, close every client. Idempotent."""
        for source in self.sources:
            source.stop()
        self.refresher.stop()
        for source in self.sources:
            source.close()
        self.fanout.close()
        self.trim.close()
        self.clients.close()


BUILD_INFO = "patrol_build_info"


class BuildInfoCollector:
    """``patrol_build_info{version,revision,python} 1``: which patrol answers (as KEDA's and
    node_exporter's ``*_build_info``), so a dashboard or an alert can tell versions apart."""

    def __init__(self, info: BuildInfo) -> None:
        self._labels = info.labels()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(BUILD_INFO, "patrol's version, source revision and Python (always 1)",
                                   labels=list(self._labels))
        family.add_metric(list(self._labels.values()), 1.0)
        yield family


def build(cfg: config.Config, clients: Clients, *, clock: Callable[[], float] = time.time,
          monotonic: Callable[[], float] = time.monotonic, watch: bool = True,
          watch_timeout: int = 60, info: BuildInfo | None = None,
          credentials: CredentialLedger | None = None) -> Exporter:
    """Every source the configuration calls for, wired to ``clients``; not started.

    ``watch=False`` follows KEDA Events by listing only (one-shot runs need no watch threads).
    ``info`` is what ``patrol_build_info`` says (default: this process's :func:`build_info`).
    ``credentials`` (:attr:`CoreClients.credentials`) adds ``patrol_credential_*``.
    """
    settings = cfg.exporter
    fanout = Fanout(settings.concurrency)
    board = SinkBoard()
    common = _Common(fanout=fanout, clock=clock, monotonic=monotonic)
    sinks_interval = settings.validity_interval.total_seconds()

    vault_sinks: dict[str, list[config.KeyVaultSink]] = {}
    secret_sinks: dict[str, list[config.KubernetesSecretSink]] = {}
    for token in cfg.tokens:
        for sink in token.sinks:
            if isinstance(sink, config.KeyVaultSink):
                vault_sinks.setdefault(sink.vault_url.rstrip("/"), []).append(sink)
            else:
                secret_sinks.setdefault(sink.cluster, []).append(sink)
    first: list[SourceCollector] = [
        *(KeyVaultSinks(url, sinks, clients.vault(url), board=board, interval=sinks_interval, **common)
          for url, sinks in vault_sinks.items()),
        *(KubernetesSinks(name, sinks, clients.secrets(cfg.cluster(name)), board=board,
                          interval=sinks_interval, **common)
          for name, sinks in secret_sinks.items()),
    ]

    second: list[SourceCollector] = []
    for org in cfg.organizations:
        tokens = [t for t in cfg.tokens if t.organization == org.name]
        if not tokens:
            continue
        second.append(PatExpiry(org.name, tokens, clients.pat_lister(org), board=board,
                                interval=settings.pat_interval.total_seconds(), **common))
        second.append(Validity(org.name, tokens, clients.prober(org), board=board,
                               interval=settings.validity_interval.total_seconds(), **common))
        pools = [c.pool for t in tokens for c in t.consumers]
        if pools:
            second.append(AgentPools(org.name, pools, clients.pool_api(org),
                                     interval=settings.pools_interval.total_seconds(), **common))
        for token in tokens:
            if token.pipeline is not None:
                second.append(Pipeline(token, _build_api_for(clients, org), board=board,
                                       interval=settings.pipeline_interval.total_seconds(), **common))
    consumers = [c for t in cfg.tokens for c in t.consumers]
    for cluster in cfg.clusters:
        mine = [c for c in consumers if c.cluster == cluster.name]
        if mine:
            second.append(Keda(cluster.name, cfg.tokens, clients.keda(cluster),
                               interval=settings.keda_interval.total_seconds(),
                               watch=watch, watch_timeout=watch_timeout, **common))

    sources = (*first, *second)
    extra = [CredentialCollector(credentials)] if credentials is not None else []
    trim = Trimmer(monotonic=monotonic, trailing=True)
    exposition = Exposition([*sources, ConsumerInfo(cfg.tokens),
                             BuildInfoCollector(info or build_info()), *extra])

    def rendered() -> None:
        exposition.invalidate()
        exposition.body()
        trim()                                 # the refresh's garbage back to the kernel (arenas.py)

    for source in second:
        if isinstance(source, Keda):
            source.on_change = rendered       # an Event seen between refreshes shows at once
    refresher = Refresher([first, second], on_change=rendered)
    return Exporter(sources=sources, refresher=refresher, exposition=exposition, fanout=fanout,
                    clients=clients, board=board, trim=trim)


def _build_api_for(clients: Clients, org: config.Organization) -> Callable[[Secret], BuildApi]:
    return lambda value: clients.build_api(org, value)

