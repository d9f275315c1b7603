"""The rotation saga's port to the outside world, and its production implementation.

The saga needs four kinds of handle: the PAT Lifecycle API of an organization, a sink, a
cluster's KEDA objects and Events, and an ADO client that authenticates *with a given PAT* (to
prove a new token works). :class:`World` names exactly those as Protocols shaped like the
:mod:`core` adapters, so unit tests can pass in-memory fakes at our adapter boundary while
production (:class:`CoreWorld`) and the end-to-end tests pass the real adapters, which talk
to ADO / Key Vault / Kubernetes (or the sandbox) over real HTTP.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Literal, Protocol

from core import config
from core.ado import (
    AdoClient,
    Agent,
    Build,
    CreatedPat,
    JobRequest,
    PatInfo,
    PatLifecycleClient,
    Pool,
    ProbeResult,
)
from core.entra import TokenProvider, azure_credential, close_credential, user_token_provider
from core.keyvault import KeyVault, KeyVaultReader, reader
from core.kube import KedaScaler, KubeCluster, KubeEvent, KubeJob, ScalerResource
from core.retry import Backoff
from core.secret import Secret
from remediation.sinks import KeyVaultSink, KubernetesSecretSink, Sink

DisplayFilter = Literal["active", "revoked", "expired", "all"]
# Verification polls in its own loop until a deadline, so each probe retries only briefly.
PROBE_BACKOFF = Backoff(delays=(0.5, 1.0))


class PatApi(Protocol):
    """:class:`core.ado.PatLifecycleClient` as the saga uses it."""

    def list(self, display_filter: DisplayFilter = "active", *,
             name_prefix: str | None = None) -> builtins.list[PatInfo]: ...

    def get(self, authorization_id: str) -> PatInfo: ...

    def create(self, display_name: str, scopes: Sequence[str], valid_to: datetime, *,
               all_orgs: bool = False) -> CreatedPat: ...

    def revoke(self, authorization_id: str) -> None: ...


class ClusterApi(Protocol):
    """:class:`core.kube.KubeCluster` as the saga uses it (KEDA objects and Events)."""

    def get_scaler(self, ns: str, resource: ScalerResource, name: str) -> KedaScaler: ...

    def bump_scaler(self, ns: str, resource: ScalerResource, name: str, *, annotation: str,
                    value: str) -> KedaScaler: ...

    def list_events(self, ns: str, *, field_selector: str) -> tuple[list[KubeEvent], str]: ...

    def list_jobs(self, ns: str, *, label_selector: str) -> builtins.list[KubeJob]: ...

    def create_event(self, ns: str, *, involved_kind: str, involved_name: str, involved_uid: str,
                     api_version: str, reason: str, message: str, type_: str = "Normal",
                     component: str = "patrol", now: datetime | None = None) -> KubeEvent: ...


class OrganizationApi(Protocol):
    """:class:`core.ado.AdoClient` authenticated with one PAT, as verification uses it."""

    def probe(self, scopes: str | Iterable[str], *, project: str | None = None) -> ProbeResult: ...

    def find_pool(self, name: str) -> Pool: ...

    def list_agents(self, pool_id: int) -> builtins.list[Agent]: ...

    def list_job_requests(self, pool_id: int, *, top: int = 250) -> builtins.list[JobRequest]: ...

    def find_build_definition(self, project: str, name_or_id: str | int) -> int: ...

    def running_builds(self, project: str, definition_id: int, *, top: int = 100) -> builtins.list[Build]: ...

    def close(self) -> None: ...


class World(Protocol):
    def pats(self, organization: str) -> PatApi: ...

    def sink(self, spec: config.Sink) -> Sink: ...

    def cluster(self, name: str) -> ClusterApi: ...

    def organization_client(self, organization: str, pat: Secret) -> OrganizationApi:
        """A new client authenticating with ``pat``; the caller closes it."""
        ...


class CoreWorld:
    """The real adapters, built lazily from the configuration and closed together.

    ``env`` is the process environment as the command line read it (bot credentials named
    by the config may live there); it is passed in, never read here.
    """

    def __init__(self, cfg: config.Config, *, env: Mapping[str, str],
                 keyvault: KeyVaultReader | None = None,
                 cluster_factory: Callable[[config.Cluster], KubeCluster] = KubeCluster) -> None:
        self.config = cfg
        self._env = env
        self._keyvault = keyvault
        self._cluster_factory = cluster_factory
        self._lock = threading.Lock()
        self._pats: dict[str, PatLifecycleClient] = {}
        self._providers: dict[str, TokenProvider] = {}
        self._clusters: dict[str, KubeCluster] = {}
        self._closers: list[Callable[[], None]] = []

    def _vaults(self) -> KeyVaultReader:
        if self._keyvault is None:
            azure = self.config.azure
            credential = azure_credential(azure, self._env)
            self._closers.append(lambda: close_credential(credential))
            self._keyvault = reader(credential, ca_bundle=azure.ca_bundle,
                                    verify_challenge_resource=azure.verify_challenge_resource)
        return self._keyvault

    def pats(self, organization: str) -> PatApi:
        with self._lock:
            client = self._pats.get(organization)
            if client is None:
                org = self.config.organization(organization)
                needs_kv = org.credential.from_keyvault is not None
                provider = user_token_provider(org.credential, azure=self.config.azure,
                                               secret_reader=self._vaults() if needs_kv else None,
                                               env=self._env)
                self._providers[organization] = provider
                client = PatLifecycleClient(org.vssps_url, provider)
                self._pats[organization] = client
            return client

    def cluster(self, name: str) -> KubeCluster:
        with self._lock:
            cluster = self._clusters.get(name)
            if cluster is None:
                cluster = self._cluster_factory(self.config.cluster(name))
                self._clusters[name] = cluster
            return cluster

    def sink(self, spec: config.Sink) -> Sink:
        if isinstance(spec, config.KubernetesSecretSink):
            return KubernetesSecretSink(spec, self.cluster(spec.cluster))
        with self._lock:
            vault = self._vaults().vault(spec.vault_url)
        return KeyVaultSink(spec, vault)

    def vault(self, vault_url: str) -> KeyVault:
        """One vault's client (``patrol adopt`` tags a version in place, without a new one)."""
        with self._lock:
            return self._vaults().vault(vault_url)

    def organization_client(self, organization: str, pat: Secret) -> AdoClient:
        org = self.config.organization(organization)
        return AdoClient(org.url, pat, auth="pat", vsrm_url=org.vsrm_url, backoff=PROBE_BACKOFF)

    def bot_client(self, organization: str) -> AdoClient:
        """A new client signed in as the bot (its Entra token), to ask ADO who the bot is;
        the caller closes it."""
        self.pats(organization)                # builds the bot's token provider once
        org = self.config.organization(organization)
        with self._lock:
            provider = self._providers[organization]
        return AdoClient(org.url, provider, auth="bearer", vsrm_url=org.vsrm_url, backoff=PROBE_BACKOFF)

    def close(self) -> None:
        with self._lock:
            pats, self._pats = list(self._pats.values()), {}
            providers, self._providers = list(self._providers.values()), {}
            clusters, self._clusters = list(self._clusters.values()), {}
            keyvault, self._keyvault = self._keyvault, None
            closers, self._closers = self._closers, []
        for client in pats:
            client.close()
        for provider in providers:
            provider.close()
        for cluster in clusters:
            cluster.close()
        if keyvault is not None:
            keyvault.close()
        for closer in closers:
            closer()

    def __enter__(self) -> CoreWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
