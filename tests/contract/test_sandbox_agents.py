"""KEDA's agent Jobs and their pods, against the real sandbox ADO over HTTP and read back with the
real ``kubernetes`` client: Job shape (``generateJobs``), rollout precedence and the generation
rule (``deletePreviousVersionScaleJobs``), an agent that unregisters with the PAT it started with
(Microsoft's ``start.sh``), KEDA reading Secrets through a lagging cache, and the harm counters."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from loop_thread import LoopThread

from sandbox.actors import Actors, AgentTiming
from sandbox.ado import AdoWorld
from sandbox.http import FaultTable, RequestLog, middlewares
from sandbox.kube import JOBS, SCALEDJOBS, ClusterState

pytestmark = pytest.mark.contract

ORG = "sandbox-org"
NS = "azure-devops"
SJ = "azure-devops-agent"
POOL = "Agents"
TOKEN = "cluster-token"
BUILD = 1.5
DEADLINE = 4
TIMING = AgentTiming(start_delay=0.05, run_time=BUILD, idle_timeout=2.0, job_poll=0.05, unregister_retry=0.2)


class _NoEntra:
    def principal_for(self, access_token: str) -> None:
        return None


@dataclass
class _Vault:
    def latest_value(self, name: str) -> str | None:
        return None


def _redacted(token: str) -> str:
    return f"Basic <redacted {hashlib.sha256(token.encode()).hexdigest()[:12]}>"


@dataclass
class World:
    lt: LoopThread
    ado: AdoWorld
    cluster: ClusterState
    actors: Actors
    log: RequestLog
    api: client.ApiClient
    token: str
    pool_id: int

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def wait(self, cond: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        """Poll ``cond`` from the test thread (it reads sandbox state through ``lt.call`` or HTTP)."""
        deadline = time.monotonic() + timeout
        while not (value := cond()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.lt.call(self.actors.snapshot)}")
            time.sleep(0.03)
        return value

    def harm(self) -> dict[str, int]:
        return self.lt.call(self.actors.harm)

    def stats(self) -> Any:
        return self.lt.call(self.actors.keda, "c1", NS, SJ)

    def jobs(self) -> list[Any]:
        return list(self.batch.list_namespaced_job(NS, label_selector=f"scaledjob.keda.sh/name={SJ}").items)

    def queue(self) -> int:
        return int(self.lt.call(self.ado.queue_job, self.pool_id))

    def building(self) -> Any:
        """The agent pod running a build, once there is one."""
        def find() -> Any:
            keda = self.actors._keda[("c1", NS, SJ)]
            return next((a for a in keda.pods.agents.values() if a.building), None)
        return self.lt.call(find)

    def issue(self, name: str) -> str:
        issued: tuple[str, str] = self.lt.call(self.ado.issue_pat, "bot-oid", name, ["vso.agentpools_manage"],
                                               valid_to=time.time() + 86400)
        return issued[1]

    def revoke(self, token: str) -> None:
        auth_id = self.lt.call(self.ado.pat_id_for_value, token)
        assert auth_id is not None
        self.lt.call(self.ado.revoke_pat, auth_id)

    def set_secret(self, token: str) -> None:
        self.lt.call(self.cluster.put_secret, NS, "azure-devops-token", {"token": token})

    def patch_scaledjob(self, patch: dict[str, Any]) -> None:
        self.lt.call(lambda: self.cluster.patch(SCALEDJOBS, NS, SJ, json.dumps(patch).encode(),
                                                "application/merge-patch+json", manager="kubectl"))


def _world(tmp_path: Path, *, secret_cache_lag: float = 0.0, rollout_strategy: str | None = None) -> World:
    lt = LoopThread()
    log = RequestLog()
    urls: dict[str, str] = {}

    def make_ado() -> tuple[AdoWorld, str, int]:
        ado = AdoWorld(ORG, _NoEntra(), base_url_getter=lambda: urls["ado"])
        pool_id = ado.add_pool(POOL)
        _, token = ado.issue_pat("bot-oid", "keda", ["vso.agentpools_manage"], valid_to=time.time() + 86400)
        return ado, token, pool_id

    ado, token, pool_id = lt.call(make_ado)
    port = lt.serve(ado.app(middlewares("ado", log, FaultTable())))
    urls["ado"] = f"http://127.0.0.1:{port}"
    org_url = f"{urls['ado']}/{ORG}"
    cluster = lt.call(ClusterState, "c1", TOKEN)
    kube_port = lt.serve(cluster.app(log=log, faults=FaultTable()))

    async def setup() -> Actors:
        cluster.create_namespace(NS)
        cluster.put_secret(NS, "azure-devops-token", {"token": token})
        cluster.put_scaledjob(NS, SJ, organization_url=org_url, pool_name=POOL, secret_name="azure-devops-token",
                              secret_key="token", polling_interval=30, rollout_strategy=rollout_strategy,
                              active_deadline_seconds=DEADLINE)
        actors = Actors(ado=ado, kv=_Vault(), clusters={"c1": cluster}, ado_base_url=org_url,
                        keda_polling_interval=0.2, job_interval=None, pipeline=None, agent_timing=TIMING,
                        secret_cache_lag=secret_cache_lag, reconcile_backoff_base=0.05, reconcile_backoff_cap=0.2)
        await actors.start()
        return actors

    actors = lt.run(setup())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c1",
        "clusters": [{"name": "c1", "cluster": {"server": f"http://127.0.0.1:{kube_port}"}}],
        "users": [{"name": "c1", "user": {"token": TOKEN}}],
        "contexts": [{"name": "c1", "context": {"cluster": "c1", "user": "c1", "namespace": NS}}],
    }))
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), context="c1", client_configuration=cfg)
    w = World(lt, ado, cluster, actors, log, client.ApiClient(cfg), token, pool_id)
    w.wait(lambda: w.stats().polls >= 1, what="the first poll")
    return w


def _close(w: World) -> None:
    w.lt.run(w.actors.stop())
    w.api.close()
    w.lt.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = _world(tmp_path)
    try:
        yield w
    finally:
        _close(w)


# --- Jobs as KEDA creates them ----------------------------------------------------------------------


def test_a_queued_build_gets_a_real_job_shaped_like_kedas(world: World) -> None:
    # kubernetes >= 37 loads BatchV1Api and its models on first use (~2 s here): pay that before
    # the build starts, or the Job has finished by the time the first list answers.
    assert world.jobs() == []
    world.queue()
    world.wait(world.building, what="an agent building")
    [job] = world.jobs()
    meta = job.metadata
    assert meta.name.startswith(f"{SJ}-") and len(meta.name) == len(SJ) + 6
    assert meta.labels == {"app.kubernetes.io/name": SJ, "app.kubernetes.io/version": "2.20.0",
                           "app.kubernetes.io/part-of": SJ, "app.kubernetes.io/managed-by": "keda-operator",
                           "scaledjob.keda.sh/name": SJ}
    assert meta.annotations == {"scaledjob.keda.sh/generation": "1"}
    assert meta.owner_references[0].kind == "ScaledJob" and meta.owner_references[0].controller is True
    assert job.spec.active_deadline_seconds == DEADLINE and job.spec.backoff_limit == 0
    container = job.spec.template.spec.containers[0]
    assert [e.name for e in container.env] == ["AZP_URL", "AZP_POOL", "AZP_TOKEN"]
    assert job.spec.template.metadata.labels["scaledjob.keda.sh/name"] == SJ
    # the API server's Job defaulting
    assert job.spec.template.metadata.labels["batch.kubernetes.io/job-name"] == meta.name
    assert job.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": meta.uid}
    assert (job.spec.completion_mode, job.spec.suspend, job.spec.parallelism) == ("NonIndexed", False, 1)
    assert job.status.active == 1 and job.status.start_time is not None and job.status.succeeded is None
    world.wait(lambda: world.stats().jobs_completed == 1, what="the build to finish")
    world.wait(lambda: world.jobs()[0].status.succeeded == 1, what="the Job to complete")
    [job] = world.jobs()
    assert job.status.completion_time is not None and not job.status.active
    assert [(c.type, c.status) for c in job.status.conditions] == [("Complete", "True")]
    assert world.lt.call(world.ado.agents, world.pool_id) == []     # --once: unregistered
    assert world.harm() == {"builds_interrupted": 0, "agent_unregister_failures": 0, "keda_failed_polls": 0,
                            "secret_reader_failures": 0, "pipeline_runs_failed": 0}


def test_finished_jobs_beyond_the_history_limit_are_deleted(world: World) -> None:
    world.patch_scaledjob({"spec": {"successfulJobsHistoryLimit": 1}})
    for _ in range(2):
        world.queue()
    world.wait(lambda: world.stats().jobs_completed == 2, timeout=15, what="two builds")
    world.wait(lambda: len(world.lt.call(lambda: world.cluster.list_objects("batch/v1", "jobs", NS))) == 1,
               what="the older Job to be cleaned up")
    assert len(world.jobs()) == 1


# --- the agent keeps its start PAT ------------------------------------------------------------------


def test_agent_unregisters_with_the_pat_it_started_with(world: World) -> None:
    new = world.issue("keda-2")
    world.queue()
    agent_id = world.wait(world.building, what="an agent building").agent_id
    world.set_secret(new)                                        # delivery mid-build; old PAT still valid
    world.wait(lambda: world.stats().jobs_completed == 1, what="the build to finish")
    world.wait(lambda: world.lt.call(world.ado.agents, world.pool_id) == [], what="the agent to unregister")
    removal = [r for r in world.log.records("ado") if f"/agents/{agent_id}" in r.path]
    assert removal and {r.headers["Authorization"] for r in removal} == {_redacted(world.token)}
    assert world.harm()["agent_unregister_failures"] == 0


def test_revoking_the_start_pat_mid_build_strands_an_offline_agent(world: World) -> None:
    new = world.issue("keda-2")
    world.queue()
    agent = world.wait(world.building, what="an agent building")
    agent_id = agent.agent_id
    world.set_secret(new)
    world.revoke(world.token)                                    # today's rotation: revoke right away
    world.wait(lambda: world.stats().unregister_retries >= 2, what="failed unregister attempts")
    world.wait(lambda: world.harm()["agent_unregister_failures"] == 1, timeout=DEADLINE + 5,
               what="the deadline to kill the pod")
    [stranded] = world.lt.call(world.ado.agents, world.pool_id)
    assert stranded.id == agent_id and stranded.status == "offline"
    [job] = world.jobs()
    [cond] = job.status.conditions
    assert (cond.type, cond.reason, job.status.failed) == ("Failed", "DeadlineExceeded", 1)
    assert world.stats().jobs_completed == 1 and world.harm()["builds_interrupted"] == 0


def test_deleting_a_job_mid_build_interrupts_the_build(world: World) -> None:
    request_id = world.queue()
    agent = world.wait(world.building, what="an agent building")
    world.batch.delete_namespaced_job(agent.name, NS)
    world.wait(lambda: world.harm()["builds_interrupted"] == 1, what="the interruption to be counted")
    [job] = [j for j in world.lt.call(world.ado.jobs, world.pool_id) if j.request_id == request_id]
    assert job.result == "canceled"
    world.wait(lambda: world.lt.call(world.ado.agents, world.pool_id) == [],
               what="the terminated pod to unregister (its PAT is still valid)")


def test_deleting_the_scaledjob_garbage_collects_its_jobs(world: World) -> None:
    world.queue()
    world.wait(world.building, what="an agent building")
    client.CustomObjectsApi(world.api).delete_namespaced_custom_object("keda.sh", "v1alpha1", NS, "scaledjobs", SJ)
    world.wait(lambda: world.jobs() == [], what="the owned Jobs to be deleted")
    world.wait(lambda: world.harm()["builds_interrupted"] == 1, what="the running build to be counted")
    assert world.jobs() == []


# --- rollout -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rollout", "deprecated", "deletes"), [
    (None, None, True),                    # no strategy: KEDA's default deletes the old Jobs
    ("gradual", None, False),
    ("gradual", "default", True),          # the deprecated field wins whenever it is set
    (None, "gradual", False),
])
def test_spec_change_deletes_running_jobs_per_the_effective_strategy(
        tmp_path: Path, rollout: str | None, deprecated: str | None, deletes: bool) -> None:
    w = _world(tmp_path, rollout_strategy=rollout)
    try:
        if deprecated is not None:
            w.patch_scaledjob({"spec": {"rolloutStrategy": deprecated}})
        w.queue()
        w.wait(w.building, what="an agent building")
        w.patch_scaledjob({"spec": {"jobTargetRef": {"template": {"metadata": {"annotations": {"x": "1"}}}}}})
        if deletes:
            w.wait(lambda: w.harm()["builds_interrupted"] == 1, what="the running Job to be deleted")
            assert w.jobs() == [] or all(j.metadata.deletion_timestamp for j in w.jobs())
        else:
            w.wait(lambda: w.stats().reconciles >= (3 if deprecated else 2), what="the reconcile")
            w.wait(lambda: w.stats().jobs_completed == 1, what="the build to finish undisturbed")
            assert w.harm()["builds_interrupted"] == 0
    finally:
        _close(w)


def test_only_jobs_of_another_generation_are_deleted(world: World) -> None:
    """KEDA >= 2.17: a Job whose generation annotation matches the ScaledJob's survives a reconcile."""
    def make(name: str, generation: str | None) -> None:
        annotations = {"scaledjob.keda.sh/generation": generation} if generation else {}
        world.cluster.create(JOBS, NS, {"metadata": {"name": name, "labels": {"scaledjob.keda.sh/name": SJ},
                                                     "annotations": annotations},
                                        "spec": {"template": {"spec": {"containers": []}}}}, manager="test")

    world.lt.call(make, "no-annotation", None)
    world.lt.call(make, "gen-1", "1")
    world.lt.call(make, "gen-2", "2")
    world.patch_scaledjob({"spec": {"maxReplicaCount": 9}})     # generation 2
    world.wait(lambda: world.stats().reconciles >= 2, what="the reconcile")
    world.wait(lambda: [j.metadata.name for j in world.jobs()] == ["gen-2"], what="the stale Jobs to go")
    assert [j.metadata.annotations["scaledjob.keda.sh/generation"] for j in world.jobs()] == ["2"]


# --- KEDA reads Secrets through a lagging cache ----------------------------------------------------------


def test_refresh_right_after_a_secret_change_can_read_the_old_value(tmp_path: Path) -> None:
    w = _world(tmp_path, secret_cache_lag=1.0)
    try:
        new = w.issue("keda-2")
        w.set_secret(new)
        w.revoke(w.token)                       # within the lag: KEDA's refresh still reads the old PAT
        w.wait(lambda: w.harm()["keda_failed_polls"] >= 1, what="a poll that failed after its refresh")
        new_fp = hashlib.sha256(new.encode()).hexdigest()[:8]
        w.wait(lambda: w.stats().token_fingerprint == new_fp, what="recovery once the cache caught up")
        failed = w.harm()["keda_failed_polls"]
        assert failed <= 1.0 / 0.2 + 1           # bounded by the lag over the polling interval
    finally:
        _close(w)
