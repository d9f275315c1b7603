"""Assembly of the whole simulated world, and the two ways to run it.

Everything patrol talks to in production (ADO, Entra, Key Vault, one Kubernetes API per cluster)
plus KEDA and the agents is started here, in ONE asyncio loop, each server on 127.0.0.1 port 0.
Entra and Key Vault are served over TLS with a throw-away CA, because their real clients refuse
anything else. Once every endpoint answers a real HTTP request, the sandbox writes what an
outsider needs to drive it with unpatched clients: a kubeconfig, a normal patrol configuration
(docs/configuration.md) pointing at the sandbox, the secrets patrol reads from files, and the ready
JSON (docs/sandbox.md).

:func:`run` is the command line's entry (``python -m sandbox`` / ``patrol sandbox``);
:class:`SandboxThread` runs the same loop in a daemon thread for tests.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import secrets
import shutil
import signal
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from sandbox.actors import Actors, AgentTiming
from sandbox.ado import AdoWorld
from sandbox.control import Control
from sandbox.entra import Entra
from sandbox.http import FaultTable, RequestLog, middlewares
from sandbox.keyvault import KeyVaultStore
from sandbox.kube import ClusterState
from sandbox.pipeline import PipelineSpec
from sandbox.readers import ReaderSpec
from sandbox.scenarios import DAILY_CHECKS_SCOPES, KEDA_SCOPES, ScenarioParams, Seeded, scenario, seed
from sandbox.tls import Tls, make_tls

log = logging.getLogger("sandbox.app")

READY_KEYS = ("config", "organization_url", "vssps_url", "vsrm_url", "keyvault_url", "ca_bundle",
              "entra_authority", "control_url", "clusters", "bot", "kubeconfig", "scenario")


@dataclass
class World:
    """Handles on the running world's state (mutate them only on the sandbox loop)."""

    ado: AdoWorld
    entra: Entra
    kv: KeyVaultStore
    clusters: dict[str, ClusterState]
    actors: Actors | None
    faults: FaultTable
    log: RequestLog
    control: Control
    seeded: Seeded
    params: ScenarioParams
    tls: Tls


@dataclass
class Endpoints:
    """Where each running server listens, and what it takes to talk to it."""

    tenant_id: str
    urls: dict[str, str] = field(default_factory=dict)            # entra, keyvault, ado, control
    clusters: dict[str, str] = field(default_factory=dict)        # cluster name -> API server URL
    cluster_tokens: dict[str, str] = field(default_factory=dict)  # cluster name -> bearer token


async def _serve(app: web.Application,
                 ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = int(runner.addresses[0][1])
    return runner, port


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_json_atomically(path: str, data: dict[str, Any]) -> None:
    """Write to a temp file in the same directory, then rename: readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ready-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Sandbox:
    """The simulated world: start() brings every server and actor up, stop() takes them down."""

    def __init__(self, directory: str, params: ScenarioParams | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = os.path.abspath(directory)
        self.params = params or scenario("default")
        self.clock = clock
        self.ready: dict[str, Any] = {}
        self._runners: list[web.AppRunner] = []
        self._world: World | None = None

    @property
    def world(self) -> World:
        if self._world is None:
            raise RuntimeError("the sandbox is not started")
        return self._world

    async def start(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        log.info("sandbox ready", extra={"seconds": round(time.monotonic() - started, 3),
                                         "directory": self.directory, "scenario": self.params.name})
        return self.ready

    async def _start(self) -> None:
        params, clock = self.params, self.clock
        os.makedirs(self.directory, exist_ok=True)
        os.makedirs(os.path.join(self.directory, "state"), exist_ok=True)
        tls = make_tls(self.directory)
        request_log, faults = RequestLog(), FaultTable()
        tenant_id = str(uuid.uuid4())
        ends = Endpoints(tenant_id)
        urls = ends.urls

        entra = Entra(tenant_id, clock=clock, token_lifetime=params.entra_token_lifetime)
        runner, port = await _serve(entra.app(middlewares("entra", request_log, faults)), tls.server_context)
        self._runners.append(runner)
        urls["entra"] = entra.authority_url = f"https://127.0.0.1:{port}"

        kv = KeyVaultStore(entra, base_url_getter=lambda: urls["keyvault"], clock=clock)
        runner, port = await _serve(kv.app(middlewares("keyvault", request_log, faults)), tls.server_context)
        self._runners.append(runner)
        urls["keyvault"] = f"https://127.0.0.1:{port}"

        ado = AdoWorld(params.org, entra, clock=clock, base_url_getter=lambda: urls["ado"],
                       global_pat_cutoff=params.global_pat_cutoff,
                       disabled_user_revoke_delay=params.disabled_user_revoke_delay)
        entra.on_user_enabled(ado.user_enabled_changed)
        runner, port = await _serve(ado.app(middlewares("ado", request_log, faults)))
        self._runners.append(runner)
        urls["ado"] = f"http://127.0.0.1:{port}"

        clusters: dict[str, ClusterState] = {}
        cluster_urls, cluster_tokens = ends.clusters, ends.cluster_tokens
        for spec in params.clusters:
            if spec.name in clusters:
                continue
            cluster_tokens[spec.name] = secrets.token_urlsafe(32)
            clusters[spec.name] = ClusterState(spec.name, cluster_tokens[spec.name], clock=clock,
                                               compaction_interval=params.compaction_interval)
            # kube.ClusterState.app builds the shared middlewares itself (log=, faults=).
            runner, port = await _serve(clusters[spec.name].app(log=request_log, faults=faults))
            self._runners.append(runner)
            clusters[spec.name].port = port
            cluster_urls[spec.name] = f"http://127.0.0.1:{port}"

        organization_url = f"{urls['ado']}/{params.org}"
        seeded = seed(params, ado=ado, entra=entra, kv=kv, clusters=dict(clusters),
                      organization_url=organization_url)

        control = Control(ado=ado, entra=entra, kv=kv, clusters=clusters, faults=faults, log=request_log,
                          bot_username=params.bot_username, kube_state=lambda: _kube_state(clusters))
        runner, port = await _serve(control.app())
        self._runners.append(runner)
        urls["control"] = f"http://127.0.0.1:{port}"

        self._world = World(ado=ado, entra=entra, kv=kv, clusters=clusters, actors=None, faults=faults,
                            log=request_log, control=control, seeded=seeded, params=params, tls=tls)

        pipeline = None
        if params.pipeline_interval is not None:
            pipeline = PipelineSpec(project=params.project, definition=params.definition,
                                    interval=params.pipeline_interval, keyvault_secret="azure-devops-token",
                                    duration=params.pipeline_duration)
        reader = None
        if params.keyvault_reader_refresh is not None:
            reader = ReaderSpec(refresh=params.keyvault_reader_refresh, secret="azure-devops-token",
                                call_interval=params.keyvault_reader_call_interval)
        actors = Actors(ado=ado, kv=kv, clusters=clusters, ado_base_url=organization_url,
                        keda_polling_interval=float(params.keda_polling_interval),
                        job_interval=params.job_interval, pipeline=pipeline, keyvault_reader=reader,
                        clock=clock,
                        agent_timing=AgentTiming(run_time=params.build_duration,
                                                 unregister_retry=params.agent_unregister_retry),
                        keda_version=params.keda_version, secret_cache_lag=params.secret_cache_lag,
                        event_series_flush=params.event_series_flush,
                        event_series_idle=params.event_series_idle)
        await actors.start()
        self._world.actors = actors
        control.actors = actors

        await self._probe(tls, ends)
        self.ready = self._write_files(tls, ends, seeded)

    async def _probe(self, tls: Tls, ends: Endpoints) -> None:
        """Wait until every endpoint answers a real HTTP request (any status is an answer)."""
        urls = ends.urls
        targets: list[tuple[str, dict[str, str]]] = [
            (f"{urls['entra']}/{ends.tenant_id}/v2.0/.well-known/openid-configuration", {}),
            (f"{urls['keyvault']}/secrets?api-version=7.4", {}),
            (f"{urls['ado']}/{self.params.org}/_apis/connectionData", {"X-TFS-FedAuthRedirect": "Suppress"}),
            (f"{urls['control']}/", {}),
            *((f"{url}/version", {"Authorization": f"Bearer {ends.cluster_tokens[name]}"})
              for name, url in ends.clusters.items()),
        ]
        deadline = time.monotonic() + 10
        timeout = aiohttp.ClientTimeout(total=2)
        headers = {"User-Agent": "patrol-sandbox-probe"}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            for url, extra in targets:
                while True:
                    try:
                        async with session.get(url, headers=extra, ssl=tls.client_context()) as resp:
                            await resp.read()
                            break
                    except (aiohttp.ClientError, TimeoutError):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"sandbox endpoint does not answer: {url}") from None
                        await asyncio.sleep(0.05)

    def _write_files(self, tls: Tls, ends: Endpoints, seeded: Seeded) -> dict[str, Any]:
        d, p = self.directory, self.params
        urls, cluster_urls, cluster_tokens = ends.urls, ends.clusters, ends.cluster_tokens
        tenant_id = ends.tenant_id
        kubeconfig = os.path.join(d, "kubeconfig")
        first = next(iter(cluster_urls))
        kube_doc = {
            "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": first,
            "clusters": [{"name": n, "cluster": {"server": u}} for n, u in cluster_urls.items()],
            "users": [{"name": n, "user": {"token": cluster_tokens[n]}} for n in cluster_urls],
            "contexts": [{"name": n, "context": {"cluster": n, "user": n, "namespace": "azure-devops"}}
                         for n in cluster_urls],
        }
        _write_private(kubeconfig, yaml.safe_dump(kube_doc, sort_keys=False))
        secret_file = os.path.join(d, "patrol-client-secret")
        _write_private(secret_file, seeded.patrol_client_secret + "\n")
        webhook_file = os.path.join(d, "webhook-token")
        _write_private(webhook_file, secrets.token_urlsafe(32) + "\n")

        org_url = f"{urls['ado']}/{p.org}"
        vssps_url = f"{urls['ado']}/vssps/{p.org}"
        vsrm_url = f"{urls['ado']}/vsrm/{p.org}"
        # What a team declares for the External-Secrets-style reader of the vault: its refresh
        # interval, with a second of margin, so the drain outlasts the reader's old value.
        kv_refresh = ({"refresh_interval": f"{math.ceil(p.keyvault_reader_refresh) + 1}s"}
                      if p.keyvault_reader_refresh is not None else {})
        config = {
            "azure": {"credential": "client-secret", "tenant_id": tenant_id,
                      "client_id": seeded.patrol_client_id, "client_secret_file": secret_file,
                      "authority": urls["entra"], "ca_bundle": tls.ca_pem_path,
                      "verify_challenge_resource": False},
            "organizations": [{
                "name": p.org, "url": org_url, "vssps_url": vssps_url, "vsrm_url": vsrm_url,
                "credential": {
                    "kind": "username-password", "tenant_id": tenant_id, "client_id": seeded.bot_client_id,
                    "authority": urls["entra"],
                    "from_keyvault": {"vault_url": urls["keyvault"],
                                      "username_secret": "bot-azure-devops-email",
                                      "password_secret": "bot-azure-devops-password"}},
            }],
            "clusters": [{"name": n, "context": n, "kubeconfig": kubeconfig} for n in cluster_urls],
            "tokens": [
                {"name": "keda", "organization": p.org, "scopes": list(KEDA_SCOPES),
                 "lifetime": p.config_lifetime, "renew_before": p.config_renew_before,
                 "sinks": [{"kind": "kubernetes-secret", "cluster": c.name, "namespace": c.namespace,
                            "secret": c.secret, "key": c.key} for c in p.clusters],
                 "consumers": [{"kind": "keda-scaledjob", "cluster": c.name, "namespace": c.namespace,
                                "name": c.scaledjob, "pool": c.pool} for c in p.clusters]},
                {"name": "daily-checks", "organization": p.org, "scopes": list(DAILY_CHECKS_SCOPES),
                 "lifetime": p.config_lifetime, "renew_before": p.config_renew_before,
                 "sinks": [{"kind": "keyvault", "vault_url": urls["keyvault"],
                            "secret": "azure-devops-token", **kv_refresh}],
                 "pipeline": {"project": p.project, "definition": p.definition,
                              "max_age": p.config_pipeline_max_age}},
            ],
            "exporter": {"listen": "127.0.0.1:0", **p.exporter_intervals},
            "worker": {"listen": "127.0.0.1:0", "webhook_token_file": webhook_file,
                       "state_dir": os.path.join(d, "state"), "cooldown": p.config_cooldown,
                       "verify_deadline": "60s", "reconcile_interval": "30s"},
        }
        config_path = os.path.join(d, "patrol.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        return {
            "config": config_path, "organization_url": org_url, "vssps_url": vssps_url, "vsrm_url": vsrm_url,
            "keyvault_url": urls["keyvault"], "ca_bundle": tls.ca_pem_path, "entra_authority": urls["entra"],
            "control_url": urls["control"], "clusters": dict(cluster_urls),
            "bot": {"username": p.bot_username, "password": seeded.bot_password, "tenant_id": tenant_id,
                    "client_id": seeded.bot_client_id},
            "kubeconfig": kubeconfig, "scenario": p.name, "directory": d,
            "patrol_client": {"client_id": seeded.patrol_client_id, "client_secret_file": secret_file},
            "webhook_token_file": webhook_file,
        }

    async def stop(self) -> None:
        world, self._world = self._world, None
        if world is not None and world.actors is not None:
            await world.actors.stop()
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await _close(runner)


async def _close(runner: web.AppRunner) -> None:
    """Stop a server and really close every connection it had.

    A TLS connection closed by the server waits for the peer's close_notify (up to 30 s); an idle
    keep-alive client never sends it, and the loop ends first, leaving the socket open. So after
    the graceful shutdown, whatever is still half-closed is aborted.
    """
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    transports = [h.transport for h in (server.connections if server is not None else []) if h.transport]
    await runner.cleanup()
    for transport in transports:
        transport.abort()


def _kube_state(clusters: dict[str, ClusterState]) -> dict[str, Any]:
    """Secrets (metadata and value fingerprints only) and KEDA objects of every cluster."""
    out: dict[str, Any] = {}
    for name, cluster in clusters.items():
        secrets_meta = []
        for obj in cluster.list_objects("v1", "secrets"):
            meta = obj.get("metadata", {})
            data = obj.get("data") or {}
            secrets_meta.append({
                "namespace": meta.get("namespace"), "name": meta.get("name"),
                "resourceVersion": meta.get("resourceVersion"), "labels": meta.get("labels", {}),
                "annotations": meta.get("annotations", {}),
                "managers": sorted({m.get("manager", "") for m in meta.get("managedFields", [])}),
                "keys": {k: hashlib.sha256(base64.b64decode(v).strip()).hexdigest()[:12]
                         for k, v in data.items()},
            })
        scaledjobs = [{
            "namespace": o["metadata"].get("namespace"), "name": o["metadata"].get("name"),
            "generation": o["metadata"].get("generation"),
            "conditions": (o.get("status") or {}).get("conditions", []),
        } for o in cluster.list_objects("keda.sh/v1alpha1", "scaledjobs")]
        events = [{
            "namespace": e["metadata"].get("namespace"), "reason": e.get("reason"), "type": e.get("type"),
            "count": e.get("count"), "message": e.get("message"),
            "involvedObject": {k: (e.get("involvedObject") or {}).get(k) for k in ("kind", "name")},
            "lastTimestamp": e.get("lastTimestamp"), "eventTime": e.get("eventTime"), "series": e.get("series"),
            "reportingComponent": e.get("reportingComponent"),
        } for e in cluster.events()]
        jobs = [{
            "namespace": j["metadata"].get("namespace"), "name": j["metadata"].get("name"),
            "scaledjob": (j["metadata"].get("labels") or {}).get("scaledjob.keda.sh/name"),
            "generation": (j["metadata"].get("annotations") or {}).get("scaledjob.keda.sh/generation"),
            "status": {k: v for k, v in (j.get("status") or {}).items()
                       if k in ("active", "succeeded", "failed", "startTime", "completionTime")},
        } for j in cluster.list_objects("batch/v1", "jobs")]
        out[name] = {"resourceVersion": cluster.resource_version, "secrets": secrets_meta,
                     "scaledjobs": scaledjobs, "events": events, "jobs": jobs}
    return out


async def run(ready_file: str, scenario_name: str = "default", directory: str | None = None,
              duration: float | None = None, *, params: ScenarioParams | None = None) -> int:
    """Run the sandbox until SIGINT/SIGTERM or ``duration`` seconds; the command line's entry."""
    own_dir = directory is None
    workdir = directory or tempfile.mkdtemp(prefix="patrol-sandbox-")
    sandbox = Sandbox(workdir, params or scenario(scenario_name))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        ready = await sandbox.start()
        write_json_atomically(ready_file, ready)
        log.info("ready file written", extra={"ready_file": ready_file})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await sandbox.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ready_file)
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


class SandboxThread:
    """The sandbox on its own event loop in a daemon thread, for tests.

    ``with SandboxThread(tmp_path) as sb: sb.ready["organization_url"]``; ``sb.call(fn, *args)`` runs
    ``fn`` (sync or async) on the sandbox loop and returns its result, which is how tests touch
    ``sb.world`` safely.
    """

    def __init__(self, directory: str, params: ScenarioParams | str = "default", *,
                 clock: Callable[[], float] = time.time, timeout: float = 30.0) -> None:
        self.params = scenario(params) if isinstance(params, str) else params
        self.sandbox = Sandbox(str(directory), self.params, clock=clock)
        self.timeout = timeout
        self.ready: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def world(self) -> World:
        return self.sandbox.world

    def start(self) -> SandboxThread:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, args=(loop,), name="sandbox", daemon=True)
        self._thread.start()
        try:
            self.ready = self.call(self.sandbox.start)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` on the sandbox loop (awaiting it if it is a coroutine); return the result."""
        if self._loop is None:
            raise RuntimeError("the sandbox thread is not running")

        async def invoke() -> Any:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            return result

        future = asyncio.run_coroutine_threadsafe(invoke(), self._loop)
        try:
            return future.result(timeout if timeout is not None else self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self.call(self.sandbox.stop)
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(self.timeout)

    def __enter__(self) -> SandboxThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
