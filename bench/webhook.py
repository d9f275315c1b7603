"""Benchmark: authenticated Alertmanager webhook deliveries against a real worker server.

The worker's HTTP server (remediation.server.WorkerServer with its real planner, journal and
dispatcher) runs in a child process on 127.0.0.1, so client and server do not share a GIL; the
rotation itself is replaced by a stand-in that only journals success, because this measures the
receiver, not the saga (bench/rotation.py measures that against the sandbox).

Phases:
1. duplicates: the same firing alert delivered N times with C in flight (Alertmanager repeats
   firing groups): throughput and p50/p99 latency; exactly one rotation must start;
2. new episodes: N distinct alerts for a token whose rotation is running (one journal write each):
   the slow path's throughput and latency.

Targets (issue 4): >= 1,000 deliveries/s and p99 <= 20 ms on 2 cores.

    .venv/bin/python bench/webhook.py [--requests 5000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import host

TOKEN = "bench-webhook-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def payload(fp: str, starts: str = "2026-08-01T10:00:00Z", token: str = "keda") -> bytes:
    doc: dict[str, Any] = {
        "version": "4", "groupKey": '{}:{alertname="PatRenewalDue"}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "patrol",
        "groupLabels": {"alertname": "PatRenewalDue"},
        "commonLabels": {"alertname": "PatRenewalDue", "token": token, "remediation": "rotate"},
        "commonAnnotations": {"summary": "PAT keda is due for renewal"},
        "externalURL": "http://alertmanager:9093", "notification_reason": "repeat interval elapsed",
        "routeLabels": {},
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "PatRenewalDue", "token": token, "remediation": "rotate",
                       "severity": "warning", "organization": "contoso"},
            "annotations": {"summary": "PAT keda is due for renewal",
                            "runbook_url": "https://example.invalid/runbook#patrenewaldue"},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=...", "fingerprint": fp,
        }],
    }
    return json.dumps(doc).encode()


# -- the worker side (child process) --------------------------------------------------------------

def serve(state_dir: str) -> None:
    from aiohttp import web

    from remediation.dispatch import Dispatcher
    from remediation.journal import Journal, Outcome
    from remediation.metrics import WorkerMetrics
    from remediation.planner import Planner, RotationRequest
    from remediation.server import WorkerServer

    journal = Journal.in_state_dir(state_dir)
    metrics = WorkerMetrics()
    planner = Planner(["keda", "warm-up"], journal, cooldown=timedelta(minutes=10))
    release = threading.Event()

    def work(request: RotationRequest) -> Outcome | None:
        release.wait(600)                 # stays "running" for the whole benchmark
        journal.finish(request.rotation_id, "succeeded")
        return "succeeded"

    dispatcher = Dispatcher(work, locks=planner.locks, journal=journal, metrics=metrics)
    server = WorkerServer(planner=planner, dispatcher=dispatcher, journal=journal, metrics=metrics,
                          webhook_token=TOKEN)

    async def main() -> None:
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(json.dumps({"port": runner.addresses[0][1], "pid": os.getpid()}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        release.set()
        dispatcher.shutdown()
        journal.close()


# -- the client side ------------------------------------------------------------------------------

async def load(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                async with session.post(url, data=io.BytesIO(body), headers=AUTH) as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - start)
                codes[resp.status] = codes.get(resp.status, 0) + 1

        begin = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - begin
    return elapsed, latencies, codes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, elapsed: float, latencies: list[float], codes: dict[int, int]) -> dict[str, float]:
    rate = len(latencies) / elapsed
    p50 = percentile(latencies, 0.50) * 1000
    p99 = percentile(latencies, 0.99) * 1000
    print(f"{name:<34} {len(latencies):>6} req  {rate:>8.0f} req/s  p50 {p50:6.2f} ms  "
          f"p99 {p99:6.2f} ms  codes {codes}")
    return {"rate": rate, "p50_ms": p50, "p99_ms": p99}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", metavar="STATE_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    from remediation.journal import Journal

    with tempfile.TemporaryDirectory(prefix="patrol-bench-") as state_dir:
        child = subprocess.Popen([sys.executable, __file__, "--serve", state_dir],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        info = json.loads(child.stdout.readline())
        url = f"http://127.0.0.1:{info['port']}/webhook/alertmanager"
        try:
            print(f"machine: {host.describe()}")
            print(f"receiver pid {info['pid']} on {url}; concurrency {args.concurrency}; client and "
                  "receiver share the machine's CPUs")
            asyncio.run(load(url, [payload("warm", token="warm-up")] * 500, args.concurrency))
            dup = asyncio.run(load(url, [payload("dup")] * 1000, args.concurrency))
            report("1,000 duplicate deliveries", *dup)
            with Journal.in_state_dir(state_dir) as journal:
                dup_rotations = journal.count("keda")
            print(f"rotations started by the 1,000 duplicates: {dup_rotations}")
            figures = report("duplicates (throughput)",
                             *asyncio.run(load(url, [payload("dup")] * args.requests, args.concurrency)))
            bodies = [payload(f"new-{i}") for i in range(min(args.requests, 2000))]
            report("new episodes, token running", *asyncio.run(load(url, bodies, args.concurrency)))
            print(f"receiver process RSS {rss_mb(info['pid']):.1f} MB (WorkerServer + planner + journal with a "
                  "stand-in saga; the real worker's RSS: bench/rotation.py)")
        finally:
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait(30)
        ok = dup_rotations == 1 and figures["rate"] >= 1000 and figures["p99_ms"] <= 20
        print(f"against the targets: {figures['rate']:.0f} req/s = {figures['rate'] / 1000:.1f}x the 1,000/s floor; "
              f"p99 {figures['p99_ms']:.2f} ms = {figures['p99_ms'] / 20:.2f}x the 20 ms ceiling; "
              f"rotations from 1,000 duplicates: {dup_rotations}")
        print("targets (>= 1000 req/s, p99 <= 20 ms, one rotation): " + ("met" if ok else "NOT met"))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
