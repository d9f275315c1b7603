"""``patrol demo`` (``make demo``): the whole loop on one machine, told as a timeline.

Guarantees: the logs of every process are kept (``./.demo/<UTC timestamp>/`` unless ``--logs``
names a folder) and the run ends — on Ctrl-C, SIGTERM or ``--duration`` — with a summary that
states the time to recovery, measured from the incident to the rotation that recovered finishing
(the same measure as ``patrol.soak.mttr``). Token values are never printed: the demo reads only
the sources' status documents (see ``patrol/timeline.py``).

It starts, as separate processes, the sandbox (the simulated Azure DevOps, Entra, Key Vault,
two Kubernetes clusters and their KEDA), patrol's exporter and worker against the sandbox's
generated configuration, and — when the Debian packages are installed — a real Prometheus
loading the shipped rules and a real Alertmanager routing ``remediation="rotate"`` alerts to
the worker. It prints the local URLs to open, then looks at the world every second: what changed
is printed as an event with its elapsed time (``patrol/timeline.py`` decides what changed,
``patrol/narrator.py`` prints it), and a one-line status says how things stand in between.

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
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO

from patrol.narrator import ColourChoice, Narrator, use_colour
from patrol.stack import MonitoringStack, free_port, get_json, wait_http
from patrol.timeline import Event, Snapshot, Story, detect


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
        self.say("starting the sandbox: Azure DevOps, Entra, Key Vault, clusters build-a and build-b, KEDA ...")
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

    def snapshot(self, previous: Snapshot | None = None) -> Snapshot:
        """Look at every source once; a source that does not answer is carried from ``previous``."""
        docs: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            docs["metrics"] = _fetch_text(f"{self.exporter_url}/metrics")
        with contextlib.suppress(OSError, ValueError):
            docs["state"] = get_json(f"{self.ready['control_url']}/state")
        if self.stack is not None:
            with contextlib.suppress(OSError, ValueError):
                docs["alerts"] = get_json(f"{self.stack.prometheus_url}/api/v1/alerts")
        with contextlib.suppress(OSError, ValueError):
            docs["rotations"] = get_json(f"{self.worker_url}/rotations")
        return Snapshot.from_documents(time.time(), **docs).carry(previous)

    def urls(self) -> list[tuple[str, str]]:
        """What a person can open while the demo runs, named."""
        out = []
        if self.stack is not None:
            out += [("Prometheus alerts", f"{self.stack.prometheus_url}/alerts"),
                    ("Alertmanager", self.stack.alertmanager_url)]
        out += [("exporter metrics", f"{self.exporter_url}/metrics"),
                ("worker rotations", f"{self.worker_url}/rotations"),
                ("sandbox state", f"{self.ready['control_url']}/state")]
        return out

    def exited(self) -> list[tuple[str, int]]:
        """The demo's processes that are no longer running, with their exit codes."""
        procs = list(self.named.items())
        if self.stack is not None:
            procs += list(zip(("alertmanager", "prometheus"), self.stack.procs, strict=False))
        return [(name, code) for name, proc in procs if (code := proc.poll()) is not None]

    def incident(self) -> float:
        """Revoke the KEDA PAT out of band; returns when (unix seconds)."""
        at = time.time()
        _post_json(f"{self.ready['control_url']}/ado/sinks/revoke",
                   {"kind": "kubernetes-secret", "cluster": "build-a", "namespace": "azure-devops",
                    "secret": "azure-devops-token", "key": "token"})
        if self.stack is None:
            code = _post_json(f"{self.worker_url}/webhook/alertmanager", synthetic_webhook("keda"),
                              token=self.webhook_token)
            self.say(f"(no Prometheus/Alertmanager: posted a PatInvalid webhook for token keda to the "
                     f"worker: HTTP {code})")
        return at

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


INCIDENT = ("incident: the KEDA PAT held by build-a and build-b is revoked out of band "
            "(as Azure DevOps does to a leaked PAT)")


def default_logs(now: float) -> Path:
    """``./.demo/<UTC timestamp>``: kept after the demo, next to where it was started."""
    return Path(".demo") / time.strftime("%Y%m%d-%H%M%SZ", time.gmtime(now))


def run(*, duration: float | None = None, interval: float = 1.0, workdir: str | None = None,
        incident_after: float = 20.0, out: TextIO = sys.stdout, colour: ColourChoice = "auto",
        status_every: float = 15.0, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    path = (Path(workdir) if workdir else default_logs(time.time())).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"patrol demo: cannot create the logs folder {path}: {exc.strerror}; pass --logs DIR "
              f"with a writable folder", file=sys.stderr)
        return 2
    isatty = getattr(out, "isatty", None)
    narrator = Narrator(out, started_at=time.time(), colour=use_colour(out, env, colour),
                        live=bool(isatty and isatty()), status_every=status_every,
                        width=shutil.get_terminal_size().columns)
    demo = Demo(workdir=path, out=out, incident_after=incident_after)
    story = Story(started_at=time.time())
    code = 0
    with _sigterm_as_interrupt():
        try:
            demo.start()
            narrator.started_at = story.started_at = time.time()
            _urls(demo, narrator, path, incident_after)
            code = _watch(demo, narrator, story, duration=duration, interval=interval,
                          incident_after=incident_after)
        except KeyboardInterrupt:
            narrator.close()
            narrator.line("stopping ...")
        except (RuntimeError, TimeoutError, OSError) as exc:
            narrator.close()
            print(f"patrol demo: {exc}; the logs are in {path}", file=sys.stderr)
            code = 1
        finally:
            narrator.close()
            if story.last is not None:
                narrator.line()
                for i, text in enumerate(story.summary(str(path), time.time())):
                    narrator.line(text, "title" if i < 2 else "")
            demo.stop()
    return code


def _urls(demo: Demo, narrator: Narrator, logs: Path, incident_after: float) -> None:
    narrator.line()
    narrator.line("open while it runs:", "title")
    for name, url in demo.urls():
        narrator.line(f"  {name:<18} {url}")
    narrator.line(f"  {'logs':<18} {logs}")
    narrator.line()
    narrator.line(f"watching (Ctrl-C to stop); the incident is played at +{incident_after:.0f}s", "title")


def _watch(demo: Demo, narrator: Narrator, story: Story, *, duration: float | None, interval: float,
           incident_after: float) -> int:
    """Look, tell what changed, repeat; 1 if one of the demo's processes died (the story would stall)."""
    previous: Snapshot | None = None
    while duration is None or time.time() - story.started_at < duration:
        for name, code in demo.exited():
            narrator.line(f"the {name} exited with code {code} (see its log in {demo.workdir}); stopping", "bad")
            return 1
        if story.incident_at is None and time.time() - story.started_at >= incident_after:
            event = Event(demo.incident(), "incident", INCIDENT, "bad")
            narrator.event(event)
            story.add([event])
        snap = demo.snapshot(previous)
        events = detect(previous, snap)
        for event in events:
            narrator.event(event)
        story.add(events)
        story.last = previous = snap
        narrator.status(snap, snap.at)
        time.sleep(interval)
    return 0
