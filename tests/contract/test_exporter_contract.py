"""The exporter with the real core clients against the running sandbox (default scenario).

Covers: the golden exposition of the default scenario (names, types, label sets; values and
ports normalised), ``promtool check metrics`` on a real HTTP scrape, throttling that slows a
source without failing it, bad input (an unreachable organization, cluster or vault is its own
source down, logged once per change of state, the others keep working), a PAT revoked out of
band (validity 0, KEDA auth failures counted), and configurations rejected at start.

Regenerate the golden file after an intended change with
``PATROL_UPDATE_GOLDEN=1 pytest tests/contract/test_exporter_contract.py -k golden``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.config import Config, ConfigError, load_config
from core.retry import Backoff
from exporter.assembly import CoreClients, Exporter, build
from exporter.cli import run as run_exporter
from exporter.server import make_app, start
from sandbox.app import SandboxThread
from sandbox.http import Fault

pytestmark = pytest.mark.contract

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "exporter" / "default.golden"


QUICK = Backoff(delays=(0.05,))


def make_exporter(cfg: Config) -> Exporter:
    return build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)


@pytest.fixture(scope="module")
def cfg(sandbox: SandboxThread) -> Config:
    return load_config(sandbox.ready["config"])


@pytest.fixture
def exporter(cfg: Config) -> Iterator[Exporter]:
    made = make_exporter(cfg)
    yield made
    made.close()


def normalised(text: str) -> str:
    """Metric names, types and label sets; values dropped, loopback ports, run ids and the build
    (version, revision, Python: they change with every commit) masked."""
    lines = []
    for family in text_string_to_metric_families(text):
        lines.append(f"# TYPE {family.name} {family.type}")
        samples = set()
        for sample in family.samples:
            masked = family.name == "patrol_build_info"
            labels = ",".join(f'{k}="{"*" if masked else v}"' for k, v in sorted(sample.labels.items()))
            samples.add(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", f"{sample.name}{{{labels}}}"))
        lines.extend(sorted(samples))
    return "\n".join(lines) + "\n"


def test_golden_exposition_of_the_default_scenario(exporter: Exporter) -> None:
    exporter.refresher.refresh_once()
    got = normalised(exporter.exposition.body().decode())
    if os.environ.get("PATROL_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text()


def scrape(exporter: Exporter, path: str = "/metrics") -> tuple[int, bytes]:
    async def fetch() -> tuple[int, bytes]:
        runner, port = await start(make_app(exporter.exposition, lambda: exporter.refresher.pending),
                                   "127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
                return r.status, await r.read()
        finally:
            await runner.cleanup()

    return asyncio.run(fetch())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) not installed")
def test_promtool_accepts_a_real_scrape(exporter: Exporter) -> None:
    exporter.start()
    assert exporter.refresher.wait_ready(30), exporter.refresher.pending
    status, body = scrape(exporter)
    assert status == 200 and b"patrol_pat_valid{" in body
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert scrape(exporter, "/readyz")[0] == 200


def value(exporter: Exporter, metric: str, **labels: str) -> float | None:
    return exporter.exposition.registry.get_sample_value(metric, labels)


def with_fault(sb: SandboxThread, fault: Fault) -> Callable[[], None]:
    fault_id = sb.call(sb.world.faults.add, fault)

    def remove() -> None:
        with contextlib.suppress(KeyError):               # a counted fault removes itself
            sb.call(sb.world.faults.remove, fault_id)

    return remove


def test_throttling_slows_a_source_down_without_failing_it(sandbox: SandboxThread, exporter: Exporter) -> None:
    source = exporter.source(f"pat-lifecycle/{sandbox.params.org}")
    source.refresh()
    remove = with_fault(sandbox, Fault(kind="throttle", service="ado", path_regex="(?i)tokens/pats",
                                       retry_after=1.0, remaining=1))
    try:
        started = time.monotonic()
        outcome = source.refresh()
        assert outcome.ok and source.health.up
        assert time.monotonic() - started >= 0.9                  # waited Retry-After, then succeeded
    finally:
        remove()


def unreachable_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_org_cluster_and_vault_are_their_own_sources(
        sandbox: SandboxThread, cfg: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    org = sandbox.params.org
    dead = f"http://127.0.0.1:{unreachable_port()}"
    kubeconfig = yaml.safe_load(Path(sandbox.ready["kubeconfig"]).read_text())
    for entry in kubeconfig["clusters"]:
        if entry["name"] == "build-a":
            entry["cluster"]["server"] = dead
    broken_kubeconfig = tmp_path / "kubeconfig"
    broken_kubeconfig.write_text(yaml.safe_dump(kubeconfig))
    broken = dataclasses.replace(
        cfg,
        organizations=tuple(dataclasses.replace(o, vssps_url=f"{dead}/vssps/{org}") for o in cfg.organizations),
        clusters=tuple(dataclasses.replace(c, kubeconfig=str(broken_kubeconfig)) for c in cfg.clusters))
    made = make_exporter(broken)
    caplog.set_level(logging.INFO, logger="patrol.exporter")
    made.refresher.refresh_once()                     # the vault still answers once...
    remove = with_fault(sandbox, Fault(kind="status", status=503, service="keyvault",
                                       path_regex="^/secrets/azure-devops-token"))
    try:                                              # ...then fails; the last reading is kept
        for _ in range(3):
            made.refresher.refresh_once()
        vault = next(s.name for s in made.sources if s.name.startswith("keyvault/"))
        down = {f"pat-lifecycle/{org}", "kubernetes/build-a", "keda/build-a", vault}
        for source in made.sources:
            assert source.health.up == (source.name not in down), (source.name, source.health)
        assert value(made, "patrol_pat_valid", token="keda",
                     sink="kubernetes-secret/build-b/azure-devops/azure-devops-token/token") == 1.0
        assert value(made, "patrol_keda_scaler_ready", cluster="build-b", namespace="azure-devops",
                     kind="ScaledJob", name="azure-devops-agent") is not None
        for name in down:
            logged = [r for r in caplog.records if r.getMessage().startswith(f"source {name} is down")]
            assert len(logged) == 1, (name, [r.getMessage() for r in caplog.records])
        assert all("Traceback" not in r.getMessage() for r in caplog.records)
    finally:
        remove()
        made.close()


def run_args(config_path: str) -> argparse.Namespace:
    return argparse.Namespace(config=config_path, listen="127.0.0.1:0", once=True, log_format="text",
                              log_level="INFO")


@pytest.mark.parametrize(("change", "message"), [
    (lambda doc: doc["tokens"][0].update(sinks=[]), "sinks"),
    (lambda doc: doc["tokens"][0]["consumers"][0].update(cluster="nowhere"), "nowhere"),
])
def test_a_bad_configuration_is_rejected_at_start(
        sandbox: SandboxThread, tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str) -> None:
    doc = yaml.safe_load(Path(sandbox.ready["config"]).read_text())
    change(doc)
    path = tmp_path / "patrol.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        run_exporter(run_args(str(path)), {})
    assert message in str(err.value) and str(path) in str(err.value)


def test_the_command_line_prints_one_refresh_and_rejects_bad_configs(sandbox: SandboxThread, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "exporter", "--config", sandbox.ready["config"], "--once"],
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    families = {f.name for f in text_string_to_metric_families(done.stdout.decode())}
    assert {"patrol_pat_valid", "patrol_source_up", "patrol_keda_scaler_ready"} <= families

    doc = yaml.safe_load(Path(sandbox.ready["config"]).read_text())
    doc["tokens"][0]["sinks"] = []
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    refused = subprocess.run([sys.executable, "-m", "exporter", "--config", str(bad), "--once"],
                             capture_output=True, timeout=120, check=False)
    assert refused.returncode == 2
    assert b"configuration error" in refused.stderr and b"sinks" in refused.stderr
    assert refused.stdout == b""


def test_a_pat_revoked_out_of_band_shows_as_invalid_and_keda_auth_failures(
        sandbox: SandboxThread, exporter: Exporter) -> None:
    labels = {"cluster": "build-a", "namespace": "azure-devops", "kind": "ScaledJob", "name": "azure-devops-agent"}
    sink = "kubernetes-secret/build-a/azure-devops/azure-devops-token/token"
    exporter.refresher.refresh_once()
    assert value(exporter, "patrol_pat_valid", token="keda", sink=sink) == 1.0
    before = value(exporter, "patrol_keda_scaler_auth_failures_total", **labels)
    assert before is not None
    assert value(exporter, "patrol_keda_scaler_auth_failing", token="keda", **labels) == 0.0

    keda_pat = sandbox.world.seeded.keda_pat_id
    response = httpx.post(f"{sandbox.ready['control_url']}/ado/pats/{keda_pat}/revoke", timeout=10)
    assert response.status_code == 200, response.text

    deadline = time.monotonic() + 30               # probes are cached for < validity_interval (5s)
    while True:
        time.sleep(1.0)
        exporter.refresher.refresh_once()
        failures = value(exporter, "patrol_keda_scaler_auth_failures_total", **labels) or 0.0
        failing = value(exporter, "patrol_keda_scaler_auth_failing", token="keda", **labels)
        valid = value(exporter, "patrol_pat_valid", token="keda", sink=sink)
        if (failures > before and failing == 1.0 and valid == 0.0) or time.monotonic() > deadline:
            break
    assert value(exporter, "patrol_pat_valid", token="keda", sink=sink) == 0.0
    assert failures > before
    assert failing == 1.0
    assert value(exporter, "patrol_pat_valid", token="daily-checks",
                 sink=next(s.id for t in exporter_tokens(exporter) for s in t.sinks if s.kind == "keyvault")) == 1.0


def exporter_tokens(exporter: Exporter) -> list[Any]:
    validity = next(s for s in exporter.sources if s.name.startswith("validity/"))
    return list(validity.tokens)  # type: ignore[attr-defined]
