"""``patrol demo`` (``make demo``): the whole loop on one machine.

It starts, as separate processes, the sandbox (the simulated Azure DevOps, Entra, Key Vault,
two Kubernetes clusters and their KEDA), patrol's exporter and worker against the sandbox's
generated configuration, and — when the Debian packages are installed — a real Prometheus
loading the shipped rules and a real Alertmanager routing ``remediation="rotate"`` alerts to
the worker. Then it narrates, every few seconds, what patrol sees and what KEDA sees.

After ``incident_after`` seconds it plays the incident patrol exists for: the KEDA PAT is
revoked out of band (as Azure DevOps does to a leaked PAT). KEDA starts failing with 401s; the
exporter reports the token invalid; Prometheus fires ``PatInvalid``; Alertmanager delivers the
webhook; the worker creates a new PAT, delivers it to both clusters, bumps the ScaledJobs,
verifies the agent pools recovered and revokes the old PAT. Without Prometheus/Alertmanager the
demo posts the same Alertmanager webhook itself, so the worker's part still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO

from prometheus_client.parser import text_string_to_metric_families

from patrol.stack import MonitoringStack, free_port, get_json, wait_http


@dataclass
class Status:
    """One look at the world: what patrol's exporter says, what the sandbox's KEDA sees."""

    elapsed: float
    expiry: dict[str, float] = field(default_factory=dict)            # token -> expiry (unix)
    renewal: dict[str, float] = field(default_factory=dict)           # token -> renewal due (unix)
    valid: dict[str, dict[str, float]] = field(default_factory=dict)  # token -> sink -> 0/1
    keda: dict[str, dict[str, Any]] = field(default_factory=dict)     # cluster/ns/name -> stats
    alerts: list[str] = field(default_factory=list)
    rotations: list[dict[str, Any]] = field(default_factory=list)
    now: float = 0.0


def parse_exporter(text: str, status: Status) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "patrol_pat_expiry_timestamp_seconds":
                token = labels.get("token", "?")
                status.expiry[token] = min(status.expiry.get(token, sample.value), sample.value)
            elif sample.name == "patrol_pat_renewal_timestamp_seconds":
                status.renewal[labels.get("token", "?")] = sample.value
            elif sample.name == "patrol_pat_valid":
                status.valid.setdefault(labels.get("token", "?"), {})[labels.get("sink", "?")] = sample.value


def _span(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    seconds = abs(int(seconds))
    if seconds >= 86400:
        return f"{sign}{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 60:
        return f"{sign}{seconds // 60}m{seconds % 60:02d}s"
    return f"{sign}{seconds}s"


def short_sink(sink: str) -> str:
    """``kubernetes-secret/cft-ptl/ns/name/key`` → ``cft-ptl``; ``keyvault/host/name`` → ``keyvault``."""
    kind, _, rest = sink.partition("/")
    if kind == "kubernetes-secret":
        return rest.split("/", 1)[0]
    return kind or sink


def render(status: Status) -> list[str]:
    """The report printed every interval (pure: tested on its own)."""
    lines = [f"[{status.elapsed:5.0f}s] patrol sees:"]
    if not status.expiry and not status.valid:
        lines.append("          (exporter warming up)")
    for token in sorted(set(status.expiry) | set(status.valid)):
        parts = [f"          {token:<13}"]
        if token in status.expiry:
            parts.append(f"expires in {_span(status.expiry[token] - status.now):>7}")
        else:
            parts.append("expiry unknown (sinks not annotated yet; see docs/rotation.md)")
        if token in status.renewal:
            due = status.renewal[token] - status.now
            parts.append("renewal DUE" if due <= 0 else f"renew in {_span(due):>7}")
        sinks = status.valid.get(token, {})
        if sinks:
            parts.append("valid: " + " ".join(f"{short_sink(s)}={'yes' if v >= 1 else 'NO'}"
                                              for s, v in sorted(sinks.items())))
        lines.append("  ".join(parts))
    lines.append("          KEDA sees:")
    for key, k in sorted(status.keda.items()):
        ready = k.get("ready") or "?"
        lines.append(f"          {key:<38} ready={ready:<5} queue={k.get('queue_length')!s:<3} "
                     f"agents={k.get('agents_running', 0):<2} auth-failures={k.get('auth_failures', 0)}")
    lines.append("          alerts firing: " + (", ".join(status.alerts) if status.alerts else "none"))
    for rot in status.rotations[:3]:
        outcome = rot.get("outcome")
        text = f"{outcome}" if outcome else f"running, step {rot.get('state') or '?'}"
        if rot.get("error"):
            text += f" ({rot['error']})"
        lines.append(f"          rotation {rot.get('id', '?')} of {rot.get('token', '?')}: {text}")
    return lines


def alert_name(labels: Mapping[str, str]) -> str:
    """``PatInvalid{token=keda}``: the alert with the label that says what it is about."""
    for key in ("token", "pool", "pipeline", "source"):
        if key in labels:
            return f"{labels.get('alertname', '?')}{{{key}={labels[key]}}}"
    return labels.get("alertname", "?")


def _fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
        return str(resp.read().decode())


def _post_json(url: str, body: Mapping[str, Any], token: str | None = None) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",  # noqa: S310
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def synthetic_webhook(token: str, alertname: str = "PatInvalid") -> dict[str, Any]:
    """The Alertmanager v4 body the demo sends itself when no Alertmanager is installed."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    labels = {"alertname": alertname, "remediation": "rotate", "token": token, "severity": "warning"}
    return {
        "version": "4", "groupKey": f'{{}}/{{remediation="rotate"}}:{{alertname="{alertname}", token="{token}"}}',
        "truncatedAlerts": 0, "status": "firing", "receiver": "patrol-worker",
        "groupLabels": {"alertname": alertname, "token": token}, "commonLabels": labels,
        "commonAnnotations": {"summary": f"{token}: a sink holds a token that no longer authenticates"},
        "externalURL": "http://demo", "alerts": [{
            "status": "firing", "labels": labels, "annotations": {}, "startsAt": now,
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://demo", "fingerprint": f"demo{token}",
        }],
    }


@dataclass
class Demo:
    workdir: Path
    out: TextIO = sys.stdout
    incident_after: float = 20.0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    named: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stack: MonitoringStack | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    exporter_url: str = ""
    worker_url: str = ""
    webhook_token: str = ""
    scenario: str = "default"                 # the sandbox scenario (``soak`` for patrol.soak)
    alert_for: str = "3s"                     # the short ``for`` of the alerts ``fast`` names
    fast: Literal["all", "rotate"] = "rotate"

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "patrol", *args], stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            log.close()
        self.procs.append(proc)
        self.named[name] = proc
        return proc

    def start(self) -> None:
        ready_file = self.workdir / "sandbox-ready.json"
        self.say(f"patrol demo: working directory {self.workdir} (logs: *.log there)")
        self.say("starting the sandbox: Azure DevOps, Entra, Key Vault, clusters cft-ptl and sds-ptl, KEDA ...")
        sandbox = self._spawn("sandbox", "sandbox", "--ready-file", str(ready_file),
                              "--dir", str(self.workdir / "sandbox"), "--scenario", self.scenario)
        deadline = time.monotonic() + 60
        while not ready_file.exists():
            if sandbox.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not start; see {self.workdir / 'sandbox.log'}")
            time.sleep(0.1)
        self.ready = json.loads(ready_file.read_text())
        config = self.ready["config"]
        self.webhook_token = Path(self.ready["webhook_token_file"]).read_text().strip()

        exporter_port, worker_port = free_port(), free_port()
        self.exporter_url = f"http://127.0.0.1:{exporter_port}"
        self.worker_url = f"http://127.0.0.1:{worker_port}"
        self.say(f"starting patrol exporter on {self.exporter_url} and worker on {self.worker_url} ...")
        exporter = self._spawn("exporter", "exporter", "--config", config, "--listen", f"127.0.0.1:{exporter_port}")
        worker = self._spawn("worker", "worker", "--config", config, "--listen", f"127.0.0.1:{worker_port}",
                             "--state-dir", str(self.workdir / "worker-state"))
        wait_http(f"{self.exporter_url}/healthz", proc=exporter)
        wait_http(f"{self.worker_url}/healthz", proc=worker)

        if MonitoringStack.available():
            self.stack = MonitoringStack(
                directory=self.workdir / "monitoring",
                targets={"patrol-exporter": f"127.0.0.1:{exporter_port}",
                         "patrol-worker": f"127.0.0.1:{worker_port}"},
                webhook_url=f"{self.worker_url}/webhook/alertmanager",
                webhook_token_file=self.ready["webhook_token_file"],
                alert_for=self.alert_for, fast=self.fast)
            self.stack.start()
            self.say(f"Prometheus {self.stack.prometheus_url} (shipped rules) and Alertmanager "
                     f"{self.stack.alertmanager_url} (rotate alerts -> worker) are running")
        else:
            self.say("Prometheus/Alertmanager are not installed (`make test` installs them): the demo will "
                     "post the Alertmanager webhook itself")

    def look(self, started: float) -> Status:
        status = Status(elapsed=time.monotonic() - started, now=time.time())
        with contextlib.suppress(OSError, ValueError):
            parse_exporter(_fetch_text(f"{self.exporter_url}/metrics"), status)
        with contextlib.suppress(OSError, ValueError):
            state = get_json(f"{self.ready['control_url']}/state")
            actors = state.get("actors") or {}
            status.keda = dict(actors.get("scaledjobs") or {})
        if self.stack is not None:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                status.alerts = sorted({alert_name(a["labels"]) for a in self.stack.firing_alerts()})
        with contextlib.suppress(OSError, ValueError):
            doc = get_json(f"{self.worker_url}/rotations")
            status.rotations = list(doc.get("rotations", doc) if isinstance(doc, dict) else doc)
        return status

    def incident(self) -> None:
        self.say("\n*** incident: the KEDA PAT held by cft-ptl and sds-ptl is revoked out of band "
                 "(as Azure DevOps does to a leaked PAT) ***\n")
        _post_json(f"{self.ready['control_url']}/ado/sinks/revoke",
                   {"kind": "kubernetes-secret", "cluster": "cft-ptl", "namespace": "azure-devops",
                    "secret": "azure-devops-token", "key": "token"})
        if self.stack is None:
            code = _post_json(f"{self.worker_url}/webhook/alertmanager", synthetic_webhook("keda"),
                              token=self.webhook_token)
            self.say(f"(posted a PatInvalid webhook for token keda to the worker: HTTP {code})")

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(duration: float | None = None, interval: float = 3.0, workdir: str | None = None,
        incident_after: float = 20.0, out: TextIO = sys.stdout) -> int:
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="patrol-demo-"))
        path = Path(workdir)
        demo = Demo(workdir=path, out=out, incident_after=incident_after)
        stack.enter_context(_sigterm_as_interrupt())
        try:
            demo.start()
            started = time.monotonic()
            incident_done = False
            demo.say("watching (Ctrl-C to stop) ...\n")
            while duration is None or time.monotonic() - started < duration:
                if not incident_done and time.monotonic() - started >= incident_after:
                    demo.incident()
                    incident_done = True
                for line in render(demo.look(started)):
                    demo.say(line)
                time.sleep(interval)
        except KeyboardInterrupt:
            demo.say("\nstopping ...")
        finally:
            demo.stop()
    return 0
