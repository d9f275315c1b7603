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
- every dashboard panel query (``dashboards.build.panel_queries``) parses and returns series
  with a value, the worker's panels (rotations, webhook deliveries) included: none is exempted.

Alert ``for`` durations are shortened to 1s in the rules loaded here, so the test takes
seconds instead of minutes; the expressions are the shipped ones, and ``for`` itself is
covered by the promtool rule unit tests in ``alerts/tests``.
"""

from __future__ import annotations

import math
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import load_config
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
KEDA_SINKS = {"kubernetes-secret/cft-ptl/azure-devops/azure-devops-token/token",
              "kubernetes-secret/sds-ptl/azure-devops/azure-devops-token/token"}


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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with SandboxThread(str(tmp_path_factory.mktemp("sandbox")), "default") as sb:
        cfg = load_config(sb.ready["config"])
        token_file = sb.ready["webhook_token_file"]
        exporter = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)
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
            yield Stack(sb, exporter, worker, monitoring)
        finally:
            if monitoring is not None:
                monitoring.stop()
            worker.stop()
            world.close()
            loop.close()
            exporter.close()


@dataclass
class Incident:
    """What was seen while the KEDA PAT was revoked out of band and patrol repaired it."""

    revoked: str
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
    response = httpx.post(f"{sb.ready['control_url']}/ado/pats/{seed}/revoke", timeout=10)
    assert response.status_code == 200, response.text
    seen = Incident(revoked=seed)

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
