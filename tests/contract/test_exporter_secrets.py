"""No token value leaves the exporter: not in its logs, its exposition or its HTTP answers.

The exporter reads every sink's token to probe it, so it holds real PAT values all the time. This
drives it through the paths most likely to leak one — normal refreshes, a PAT revoked out of band
(401s from ADO), a failing ADO (5xx with error text) — at DEBUG level, then scans everything it
produced for every secret the sandbox knows: the PATs in the sinks, the bot's password and the
client secret patrol uses for Key Vault.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from core.config import load_config
from core.retry import Backoff
from exporter.assembly import CoreClients, build
from exporter.server import make_app, start
from sandbox.app import SandboxThread
from sandbox.http import Fault

pytestmark = pytest.mark.contract

QUICK = Backoff(delays=(0.05,))


def _sink_values(sandbox: SandboxThread) -> set[str]:
    values = {sandbox.call(sandbox.world.clusters[name].secret_value, "azure-devops", "azure-devops-token", "token")
              for name in ("build-a", "build-b")}
    values.add(sandbox.call(sandbox.world.kv.latest_value, "azure-devops-token"))
    return {v for v in values if v}


async def _fetch_all(port: int) -> list[str]:
    async with aiohttp.ClientSession() as session:
        texts = []
        for path in ("/metrics", "/healthz", "/readyz", "/nope"):
            async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                texts.append(await resp.text())
        return texts


def test_no_secret_in_exporter_logs_exposition_or_responses(sandbox: SandboxThread,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = load_config(sandbox.ready["config"])
    secrets = _sink_values(sandbox)
    secrets.add(sandbox.ready["bot"]["password"])
    secrets.add(Path(sandbox.ready["patrol_client"]["client_secret_file"]).read_text().strip())
    assert len(secrets) >= 4

    exporter = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)
    captured: list[str] = []
    try:
        exporter.refresher.refresh_once()
        sandbox.call(sandbox.world.ado.revoke_pat, sandbox.world.seeded.keda_pat_id)
        fault_id = sandbox.call(sandbox.world.faults.add, Fault(kind="status", service="ado", status=500,
                                                                path_regex=".*distributedtask.*"))
        exporter.refresher.refresh_once()
        sandbox.call(sandbox.world.faults.remove, fault_id)
        exporter.refresher.refresh_once()
        captured.append(exporter.exposition.body().decode())

        async def serve_and_fetch() -> list[str]:
            runner, port = await start(make_app(exporter.exposition, exporter.refresher.pending), "127.0.0.1", 0)
            try:
                return await _fetch_all(port)
            finally:
                await runner.cleanup()

        captured += asyncio.run(serve_and_fetch())
    finally:
        exporter.close()

    records = [r for r in caplog.records if r.name.startswith("patrol")]
    assert any(r.levelno >= logging.WARNING for r in records), "the failure paths logged nothing"
    for record in records:
        captured.append(record.getMessage())
        captured.append(json.dumps({k: str(v) for k, v in vars(record).items()}))
    blob = "\n".join(captured)
    assert "patrol_pat_valid" in blob
    for value in secrets:
        assert value not in blob
