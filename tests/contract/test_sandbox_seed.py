"""The default scenario seeds an adopted world; ``annotate_seed=False`` the hand-pasted one.

Read back with the real ``kubernetes`` client (what patrol uses), and checked against the
PAT Lifecycle truth of the sandbox: the annotations name the PAT each Secret holds and its
validTo, so the exporter can match the KEDA token from its first refresh.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from core.ado import AdoClient
from core.secret import Secret
from sandbox.app import SandboxThread
from sandbox.scenarios import scenario

pytestmark = pytest.mark.contract


def secret_annotations(sb: SandboxThread, cluster: str) -> dict[str, str]:
    api_client = kube_config.new_client_from_config(config_file=sb.ready["kubeconfig"], context=cluster)
    try:
        secret = kube_client.CoreV1Api(api_client).read_namespaced_secret("azure-devops-token", "azure-devops")
        return dict(secret.metadata.annotations or {})
    finally:
        api_client.close()


def test_the_default_seed_is_annotated_as_an_adopted_deployment(sandbox: SandboxThread) -> None:
    seeded = sandbox.world.seeded
    pat = next(p for p in sandbox.call(sandbox.world.ado.pats) if p["authorizationId"] == seeded.keda_pat_id)
    expiry = datetime.fromtimestamp(int(pat["valid_to"]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for cluster in ("build-a", "build-b"):
        assert secret_annotations(sandbox, cluster) == {"patrol.io/authorization-id": seeded.keda_pat_id,
                                                 "patrol.io/expiry": expiry}
    daily = sandbox.call(sandbox.world.kv.latest, "azure-devops-token")
    assert daily["tags"] == {"authorizationId": seeded.daily_pat_id}
    assert daily["attributes"]["exp"] == int(sandbox.call(lambda: sandbox.world.ado.pat(seeded.daily_pat_id).valid_to))


def test_the_unadopted_scenario_leaves_secrets_and_vault_bare(tmp_path: Path) -> None:
    params = scenario("unadopted", job_interval=None, pipeline_interval=None)
    assert params.annotate_seed is False
    with SandboxThread(str(tmp_path), params) as sb:
        assert secret_annotations(sb, "build-a") == {}
        assert secret_annotations(sb, "build-b") == {}
        daily = sb.call(sb.world.kv.latest, "azure-devops-token")
        assert not daily.get("tags")
        assert "exp" not in daily["attributes"]


def test_the_unadopted_scenario_is_bare_everywhere(tmp_path: Path) -> None:
    """``patrol sandbox --scenario unadopted``: the world before patrol, nothing patrol writes."""
    params = scenario("unadopted", job_interval=None, pipeline_interval=None, keyvault_reader_refresh=None)
    assert params.name == "unadopted" and not params.annotate_seed and not params.tag_keyvault_seed
    with SandboxThread(str(tmp_path), params) as sb:
        for cluster in ("build-a", "build-b"):
            assert secret_annotations(sb, cluster) == {}
        daily = sb.call(sb.world.kv.latest, "azure-devops-token")
        assert not daily.get("tags") and "exp" not in daily["attributes"]
        # The PATs themselves are the default world's: active, and what the sinks hold.
        value = sb.call(sb.world.kv.latest_value, "azure-devops-token")
        assert sb.call(sb.world.ado.pat_id_for_value, value) == sb.world.seeded.daily_pat_id


def test_the_soak_scenario_starts_with_a_busy_pools_job_history(tmp_path: Path) -> None:
    """A real pool answers ``jobrequests?$top=250`` with a long history from day one; the soak
    seeds one (200, what the sandbox keeps) so memory after its first rotation is measured on a
    world of steady-state size, not one that fills up during the run. Read with patrol's own
    ADO client, as the exporter and the worker read it."""
    params = scenario("soak", job_interval=None, pipeline_interval=None, keyvault_reader_refresh=None)
    assert params.job_history == 200
    with SandboxThread(str(tmp_path), params) as sb:
        token = sb.call(sb.world.clusters["build-a"].secret_value, "azure-devops", "azure-devops-token", "token")
        pool_id = sb.world.seeded.pools["agents-a"]
        with AdoClient(sb.ready["organization_url"], Secret(token), auth="pat") as ado:
            jobs = ado.list_job_requests(pool_id, top=250)
    assert len(jobs) == 200
    assert all(job.result == "succeeded" and not job.is_queued for job in jobs)
    queued = sorted(job.queue_time for job in jobs if job.queue_time is not None)
    assert len(queued) == 200 and queued[-1] < datetime.now(UTC)
