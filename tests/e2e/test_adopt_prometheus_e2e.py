"""PatUnmanaged through a real Prometheus: it fires for the ``unadopted`` sandbox and resolves
once ``patrol adopt`` has run, while the token gains a real expiry — with no rotation.

Started here: the sandbox (scenario ``unadopted``), the exporter (real core clients, real HTTP)
and :class:`patrol.stack.MonitoringStack` evaluating the shipped rules with ``for`` shortened
to 1s (``for`` itself is covered by ``alerts/tests/adopt.test.yml``). No worker: PatUnmanaged
carries no ``remediation`` label, so nothing would be sent to one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import load_config
from core.retry import Backoff
from exporter.assembly import CoreClients, build
from exporter.server import make_app
from patrol.cli import main
from patrol.stack import MonitoringStack
from sandbox.app import SandboxThread
from sandbox.scenarios import scenario
from tests.contract.loop_thread import LoopThread

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not MonitoringStack.available(),
                                 reason="Debian prometheus / prometheus-alertmanager not installed")]

QUICK = Backoff(delays=(0.2,))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, RuntimeError):                 # not up yet
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@pytest.fixture
def monitored(tmp_path: Path) -> Iterator[tuple[SandboxThread, MonitoringStack]]:
    with SandboxThread(str(tmp_path / "sandbox"), scenario("unadopted", pipeline_interval=None)) as sb:
        cfg = load_config(sb.ready["config"])
        exporter = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)
        loop = LoopThread()
        monitoring: MonitoringStack | None = None
        try:
            exporter.start()
            assert exporter.refresher.wait_ready(30), exporter.refresher.pending
            port = loop.serve(make_app(exporter.exposition, lambda: exporter.refresher.pending))
            monitoring = MonitoringStack(
                directory=tmp_path / "monitoring", targets={"patrol-exporter": f"127.0.0.1:{port}"},
                webhook_url="http://127.0.0.1:9/webhook/alertmanager",      # no worker: nothing routes there
                webhook_token_file=sb.ready["webhook_token_file"], alert_for="1s")
            monitoring.start()
            wait_for("the exporter to be scraped", lambda: monitoring.query('up{job="patrol-exporter"} == 1'))
            yield sb, monitoring
        finally:
            if monitoring is not None:
                monitoring.stop()
            loop.close()
            exporter.close()


def unmanaged(monitoring: MonitoringStack) -> set[str]:
    return {a["labels"]["token"] for a in monitoring.firing_alerts() if a["labels"]["alertname"] == "PatUnmanaged"}


def test_pat_unmanaged_fires_until_patrol_adopt_and_the_expiry_appears(
        monitored: tuple[SandboxThread, MonitoringStack], capsys: pytest.CaptureFixture[str]) -> None:
    sb, monitoring = monitored
    wait_for("PatUnmanaged for both tokens", lambda: unmanaged(monitoring) == {"keda", "daily-checks"})
    alert = next(a for a in monitoring.firing_alerts() if a["labels"]["alertname"] == "PatUnmanaged")
    assert alert["labels"]["severity"] == "info" and "remediation" not in alert["labels"]
    assert "patrol adopt" in alert["annotations"]["description"]
    assert monitoring.query('patrol:pat_days_to_expiry{token="keda"}') == []

    for token in ("keda", "daily-checks"):
        assert main(["adopt", token, "--yes", "--config", sb.ready["config"]], env={}) == 0
    capsys.readouterr()

    wait_for("PatUnmanaged to resolve", lambda: unmanaged(monitoring) == set(), timeout=90)
    days = wait_for("keda's expiry", lambda: monitoring.query('patrol:pat_days_to_expiry{token="keda"}'))
    keda_pat = sb.call(lambda: sb.world.ado.pat(sb.world.seeded.keda_pat_id))
    assert float(days[0]["value"][1]) == pytest.approx((keda_pat.valid_to - time.time()) / 86400, abs=0.01)
    source = monitoring.query('patrol_pat_expiry_timestamp_seconds{token="keda"}')
    assert [s["metric"]["source"] for s in source] == ["lifecycle-api"]
    assert [p for p in sb.call(sb.world.ado.pats) if p["displayName"].startswith("patrol-")] == []
