"""The exporter as a whole on fakes: assembly, merged and cached exposition, refresher stages,
throttling, the concurrency bound, and the HTTP endpoints."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from core import config
from core.errors import ThrottledError
from core.secret import Secret
from exporter.assembly import Exporter, build
from exporter.exposition import Exposition, merge
from exporter.fanout import Fanout
from exporter.keda import Keda
from exporter.refresher import Refresher, next_delay
from exporter.server import make_app, parse_listen, start
from exporter.source import Outcome, SourceCollector
from tests.unit.exporter_world import (
    Clock,
    FakeAdo,
    FakeCluster,
    FakePats,
    FakeProber,
    FakeVault,
    agent,
    at,
    job,
    make_config,
    pat,
)
from tests.unit.exporter_world import (
    build as a_build,
)


class FakeClients:
    def __init__(self) -> None:
        self.pats = FakePats()
        self.ado = FakeAdo()
        self.prober_ = FakeProber()
        self.vaults: dict[str, FakeVault] = {}
        self.clusters: dict[str, FakeCluster] = {}
        self.closed = False

    def pat_lister(self, org: config.Organization) -> FakePats:
        return self.pats

    def pool_api(self, org: config.Organization) -> FakeAdo:
        return self.ado

    def prober(self, org: config.Organization) -> FakeProber:
        return self.prober_

    def build_api(self, org: config.Organization, value: Secret) -> FakeAdo:
        return self.ado

    def vault(self, vault_url: str) -> FakeVault:
        return self.vaults.setdefault(vault_url, FakeVault())

    def secrets(self, cluster: config.Cluster) -> FakeCluster:
        return self.clusters.setdefault(cluster.name, FakeCluster(cluster.name))

    def keda(self, cluster: config.Cluster) -> FakeCluster:
        return self.secrets(cluster)

    def hang_up(self) -> None:
        """End every open watch now (tests need not wait for its timeout)."""
        for cluster in self.clusters.values():
            cluster.stream.put(None)

    def close(self) -> None:
        self.closed = True


def seeded_world() -> FakeClients:
    clients = FakeClients()
    clients.pats.pats = [pat("a-keda", "patrol-keda-aaaaaaaaaaaa", at(20 * 86400)),
                         pat("a-daily", "patrol-daily-checks-bbbbbbbbbbbb", at(25 * 86400))]
    for name in ("build-a", "build-b"):
        cluster = clients.secrets(config.Cluster(name))
        cluster.put_secret("azure-devops", "azure-devops-token", {"token": "keda-pat"},
                           {"patrol.io/authorization-id": "a-keda"})
        cluster.put_scaler("azure-devops", "azure-devops-agent", True)
    clients.vault("https://contoso-checks.vault.azure.net").put(
        "azure-devops-token", "daily-pat", expires_on=at(25 * 86400), tags={"authorizationId": "a-daily"})
    clients.prober_.valid = {"keda-pat", "daily-pat"}
    clients.ado.add_pool("agents-a", 1)
    clients.ado.add_pool("agents-b", 2)
    clients.ado.agents[1] = [agent(1, "online")]
    clients.ado.jobs[2] = [job(1, -30)]
    clients.ado.builds = [a_build(1, "succeeded", -3600)]
    return clients


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    clients = seeded_world()
    made = build(make_config(), clients, clock=Clock(), watch_timeout=1)
    yield made
    for source in made.sources:
        source.stop()
    clients.hang_up()
    made.close()
    assert clients.closed


def test_assembly_creates_one_source_per_failure_domain(exporter: Exporter) -> None:
    assert sorted(s.name for s in exporter.sources) == [
        "agent-pools/contoso", "keda/build-a", "keda/build-b", "keyvault/contoso-checks.vault.azure.net",
        "kubernetes/build-a", "kubernetes/build-b", "pat-lifecycle/contoso",
        "pipeline/Operations/daily-checks", "validity/contoso"]
    first_stage = {s.name for s in exporter.refresher.stages[0]}
    assert first_stage == {"keyvault/contoso-checks.vault.azure.net", "kubernetes/build-a", "kubernetes/build-b"}


def test_a_burst_of_refreshes_trims_once_then_once_more_later_and_close_cancels_that(exporter: Exporter) -> None:
    exporter.refresher.refresh_once()
    exporter.refresher.refresh_once()           # within the trim interval of the first trim
    pending = [t for t in threading.enumerate() if t.name == "patrol-malloc-trim"]
    assert exporter.trim.trims == 1 and len(pending) == 1 and pending[0].is_alive()
    exporter.close()
    pending[0].join(5)
    assert not pending[0].is_alive() and exporter.trim.trims == 1


def test_one_refresh_fills_every_metric_of_the_contract(exporter: Exporter) -> None:
    exporter.refresher.refresh_once()
    text = exporter.exposition.body().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {
        "patrol_pat_expiry_timestamp_seconds", "patrol_pat_renewal_timestamp_seconds", "patrol_pat_valid",
        "patrol_pat_managed", "patrol_pat_global", "patrol_keda_scaler_auth_failures",
        "patrol_keda_scaler_auth_failing", "patrol_keda_scaler_ready",
        "patrol_consumer_info",
        "patrol_agent_pool_agents", "patrol_agent_pool_queued_jobs",
        "patrol_agent_pool_oldest_queued_job_age_seconds", "patrol_pipeline_last_run_timestamp_seconds",
        "patrol_pipeline_last_success_timestamp_seconds", "patrol_source_up",
        "patrol_source_last_success_timestamp_seconds", "patrol_source_duration_seconds", "patrol_build_info"}
    assert families["patrol_keda_scaler_auth_failures"].type == "counter"
    assert families["patrol_keda_scaler_auth_failing"].type == "gauge"
    up = {s.labels["source"]: s.value for s in families["patrol_source_up"].samples}
    assert len(up) == 9 and set(up.values()) == {1.0}
    valid = {(s.labels["token"], s.labels["sink"]): s.value for s in families["patrol_pat_valid"].samples}
    assert valid == {("keda", "kubernetes-secret/build-a/azure-devops/azure-devops-token/token"): 1.0,
                     ("keda", "kubernetes-secret/build-b/azure-devops/azure-devops-token/token"): 1.0,
                     ("daily-checks", "keyvault/contoso-checks.vault.azure.net/azure-devops-token"): 1.0}
    assert text.count("# HELP patrol_source_up ") == 1        # merged across sources
    assert "keda-pat" not in text and "daily-pat" not in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) not installed")
def test_promtool_accepts_the_exposition(exporter: Exporter) -> None:
    exporter.refresher.refresh_once()
    result = subprocess.run(["promtool", "check", "metrics"], input=exporter.exposition.body(),
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_exposition_renders_once_per_change() -> None:
    class One:
        def __init__(self) -> None:
            self.value = 1.0

        def collect(self) -> Iterator[Metric]:
            g = GaugeMetricFamily("patrol_test", "help", labels=["x"])
            g.add_metric(["a"], self.value)
            yield g

    source = One()
    exposition = Exposition([source, source])
    first = exposition.body()
    for _ in range(50):
        assert exposition.body() is first
    assert exposition.renders == 1
    assert first.count(b"# TYPE patrol_test gauge") == 1
    assert first.count(b'patrol_test{x="a"} 1.0') == 2
    source.value = 2.0
    assert exposition.body() is first                         # not invalidated: still cached
    exposition.invalidate()
    assert b'patrol_test{x="a"} 2.0' in exposition.body()
    assert gzip.decompress(exposition.gzip_body()) == exposition.body()
    assert exposition.renders == 2


def test_merge_keeps_first_seen_order() -> None:
    a, b, c = (GaugeMetricFamily(n, "h") for n in ("m1", "m2", "m1"))
    a.add_metric([], 1)
    c.add_metric([], 3)
    merged = merge([a, b, c])
    assert [m.name for m in merged] == ["m1", "m2"]
    assert [s.value for s in merged[0].samples] == [1, 3]


class Scripted(SourceCollector):
    def __init__(self, name: str, log: list[str], errors: list[BaseException | None] | None = None) -> None:
        super().__init__(name, 0.01)
        self.log = log
        self.errors = list(errors or [])

    def fetch(self) -> None:
        self.log.append(self.name)
        if self.errors:
            error = self.errors.pop(0)
            if error is not None:
                raise error

    def samples(self) -> list[Metric]:
        return []


def test_refresher_runs_stages_in_order_and_becomes_ready() -> None:
    log: list[str] = []
    changes: list[int] = []
    sinks = Scripted("sinks", log)
    later = [Scripted("pats", log), Scripted("keda", log)]
    refresher = Refresher([[sinks], later], on_change=lambda: changes.append(1))
    assert not refresher.ready and refresher.pending == ["sinks", "pats", "keda"]
    refresher.start()
    try:
        assert refresher.wait_ready(5)
        assert log[0] == "sinks"
        deadline = time.monotonic() + 5
        while log.count("pats") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.count("pats") >= 3                          # keeps refreshing on its interval
    finally:
        refresher.stop()
    assert changes


def test_throttling_delays_instead_of_failing() -> None:
    source = Scripted("pats", [], [ThrottledError("ado: throttled", delay=42.0), None])
    outcome = source.refresh()
    assert outcome.retry_after == 42.0
    assert source.health.up                                    # throttled is not down
    assert next_delay(30.0, outcome, 1) == 42.0
    assert next_delay(30.0, Outcome(ok=False, changed=True, retry_after=1.0), 3) == 120.0
    assert next_delay(30.0, Outcome(ok=False, changed=True, retry_after=1.0), 50) == 30.0 * 16
    assert next_delay(30.0, Outcome(ok=True, changed=True), 0) == 30.0
    assert source.refresh().ok


def test_fanout_never_exceeds_its_bound() -> None:
    fanout = Fanout(3)
    active = 0
    peak = 0
    lock = threading.Lock()

    def call(_: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return 1

    try:
        results = fanout.map(call, range(12))
        threads = [threading.Thread(target=fanout.call, args=(lambda: call(0),)) for _ in range(4)]
        for t in threads:
            t.start()
        fanout.map(call, range(6))
        for t in threads:
            t.join()
    finally:
        fanout.close()
    assert all(r.ok and r.value == 1 for r in results)
    assert peak == 3 and fanout.peak_in_flight == 3


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:9877", ("0.0.0.0", 9877)), (":9100", ("0.0.0.0", 9100)), ("127.0.0.1", ("127.0.0.1", 9877)),
    ("[::1]:9877", ("::1", 9877)), ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


def test_parse_listen_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="not a number"):
        parse_listen("host:http")


def test_http_endpoints(exporter: Exporter) -> None:
    async def scenario() -> None:
        pending = ["keda/build-a"]
        runner, port = await start(make_app(exporter.exposition, lambda: list(pending)), "127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200
                async with http.get(f"{base}/readyz") as r:
                    assert r.status == 503 and "keda/build-a" in await r.text()
                pending.clear()
                async with http.get(f"{base}/readyz") as r:
                    assert r.status == 200
                await asyncio.get_running_loop().run_in_executor(None, exporter.refresher.refresh_once)
                async with http.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}) as r:
                    assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
                    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                    zipped = await r.read()
                async with http.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as r:
                    plain = await r.read()
                    assert "Content-Encoding" not in r.headers
            assert gzip.decompress(zipped) == plain
            assert b"patrol_pat_valid{" in plain
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_scrapes_do_not_render_or_call_apis(exporter: Exporter) -> None:
    exporter.refresher.refresh_once()
    clients = exporter.clients
    assert isinstance(clients, FakeClients)
    calls = clients.pats.calls + clients.ado.calls
    renders = exporter.exposition.renders
    for _ in range(100):
        exporter.exposition.body()
    assert exporter.exposition.renders == renders
    assert clients.pats.calls + clients.ado.calls == calls


def test_registry_get_sample_value_sees_merged_families(exporter: Exporter) -> None:
    exporter.refresher.refresh_once()
    registry: CollectorRegistry = exporter.exposition.registry
    assert registry.get_sample_value("patrol_agent_pool_queued_jobs",
                                     {"organization": "contoso", "pool": "agents-b"}) == 1.0
    assert registry.get_sample_value("patrol_source_up", {"source": "keda/build-b"}) == 1.0


def test_an_event_between_refreshes_is_served_without_waiting_for_the_next_refresh(exporter: Exporter) -> None:
    exporter.refresher.refresh_once()
    clients = exporter.clients
    assert isinstance(clients, FakeClients)
    cluster = clients.clusters["build-a"]
    labels = {"cluster": "build-a", "namespace": "azure-devops", "kind": "ScaledJob", "name": "azure-devops-agent"}

    def served() -> float | None:
        text = exporter.exposition.body().decode()
        return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == "patrol_keda_scaler_auth_failures_total" and s.labels == labels), None)

    assert served() == 0.0
    keda = next(s for s in exporter.sources if s.name == "keda/build-a")
    assert isinstance(keda, Keda)
    deadline = time.monotonic() + 5
    while not keda.feed("azure-devops").watching:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cluster.stream.put(("ADDED", cluster.event("e1", 3, "the Azure DevOps REST API returned error. "
                                               "urlString: u status: 401 response: ")))
    while served() != 3.0:                            # the watch thread re-rendered it
        assert time.monotonic() < deadline, served()
        time.sleep(0.01)
