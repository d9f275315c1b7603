"""Real Prometheus and Alertmanager around the exporter and the worker, on the sandbox.

Started here: the sandbox (default scenario), the exporter and the worker (their real core
clients, real HTTP), and :class:`patrol.stack.MonitoringStack` — the Debian ``prometheus`` and
``prometheus-alertmanager`` that ``make demo`` runs — scraping both every second, evaluating
the shipped rules and routing ``remediation="rotate"`` alerts to the worker's webhook with the
bearer token from the sandbox's ready file, as ``alerts/alertmanager.example.yml`` does. Then:

- every rule group loads and evaluates without error;
- revoking the KEDA PAT out of band (control API) makes ``PatInvalid`` fire with the labels the
  worker routes on (``remediation="rotate"``, ``token="keda"``), and KEDA's auth failures make
  ``KedaScalerAuthFailing`` fire; Alertmanager delivers them, the worker rotates the token, and
  the exporter sees every sink valid again — the whole loop, through the real monitoring stack;
- ``KedaScalerAuthFailing`` fires on ``patrol_keda_scaler_auth_failing`` and resolves within two
  KEDA polling intervals plus a scrape of KEDA's recovery (its first good poll after the
  rotation); a sampler times each step — revocation → gauge 1 (exporter, then Prometheus) →
  firing, and recovery → gauge 0 → resolved — and prints the figures;
- every dashboard panel query (``dashboards.build.panel_queries``) parses and returns series
  with a value, the worker's panels (rotations, webhook deliveries) included: none is exempted.

Alert ``for`` durations are shortened to 1s in the rules loaded here, so the test takes
seconds instead of minutes; the expressions are the shipped ones, and ``for`` itself is
covered by the promtool rule unit tests in ``alerts/tests``.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.config import Config, load_config
from core.kube import KubeCluster
from core.retry import Backoff
from core.secret import Secret
from dashboards.build import panel_queries
from exporter.assembly import CoreClients, Exporter, build
from exporter.server import make_app
from patrol.stack import MonitoringStack
from remediation.saga import SagaSettings
from remediation.service import WorkerService, WorkerThread
from remediation.world import CoreWorld
from sandbox.app import SandboxThread
from tests.contract.loop_thread import LoopThread

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not MonitoringStack.available(),
                                 reason="Debian prometheus / prometheus-alertmanager not installed")]

QUICK = Backoff(delays=(0.2,))
# The sandbox's KEDA polls every 2 s: a short settle still spans a few of its polls.
SAGA = SagaSettings(verify_deadline=30, verify_interval=0.5, verify_settle=2.5,
                    api_backoff=Backoff(delays=(0.2, 0.5, 1.0)), deliver_backoff=Backoff(delays=(0.2, 0.5, 1.0)))
KEDA_SINKS = {"kubernetes-secret/build-a/azure-devops/azure-devops-token/token",
              "kubernetes-secret/build-b/azure-devops/azure-devops-token/token"}
KEDA_POLL = 2.0                      # the sandbox's ScaledJob pollingInterval (scenario default)
SCRAPE = 1.0                         # MonitoringStack's scrape and evaluation interval
# The exporter reads the ScaledJobs at least once per KEDA poll, so it sees KEDA's first good
# poll before the next one (docs/metrics.md, patrol_keda_scaler_auth_failing).
KEDA_INTERVAL = timedelta(seconds=1)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, RuntimeError, AssertionError):     # not up yet / no answer yet
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@dataclass
class Stack:
    sandbox: SandboxThread
    exporter: Exporter
    worker: WorkerThread
    monitoring: MonitoringStack
    config: Config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with SandboxThread(str(tmp_path_factory.mktemp("sandbox")), "default") as sb:
        cfg = load_config(sb.ready["config"])
        token_file = sb.ready["webhook_token_file"]
        exporter_cfg = replace(cfg, exporter=replace(cfg.exporter, keda_interval=KEDA_INTERVAL))
        exporter = build(exporter_cfg, CoreClients(exporter_cfg, {}, backoff=QUICK, probe_backoff=QUICK),
                         watch_timeout=1)
        world = CoreWorld(cfg, env={})
        worker = WorkerThread(WorkerService(
            cfg, world, state_dir=tmp_path_factory.mktemp("worker-state"),
            webhook_token=Secret(Path(token_file).read_text().strip()), settings=SAGA))
        loop = LoopThread()
        monitoring: MonitoringStack | None = None
        try:
            exporter.start()
            assert exporter.refresher.wait_ready(30), exporter.refresher.pending
            port = loop.serve(make_app(exporter.exposition, lambda: exporter.refresher.pending))
            worker.start()
            monitoring = MonitoringStack(
                directory=tmp_path_factory.mktemp("monitoring"),
                targets={"patrol-exporter": f"127.0.0.1:{port}", "patrol-worker": f"127.0.0.1:{worker.port}"},
                webhook_url=f"{worker.url}/webhook/alertmanager", webhook_token_file=token_file,
                alert_for="1s")
            monitoring.start()
            wait_for("both targets to be up", lambda: len(monitoring.query("up == 1")) == 2)
            yield Stack(sb, exporter, worker, monitoring, cfg)
        finally:
            if monitoring is not None:
                monitoring.stop()
            worker.stop()
            world.close()
            loop.close()
            exporter.close()


class KedaTimeline:
    """When each step of the KEDA signal happened, sampled every ~0.1 s in a thread: what the
    exporter serves (its rendered exposition), what Prometheus holds, and the ScaledJobs'
    ``Ready`` as the sandbox's KEDA sets it (read over its Kubernetes API)."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        keda = next(t for t in stack.config.tokens if t.name == "keda")
        self._clusters = {c.name: KubeCluster(c) for c in stack.config.clusters}
        self._consumers = [(self._clusters[c.cluster], c.namespace, c.name) for c in keda.consumers]
        self.started = time.time()
        self.at: dict[str, float] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="e2e-keda-timeline")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for cluster in self._clusters.values():
            cluster.close()

    def mark(self, step: str) -> None:
        self.at.setdefault(step, time.time())

    def since(self, start: str, end: str) -> float:
        return self.at[end] - self.at[start]

    def served(self) -> list[float]:
        text = self._stack.exporter.exposition.body().decode()
        return [s.value for f in text_string_to_metric_families(text)
                if f.name == "patrol_keda_scaler_auth_failing" for s in f.samples]

    def _sample(self) -> None:
        served = self.served()
        prometheus = self._stack.monitoring
        stored = [float(r["value"][1]) for r in prometheus.query("patrol_keda_scaler_auth_failing")]
        alerts = {r["metric"]["alertstate"] for r in prometheus.query('ALERTS{alertname="KedaScalerAuthFailing"}')}
        ready = [c.get_scaler(ns, "scaledjobs", name).ready for c, ns, name in self._consumers]
        if "revoked" not in self.at:
            return
        # Prometheus holds only what the exporter served: a step Prometheus shows (or the alert
        # it drives) marks the exporter's step too, if the sample above just missed it.
        if any(v == 1.0 for v in served) or any(v == 1.0 for v in stored) or "firing" in alerts:
            self.mark("exporter_failing")
        if any(v == 1.0 for v in stored) or "firing" in alerts:
            self.mark("prometheus_failing")
        if "firing" in alerts:
            self.mark("firing")
        if "firing" not in self.at:
            return
        if not all(r is True for r in ready):
            self.at.pop("recovered", None)           # KEDA failed again: recovery is later
        elif "recovered" not in self.at:
            self.mark("recovered")                   # every ScaledJob's first good poll
        if "recovered" not in self.at:
            return
        prometheus_ok = bool(stored) and all(v == 0.0 for v in stored)
        if (served and all(v == 0.0 for v in served)) or prometheus_ok:
            self.mark("exporter_ok")
        if prometheus_ok:
            self.mark("prometheus_ok")
        if prometheus_ok and "firing" not in alerts:
            self.mark("resolved")

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._sample()
            except (OSError, RuntimeError, ValueError) as exc:     # not answering this instant
                self.errors.append(repr(exc))

    def figures(self) -> str:
        steps = ["revoked", "exporter_failing", "prometheus_failing", "firing", "recovered", "exporter_ok",
                 "prometheus_ok", "resolved"]
        t0 = self.at.get("revoked", self.started)
        shown = ", ".join(f"{s}=+{self.at[s] - t0:.2f}s" for s in steps if s in self.at)
        return shown + (f"; sampler errors: {self.errors[:3]}" if self.errors else "")


@dataclass
class Incident:
    """What was seen while the KEDA PAT was revoked out of band and patrol repaired it."""

    revoked: str
    timeline: KedaTimeline
    firing: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # alertname -> alerts


@pytest.fixture(scope="module")
def incident(stack: Stack) -> Incident:
    """Revoke the KEDA PAT, watch the alerts fire, wait until the worker's rotation made every
    sink valid again (one run for the module: the alert, rotation and panel tests read it).

    Whichever alert reaches the worker first starts the rotation, and a quick one could repair
    the sinks before the other alert fires. So notifications to the worker are silenced in
    Alertmanager until both alerts were seen firing in Prometheus, then the silence ends and
    Alertmanager delivers them."""
    sb, prometheus = stack.sandbox, stack.monitoring
    wait_for("the rules to evaluate", lambda: prometheus.query("patrol:pat_days_to_expiry"))
    seed = sb.world.seeded.keda_pat_id
    hold = prometheus.silence({"remediation": "rotate"}, "e2e: hold rotations until both alerts fired")
    timeline = KedaTimeline(stack)
    timeline.start()
    wait_for("the exporter to serve the gauge at 0", lambda: timeline.served() and not any(timeline.served()))
    timeline.mark("revoked")
    response = httpx.post(f"{sb.ready['control_url']}/ado/pats/{seed}/revoke", timeout=10)
    assert response.status_code == 200, response.text
    seen = Incident(revoked=seed, timeline=timeline)

    def record_firing() -> None:
        for alert in prometheus.firing_alerts():
            name = alert["labels"]["alertname"]
            known = {tuple(sorted(a["labels"].items())) for a in seen.firing.get(name, [])}
            if tuple(sorted(alert["labels"].items())) not in known:
                seen.firing.setdefault(name, []).append(alert)

    def both_fired() -> bool:
        record_firing()
        return len(seen.firing.get("PatInvalid", [])) == len(KEDA_SINKS) and "KedaScalerAuthFailing" in seen.firing

    def repaired() -> bool:
        record_firing()
        rotated = prometheus.query('patrol_rotations_total{token="keda", result="succeeded"} >= 1')
        valid = prometheus.query('min(patrol_pat_valid{token="keda"}) == 1')
        return bool(rotated and valid)

    try:
        wait_for("PatInvalid for every sink and KedaScalerAuthFailing", both_fired, timeout=60, every=0.3)
        assert not prometheus.query("sum(patrol_webhook_requests_total) > 0"), "the silence let a webhook through"
        prometheus.expire_silence(hold)
        wait_for("the worker's rotation and every sink valid again", repaired, timeout=90, every=0.3)
    except AssertionError as exc:
        timeline.close()
        rotations = httpx.get(f"{stack.worker.url}/rotations", timeout=10).text
        raise AssertionError(f"{exc}; alerts seen: {sorted(seen.firing)}; worker rotations: {rotations}; "
                             f"rotation metrics: {prometheus.query('patrol_rotations_total > 0')}; "
                             f"validity: {prometheus.query('patrol_pat_valid')}") from None
    return seen


def test_every_rule_group_loads_and_evaluates(stack: Stack) -> None:
    prometheus = stack.monitoring
    wait_for("the rules to evaluate", lambda: prometheus.query("patrol:pat_days_to_expiry"))
    groups = prometheus.rules()
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"patrol:pat_days_to_expiry", "PatInvalid", "KedaScalerAuthFailing", "PatrolSourceDown"} <= names
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_a_pat_revoked_out_of_band_fires_pat_invalid_for_every_sink(incident: Incident) -> None:
    alerts = incident.firing["PatInvalid"]
    assert {a["labels"]["sink"] for a in alerts} == KEDA_SINKS
    for alert in alerts:
        assert alert["labels"]["token"] == "keda"
        assert alert["labels"]["remediation"] == "rotate"
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("#patinvalid")
    # KEDA kept failing with the revoked PAT: its auth failures reach the KEDA alert too.
    assert {a["labels"]["token"] for a in incident.firing["KedaScalerAuthFailing"]} == {"keda"}


def test_keda_alert_fires_on_the_gauge_and_resolves_within_two_polls_of_recovery(incident: Incident) -> None:
    timeline = incident.timeline
    try:
        wait_for("KedaScalerAuthFailing to resolve", lambda: "resolved" in timeline.at, timeout=60, every=0.2)
    finally:
        timeline.close()
    figures = timeline.figures()
    print(f"\nKEDA signal timeline (KEDA poll {KEDA_POLL:g}s, exporter keda_interval "
          f"{KEDA_INTERVAL.total_seconds():g}s, scrape/eval {SCRAPE:g}s, for 1s): {figures}")
    assert timeline.at["revoked"] < timeline.at["exporter_failing"] <= timeline.at["prometheus_failing"], figures
    assert timeline.at["prometheus_failing"] <= timeline.at["firing"], figures
    assert timeline.at["recovered"] <= timeline.at["exporter_ok"] <= timeline.at["resolved"], figures
    # the bound: resolved within two KEDA polling intervals plus a scrape of recovery
    assert timeline.since("recovered", "resolved") <= 2 * KEDA_POLL + SCRAPE, figures


def test_alertmanager_delivers_and_the_worker_rotates_the_token(stack: Stack, incident: Incident) -> None:
    prometheus = stack.monitoring
    delivered = prometheus.query("sum by (code) (patrol_webhook_requests_total) > 0")
    assert {r["metric"]["code"] for r in delivered} == {"202"}, delivered     # accepted, bearer ok
    assert prometheus.query('patrol_rotations_total{result="failed"} > 0') == []
    pats = {p["authorizationId"]: p for p in stack.sandbox.call(stack.sandbox.world.ado.pats)}
    new = [p for p in pats.values() if p["displayName"].startswith("patrol-keda-") and p["status"] == "active"]
    assert len(new) == 1 and pats[incident.revoked]["status"] == "revoked"
    # The exporter follows: the new PAT's expiry, matched through the annotation patrol wrote.
    def new_expiry() -> bool:
        series = prometheus.query('patrol_pat_expiry_timestamp_seconds{token="keda"}')
        return len(series) == 1 and abs(float(series[0]["value"][1]) - new[0]["valid_to"]) < 1.0

    wait_for("the exporter to report the new PAT's expiry", new_expiry, timeout=30)


def test_every_dashboard_panel_query_returns_series(stack: Stack, incident: Incident) -> None:
    prometheus = stack.monitoring
    queries = panel_queries()
    assert queries
    empty = []
    for title, expr in queries:
        try:
            result = prometheus.query(expr)
        except urllib.error.HTTPError as exc:                    # a parse error: 400 from Prometheus
            raise AssertionError(f"{title!r}: {expr}: {exc.read().decode()}") from None
        if _has_values(result):
            continue
        def numbers(e: str = expr) -> list[dict[str, Any]]:
            return _has_values(prometheus.query(e))

        try:
            wait_for(f"series for {title!r}", numbers, timeout=15)
        except AssertionError:
            empty.append((title, expr))
    assert not empty, f"panels without series: {empty}"


def _has_values(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The series whose value is a number: histogram_quantile over buckets that never moved
    answers NaN, which a dashboard shows as "no data"."""
    return [r for r in result if not math.isnan(float(r["value"][1]))]
