"""patrol's configuration: one YAML file, validated once, passed explicitly.

The model below is the contract every service reads. ``load_config(path)`` parses and
validates a file and raises :class:`ConfigErrors` (a :class:`core.errors.ConfigError`) that lists
*every* problem found, each naming the file, the key path and the fix: a person fixing a config
should see all of it at once, not one problem per run. The parsing machinery lives in
``core/_config_parse.py``; durations are parsed here because the model and the docs share them.
The environment is read in one place (``patrol/cli.py``), never here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from core.errors import ConfigError

# The Azure DevOps resource; PAT Lifecycle API and ADO REST accept Entra tokens for it.
ADO_RESOURCE_SCOPE = "499b84ac-1321-427f-aa17-267ca6975798/.default"
# Azure CLI's well-known public client id: a default for user sign-in when no app is registered.
DEFAULT_PUBLIC_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"

CredentialKind = Literal["username-password", "device-code", "azure-cli", "environment"]
AzureCredentialKind = Literal["default", "client-secret", "managed-identity", "azure-cli", "environment"]
FluxPolicy = Literal["refuse", "ignore-drift-risk"]
# How a consumer is moved to a new PAT (docs/rotation.md, "Switch modes"): ``refresh`` changes no
# spec (KEDA re-reads the Secret on its first failed poll after the revoke), ``bump`` changes the
# ScaledJob's pod template (KEDA rebuilds the scaler at once), ``auto`` bumps only a ScaledJob
# whose effective rollout strategy is ``gradual`` (KEDA keeps its running Jobs), else refreshes.
SwitchMode = Literal["auto", "refresh", "bump"]
# ADO's default job timeout: how long a pipeline run holding a Key Vault value may still use it.
DEFAULT_PIPELINE_TIMEOUT = timedelta(minutes=60)
# The alerts the worker may rotate on (`worker.rotate_alertnames`): patrol's own rules that carry
# `remediation: rotate` (alerts/rules.py). A `remediation="rotate"` label alone is not enough:
# kube-prometheus-stack's InfoInhibitor copies every label of an info alert (PatRenewalDue is
# one), and any rule anyone writes can set it (docs/alerting.md, "Who can start a rotation").
DEFAULT_ROTATE_ALERTNAMES: tuple[str, ...] = ("PatRenewalDue", "PatInvalid", "KedaScalerAuthFailing")


@dataclass(frozen=True)
class KeyVaultSecretRef:
    """Where the bot's username/password live in Key Vault (the seed keeps them there)."""

    vault_url: str
    username_secret: str
    password_secret: str


@dataclass(frozen=True)
class UserCredential:
    """Who may create/revoke PATs: a *user* (service principals cannot; docs/external-apis.md)."""

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
    # The longest interval at which anything reading this sink re-reads it (a CSI driver's
    # rotation poll, External Secrets' refreshInterval): the old PAT stays valid that long.
    refresh_interval: timedelta = timedelta(0)
    kind: Literal["kubernetes-secret"] = "kubernetes-secret"

    @property
    def id(self) -> str:
        return f"kubernetes-secret/{self.cluster}/{self.namespace}/{self.secret}/{self.key}"


@dataclass(frozen=True)
class KeyVaultSink:
    vault_url: str
    secret: str
    refresh_interval: timedelta = timedelta(0)    # e.g. External Secrets' refreshInterval
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
    switch: SwitchMode = "auto"

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
    # The pipeline's job timeout: a run that started before delivery holds the old value at
    # most this long (ADO's default job timeout is 60 minutes).
    timeout: timedelta = DEFAULT_PIPELINE_TIMEOUT


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
    # The longest the previous PAT stays valid after delivery while something still holds it;
    # None: derived at rotation time (docs/rotation.md, "The drain"). Always capped by its expiry.
    drain_max: timedelta | None = None


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
    # The journal's bound (issue 10): decisions are pruned sooner than rotations (the audit
    # trail that matters), and at most decisions_per_minute are written.
    decision_retention: timedelta = timedelta(days=7)
    rotation_retention: timedelta = timedelta(days=365)
    decisions_per_minute: int = 10
    # Where `patrol rotate` reaches the worker's POST /rotations when a worker holds the Lease
    # (e.g. the Service, http://patrol-worker.patrol.svc:9878); flag --worker-url and env
    # PATROL_WORKER_URL override it.
    url: str | None = None
    rotate_alertnames: tuple[str, ...] = DEFAULT_ROTATE_ALERTNAMES


@dataclass(frozen=True)
class AlertSettings:
    """What the config decides in the rendered rules and dashboard (`patrol alerts render`).

    ``None`` keeps the shipped value (alerts/rules.py): this repository's runbook, and the jobs
    named after deploy/base's Services.
    """

    runbook_base_url: str | None = None
    # Added to every alert's labels (e.g. team, environment) for Alertmanager to route on.
    extra_labels: tuple[tuple[str, str], ...] = ()
    # Added to the rendered PrometheusRule's metadata.labels (e.g. release: <helm release>).
    prometheusrule_labels: tuple[tuple[str, str], ...] = ()
    exporter_job: str | None = None
    worker_job: str | None = None


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
    alerts: AlertSettings = field(default_factory=AlertSettings)

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


class ConfigProblem(ConfigError):
    """One problem at a place in the file; ``line`` (1-based) when the YAML told us."""

    def __init__(self, file: str, path: str, problem: str, fix: str = "",
                 line: int | None = None) -> None:
        super().__init__(file, path, problem, fix)
        self.line = line
        self.args = (str(self),)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.path:
            where += f": {self.path}"
        text = f"{where}: {self.problem}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return text


class ConfigErrors(ConfigError):
    """Every problem found in one file; ``problems`` holds each as its own ConfigError.

    With a single problem, ``path``/``problem``/``fix`` mirror it, so code that reads one
    ConfigError keeps working.
    """

    def __init__(self, file: str, problems: Sequence[ConfigError]) -> None:
        if not problems:
            raise ValueError("ConfigErrors needs at least one problem")
        self.problems: tuple[ConfigError, ...] = tuple(problems)
        if len(problems) == 1:
            only = problems[0]
            super().__init__(file, only.path, only.problem, only.fix)
        else:
            super().__init__(file, "", f"{len(problems)} problems")
        self.args = (str(self),)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{self.file}: {len(self.problems)} problems:"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


class DurationError(ValueError):
    """A duration string patrol cannot read; ``fix`` says what to write instead."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem} (fix: {fix})")
        self.problem = problem
        self.fix = fix


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
_DURATION_EXAMPLES = "90s, 15m, 26h, 30d, or combined largest unit first like 1h30m"


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``26h``, ``30d`` or combinations (``1d12h``, ``1h30m``) → timedelta.

    Whole numbers only, units largest first, each at most once; a bare number is refused
    because ``10`` could mean seconds to one reader and days to another.
    """
    value = text.strip()
    if not value:
        raise DurationError("empty duration", f"write a duration such as {_DURATION_EXAMPLES}")
    if value.startswith("-"):
        raise DurationError(f"negative duration {value!r}",
                            f"write a positive duration such as {value[1:]!r}")
    if re.fullmatch(r"\d+", value, re.ASCII):
        raise DurationError(f"duration {value!r} has no unit",
                            f"write {value}s, {value}m, {value}h or {value}d")
    if re.fullmatch(r"\d*\.\d+[dhms]?", value, re.ASCII):
        raise DurationError(f"duration {value!r} is not a whole number",
                            "use whole numbers of a smaller unit, e.g. 1h30m instead of 1.5h")
    match = _DURATION.fullmatch(value)
    if match is None or not any(match.groups()):
        raise DurationError(f"{value!r} is not a duration", f"write {_DURATION_EXAMPLES}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise DurationError(f"duration {value!r} is too long", "write a shorter duration") from None


def format_duration(value: timedelta) -> str:
    """The canonical string :func:`parse_duration` reads back as ``value``, largest unit first
    (``timedelta(hours=26)`` → ``1d2h``). Sub-second parts, which the config cannot express, are
    shown as fractional seconds."""
    if value < timedelta(0):
        raise ValueError("negative durations cannot be formatted")
    if value.microseconds:
        return f"{value.total_seconds():g}s"
    total = int(value.total_seconds())
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def load_config(path: str) -> Config:
    """Read, parse and validate ``path``.

    Raises :class:`ConfigErrors` listing every problem (file, key path such as
    ``tokens[1].sinks[0].cluster``, and the fix). Relative paths in the file are resolved
    against the file's directory.
    """
    from core._config_parse import parse_file

    return parse_file(path)
