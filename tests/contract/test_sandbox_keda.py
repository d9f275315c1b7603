"""The simulated KEDA against the sandbox ADO over real HTTP: KEDA's request shapes and its
scaler-cache refresh semantics (docs/external-apis.md, KEDA sections), plus agents, jobs and the
daily-checks pipeline."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from loop_thread import LoopThread

from sandbox.actors import (
    Actors,
    AgentTiming,
    KedaError,
    PipelineSpec,
    decode_job_requests,
    fingerprint,
    go_json_syntax_error,
)
from sandbox.ado import AdoWorld
from sandbox.http import FaultTable, RequestLog, middlewares
from sandbox.kube import SCALEDJOBS, ClusterState

pytestmark = pytest.mark.contract

ORG = "sandbox-org"
NS = "azure-devops"
SJ = "azure-devops-agent"
POOL = "Agents"
FAST_AGENTS = AgentTiming(start_delay=0.05, run_time=0.2, idle_timeout=3.0, job_poll=0.05)


class _NoEntra:
    def principal_for(self, access_token: str) -> None:
        return None


@dataclass
class _Vault:
    values: dict[str, str] = field(default_factory=dict)

    def latest_value(self, name: str) -> str | None:
        return self.values.get(name)

    def latest(self, name: str) -> dict[str, Any] | None:
        """The bundle shape the pipeline's AzureKeyVault-task read looks at (enabled, no expiry)."""
        value = self.values.get(name)
        return None if value is None else {"value": value, "attributes": {"enabled": True}}


def _redacted(token: str) -> str:
    """How sandbox.http logs ``Authorization: Basic base64(":" + token)``."""
    return f"Basic <redacted {hashlib.sha256(token.encode()).hexdigest()[:12]}>"


@dataclass
class World:
    lt: LoopThread
    ado: Any
    cluster: ClusterState
    actors: Actors
    log: RequestLog
    org_url: str
    raw_auth: list[str]
    first_token: str = ""

    def stats(self) -> Any:
        return self.lt.call(self.actors.keda, "c1", NS, SJ)

    def wait(self, cond: Callable[[], bool], timeout: float = 8.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not self.lt.call(cond):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or cond}: {self.stats()}")
            time.sleep(0.02)

    def polls_after(self, n: int) -> None:
        start = self.stats().polls
        self.wait(lambda: self.actors.keda("c1", NS, SJ).polls >= start + n, what=f"{n} more polls")

    def set_secret(self, token: str) -> None:
        self.lt.call(self.cluster.put_secret, NS, "azure-devops-token", {"token": token})

    def settle(self) -> None:
        """Let KEDA's informer cache catch up with the last Secret write (``secret_cache_lag``)."""
        time.sleep(self.actors.secret_cache_lag + 0.2)

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.lt.call(self.cluster.events, NS) if e["reason"] == reason]

    def scaledjob(self, name: str = SJ) -> dict[str, Any]:
        sj = self.lt.call(self.cluster.get_object, "keda.sh/v1alpha1", "scaledjobs", NS, name)
        assert sj is not None
        return sj

    def ready(self, name: str = SJ) -> dict[str, Any]:
        return next(c for c in self.scaledjob(name)["status"]["conditions"] if c["type"] == "Ready")

    def ado_requests(self, since: float = 0) -> list[Any]:
        return [r for r in self.log.records("ado", since=since)]


def _capture_auth(sink: list[str]) -> Any:
    @web.middleware
    async def capture(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        sink.append(request.headers.get("Authorization", ""))
        return await handler(request)
    return capture


def _start_world(lt: LoopThread, ado: Any, ado_app: web.Application, secret_value: str, *,
                 job_interval: float | None = None, urls: dict[str, str] | None = None
                 ) -> tuple[ClusterState, Actors, str]:
    port = lt.serve(ado_app)
    if urls is not None:
        urls["ado"] = f"http://127.0.0.1:{port}"
    org_url = f"http://127.0.0.1:{port}/{ORG}"
    cluster = lt.call(ClusterState, "c1", "t")

    async def _setup() -> Actors:
        cluster.create_namespace(NS)
        cluster.put_secret(NS, "azure-devops-token", {"token": secret_value})
        cluster.put_scaledjob(NS, SJ, organization_url=org_url, pool_name=POOL,
                              secret_name="azure-devops-token", secret_key="token", polling_interval=30)
        actors = Actors(ado=ado, kv=_Vault(), clusters={"c1": cluster}, ado_base_url=org_url,
                        keda_polling_interval=0.2, job_interval=job_interval, pipeline=None,
                        agent_timing=FAST_AGENTS, reconcile_backoff_base=0.05, reconcile_backoff_cap=0.2)
        await actors.start()
        return actors

    return cluster, lt.run(_setup()), org_url


def _make_ado(urls: dict[str, str]) -> tuple[AdoWorld, str]:
    """The real sandbox AdoWorld with one pool and one KEDA PAT, answering a bad Basic PAT with the
    203 sign-in page (its default is 401; ``world401`` covers that path). Run on the loop thread."""
    ado = AdoWorld(ORG, _NoEntra(), base_url_getter=lambda: urls["ado"])
    ado.basic_pat_failure = "sign-in-page"
    ado.add_pool(POOL)
    _, token = ado.issue_pat("bot-oid", "keda", ["vso.agentpools_manage"], valid_to=time.time() + 86400)
    return ado, token


@pytest.fixture
def world() -> Iterator[World]:
    """The real sandbox AdoWorld, switched to answer a bad Basic PAT with 203 + a sign-in page
    (its default is 401; ``world401`` covers that path)."""
    lt = LoopThread()
    log, faults = RequestLog(), FaultTable()
    raw_auth: list[str] = []
    urls: dict[str, str] = {}

    ado, token = lt.call(_make_ado, urls)
    app = ado.app([*middlewares("ado", log, faults), _capture_auth(raw_auth)])
    cluster, actors, org_url = _start_world(lt, ado, app, token, urls=urls)
    w = World(lt, ado, cluster, actors, log, org_url, raw_auth, first_token=token)
    try:
        w.wait(lambda: actors.keda("c1", NS, SJ).polls >= 1, what="the first poll")
        yield w
    finally:
        lt.run(actors.stop())
        lt.close()


def _issue(w: World) -> tuple[str, str]:
    issued: tuple[str, str] = w.lt.call(lambda: w.ado.issue_pat("bot-oid", "keda-2", ["vso.agentpools_manage"],
                                                                valid_to=time.time() + 86400))
    return issued


def _auth_id(w: World, token: str) -> str:
    auth_id: str | None = w.lt.call(w.ado.pat_id_for_value, token)
    assert auth_id is not None
    return auth_id


# --- request shapes -------------------------------------------------------------------------------


def test_keda_requests_look_like_kedas(world: World) -> None:
    token = world.first_token
    world.polls_after(1)
    reqs = world.ado_requests()
    lookup, poll = reqs[0], reqs[1]
    assert (lookup.method, lookup.path, lookup.query) == ("GET", f"/{ORG}/_apis/distributedtask/pools",
                                                         f"poolName={POOL}")
    assert (poll.path, poll.query) == (f"/{ORG}/_apis/distributedtask/pools/3/jobrequests", "$top=250")
    for r in (lookup, poll):
        assert r.status == 200
        assert r.headers["Authorization"] == _redacted(token)
        assert r.headers["User-Agent"] == "Go-http-client/1.1"
        assert "X-TFS-FedAuthRedirect" not in r.headers and "api-version" not in r.query
    assert world.raw_auth[0] == "Basic " + base64.b64encode(f":{token}".encode()).decode()   # empty user name
    s = world.stats()
    assert (s.pool_id, s.generation_seen, s.scaler_builds, s.poll_errors) == (3, 1, 1, 0)
    assert s.token_fingerprint == fingerprint(token)
    # KEDA 2.20's events.k8s.io recorder: same type/reason/action/controller/instance and the same
    # ScaledJob resourceVersion is one Event; it keeps the first message and counts in its series
    [started] = world.events("KEDAScalersStarted")
    assert started["message"] == "Scaler azure-pipelines is built" and started["series"]["count"] == 2
    assert started["reportingComponent"] == "scale-handler" and started["action"] == "KEDAScalersStarted"
    assert [e["message"] for e in world.events("ScaledJobReady")] == ["ScaledJob is ready for scaling"]
    world.wait(lambda: world.ready()["reason"] == "ScaledJobReady")
    assert world.ready()["status"] == "True"


def test_queued_job_starts_an_agent_that_runs_it(world: World) -> None:
    pool_id = world.lt.call(world.ado.pool_by_name, POOL)
    request_id = world.lt.call(world.ado.queue_job, pool_id)
    world.wait(lambda: world.actors.keda("c1", NS, SJ).jobs_completed == 1, what="the job to be run")
    [job] = [j for j in world.lt.call(world.ado.jobs, pool_id) if j.request_id == request_id]
    assert job.result == "succeeded" and job.reserved_agent is not None
    assert world.lt.call(world.ado.agents, pool_id) == []          # --once: the agent unregistered
    assert [e["message"] for e in world.events("KEDAJobsCreated")] == ["Created 1 jobs"]
    assert "lastActiveTime" in world.scaledjob()["status"]
    assert world.stats().agents_failed == 0


# --- refresh semantics ----------------------------------------------------------------------------


def test_new_pat_next_to_a_valid_old_one_is_not_picked_up(world: World) -> None:
    old = world.first_token
    _, new = _issue(world)
    builds = world.stats().scaler_builds
    world.set_secret(new)
    since = time.time()
    world.polls_after(3)
    s = world.stats()
    assert s.token_fingerprint == fingerprint(old) and s.scaler_builds == builds and s.refreshes == 0
    polls = [r for r in world.ado_requests(since) if r.path.endswith("/jobrequests")]
    assert polls and {r.headers["Authorization"] for r in polls} == {_redacted(old)}


def test_revoking_the_old_pat_rebuilds_from_the_secret_in_the_same_poll(world: World) -> None:
    old = world.first_token
    _, new = _issue(world)
    world.set_secret(new)
    world.settle()
    world.polls_after(1)
    since = time.time()
    world.lt.call(world.ado.revoke_pat, _auth_id(world, old))
    world.wait(lambda: world.actors.keda("c1", NS, SJ).token_fingerprint == fingerprint(new), what="rebuild")
    world.polls_after(1)
    s = world.stats()
    assert (s.refreshes, s.poll_errors, s.last_error) == (1, 0, None)
    assert world.events("KEDAScalerFailed") == []
    assert world.ready()["status"] == "True"
    seq = [(r.path.rsplit("/", 1)[-1], r.status, r.headers["Authorization"])
           for r in world.ado_requests(since)]
    # one poll: the cached PAT fails (203 sign-in page), the Secret is re-read, the pool looked up
    # again and the poll retried with the new PAT
    assert seq[:3] == [("jobrequests", 203, _redacted(old)), ("pools", 200, _redacted(new)),
                       ("jobrequests", 200, _redacted(new))]


def test_generation_bump_rebuilds_with_the_new_secret(world: World) -> None:
    _, new = _issue(world)
    world.set_secret(new)
    world.settle()
    world.polls_after(1)
    before = world.stats().scaler_builds

    def bump() -> None:
        sj = world.cluster.get_object("keda.sh/v1alpha1", "scaledjobs", NS, SJ)
        assert sj is not None
        sj["spec"]["jobTargetRef"]["template"]["metadata"]["annotations"] = {"patrol.io/rotated": "1"}
        world.cluster.update(SCALEDJOBS, NS, SJ, sj, manager="patrol")

    world.lt.call(bump)
    world.wait(lambda: world.actors.keda("c1", NS, SJ).token_fingerprint == fingerprint(new), what="rebuild")
    s = world.stats()
    assert s.generation_seen == 2 and s.scaler_builds == before + 1 and s.refreshes == 0
    built = [e for e in world.events("KEDAScalersStarted")
             if e["message"] == "Scaler azure-pipelines is built"]
    # the regarding reference carries the ScaledJob's resourceVersion: a new one, a new Event
    assert len(built) == 2
    assert len({e["involvedObject"]["resourceVersion"] for e in built}) == 2


def test_annotation_change_does_not_rebuild(world: World) -> None:
    _, new = _issue(world)
    world.set_secret(new)
    before = world.stats().scaler_builds
    world.lt.call(lambda: world.cluster.patch(
        SCALEDJOBS, NS, SJ, json.dumps({"metadata": {"annotations": {"x": "y"}}}).encode(),
        "application/merge-patch+json", manager="kubectl"))
    world.polls_after(2)
    s = world.stats()
    assert s.generation_seen == 1 and s.scaler_builds == before
    assert s.token_fingerprint != fingerprint(new)


def test_revoked_pat_without_a_new_one_is_the_203_unmarshal_error(world: World) -> None:
    old = world.first_token
    world.lt.call(world.ado.revoke_pat, _auth_id(world, old))
    world.wait(lambda: world.ready()["reason"] == "TriggerError", what="Ready=False")
    event = world.events("KEDAScalerFailed")[0]
    # the poll got the sign-in page; the rebuild's pool lookup got it too and that error surfaces
    assert event["message"] == ("error parsing azure Pipelines metadata: invalid character '<' looking for "
                                "beginning of value")
    # KEDA 2.20: an events.k8s.io Event seen through core/v1 (no count, source or timestamps)
    assert event["type"] == "Warning" and event["source"] == {} and event["reportingComponent"] == "scale-handler"
    assert event["eventTime"] and event.get("count") is None and event["lastTimestamp"] is None
    assert event["involvedObject"]["kind"] == "ScaledJob" and event["involvedObject"]["name"] == SJ
    assert world.ready() == {"type": "Ready", "status": "False", "reason": "TriggerError",
                             "message": "Triggers defined in ScaledJob are not working correctly"}
    world.polls_after(3)
    # once Ready=False is written the ScaledJob's resourceVersion stays put: one Event, in series
    latest = world.events("KEDAScalerFailed")[-1]
    assert latest["series"]["count"] == 2            # later repeats wait for the series flush
    assert len(world.events("KEDAScalerFailed")) <= 2
    assert world.stats().auth_failures >= 2


def test_agents_start_with_the_secret_value_and_fail_on_a_bad_pat(world: World) -> None:
    world.set_secret("not-a-real-pat")               # KEDA keeps its cached, still valid PAT
    pool_id = world.lt.call(world.ado.pool_by_name, POOL)
    world.lt.call(world.ado.queue_job, pool_id)
    world.wait(lambda: world.actors.keda("c1", NS, SJ).agents_failed >= 1, what="a failed agent pod")
    s = world.stats()
    assert s.jobs_completed == 0 and s.poll_errors == 0
    assert s.last_agent_error == "agent could not authenticate: HTTP 401"
    assert world.lt.call(world.ado.queued_jobs, pool_id) == 1


def test_snapshot_never_holds_token_values(world: World) -> None:
    token = world.first_token
    snap = world.lt.call(world.actors.snapshot)
    text = json.dumps(snap)
    assert token not in text
    entry = snap["scaledjobs"][f"c1/{NS}/{SJ}"]
    assert entry["token_fingerprint"] == hashlib.sha256(token.encode()).hexdigest()[:8]
    assert {"queue_length", "agents_running", "auth_failures", "last_error", "generation_seen"} <= set(entry)


# --- a 401-answering ADO (what KEDA issue #3159 shows for a bad PAT) ----------------------------------


class _Ado401:
    """Only the two endpoints KEDA calls; a bad PAT gets 401 with an empty body."""

    def __init__(self, valid: set[str]) -> None:
        self.valid = valid

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            _, _, pat = base64.b64decode(request.headers["Authorization"].split()[1]).decode().partition(":")
            if pat not in self.valid:
                return web.Response(status=401,
                                    headers={"WWW-Authenticate": 'Basic realm="https://dev.azure.com/"'})
            if request.path.endswith("/jobrequests"):
                return web.json_response({"count": 0, "value": []})
            return web.json_response({"count": 1, "value": [{"id": 7, "name": POOL}]})
        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        return app

    def pool_by_name(self, name: str) -> int | None:
        return 7

    def register_agent(self, pool_id: int, name: str) -> int:
        raise AssertionError("no agents expected")

    def remove_agent(self, agent_id: int) -> None: ...
    def queue_job(self, pool_id: int, *, definition: str = "build") -> int:
        return 0

    def assign_job(self, pool_id: int, agent_id: int) -> int | None:
        return None

    def finish_job(self, request_id: int, result: str = "succeeded") -> None: ...
    def record_build(self, project: str, definition: str, *, result: str, queue_time: float,
                     start_time: float, finish_time: float) -> int:
        return 1


@pytest.fixture
def world401() -> Iterator[World]:
    lt = LoopThread()
    ado = _Ado401({"good-pat"})
    log = RequestLog()
    raw_auth: list[str] = []
    cluster, actors, org_url = _start_world(lt, ado, ado.app(), "good-pat")
    w = World(lt, ado, cluster, actors, log, org_url, raw_auth)
    try:
        w.wait(lambda: actors.keda("c1", NS, SJ).polls >= 1, what="the first poll")
        yield w
    finally:
        lt.run(actors.stop())
        lt.close()


def test_bad_pat_surfaces_keda_401_text_and_ready_false(world401: World) -> None:
    w = world401
    w.set_secret("bad-pat\n")
    w.ado.valid.discard("good-pat")                  # the cached PAT is revoked too
    w.wait(lambda: w.ready()["reason"] == "TriggerError", what="Ready=False")
    [event] = w.events("KEDAScalerFailed")
    assert event["message"] == (
        "error parsing azure Pipelines metadata: the Azure DevOps REST API returned error. urlString: "
        f"{w.org_url}/_apis/distributedtask/pools?poolName={POOL} status: 401 response: ")
    assert w.stats().last_error == event["message"]
    assert w.stats().token_fingerprint == fingerprint("good-pat")   # a failed refresh keeps the old scaler
    w.set_secret("good-pat")
    w.ado.valid.add("good-pat")
    w.wait(lambda: w.ready()["reason"] == "ScaledJobReady", what="recovery")


def test_scaledjob_created_with_a_bad_secret_fails_its_check_then_recovers(world401: World) -> None:
    w = world401

    def recreate() -> None:
        w.cluster.put_secret(NS, "other-token", {"token": "bad-pat"})
        w.cluster.put_scaledjob(NS, "second", organization_url=w.org_url, pool_name=POOL,
                                secret_name="other-token", secret_key="token", polling_interval=30)

    w.lt.call(recreate)
    w.wait(lambda: any(e["reason"] == "ScaledJobCheckFailed" for e in w.cluster.events(NS)),
           what="check failure")
    ready = w.ready("second")
    assert (ready["status"], ready["reason"]) == ("False", "ScaledJobCheckFailed")
    failed = [e for e in w.lt.call(w.cluster.events, NS)
              if e["reason"] == "KEDAScalerFailed" and e["involvedObject"]["name"] == "second"]
    assert failed
    # KEDA's informer cache may not have the new Secret yet (secret_cache_lag): then the first
    # failure is "error resolving secrets", and the 401 follows once the cache has it
    w.wait(lambda: "status: 401 response: " in (w.actors.keda("c1", NS, "second").last_error or ""),
           what="the 401 from ADO")
    w.lt.call(w.cluster.put_secret, NS, "other-token", {"token": "good-pat"})
    w.wait(lambda: w.actors.keda("c1", NS, "second").polls >= 1, what="the loop to start after a retry")


# --- parsing, job generator, pipeline ---------------------------------------------------------------


def test_go_json_errors() -> None:
    assert go_json_syntax_error("<!DOCTYPE html>") == "invalid character '<' looking for beginning of value"
    assert go_json_syntax_error("") == "unexpected end of JSON input"
    with pytest.raises(KedaError, match=r"cannot unmarshal array into Go value of type scalers\.JobRequests"):
        decode_job_requests(b"[]")
    with pytest.raises(KedaError, match=r'parsing time "2022-09-28 11:19:49" as "2006-01-02T15:04:05Z07:00"'):
        decode_job_requests(b'{"count":1,"value":[{"requestId":1,"queueTime":"2022-09-28 11:19:49"}]}')
    jobs = decode_job_requests(b'{"count":2,"value":[{"requestId":1,"queueTime":"2022-09-28T11:19:49.89Z"},'
                               b'{"requestId":2,"queueTime":"2022-09-28T11:19:49.89Z","result":"succeeded"}]}')
    assert [j["requestId"] for j in jobs] == [1, 2]


def test_job_generator_keeps_agents_busy() -> None:
    lt = LoopThread()
    log = RequestLog()
    urls: dict[str, str] = {}

    ado, token = lt.call(_make_ado, urls)
    _, actors, _ = _start_world(lt, ado, ado.app(middlewares("ado", log, FaultTable())), token,
                                job_interval=0.3, urls=urls)
    try:
        deadline = time.monotonic() + 8
        while lt.call(lambda: actors.keda("c1", NS, SJ).jobs_completed) < 2:
            assert time.monotonic() < deadline, lt.call(actors.snapshot)
            time.sleep(0.05)
        assert lt.call(actors.snapshot)["job_generator"]["jobs_queued"] >= 2
    finally:
        lt.run(actors.stop())
        lt.close()


def test_daily_checks_pipeline_records_builds() -> None:
    lt = LoopThread()
    log = RequestLog()
    urls: dict[str, str] = {}

    def _make() -> tuple[AdoWorld, str]:
        ado = AdoWorld(ORG, _NoEntra(), base_url_getter=lambda: urls["ado"])
        ado.add_pool(POOL)
        ado.add_definition("Operations", "daily-checks")
        scopes = ["vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release"]
        return ado, ado.issue_pat("bot-oid", "daily", scopes, valid_to=time.time() + 86400)[1]

    ado, token = lt.call(_make)
    port = lt.serve(ado.app(middlewares("ado", log, FaultTable())))
    urls["ado"] = f"http://127.0.0.1:{port}"
    vault = _Vault({"azure-devops-token": token})
    spec = PipelineSpec(project="Operations", definition="daily-checks", interval=3600)

    async def _run() -> list[str]:
        actors = Actors(ado=ado, kv=vault, clusters={}, ado_base_url=f"{urls['ado']}/{ORG}",
                        keda_polling_interval=1.0, job_interval=None, pipeline=None)
        await actors.start()
        try:
            first = await actors.run_pipeline_once(spec)
            vault.values["azure-devops-token"] = "revoked-or-wrong"
            second = await actors.run_pipeline_once(spec)
            snap = actors.snapshot()["pipeline"]
            assert snap["runs"] == 2 and snap["failed"] == 1
            assert "HTTP 401" in snap["last_error"] and token not in json.dumps(snap)
            return [first, second]
        finally:
            await actors.stop()

    try:
        assert lt.run(_run()) == ["succeeded", "failed"]
        builds = lt.call(ado.builds)
        assert [b.result for b in builds] == ["succeeded", "failed"]
        probes = [r for r in log.records("ado") if "api-version=7.1" in r.query]
        assert probes and all(r.headers.get("X-TFS-FedAuthRedirect") == "Suppress" for r in probes)
    finally:
        lt.close()
