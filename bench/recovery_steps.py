"""Benchmark: where the time to recovery goes, step by step (bench/mttr.py times the whole loop).

The setting of ``tests/e2e/test_prometheus_e2e.py``: the sandbox (KEDA polls every 2 s), the
exporter and the worker with their real clients, and the Debian Prometheus and Alertmanager
scraping/evaluating every second. Each round revokes the KEDA token's current PAT through the
sandbox's control API, then waits until the worker's rotation has succeeded (its confirm step
saw KEDA served by the new PAT) and the exporter reports every sink valid again. Printed per
round and as medians, with where the time went:

- detect: revocation → the webhook's request reached the worker (exporter refresh, scrape,
  rule evaluation with ``for: 1s``, Alertmanager ``group_wait``);
- each saga step, from the journal;
- exporter: rotation finished → ``min(patrol_pat_valid{token="keda"}) == 1`` in Prometheus.

    PYTHONPATH=. .venv/bin/python bench/recovery_steps.py [--rounds 5]

Target (issue 7 §2): median revocation → recovery verified <= 15 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from core.config import load_config
from core.retry import Backoff
from core.secret import Secret
from exporter.assembly import CoreClients, build
from exporter.server import make_app
from patrol.stack import MonitoringStack
from remediation.journal import STEPS
from remediation.saga import SagaSettings
from remediation.service import WorkerService, WorkerThread
from remediation.world import CoreWorld
from sandbox.app import SandboxThread
from tests.contract.loop_thread import LoopThread

QUICK = Backoff(delays=(0.2,))
# As the e2e test runs the worker; SagaSettings.from_config gives the same verify pacing for a
# 30 s deadline.
SAGA = SagaSettings(verify_deadline=30, verify_interval=0.5, verify_settle=2.5, drain_interval=0.5,
                    secret_settle=1.0, api_backoff=Backoff(delays=(0.2, 0.5, 1.0)),
                    deliver_backoff=Backoff(delays=(0.2, 0.5, 1.0)))


def wait(what: str, check: Any, timeout: float = 90.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="patrol-mttr-"))
    rows: list[dict[str, float]] = []
    with SandboxThread(str(tmp / "sandbox"), "default") as sb:
        cfg = load_config(sb.ready["config"])
        cfg = replace(cfg, worker=replace(cfg.worker, cooldown=timedelta(0)))   # one rotation per round
        token_file = sb.ready["webhook_token_file"]
        exporter = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)
        world = CoreWorld(cfg, env={})
        service = WorkerService(cfg, world, state_dir=tmp / "worker", settings=SAGA,
                                webhook_token=Secret(Path(token_file).read_text().strip()))
        worker = WorkerThread(service)
        loop = LoopThread()
        monitoring: MonitoringStack | None = None
        try:
            exporter.start()
            assert exporter.refresher.wait_ready(30)
            port = loop.serve(make_app(exporter.exposition, lambda: exporter.refresher.pending))
            worker.start()
            monitoring = MonitoringStack(
                directory=tmp / "monitoring",
                targets={"patrol-exporter": f"127.0.0.1:{port}", "patrol-worker": f"127.0.0.1:{worker.port}"},
                webhook_url=f"{worker.url}/webhook/alertmanager", webhook_token_file=token_file, alert_for="1s")
            monitoring.start()
            wait("both targets up", lambda: len(monitoring.query("up == 1")) == 2)
            wait("rules evaluated", lambda: monitoring.query("patrol:pat_days_to_expiry"))
            wait("every KEDA sink valid", lambda: monitoring.query('min(patrol_pat_valid{token="keda"}) == 1'))
            for n in range(args.rounds):
                done_before = {r.id for r in service.journal.recent("keda", limit=100)}
                current = sb.call(lambda: sb.world.ado.pat_id_for_value(
                    sb.world.clusters["build-a"].secret_value("azure-devops", "azure-devops-token", "token")))
                revoked = time.time()
                response = httpx.post(f"{sb.ready['control_url']}/ado/pats/{current}/revoke", timeout=10)
                assert response.status_code == 200, response.text

                def finished(done_before: set[str] = done_before) -> Any:
                    new = [r for r in service.journal.recent("keda", limit=100)
                           if r.id not in done_before and r.outcome is not None]
                    return new[0] if new else None

                record = wait("the worker's rotation", finished)
                if record.outcome != "succeeded":
                    raise SystemExit(f"round {n}: rotation {record.id} {record.outcome}: {record.error}")
                wait("every KEDA sink valid again",
                     lambda: monitoring.query('min(patrol_pat_valid{token="keda"}) == 1'), every=0.05)
                valid = time.time()
                assert record.finished_at is not None
                row = {"detect": record.received_at - revoked, "rotation": record.finished_at - record.received_at,
                       "to_rotated": record.finished_at - revoked, "to_valid": valid - revoked}
                for step in record.steps:
                    if step.started_at is not None and step.finished_at is not None:
                        row[step.name] = step.finished_at - step.started_at
                rows.append(row)
                print(f"round {n + 1}: revoked -> rotation verified {row['to_rotated']:5.1f}s "
                      f"(detect {row['detect']:4.1f}s, rotation {row['rotation']:4.1f}s), "
                      f"-> exporter valid {row['to_valid']:5.1f}s", flush=True)
                time.sleep(3)                         # let the alerts resolve before the next round
        finally:
            if monitoring is not None:
                monitoring.stop()
            worker.stop()
            world.close()
            loop.close()
            exporter.close()
    keys = ["to_rotated", "to_valid", "detect", "rotation", *[s for s in STEPS if s in rows[0]]]
    print(f"\nmedian of {len(rows)} round(s):")
    for key in keys:
        print(f"  {key:<11} {statistics.median(r[key] for r in rows if key in r):6.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
