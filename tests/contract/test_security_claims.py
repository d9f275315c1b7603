"""Claims of docs/security.md that no other test checked, against the sandbox over real HTTP(S).

- The exporter only reads: every request it sends to Key Vault and to the Kubernetes API is a
  read, so Key Vault Secrets User and the read-only Role are all it needs.
- A stolen webhook bearer token starts rotations of configured tokens and nothing else: the
  labels of an alert and the fields of ``POST /rotations`` cannot choose the scopes, the
  organization, the lifetime or the sinks of the PAT patrol creates, and no answer carries it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from core.config import load_config
from core.retry import Backoff
from exporter.assembly import CoreClients, build
from remediation.service import WorkerThread
from sandbox.app import SandboxThread
from tests.e2e.test_rotation_sandbox import CLUSTERS, KEY, NS, SECRET, WEBHOOK_TOKEN, World, _world, alert_payload

pytestmark = pytest.mark.contract

QUICK = Backoff(delays=(0.05,))
ROOT = Path(__file__).resolve().parents[2]
RBAC, REMOTE_RBAC = ROOT / "deploy" / "base" / "rbac.yaml", ROOT / "deploy" / "remote-cluster" / "rbac.yaml"
READS = {"GET", "HEAD"}


def kube_request(record: Any) -> tuple[str, str, str, str, str | None]:
    """(verb, namespace, API group, resource, name) of a request to a Kubernetes API server."""
    parts = record.path.split("?")[0].strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    assert rest[0] == "namespaces" and len(rest) in (3, 4), f"not a namespaced request: {record.path}"
    namespace, resource, name = rest[1], rest[2], rest[3] if len(rest) == 4 else None
    watch = "watch=true" in record.query.lower() or "watch=1" in record.query
    verb = {"GET": "watch" if watch else ("get" if name else "list"), "POST": "create", "PATCH": "patch",
            "PUT": "update", "DELETE": "delete" if name else "deletecollection"}[record.method]
    return verb, namespace, group, resource, name


def role_rules(path: Path, role: str, namespace: str) -> list[dict[str, Any]]:
    return [rule for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == "Role"
            and (doc["metadata"]["name"], doc["metadata"]["namespace"]) == (role, namespace)
            for rule in doc["rules"]]


def granted(rules: list[dict[str, Any]], verb: str, group: str, resource: str, name: str | None) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and (not r.get("resourceNames") or name in r["resourceNames"]) for r in rules)


def ungranted(records: list[Any], roles: list[tuple[Path, str]]) -> list[tuple[str, ...]]:
    """The Kubernetes requests among ``records`` that one of ``roles`` (file, Role name) refuses."""
    refused = []
    for record in records:
        verb, namespace, group, resource, name = kube_request(record)
        for path, role in roles:
            if not granted(role_rules(path, role, namespace), verb, group, resource, name):
                refused.append((f"{path.parent.name}/{role}", verb, f"{group}/{resource}", namespace, name or ""))
    return refused


def test_the_exporter_only_reads_and_its_role_grants_every_read(sandbox: SandboxThread) -> None:
    cfg = load_config(sandbox.ready["config"])
    since = time.time()
    exporter = build(cfg, CoreClients(cfg, {}, backoff=QUICK, probe_backoff=QUICK), watch_timeout=1)
    try:
        exporter.refresher.refresh_once()
        exporter.refresher.refresh_once()
    finally:
        exporter.close()
    records = sandbox.call(sandbox.world.log.records, None, since)
    vault = [r for r in records if r.service == "keyvault"]
    kube = [r for r in records if r.service.startswith("kube")]
    assert vault and kube, "the exporter read no sink: the test would prove nothing"
    # Nothing else in the sandbox talks to Key Vault or the Kubernetes API servers over HTTP (its
    # KEDA and agents are in-process actors), so every request here is the exporter's.
    assert [(r.service, r.method, r.path) for r in vault + kube if r.method not in READS] == []
    assert ungranted(kube, [(RBAC, "patrol-exporter")]) == []


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path)


def secret_names(world: World, cluster: str) -> set[tuple[str, str]]:
    """Every Secret in the cluster, by namespace and name."""
    return {(o["metadata"]["namespace"], o["metadata"]["name"])
            for o in world.call(world.sb.world.clusters[cluster].list_objects, "v1", "secrets")}


async def _send(url: str, path: str, body: dict[str, Any] | bytes) -> tuple[int, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session, session.post(url + path, data=raw, headers=headers) as resp:
        return resp.status, await resp.text()


async def _get(url: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as resp:
        return resp.status, await resp.text()


def test_a_stolen_webhook_token_cannot_choose_scopes_organization_lifetime_or_sinks(world: World) -> None:
    token = next(t for t in world.config.tokens if t.name == "keda")
    other_secrets = {c: secret_names(world, c) for c in CLUSTERS}
    vault_before = world.kv_value()
    pats_before = set(world.pats())
    # An alert carrying every label an attacker might hope patrol reads.
    doc = json.loads(alert_payload())
    doc["alerts"][0]["labels"].update({
        "scopes": "app_token", "scope": "vso.tokens", "organization": "elsewhere", "lifetime": "365d",
        "all_orgs": "true", "allOrgs": "true", "sink": "attacker", "secret": "attacker-secret",
        "namespace": "kube-system", "cluster": "attacker", "vault_url": "https://attacker.vault.azure.net",
        "compromised": "false"})
    world.journal.close()
    service = world.service()
    answers: list[str] = []
    with WorkerThread(service) as worker:
        # "rotate now" takes four fields; anything that would choose what the PAT is, is refused.
        for extra in ({"scopes": ["app_token"]}, {"organization": "elsewhere"}, {"lifetime": "365d"},
                      {"sinks": [{"kind": "keyvault", "vault_url": "https://attacker.vault.azure.net"}]}):
            status, text = asyncio.run(_send(worker.url, "/rotations", {"token": "keda", **extra}))
            assert status == 400 and "unknown field" in text, (extra, status, text)
            answers.append(text)
        assert service.journal.count() == 0
        status, text = asyncio.run(_send(worker.url, "/webhook/alertmanager", json.dumps(doc).encode()))
        assert status == 202, text
        answers.append(text)
        assert service.dispatcher.wait_idle(90)
        [record] = service.journal.recent("keda")
        assert record.outcome == "succeeded", record.error
        for path in ("/rotations", f"/rotations/{record.id}", "/metrics"):
            answers.append(asyncio.run(_get(worker.url, path))[1])
    world.reopen()
    held = world.assert_converged()
    [new] = set(world.pats()) - pats_before
    assert new == held
    pat = world.pats()[new]
    # The PAT is the configured one: its scopes, one organization, at most the configured lifetime.
    assert sorted(pat["scope"].split()) == sorted(token.scopes)
    assert pat["allOrgs"] is False and pat["owner"] == world.sb.world.seeded.bot_oid
    lifetime = pat["valid_to"] - datetime.now(UTC).timestamp()
    assert lifetime <= token.lifetime.total_seconds() + 60
    # It went to the configured sinks only: no other Secret, the other token's vault value untouched.
    assert {c: secret_names(world, c) for c in CLUSTERS} == other_secrets
    assert world.kv_value() == vault_before
    new_value = world.sink_value(CLUSTERS[0])
    assert new_value and all(world.call(world.sb.world.clusters[c].secret_value, NS, SECRET, KEY) == new_value
                             for c in CLUSTERS)
    # No answer to the holder of the bearer carries a token value.
    blob = "\n".join(answers)
    for value in world.values | {new_value}:
        assert value not in blob


def test_every_kubernetes_and_key_vault_request_of_a_rotation_is_one_the_worker_roles_grant(world: World) -> None:
    """Both rotations of the sandbox (Kubernetes Secrets + ScaledJobs, and Key Vault), checked
    request by request against the worker's Role (deploy/base) and the remote cluster's."""
    world.annotate_seed()
    since = time.time()
    assert world.rotate("keda").outcome == "succeeded"
    assert world.rotate("daily-checks").outcome == "succeeded"
    records = world.call(world.sb.world.log.records, None, since)
    kube = [r for r in records if r.service.startswith("kube")]
    assert {kube_request(r)[0] for r in kube} >= {"get", "list", "patch", "create"}
    assert ungranted(kube, [(RBAC, "patrol-worker"), (REMOTE_RBAC, "patrol-remote")]) == []
    # Key Vault: reads, a new version (PUT) and its properties (PATCH); never a delete or purge,
    # which neither Key Vault Secrets Officer's use here nor patrol needs.
    vault = {(r.method, r.path.split("?")[0].rstrip("/").split("/")[2]) for r in records if r.service == "keyvault"}
    sinks = {s.secret for t in world.config.tokens for s in t.sinks if hasattr(s, "vault_url")}
    assert {method for method, _ in vault} <= {"GET", "PUT", "PATCH"} and ("PUT", "azure-devops-token") in vault
    assert {name for method, name in vault if method != "GET"} <= sinks
