"""A local monitoring stack around the sandbox: real Prometheus and Alertmanager processes.

``make demo`` and the end-to-end tests both need the same thing: the Debian ``prometheus`` and
``prometheus-alertmanager`` binaries, configured to scrape patrol's exporter and worker, to
evaluate the shipped rules (with short ``for`` so a loop fits in a minute), and to deliver
``remediation="rotate"`` alerts to the worker's webhook with bearer authentication, as
``alerts/alertmanager.example.yml`` does in production. The route here matches that label
alone, where the example also matches the rotation alert names: so whatever else carries the
label (kube-prometheus-stack's InfoInhibitor, in tests/e2e/test_info_inhibitor_e2e.py) reaches
the worker, and the worker's own allow-list is what is exercised.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alerts.rules import render_rules_file

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"


def free_port() -> int:
    """A loopback port free right now (Prometheus and Alertmanager cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last})")


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def send_json(method: str, url: str, body: Any = None, timeout: float = 5.0) -> Any:
    """``method`` with a JSON body (or none); the decoded JSON answer, or None when empty."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - loopback only
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - loopback only
        text = resp.read()
    return json.loads(text) if text else None


@dataclass
class MonitoringStack:
    """Prometheus + Alertmanager in ``directory``, scraping ``targets`` (job name → host:port)."""

    directory: Path
    targets: dict[str, str]
    webhook_url: str
    webhook_token_file: str
    interval: str = "1s"
    alert_for: str = "3s"
    # which alerts get the short ``for``: "all" (tests that want every alert quickly) or
    # "rotate" (the demo: only what drives a rotation is sped up; the rest keep their real
    # ``for``, so a sandbox's seconds-long steps do not page anyone)
    fast: Literal["all", "rotate"] = "all"
    # Rule files loaded beside patrol's (e.g. a third party's rules a test runs next to ours).
    extra_rule_files: tuple[Path, ...] = ()
    prometheus_port: int = field(default_factory=free_port)
    alertmanager_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    @staticmethod
    def available() -> bool:
        return find_binary(PROMETHEUS) is not None and find_binary(ALERTMANAGER, "alertmanager") is not None

    def rules_text(self) -> str:
        """The shipped rules, with the short ``for`` on the alerts ``fast`` names."""
        if self.fast == "all":
            return render_rules_file(for_override=self.alert_for)
        doc = yaml.safe_load(render_rules_file())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if rule.get("labels", {}).get("remediation") == "rotate":
                    rule["for"] = self.alert_for
        return str(yaml.safe_dump(doc, sort_keys=False))

    def write_configs(self) -> tuple[Path, Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        rules = self.directory / "patrol.rules.yml"
        rules.write_text(self.rules_text())
        prom = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(rules), *(str(path) for path in self.extra_rule_files)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.alertmanager_port}"]}]}]},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in sorted(self.targets.items())
            ],
        }
        am = {
            "route": {
                "receiver": "humans",
                "group_by": ["alertname"],
                "group_wait": "1s", "group_interval": "2s", "repeat_interval": "1m",
                "routes": [{
                    "receiver": "patrol-worker",
                    "matchers": ['remediation="rotate"'],
                    "group_by": ["alertname", "token"],
                    "group_wait": "1s", "group_interval": "2s", "repeat_interval": "30s",
                }],
            },
            "receivers": [
                {"name": "humans"},
                {"name": "patrol-worker", "webhook_configs": [{
                    "url": self.webhook_url, "send_resolved": True, "max_alerts": 0,
                    "http_config": {"authorization": {"type": "Bearer",
                                                      "credentials_file": self.webhook_token_file}},
                }]},
            ],
        }
        prom_file = self.directory / "prometheus.yml"
        am_file = self.directory / "alertmanager.yml"
        prom_file.write_text(yaml.safe_dump(prom, sort_keys=False))
        am_file.write_text(yaml.safe_dump(am, sort_keys=False))
        return prom_file, am_file

    def start(self, log_dir: Path | None = None) -> None:
        prometheus = find_binary(PROMETHEUS)
        alertmanager = find_binary(ALERTMANAGER, "alertmanager")
        if prometheus is None or alertmanager is None:
            raise RuntimeError("prometheus/prometheus-alertmanager are not installed "
                               "(make test installs them: apt-get install prometheus prometheus-alertmanager)")
        prom_file, am_file = self.write_configs()
        logs = log_dir or self.directory
        am_log = (logs / "alertmanager.log").open("wb")
        prom_log = (logs / "prometheus.log").open("wb")
        try:
            self.procs.append(subprocess.Popen(
                [alertmanager, f"--config.file={am_file}", f"--storage.path={self.directory / 'am-data'}",
                 f"--web.listen-address=127.0.0.1:{self.alertmanager_port}", "--cluster.listen-address="],
                stdout=am_log, stderr=subprocess.STDOUT))
            self.procs.append(subprocess.Popen(
                [prometheus, f"--config.file={prom_file}", f"--storage.tsdb.path={self.directory / 'prom-data'}",
                 f"--web.listen-address=127.0.0.1:{self.prometheus_port}"],
                stdout=prom_log, stderr=subprocess.STDOUT))
        finally:
            am_log.close()
            prom_log.close()
        wait_http(f"{self.alertmanager_url}/-/ready", proc=self.procs[0])
        wait_http(f"{self.prometheus_url}/-/ready", proc=self.procs[1])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def query(self, expr: str) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        doc = get_json(f"{self.prometheus_url}/api/v1/query?{urlencode({'query': expr})}")
        if doc.get("status") != "success":
            raise RuntimeError(f"query failed: {expr}: {doc}")
        return list(doc["data"]["result"])

    def rules(self) -> list[dict[str, Any]]:
        """Prometheus's rule groups as loaded, each rule with its ``health`` and ``lastError``."""
        doc = get_json(f"{self.prometheus_url}/api/v1/rules")
        return list(doc["data"]["groups"])

    def firing_alerts(self) -> list[dict[str, Any]]:
        doc = get_json(f"{self.prometheus_url}/api/v1/alerts")
        return [a for a in doc["data"]["alerts"] if a.get("state") == "firing"]

    def silence(self, matchers: dict[str, str], comment: str, seconds: float = 600.0) -> str:
        """Silence notifications of alerts with these label values (they still fire in
        Prometheus); returns the silence id for :meth:`expire_silence`."""
        now = time.time()
        doc = send_json("POST", f"{self.alertmanager_url}/api/v2/silences", {
            "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in matchers.items()],
            "startsAt": _rfc3339(now), "endsAt": _rfc3339(now + seconds),
            "createdBy": "patrol", "comment": comment})
        return str(doc["silenceID"])

    def expire_silence(self, silence_id: str) -> None:
        """End a silence now: Alertmanager delivers what it held back at the group's next flush."""
        send_json("DELETE", f"{self.alertmanager_url}/api/v2/silence/{silence_id}")

    def __enter__(self) -> MonitoringStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
