"""The worker's metrics (docs/metrics.md: the names are a contract for alerts and dashboards).

They live on a registry the worker owns, not prometheus_client's global one, so tests and
benchmarks can build several workers in one process and read exact values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.build import BuildInfo, build_info
from core.entra import CredentialCollector, CredentialLedger

# Rotations take seconds (sandbox) to many minutes (real KEDA polls every 30 s + verification).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
RESULTS = ("succeeded", "failed", "skipped")


class JournalHealth(Protocol):
    """What :class:`remediation.journal.Journal` tells about its own state (read at scrape)."""

    @property
    def writable(self) -> bool: ...

    @property
    def write_errors(self) -> int: ...

    @property
    def resets(self) -> int: ...

    @property
    def decisions_dropped(self) -> int: ...


class JournalCollector(Collector):
    """Reads the journal's counters in memory at scrape time; no query, no lock held long."""

    def __init__(self, journal: JournalHealth) -> None:
        self._journal = journal

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        j = self._journal
        yield GaugeMetricFamily(
            "patrol_journal_writable",
            "1 while the rotation journal accepts writes; 0 after a failed write (disk full, I/O"
            " error) until a write succeeds again. The worker is not ready meanwhile.",
            value=1.0 if j.writable else 0.0)
        yield CounterMetricFamily(
            "patrol_journal_write_errors", "Journal writes that failed (disk full, I/O error, read-only).",
            value=j.write_errors)
        yield CounterMetricFamily(
            "patrol_journal_reset",
            "Unreadable journals moved aside at start (a fresh one was started; recovery rebuilds"
            " from the world).", value=j.resets)
        yield CounterMetricFamily(
            "patrol_journal_decisions_dropped",
            "Decisions not written because the per-minute budget (worker.decisions_per_minute) was spent.",
            value=j.decisions_dropped)


class LeadershipState(Protocol):
    """What :class:`remediation.leadership.Leadership` tells at scrape time (memory only)."""

    def is_leader(self) -> bool: ...


class LeadershipCollector(Collector):
    """``patrol_worker_leader``: read at scrape time, so a lease that lapsed without a renewal
    attempt shows as 0 at once (leadership is judged on the clock, not only on events)."""

    def __init__(self, leadership: LeadershipState) -> None:
        self._leadership = leadership

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "patrol_worker_leader",
            "1 while this worker replica holds the Lease (worker.lease) and so plans and runs"
            " rotations; 0 on a standby. Readiness does not depend on it: sum() over the replicas"
            " should be 1.", value=1.0 if self._leadership.is_leader() else 0.0)


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
        self._declare_hardening()
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
        self.draining = Gauge(
            "patrol_rotation_draining",
            "1 while a rotation of the token keeps the previous PAT valid for what still holds it (drain).",
            ["token"], registry=self.registry)
        self.drain_end = Gauge(
            "patrol_rotation_drain_end_timestamp_seconds",
            "When the current (or last) drain of the token ends at the latest: the previous PAT is revoked then.",
            ["token"], registry=self.registry)
        self.webhook_requests = Counter(
            "patrol_webhook_requests_total", "Webhook deliveries by HTTP status code.",
            ["code"], registry=self.registry)
        self.rotation_requests = Counter(
            "patrol_rotation_requests_total",
            "POST /rotations (rotate now) by HTTP status code: 202 started, 404 unknown token, 409 one"
            " is running, 429 cool-down, 503 not the Lease holder, 401 bad bearer.",
            ["code"], registry=self.registry)

    def declare_tokens(self, tokens: tuple[str, ...] | list[str]) -> None:
        """Export zeros for every configured token, so absent() and rate() work from the start."""
        for token in tokens:
            self.in_progress.labels(token=token).set(0)
            self.draining.labels(token=token).set(0)
            for result in RESULTS:
                self.rotations.labels(token=token, result=result)
            self.duration.labels(token=token)

    def _declare_hardening(self) -> None:
        """Metrics of the defences against hostile input and a failing state volume (issue 10)."""
        self.webhook_connections_closed = Counter(
            "patrol_webhook_connections_closed_total",
            "Connections the worker closed: header_timeout (no request within the bound: a slow or"
            " idle sender), too_many (over the connection cap).",
            ["reason"], registry=self.registry)

    def watch_leadership(self, leadership: LeadershipState) -> None:
        """Export whether this replica leads (``patrol_worker_leader`` 0/1)."""
        self.registry.register(LeadershipCollector(leadership))

    def watch_journal(self, journal: JournalHealth) -> None:
        """Export the journal's health (writable, write errors, resets, dropped decisions)."""
        self.registry.register(JournalCollector(journal))
