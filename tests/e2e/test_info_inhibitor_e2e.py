"""kube-prometheus-stack's InfoInhibitor, loaded beside patrol's rules in a real Prometheus, with
a real Alertmanager delivering to the worker's real webhook server: it never starts a rotation.

Started here: a metrics endpoint that says token keda is due for renewal (PatRenewalDue fires,
nothing warning or critical does, so InfoInhibitor fires too), the worker's HTTP server with its
real planner and journal (the rotation itself is a recorder: what matters is what is started),
and :class:`patrol.stack.MonitoringStack` with ``alerts/tests/third-party`` InfoInhibitor rule
loaded and Alertmanager's route on ``remediation="rotate"`` alone (the naive route; the example
config also matches alert names, so this is the worker's own screen at work).

InfoInhibitor arrives at the worker with ``remediation="rotate"`` and ``token="keda"`` and is
dropped as ``alertname-not-allowed`` (journaled); PatRenewalDue starts exactly one rotation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from patrol.stack import MonitoringStack
from remediation.dispatch import Dispatcher
from remediation.journal import Journal, Outcome
from remediation.metrics import WorkerMetrics
from remediation.planner import Planner, RotationRequest
from remediation.server import WorkerServer
from tests.contract.loop_thread import LoopThread

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not MonitoringStack.available(),
                                 reason="Debian prometheus / prometheus-alertmanager not installed")]

ROOT = Path(__file__).resolve().parents[2]
INFO_INHIBITOR_RULES = ROOT / "alerts" / "tests" / "third-party" / "kube-prometheus-stack-general.rules.yml"
WEBHOOK_TOKEN = "e2e-webhook-token"


def exposition() -> str:
    """keda passed its renewal time a minute ago; it expires in 30 days (nothing else fires)."""
    now = time.time()
    labels = 'token="keda",organization="contoso",source="lifecycle-api"'
    return (
        "# TYPE patrol_pat_renewal_timestamp_seconds gauge\n"
        f"patrol_pat_renewal_timestamp_seconds{{{labels}}} {now - 60:.0f}\n"
        "# TYPE patrol_pat_expiry_timestamp_seconds gauge\n"
        f"patrol_pat_expiry_timestamp_seconds{{{labels}}} {now + 30 * 86400:.0f}\n"
    )


class Recorder:
    """Stands in for the saga: records what was started, and finishes it."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.started: list[RotationRequest] = []
        self._lock = threading.Lock()

    def __call__(self, request: RotationRequest) -> Outcome | None:
        with self._lock:
            self.started.append(request)
        self.journal.finish(request.rotation_id, "succeeded")
        return "succeeded"


@dataclass
class Rig:
    monitoring: MonitoringStack
    journal: Journal
    recorder: Recorder


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    journal = Journal(tmp_path / "journal.sqlite3")
    metrics = WorkerMetrics()
    planner = Planner(["keda"], journal, cooldown=timedelta(minutes=10))   # the default allow-list
    recorder = Recorder(journal)
    dispatcher = Dispatcher(recorder, locks=planner.locks, journal=journal, metrics=metrics)
    server = WorkerServer(planner=planner, dispatcher=dispatcher, journal=journal, metrics=metrics,
                          webhook_token=WEBHOOK_TOKEN)
    token_file = tmp_path / "webhook-token"
    token_file.write_text(WEBHOOK_TOKEN)
    loop = LoopThread()
    stop = asyncio.Event()
    bound: concurrent.futures.Future[int] = concurrent.futures.Future()

    async def serve_worker() -> None:
        async with server.serving("127.0.0.1", 0) as port:
            bound.set_result(port)
            await stop.wait()

    async def metrics_page(_request: web.Request) -> web.Response:
        return web.Response(text=exposition(), content_type="text/plain")

    exporter_app = web.Application()
    exporter_app.router.add_get("/metrics", metrics_page)
    running = asyncio.run_coroutine_threadsafe(serve_worker(), loop.loop)
    monitoring: MonitoringStack | None = None
    try:
        worker_port = bound.result(timeout=30)
        exporter_port = loop.serve(exporter_app)
        monitoring = MonitoringStack(
            directory=tmp_path / "monitoring",
            targets={"patrol-exporter": f"127.0.0.1:{exporter_port}", "patrol-worker": f"127.0.0.1:{worker_port}"},
            webhook_url=f"http://127.0.0.1:{worker_port}/webhook/alertmanager",
            webhook_token_file=str(token_file), alert_for="1s",
            extra_rule_files=(INFO_INHIBITOR_RULES,))
        monitoring.start()
        yield Rig(monitoring, journal, recorder)
    finally:
        if monitoring is not None:
            monitoring.stop()
        loop.loop.call_soon_threadsafe(stop.set)
        running.result(timeout=30)
        loop.close()
        dispatcher.shutdown()
        journal.close()


def wait_until(what: str, check: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def test_info_inhibitor_reaches_the_worker_and_never_starts_a_rotation(rig: Rig) -> None:
    def inhibitors() -> list[dict[str, Any]]:
        # One copy per state of PatRenewalDue: alertstate="pending" first, then "firing".
        return [a for a in rig.monitoring.firing_alerts() if a["labels"]["alertname"] == "InfoInhibitor"
                and a["labels"].get("alertstate") == "firing"]

    try:
        wait_until("InfoInhibitor (copying the firing PatRenewalDue) to fire in Prometheus", inhibitors)
    except AssertionError as exc:
        firing = sorted({(a["labels"]["alertname"], a["labels"].get("severity", ""), a["state"])
                         for a in rig.monitoring.firing_alerts()})
        raise AssertionError(f"{exc}; alerts in Prometheus: {firing}") from None
    [inhibitor] = inhibitors()
    assert inhibitor["labels"]["remediation"] == "rotate" and inhibitor["labels"]["token"] == "keda"

    def dropped() -> bool:
        return any(d.alertname == "InfoInhibitor" for d in rig.journal.decisions())

    wait_until("Alertmanager to deliver InfoInhibitor to the worker", dropped)
    wait_until("PatRenewalDue to start its rotation", lambda: bool(rig.recorder.started))
    time.sleep(3)        # a few more deliveries and evaluations: still nothing more is started
    reasons = {(d.alertname, d.reason) for d in rig.journal.decisions() if d.alertname == "InfoInhibitor"}
    assert reasons == {("InfoInhibitor", "alertname-not-allowed")}
    [request] = rig.recorder.started
    assert request.token == "keda" and request.reason == "alert PatRenewalDue"
