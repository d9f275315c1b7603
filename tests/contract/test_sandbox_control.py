"""The assembled sandbox: ready file, generated files, every endpoint answering, the control API,
and clean start/stop both in a thread and as ``python -m sandbox``."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from sandbox.app import READY_KEYS, SandboxThread
from sandbox.scenarios import scenario

pytestmark = pytest.mark.contract


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


# ---------------------------------------------------------------- ready file and generated files


def test_ready_file_has_every_key_and_every_endpoint_answers(
    sandbox: SandboxThread, http: httpx.Client
) -> None:
    ready = sandbox.ready
    assert set(READY_KEYS) <= set(ready)
    assert set(ready["bot"]) == {"username", "password", "tenant_id", "client_id"}
    assert set(ready["clusters"]) == {"build-a", "build-b"}
    assert ready["scenario"] == "default"
    for path in (ready["config"], ready["ca_bundle"], ready["kubeconfig"]):
        assert Path(path).is_file()
    tls = ssl.create_default_context(cafile=ready["ca_bundle"])
    with httpx.Client(verify=tls, timeout=10) as https:
        discovery = https.get(
            f"{ready['entra_authority']}/{ready['bot']['tenant_id']}/v2.0/.well-known/openid-configuration"
        )
        assert discovery.status_code == 200 and "token_endpoint" in discovery.json()
        challenge = https.get(f"{ready['keyvault_url']}/secrets?api-version=7.4")
        assert challenge.status_code == 401 and "Bearer" in challenge.headers["WWW-Authenticate"]
    assert http.get(f"{ready['organization_url']}/_apis/connectionData").status_code == 203
    assert http.get(f"{ready['vssps_url']}/_apis/tokens/pats").status_code == 203
    assert http.get(f"{ready['vsrm_url']}/Operations/_apis/release/releases").status_code == 203
    assert http.get(f"{ready['control_url']}/").status_code == 200
    kubeconfig = yaml.safe_load(Path(ready["kubeconfig"]).read_text())
    tokens = {u["name"]: u["user"]["token"] for u in kubeconfig["users"]}
    for name, url in ready["clusters"].items():
        assert http.get(f"{url}/version").status_code == 401
        assert (
            http.get(f"{url}/version", headers={"Authorization": f"Bearer {tokens[name]}"}).status_code == 200
        )


def test_generated_patrol_yaml_points_at_the_sandbox(sandbox: SandboxThread) -> None:
    ready = sandbox.ready
    config = yaml.safe_load(Path(ready["config"]).read_text())
    assert list(config) == ["azure", "organizations", "clusters", "tokens", "exporter", "worker"]
    azure = config["azure"]
    assert azure["credential"] == "client-secret" and azure["verify_challenge_resource"] is False
    assert azure["authority"] == ready["entra_authority"] and azure["ca_bundle"] == ready["ca_bundle"]
    assert Path(azure["client_secret_file"]).read_text().strip()
    org = config["organizations"][0]
    assert (org["name"], org["url"], org["vssps_url"], org["vsrm_url"]) == (
        "sandbox-org",
        ready["organization_url"],
        ready["vssps_url"],
        ready["vsrm_url"],
    )
    cred = org["credential"]
    assert cred["kind"] == "username-password" and cred["client_id"] == ready["bot"]["client_id"]
    assert cred["from_keyvault"] == {
        "vault_url": ready["keyvault_url"],
        "username_secret": "bot-azure-devops-email",
        "password_secret": "bot-azure-devops-password",
    }
    assert config["clusters"] == [
        {"name": n, "context": n, "kubeconfig": ready["kubeconfig"]} for n in ("build-a", "build-b")
    ]
    keda, daily = config["tokens"]
    assert keda["name"] == "keda" and keda["scopes"] == ["vso.agentpools_manage"]
    assert [s["cluster"] for s in keda["sinks"]] == ["build-a", "build-b"]
    assert [c["pool"] for c in keda["consumers"]] == ["agents-a", "agents-b"]
    assert daily["scopes"] == ["vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release"]
    assert daily["sinks"] == [
        {"kind": "keyvault", "vault_url": ready["keyvault_url"], "secret": "azure-devops-token",
         "refresh_interval": "11s"}     # the Key Vault reader refreshes every 10 s: 10 s + a second
    ]
    assert daily["pipeline"] == {
        "project": "Operations",
        "definition": "daily-checks",
        "max_age": "2m",
    }
    assert Path(config["worker"]["webhook_token_file"]).read_text().strip()
    assert Path(config["worker"]["state_dir"]).is_dir()
    # the secrets patrol reads from files are private
    assert os.stat(azure["client_secret_file"]).st_mode & 0o077 == 0


def test_kubeconfig_works_with_the_real_kubernetes_client(sandbox: SandboxThread) -> None:
    for cluster in ("build-a", "build-b"):
        api_client = kube_config.new_client_from_config(
            config_file=sandbox.ready["kubeconfig"], context=cluster
        )
        try:
            secret = kube_client.CoreV1Api(api_client).read_namespaced_secret(
                "azure-devops-token", "azure-devops"
            )
            assert set(secret.data) == {"token"}
            scaledjob = kube_client.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "keda.sh", "v1alpha1", "azure-devops", "scaledjobs", "azure-devops-agent"
            )
            assert scaledjob["kind"] == "ScaledJob"
        finally:
            api_client.close()


def test_seeded_world_matches_the_real_seed(sandbox: SandboxThread, http: httpx.Client) -> None:
    world = sandbox.world
    bot = sandbox.ready["bot"]
    assert sandbox.call(world.kv.latest_value, "bot-azure-devops-email") == bot["username"]
    assert sandbox.call(world.kv.latest_value, "bot-azure-devops-password") == bot["password"]
    daily = sandbox.call(world.kv.latest, "azure-devops-token")
    pats = {p["authorizationId"]: p for p in sandbox.call(world.ado.pats)}
    daily_pat = pats[daily["tags"]["authorizationId"]]
    assert daily_pat["scope"] == "vso.agentpools vso.build vso.pipelineresources_use vso.release"
    assert daily["attributes"]["exp"] == int(daily_pat["valid_to"])
    keda_values = {
        sandbox.call(c.secret_value, "azure-devops", "azure-devops-token", "token")
        for c in world.clusters.values()
    }
    assert len(keda_values) == 1  # one PAT pasted into both clusters
    keda_id = sandbox.call(world.ado.pat_id_for_value, keda_values.pop())
    assert pats[keda_id]["scope"] == "vso.agentpools_manage" and pats[keda_id]["displayName"] == "keda-seed"
    assert pats[keda_id]["valid_to"] - time.time() < 700


def test_keda_and_the_pipeline_run(sandbox: SandboxThread, http: httpx.Client) -> None:
    control = sandbox.ready["control_url"]

    def healthy() -> bool:
        state = http.get(f"{control}/state").json()
        jobs = state["actors"]["scaledjobs"]
        return (
            len(jobs) == 2
            and all(j["polls"] >= 1 and j["auth_failures"] == 0 for j in jobs.values())
            and state["actors"]["pipeline"]["runs"] >= 1
        )

    assert wait_for(healthy)
    # a healthy world, no rotation: nothing harmed (KEDA/agents keys; other actors add theirs)
    harm = http.get(f"{control}/state").json()["harm"]
    assert {k: harm[k] for k in ("builds_interrupted", "agent_unregister_failures", "keda_failed_polls")} == {
        "builds_interrupted": 0, "agent_unregister_failures": 0, "keda_failed_polls": 0}


# ---------------------------------------------------------------- control API


def test_index_lists_routes(sandbox: SandboxThread, http: httpx.Client) -> None:
    routes = http.get(f"{sandbox.ready['control_url']}/").json()["routes"]
    assert "POST /faults" in routes and "GET /state" in routes and "POST /ado/sinks/revoke" in routes


def test_queue_jobs_on_a_pool(sandbox: SandboxThread, http: httpx.Client) -> None:
    control = sandbox.ready["control_url"]
    resp = http.post(f"{control}/ado/pools/agents-a/jobs", json={"count": 3, "definition": "nightly"})
    assert resp.status_code == 201
    ids = resp.json()["requestIds"]
    assert len(ids) == 3 and ids == sorted(ids)
    jobs = sandbox.call(sandbox.world.ado.jobs, resp.json()["pool"])
    assert {j.request_id for j in jobs if j.definition == "nightly"} == set(ids)
    assert http.post(f"{control}/ado/pools/no-such-pool/jobs", json={"count": 1}).status_code == 404
    assert http.post(f"{control}/ado/pools/agents-a/jobs", json={"count": 0}).status_code == 400
    assert http.post(f"{control}/ado/pools/agents-a/jobs", content=b"[1]").status_code == 400


def test_policy_routes_validate(sandbox: SandboxThread, http: httpx.Client) -> None:
    control = sandbox.ready["control_url"]
    assert http.get(f"{control}/ado/policy").json()["error_status"] == 200
    assert http.patch(f"{control}/ado/policy", json={"nonsense": 1}).status_code == 400
    assert http.patch(f"{control}/ado/policy", json={"lifespan_mode": "maybe"}).status_code == 400
    assert http.patch(f"{control}/ado/policy", json={"error_status": 418}).status_code == 400
    changed = http.patch(f"{control}/ado/policy", json={"restrict_global": True})
    assert changed.json()["restrict_global"] is True
    assert (
        http.patch(f"{control}/ado/policy", json={"restrict_global": False}).json()["restrict_global"]
        is False
    )


def test_fault_routes_validate_and_list(sandbox: SandboxThread, http: httpx.Client) -> None:
    control = sandbox.ready["control_url"]
    assert (
        http.post(f"{control}/faults", json={"kind": "status", "service": "ado", "bogus": 1}).status_code
        == 400
    )
    assert http.post(f"{control}/faults", json={"kind": "status"}).status_code == 400
    assert (
        http.post(
            f"{control}/faults", json={"kind": "status", "service": "ado", "path_regex": "("}
        ).status_code
        == 400
    )
    fid = http.post(
        f"{control}/faults",
        json={"kind": "status", "service": "keyvault", "status": 500, "path_regex": "/secrets/never-used"},
    ).json()["id"]
    assert [f["id"] for f in http.get(f"{control}/faults").json()["faults"]] == [fid]
    assert http.delete(f"{control}/faults").status_code == 204
    assert http.get(f"{control}/faults").json()["faults"] == []
    assert http.delete(f"{control}/faults/{fid}").status_code == 404


def test_keyvault_fault_answers_in_key_vault_shape(sandbox: SandboxThread, http: httpx.Client) -> None:
    ready = sandbox.ready
    http.post(
        f"{ready['control_url']}/faults",
        json={"kind": "status", "service": "keyvault", "status": 503, "retry_after": 2, "remaining": 1},
    )
    with httpx.Client(verify=ssl.create_default_context(cafile=ready["ca_bundle"])) as https:
        resp = https.get(f"{ready['keyvault_url']}/secrets/azure-devops-token?api-version=7.4")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "2"
    assert resp.json()["error"]["code"] == "ServiceUnavailable"


def test_requests_filter_by_service_prefix_and_since(sandbox: SandboxThread, http: httpx.Client) -> None:
    control = sandbox.ready["control_url"]
    kube = http.get(f"{control}/requests", params={"service": "kube"}).json()["requests"]
    assert {r["service"] for r in kube} == {"kube:build-a", "kube:build-b"}  # the start-up probes
    authorized = [r["headers"]["Authorization"] for r in kube if "Authorization" in r["headers"]]
    assert authorized and all(a.startswith("Bearer <redacted ") for a in authorized)
    later = http.get(f"{control}/requests", params={"service": "kube", "since": time.time() + 60}).json()
    assert later["count"] == 0
    assert http.get(f"{control}/requests", params={"since": "yesterday"}).status_code == 400
    limited = http.get(f"{control}/requests", params={"limit": 2}).json()
    assert limited["count"] == 2


def test_revoke_refresh_tokens_forces_a_new_sign_in(
    sandbox: SandboxThread, http: httpx.Client, entra_token: Callable[..., dict[str, Any]]
) -> None:
    ready = sandbox.ready
    grant = entra_token()
    assert grant["refresh_token"]
    token_url = f"{ready['entra_authority']}/{ready['bot']['tenant_id']}/oauth2/v2.0/token"
    refresh = {
        "grant_type": "refresh_token",
        "client_id": ready["bot"]["client_id"],
        "refresh_token": grant["refresh_token"],
        "scope": "499b84ac-1321-427f-aa17-267ca6975798/.default offline_access openid profile",
    }
    with httpx.Client(verify=ssl.create_default_context(cafile=ready["ca_bundle"])) as https:
        assert https.post(token_url, data=refresh).status_code == 200
        resp = http.post(f"{ready['control_url']}/entra/revoke-refresh-tokens", json={})
        assert resp.status_code == 200 and resp.json()["username"] == ready["bot"]["username"]
        denied = https.post(token_url, data=refresh)
    assert denied.status_code == 400 and denied.json()["error"] == "invalid_grant"
    assert (
        http.post(
            f"{ready['control_url']}/entra/revoke-refresh-tokens", json={"username": "nobody@x"}
        ).status_code
        == 404
    )


def test_state_never_contains_secret_values(sandbox: SandboxThread, http: httpx.Client) -> None:
    world = sandbox.world
    secrets = [
        sandbox.call(world.kv.latest_value, "azure-devops-token"),
        sandbox.call(world.kv.latest_value, "bot-azure-devops-password"),
        sandbox.call(world.clusters["build-a"].secret_value, "azure-devops", "azure-devops-token", "token"),
    ]
    state = http.get(f"{sandbox.ready['control_url']}/state")
    body = state.json()
    assert {"pats", "pools", "builds", "actors", "keyvault", "kubernetes", "policy"} <= set(body)
    assert all(s and s not in state.text for s in secrets)
    assert body["kubernetes"]["build-a"]["secrets"][0]["keys"]["token"]
    assert "value" not in body["keyvault"]["azure-devops-token"][0]


def test_revoke_by_sink_makes_keda_fail(sandbox: SandboxThread, http: httpx.Client) -> None:
    """Last in this module: it breaks the seeded KEDA PAT on purpose."""
    control = sandbox.ready["control_url"]
    sink = {
        "kind": "kubernetes-secret",
        "cluster": "build-a",
        "namespace": "azure-devops",
        "secret": "azure-devops-token",
        "key": "token",
    }
    assert http.post(f"{control}/ado/sinks/revoke", json={**sink, "cluster": "nope"}).status_code == 404
    resp = http.post(f"{control}/ado/sinks/revoke", json=sink)
    assert resp.status_code == 200
    assert resp.json()["status"] == "revoked" and resp.json()["displayName"] == "keda-seed"

    def keda_failing() -> bool:
        jobs = http.get(f"{control}/state").json()["actors"]["scaledjobs"]
        return all(j["auth_failures"] >= 1 for j in jobs.values())

    wait_for(keda_failing, timeout=15)
    # no other PAT in the Secret: KEDA's refresh-and-retry fails too, and that is counted as harm
    assert wait_for(lambda: http.get(f"{control}/state").json()["harm"]["keda_failed_polls"] >= 2, timeout=15)
    expired = http.post(
        f"{control}/ado/sinks/expire", json={"kind": "keyvault", "secret": "azure-devops-token"}
    )
    assert expired.status_code == 200 and expired.json()["status"] == "expired"
    assert expired.json()["displayName"] == "daily-checks-seed"
    events = http.get(f"{control}/state").json()["kubernetes"]["build-a"]["events"]
    assert any(e["reason"] == "KEDAScalerFailed" for e in events)


# ---------------------------------------------------------------- lifecycle


def test_thread_starts_fast_and_stops_cleanly(tmp_path: Path) -> None:
    params = scenario("default", job_interval=None, pipeline_interval=None)
    started = time.monotonic()
    sb = SandboxThread(str(tmp_path), params).start()
    try:
        assert time.monotonic() - started < 2.0
        assert sb.call(lambda: 41 + 1) == 42
    finally:
        sb.stop()
    with pytest.raises(RuntimeError):
        sb.call(lambda: 1)
    with httpx.Client() as http, pytest.raises(httpx.ConnectError):
        http.get(sb.ready["control_url"])


def test_large_scenario_has_the_volume(tmp_path: Path) -> None:
    with SandboxThread(str(tmp_path), "large") as sb:
        assert len(sb.ready["clusters"]) == 10
        assert len(sb.call(sb.world.ado.pats)) == 1000
        assert len(sb.call(sb.world.ado.pools)) >= 100
        config = yaml.safe_load(Path(sb.ready["config"]).read_text())
        assert len(config["tokens"][0]["consumers"]) == 10


def _wait_ready(path: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ready: dict[str, Any] = json.loads(path.read_text())
    return ready


@pytest.mark.parametrize("how", ["duration", "sigterm"])
def test_command_line_writes_ready_file_and_exits_cleanly(tmp_path: Path, how: str) -> None:
    ready_file = tmp_path / "out" / "ready.json"
    args = [sys.executable, "-m", "sandbox", "--ready-file", str(ready_file), "--dir", str(tmp_path / "dir")]
    if how == "duration":
        args += ["--duration", "1.5"]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, env=env, cwd=tempfile.gettempdir())
    try:
        ready = _wait_ready(ready_file, proc)
        assert set(READY_KEYS) <= set(ready)
        with httpx.Client() as http:
            assert http.get(f"{ready['control_url']}/state").status_code == 200
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr and b"Warning" not in stderr
    assert not ready_file.exists()
    assert (tmp_path / "dir" / "patrol.yaml").exists()
