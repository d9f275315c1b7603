"""A real Prometheus scrapes the exporter running on the sandbox and evaluates the shipped rules.

Started here: the sandbox (default scenario), the exporter (its real core clients, real HTTP),
and ``/usr/bin/prometheus`` (Debian package) with its own config and data directory, scraping and
evaluating every second. Then:

- every rule group loads and evaluates without error;
- every dashboard panel query (``dashboards.build.panel_queries``) parses and — except the
  worker's metrics, which this exporter does not serve — returns series;
- revoking the KEDA PAT out of band (control API) makes ``PatInvalid`` fire with the labels the
  worker routes on (``remediation="rotate"``, ``token="keda"``).

Alert ``for`` durations are shortened to 1s in the copy of the rules loaded here, so the test
takes seconds instead of minutes; the expressions are the shipped ones, and ``for`` itself is
covered by the promtool rule unit tests in ``alerts/tests``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.config import load_config
from core.retry import Backoff
from dashboards.build import panel_queries
from exporter.assembly import CoreClients, Exporter, build
from exporter.server import make_app
from sandbox.app import SandboxThread
from tests.contract.loop_thread import LoopThread

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus not installed")]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "patrol.rules.yml"
WORKER_METRICS = ("patrol_rotation", "patrol_webhook")
QUICK = Backoff(delays=(0.2,))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (httpx.HTTPError, AssertionError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class Prometheus:
    def __init__(self, directory: Path, target: str) -> None:
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = "1s"
        (directory / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (directory / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(directory / "rules.yml")],
            "scrape_configs": [{"job_name": "patrol-exporter", "static_configs": [{"targets": [target]}]}],
        }))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        body = self.http.get("/api/v1/alerts").json()
        alerts: list[dict[str, Any]] = body["data"]["alerts"]
        return alerts

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SandboxThread, Exporter, Prometheus]]:
    with SandboxThread(str(tmp_path_factory.mktemp("sandbox")), "default") as sb:
        cfg = load_config(sb.ready["config"])
        exporter = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)
        loop = LoopThread()
        prometheus: Prometheus | None = None
        try:
            exporter.start()
            assert exporter.refresher.wait_ready(30), exporter.refresher.pending
            port = loop.serve(make_app(exporter.exposition, lambda: exporter.refresher.pending))
            prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{port}")
            wait_for("prometheus to be ready", lambda: prometheus.http.get("/-/ready").status_code == 200)
            wait_for("the exporter target to be up",
                     lambda: prometheus.query('up{job="patrol-exporter"} == 1'))
            yield sb, exporter, prometheus
        finally:
            if prometheus is not None:
                prometheus.close()
            loop.close()
            exporter.close()


def test_every_rule_group_loads_and_evaluates(stack: tuple[SandboxThread, Exporter, Prometheus]) -> None:
    _, _, prometheus = stack
    wait_for("the rules to evaluate", lambda: prometheus.query("patrol:pat_days_to_expiry"))
    groups = prometheus.http.get("/api/v1/rules").json()["data"]["groups"]
    names = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"patrol:pat_days_to_expiry", "PatInvalid", "KedaScalerAuthFailing", "PatrolSourceDown"} <= names
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_every_dashboard_panel_query_returns_series(stack: tuple[SandboxThread, Exporter, Prometheus]) -> None:
    _, _, prometheus = stack
    queries = panel_queries()
    assert queries
    # increase()/rate() need two samples in their window: give Prometheus a few scrapes.
    wait_for("a few scrapes", lambda: prometheus.query("count_over_time(patrol_source_up[1m]) >= 4"))
    empty = []
    for title, expr in queries:
        exporter_metric = not any(m in expr for m in WORKER_METRICS)
        result = prometheus.query(expr)                         # parse errors fail here
        if exporter_metric and not result:
            result = wait_for(f"series for {title!r}", lambda e=expr: prometheus.query(e), timeout=15)
        if exporter_metric and not result:
            empty.append((title, expr))
    assert not empty, f"panels without series: {empty}"


def test_a_pat_revoked_out_of_band_fires_pat_invalid(stack: tuple[SandboxThread, Exporter, Prometheus]) -> None:
    sb, _, prometheus = stack
    response = httpx.post(f"{sb.ready['control_url']}/ado/pats/{sb.world.seeded.keda_pat_id}/revoke", timeout=10)
    assert response.status_code == 200, response.text

    def firing() -> list[dict[str, Any]]:
        return [a for a in prometheus.alerts()
                if a["labels"]["alertname"] == "PatInvalid" and a["state"] == "firing"]

    alerts = wait_for("PatInvalid to fire", firing, timeout=60)
    sinks = {a["labels"]["sink"] for a in alerts}
    assert sinks == {"kubernetes-secret/cft-ptl/azure-devops/azure-devops-token/token",
                     "kubernetes-secret/sds-ptl/azure-devops/azure-devops-token/token"}
    for alert in alerts:
        assert alert["labels"]["token"] == "keda"
        assert alert["labels"]["remediation"] == "rotate"
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("#patinvalid")
    # KEDA keeps failing with the revoked PAT: its auth failures reach the KEDA alert too.
    keda = wait_for("KedaScalerAuthFailing to fire", lambda: [
        a for a in prometheus.alerts()
        if a["labels"]["alertname"] == "KedaScalerAuthFailing" and a["state"] == "firing"], timeout=60)
    assert {a["labels"]["token"] for a in keda} == {"keda"}
