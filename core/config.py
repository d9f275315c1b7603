"""patrol's configuration: one YAML file, validated once, passed explicitly.

The model below is the contract every service reads. ``load_config(path)`` parses and
validates a file and raises :class:`core.errors.ConfigError` naming the file, the key path and
the fix. The environment is read in one place (``patrol/cli.py``), never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

# The Azure DevOps resource; PAT Lifecycle API and ADO REST accept Entra tokens for it.
ADO_RESOURCE_SCOPE = "499b84ac-1321-427f-aa17-267ca6975798/.default"
# Azure CLI's well-known public client id: a default for user sign-in when no app is registered.
DEFAULT_PUBLIC_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"

CredentialKind = Literal["username-password", "device-code", "azure-cli", "environment"]
AzureCredentialKind = Literal["default", "client-secret", "managed-identity", "azure-cli", "environment"]
FluxPolicy = Literal["refuse", "ignore-drift-risk"]


@dataclass(frozen=True)
class KeyVaultSecretRef:
    """Where the bot's username/password live in Key Vault (the seed keeps them there)."""

    vault_url: str
    username_secret: str
    password_secret: str


@dataclass(frozen=True)
class UserCredential:
    """Who may create/revoke PATs: a *user* (service principals cannot; API-CONTRACTS §0.1)."""

    kind: CredentialKind
    tenant_id: str = "organizations"
    client_id: str = DEFAULT_PUBLIC_CLIENT_ID
    authority: str = DEFAULT_AUTHORITY
    # username-password: from env vars, or from Key Vault secrets
    username_env: str | None = None
    password_env: str | None = None
    from_keyvault: KeyVaultSecretRef | None = None
    # device-code: persistent MSAL cache name and the AuthenticationRecord file from `patrol login`
    cache_name: str = "patrol"
    record_file: str | None = None


@dataclass(frozen=True)
class AzureSettings:
    """How patrol itself reaches Azure data planes (Key Vault): not the bot account."""

    credential: AzureCredentialKind = "default"
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None        # a mounted Secret file; wins over the env var
    authority: str = DEFAULT_AUTHORITY
    ca_bundle: str | None = None                  # extra CA for TLS (the sandbox's)
    verify_challenge_resource: bool = True        # False only for a local Key Vault fake


@dataclass(frozen=True)
class Organization:
    name: str
    url: str                                      # https://dev.azure.com/{org}
    vssps_url: str                                # https://vssps.dev.azure.com/{org}
    vsrm_url: str                                 # https://vsrm.dev.azure.com/{org}
    credential: UserCredential


@dataclass(frozen=True)
class Cluster:
    name: str
    context: str | None = None
    kubeconfig: str | None = None                 # default: $KUBECONFIG / ~/.kube/config
    in_cluster: bool = False


@dataclass(frozen=True)
class KubernetesSecretSink:
    cluster: str
    namespace: str
    secret: str
    key: str = "token"
    flux: FluxPolicy = "refuse"
    kind: Literal["kubernetes-secret"] = "kubernetes-secret"

    @property
    def id(self) -> str:
        return f"kubernetes-secret/{self.cluster}/{self.namespace}/{self.secret}/{self.key}"


@dataclass(frozen=True)
class KeyVaultSink:
    vault_url: str
    secret: str
    kind: Literal["keyvault"] = "keyvault"

    @property
    def id(self) -> str:
        host = self.vault_url.split("://", 1)[-1].rstrip("/")
        return f"keyvault/{host}/{self.secret}"


Sink = KubernetesSecretSink | KeyVaultSink


@dataclass(frozen=True)
class KedaConsumer:
    kind: Literal["keda-scaledjob", "keda-scaledobject"]
    cluster: str
    namespace: str
    name: str
    pool: str

    @property
    def resource(self) -> str:
        return "scaledjobs" if self.kind == "keda-scaledjob" else "scaledobjects"

    @property
    def k8s_kind(self) -> str:
        return "ScaledJob" if self.kind == "keda-scaledjob" else "ScaledObject"


@dataclass(frozen=True)
class PipelineCheck:
    project: str
    definition: str                               # name or numeric id
    max_age: timedelta = timedelta(hours=26)


@dataclass(frozen=True)
class Token:
    name: str
    organization: str
    scopes: tuple[str, ...]
    lifetime: timedelta
    renew_before: timedelta
    sinks: tuple[Sink, ...]
    consumers: tuple[KedaConsumer, ...] = ()
    pipeline: PipelineCheck | None = None


@dataclass(frozen=True)
class ExporterSettings:
    listen: str = "0.0.0.0:9877"
    # per-source refresh intervals
    pat_interval: timedelta = timedelta(minutes=5)
    validity_interval: timedelta = timedelta(minutes=5)
    keda_interval: timedelta = timedelta(seconds=30)
    pools_interval: timedelta = timedelta(seconds=30)
    pipeline_interval: timedelta = timedelta(minutes=5)
    concurrency: int = 8                          # bound on concurrent API calls per refresh


@dataclass(frozen=True)
class WorkerSettings:
    listen: str = "0.0.0.0:9878"
    webhook_token_file: str | None = None
    state_dir: str = "/var/lib/patrol"
    cooldown: timedelta = timedelta(minutes=10)
    verify_deadline: timedelta = timedelta(minutes=5)
    reconcile_interval: timedelta = timedelta(minutes=5)
    lease: LeaseSettings | None = None


@dataclass(frozen=True)
class LeaseSettings:
    cluster: str
    namespace: str
    name: str = "patrol-worker"
    duration: timedelta = timedelta(seconds=15)


@dataclass(frozen=True)
class Config:
    source: str                                   # the file this came from, for messages
    organizations: tuple[Organization, ...]
    clusters: tuple[Cluster, ...]
    tokens: tuple[Token, ...]
    azure: AzureSettings = field(default_factory=AzureSettings)
    exporter: ExporterSettings = field(default_factory=ExporterSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)

    def organization(self, name: str) -> Organization:
        for org in self.organizations:
            if org.name == name:
                return org
        raise KeyError(name)

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    def token(self, name: str) -> Token:
        for t in self.tokens:
            if t.name == name:
                return t
        raise KeyError(name)


def load_config(path: str) -> Config:
    """Read, parse and validate ``path``; raise ConfigError naming file, key path and fix."""
    raise NotImplementedError  # implemented by the config loader work
