"""The worker's metrics (DESIGN §4: the names are a contract for alerts and dashboards).

They live on a registry the worker owns, not prometheus_client's global one, so tests and
benchmarks can build several workers in one process and read exact values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.build import BuildInfo, build_info
from core.entra import CredentialCollector, CredentialLedger

# Rotations take seconds (sandbox) to many minutes (real KEDA polls every 30 s + verification).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
RESULTS = ("succeeded", "failed", "skipped")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, info: BuildInfo | None = None,
                 credentials: CredentialLedger | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # patrol_credential_*: the bot credentials the worker's PAT clients use (default: the
        # process's ledger, core.entra.CREDENTIALS, where CoreWorld's token providers record)
        self.registry.register(CredentialCollector(credentials))
        # which patrol answers, as on the exporter (default: this process's build_info())
        build = (info or build_info()).labels()
        self.build_info = Gauge(
            "patrol_build_info", "patrol's version, source revision and Python (always 1).",
            list(build), registry=self.registry)
        self.build_info.labels(**build).set(1)
        self.rotations = Counter(
            "patrol_rotations_total", "Rotations finished, by result (succeeded, failed, skipped).",
            ["token", "result"], registry=self.registry)
        self.duration = Histogram(
            "patrol_rotation_duration_seconds",
            "Rotation wall time, from the request (alert received) to recovery confirmed.",
            ["token"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.in_progress = Gauge(
            "patrol_rotation_in_progress", "1 while a rotation of the token runs.",
            ["token"], registry=self.registry)
        self.webhook_requests = Counter(
            "patrol_webhook_requests_total", "Webhook deliveries by HTTP status code.",
            ["code"], registry=self.registry)

    def declare_tokens(self, tokens: tuple[str, ...] | list[str]) -> None:
        """Export zeros for every configured token, so absent() and rate() work from the start."""
        for token in tokens:
            self.in_progress.labels(token=token).set(0)
            for result in RESULTS:
                self.rotations.labels(token=token, result=result)
            self.duration.labels(token=token)
