"""load_config: the two-cluster example loads; every rule rejects with file, key path and fix."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from core.config import (
    Config,
    ConfigErrors,
    ConfigProblem,
    DurationError,
    KeyVaultSink,
    KubernetesSecretSink,
    format_duration,
    load_config,
    parse_duration,
)
from core.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"
TWO_CLUSTERS = FIXTURES / "two-clusters.yaml"

Data = dict[str, Any]


def base() -> Data:
    """A small valid config as Python data, to mutate per test."""
    return {
        "organizations": [{
            "name": "contoso", "url": "https://dev.azure.com/contoso",
            "credential": {"kind": "username-password", "username_env": "BOT_USER",
                           "password_env": "BOT_PASSWORD"},
        }],
        "clusters": [{"name": "build-a", "context": "build-a"}, {"name": "build-b", "context": "build-b"}],
        "tokens": [
            {"name": "keda", "organization": "contoso", "scopes": ["vso.agentpools_manage"],
             "lifetime": "30d", "renew_before": "7d",
             "sinks": [{"kind": "kubernetes-secret", "cluster": "build-a", "namespace": "azure-devops",
                        "secret": "azure-devops-token"}],
             "consumers": [{"kind": "keda-scaledjob", "cluster": "build-a", "namespace": "azure-devops",
                            "name": "azure-devops-agent", "pool": "agents-a"}]},
            {"name": "daily-checks", "organization": "contoso",
             "scopes": ["vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release"],
             "lifetime": "30d", "renew_before": "7d",
             "sinks": [{"kind": "keyvault", "vault_url": "https://contoso-checks.vault.azure.net",
                        "secret": "azure-devops-token"}]},
        ],
    }


def write(tmp_path: Path, data: Data | str, name: str = "patrol.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def load(tmp_path: Path, data: Data | str) -> Config:
    return load_config(write(tmp_path, data))


def errors(tmp_path: Path, change: Callable[[Data], None] | str) -> tuple[str, dict[str, ConfigError]]:
    """Load a broken config; return the file and its problems by key path."""
    if isinstance(change, str):
        path = write(tmp_path, change)
    else:
        data = base()
        change(data)
        path = write(tmp_path, data)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert info.value.file == path
    by_path: dict[str, ConfigError] = {}
    for problem in info.value.problems:
        assert problem.file == path
        by_path.setdefault(problem.path, problem)
    return path, by_path


def only(tmp_path: Path, change: Callable[[Data], None] | str, key_path: str) -> ConfigError:
    """The single problem a change causes, which must be at ``key_path``."""
    _, found = errors(tmp_path, change)
    assert list(found) == [key_path], found
    return found[key_path]


# --------------------------------------------------------------------------- what loads


def test_two_cluster_example_loads() -> None:
    config = load_config(str(TWO_CLUSTERS))
    assert config.source == str(TWO_CLUSTERS)
    org = config.organization("contoso")
    assert org.url == "https://dev.azure.com/contoso"
    assert org.vssps_url == "https://vssps.dev.azure.com/contoso"
    assert org.vsrm_url == "https://vsrm.dev.azure.com/contoso"
    assert org.credential.kind == "username-password"
    assert org.credential.from_keyvault is not None
    assert org.credential.from_keyvault.password_secret == "bot-azure-devops-password"
    assert [c.name for c in config.clusters] == ["build-a", "build-b"]
    assert config.cluster("build-b").context == "build-b"
    keda = config.token("keda")
    assert keda.scopes == ("vso.agentpools_manage",)
    assert keda.lifetime == timedelta(days=30)
    assert keda.renew_before == timedelta(days=7)
    assert keda.sinks == (
        KubernetesSecretSink(cluster="build-a", namespace="azure-devops", secret="azure-devops-token"),
        KubernetesSecretSink(cluster="build-b", namespace="azure-devops", secret="azure-devops-token"),
    )
    assert [c.pool for c in keda.consumers] == ["agents-a", "agents-b"]
    assert keda.consumers[0].resource == "scaledjobs"
    daily = config.token("daily-checks")
    assert daily.scopes == ("vso.agentpools", "vso.build", "vso.pipelineresources_use", "vso.release")
    assert daily.sinks == (KeyVaultSink(vault_url="https://contoso-checks.vault.azure.net",
                                        secret="azure-devops-token"),)
    assert daily.pipeline is not None
    assert daily.pipeline.max_age == timedelta(hours=26)
    assert daily.pipeline.definition == "daily-checks"


def test_optional_sections_take_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, base())
    assert config.azure.credential == "default"
    assert config.azure.verify_challenge_resource is True
    assert config.exporter.listen == "0.0.0.0:9877"
    assert config.exporter.keda_interval == timedelta(seconds=30)
    assert config.worker.state_dir == "/var/lib/patrol"
    assert config.worker.lease is None
    sink = config.token("keda").sinks[0]
    assert isinstance(sink, KubernetesSecretSink)
    assert (sink.key, sink.flux) == ("token", "refuse")


def test_sections_and_lease_are_read(tmp_path: Path) -> None:
    data = base()
    data["azure"] = {"credential": "client-secret", "tenant_id": "t", "client_id": "c",
                     "client_secret_file": "/run/secret", "verify_challenge_resource": False}
    data["exporter"] = {"listen": "127.0.0.1:0", "keda_interval": "2s", "concurrency": 2}
    data["worker"] = {"listen": "[::]:9878", "cooldown": "0s", "verify_deadline": "1h30m",
                      "lease": {"cluster": "build-b", "namespace": "patrol", "duration": "20s"}}
    config = load(tmp_path, data)
    assert config.azure.credential == "client-secret"
    assert config.azure.client_secret_file == "/run/secret"
    assert config.azure.verify_challenge_resource is False
    assert config.exporter.listen == "127.0.0.1:0"
    assert config.exporter.keda_interval == timedelta(seconds=2)
    assert config.exporter.concurrency == 2
    assert config.worker.cooldown == timedelta(0)
    assert config.worker.verify_deadline == timedelta(hours=1, minutes=30)
    assert config.worker.lease is not None
    assert (config.worker.lease.cluster, config.worker.lease.name) == ("build-b", "patrol-worker")
    assert config.worker.lease.duration == timedelta(seconds=20)
    assert config.worker.url is None


def test_worker_url_is_an_http_url(tmp_path: Path) -> None:
    data = base()
    data["worker"] = {"url": "http://patrol-worker.patrol.svc:9878/"}
    assert load(tmp_path, data).worker.url == "http://patrol-worker.patrol.svc:9878"
    problem = only(tmp_path, lambda d: d.update(worker={"url": "patrol-worker:9878"}), "worker.url")
    assert "http://patrol-worker.patrol.svc:9878" in problem.fix


def test_sandbox_style_organization_with_explicit_urls(tmp_path: Path) -> None:
    data = base()
    data["organizations"][0].update(url="http://127.0.0.1:4100/sandbox-org/",
                                    vssps_url="http://127.0.0.1:4100/vssps/sandbox-org",
                                    vsrm_url="http://127.0.0.1:4100/vsrm/sandbox-org")
    data["organizations"][0]["credential"]["authority"] = "https://127.0.0.1:4101"
    org = load(tmp_path, data).organization("contoso")
    assert org.url == "http://127.0.0.1:4100/sandbox-org"
    assert org.vssps_url == "http://127.0.0.1:4100/vssps/sandbox-org"
    assert org.vsrm_url == "http://127.0.0.1:4100/vsrm/sandbox-org"
    assert org.credential.authority == "https://127.0.0.1:4101"


def test_overrides_win_over_derived_urls(tmp_path: Path) -> None:
    data = base()
    data["organizations"][0]["vsrm_url"] = "https://vsrm.example.test/contoso"
    org = load(tmp_path, data).organization("contoso")
    assert org.vssps_url == "https://vssps.dev.azure.com/contoso"
    assert org.vsrm_url == "https://vsrm.example.test/contoso"


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc" / "patrol"
    conf_dir.mkdir(parents=True)
    data = base()
    data["clusters"][0]["kubeconfig"] = "kube/config"
    data["clusters"][1]["kubeconfig"] = "/abs/kubeconfig"
    data["organizations"][0]["credential"] = {"kind": "device-code", "record_file": "../record.json"}
    data["azure"] = {"credential": "client-secret", "tenant_id": "t", "client_id": "c",
                     "client_secret_file": "secret.txt", "ca_bundle": "./ca.pem"}
    data["worker"] = {"state_dir": "state", "webhook_token_file": "tokens/webhook"}
    config = load_config(write(conf_dir, data))
    assert os.getcwd() != str(conf_dir)
    assert config.cluster("build-a").kubeconfig == str(conf_dir / "kube" / "config")
    assert config.cluster("build-b").kubeconfig == "/abs/kubeconfig"
    assert config.organization("contoso").credential.record_file == str(tmp_path / "etc" / "record.json")
    assert config.azure.client_secret_file == str(conf_dir / "secret.txt")
    assert config.azure.ca_bundle == str(conf_dir / "ca.pem")
    assert config.worker.state_dir == str(conf_dir / "state")
    assert config.worker.webhook_token_file == str(conf_dir / "tokens" / "webhook")


def test_in_cluster_cluster(tmp_path: Path) -> None:
    data = base()
    data["clusters"][1] = {"name": "build-b", "in_cluster": True}
    cluster = load(tmp_path, data).cluster("build-b")
    assert cluster.in_cluster is True
    assert cluster.context is None


def test_numeric_pipeline_definition_is_kept_as_text(tmp_path: Path) -> None:
    data = base()
    data["tokens"][1]["pipeline"] = {"project": "P", "definition": 42}
    pipeline = load(tmp_path, data).token("daily-checks").pipeline
    assert pipeline is not None
    assert pipeline.definition == "42"


# --------------------------------------------------------------------------- file-level problems


def test_missing_file_names_it() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config("/nonexistent/patrol.yaml")
    assert info.value.file == "/nonexistent/patrol.yaml"
    assert "no such file" in str(info.value)
    assert "PATROL_CONFIG" in info.value.fix


def test_empty_file(tmp_path: Path) -> None:
    problem = only(tmp_path, "# nothing here\n", "")
    assert "empty" in problem.problem
    assert "patrol config example" in problem.fix


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    problem = only(tmp_path, "- organizations\n- tokens\n", "")
    assert "expected a mapping" in problem.problem


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path, found = errors(tmp_path, "organizations:\n  - name: a\n    url: [unclosed\ntokens: []\n")
    problem = found[""]
    assert isinstance(problem, ConfigProblem)
    assert "YAML syntax error at line" in problem.problem
    assert "column" in problem.problem
    assert problem.line is not None
    assert str(problem).startswith(f"{path}:{problem.line}: ")


def test_duplicate_yaml_keys_are_reported(tmp_path: Path) -> None:
    text = (TWO_CLUSTERS.read_text()
            .replace("    lifetime: 30d\n", "    lifetime: 30d\n    lifetime: 60d\n", 1))
    problem = only(tmp_path, text, "tokens[0].lifetime")
    assert "written twice" in problem.problem
    assert isinstance(problem, ConfigProblem)
    assert problem.line == text.splitlines().index("    lifetime: 60d") + 1


def test_problems_carry_the_line(tmp_path: Path) -> None:
    text = TWO_CLUSTERS.read_text().replace("cluster: build-b, namespace: azure-devops, secret",
                                              "cluster: bui1d-b, namespace: azure-devops, secret")
    path, found = errors(tmp_path, text)
    problem = found["tokens[0].sinks[1].cluster"]
    assert isinstance(problem, ConfigProblem)
    expected_line = next(i for i, line in enumerate(text.splitlines(), 1) if "bui1d-b" in line)
    assert problem.line == expected_line
    assert str(problem).startswith(f"{path}:{expected_line}: tokens[0].sinks[1].cluster: ")


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    def change(d: Data) -> None:
        d["token"] = d.pop("tokens")
    problem = only(tmp_path, change, "token")      # not also "tokens: required key is missing"
    assert problem.problem == "unknown key 'token'"
    assert problem.fix == "did you mean 'tokens'?"


@pytest.mark.parametrize(("where", "key", "suggestion"), [
    (lambda d: d["tokens"][0], "renewBefore", "renew_before"),
    (lambda d: d["tokens"][0], "scope", "scopes"),
    (lambda d: d["tokens"][0]["sinks"][0], "namespce", "namespace"),
    (lambda d: d["organizations"][0]["credential"], "tennant_id", "tenant_id"),
    (lambda d: d["clusters"][0], "kube_config", "kubeconfig"),
])
def test_unknown_nested_key_suggests(tmp_path: Path, where: Callable[[Data], Data], key: str,
                                     suggestion: str) -> None:
    data = base()
    where(data)[key] = "x"
    path = write(tmp_path, data)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    matching = [p for p in info.value.problems if p.path.endswith("." + key)]
    assert len(matching) == 1, info.value
    assert matching[0].problem == f"unknown key {key!r}"
    assert matching[0].fix == f"did you mean {suggestion!r}?"


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["clusters"][0].update(zzz=1), "clusters[0].zzz")
    assert problem.fix == "remove it; keys allowed here: context, in_cluster, kubeconfig, name"


# --------------------------------------------------------------------------- scopes and global PATs


def test_unknown_scope_suggests_the_closest(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(scopes=["vso.agentpool_manage"]),
                   "tokens[0].scopes[0]")
    assert problem.problem == "unknown Azure DevOps scope 'vso.agentpool_manage'"
    assert problem.fix == "did you mean 'vso.agentpools_manage'?"


@pytest.mark.parametrize("scope", ["app_token", "user_impersonation"])
def test_full_access_scopes_are_rejected(tmp_path: Path, scope: str) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][1]["scopes"].append(scope),
                   "tokens[1].scopes[4]")
    assert "full access" in problem.problem
    assert "least privilege" in problem.fix


@pytest.mark.parametrize("key", ["allOrgs", "all_orgs"])
def test_global_pats_are_rejected(tmp_path: Path, key: str) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update({key: True}), f"tokens[0].{key}")
    assert "1 Dec 2026" in problem.problem
    assert "allOrgs: false" in problem.fix


def test_all_orgs_false_is_not_a_setting(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(allOrgs=False), "tokens[0].allOrgs")
    assert problem.problem.startswith("not a setting")
    assert problem.fix == "remove it"


def test_scopes_must_be_a_non_empty_list(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(scopes=[]), "tokens[0].scopes")
    assert problem.problem == "is empty"
    problem = only(tmp_path, lambda d: d["tokens"][0].update(scopes="vso.build vso.release"),
                   "tokens[0].scopes")
    assert problem.fix == "write 'scopes: [vso.build, vso.release]'"


def test_duplicate_scope(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][1]["scopes"].append("vso.build"), "tokens[1].scopes[4]")
    assert "listed twice" in problem.problem


# --------------------------------------------------------------------------- organizations


def test_organization_url_is_required(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["organizations"][0].pop("url"), "organizations[0].url")
    assert problem.problem == "required key is missing"
    assert problem.fix == "add 'url: https://dev.azure.com/myorg'"


def test_non_dev_azure_url_needs_explicit_vssps_and_vsrm(tmp_path: Path) -> None:
    def change(d: Data) -> None:
        d["organizations"][0].update(url="https://ado.example.test/contoso",
                                     vssps_url="https://vssps.example.test/contoso")
    problem = only(tmp_path, change, "organizations[0].url")
    assert "can only be derived" in problem.problem
    assert problem.fix.startswith("add vsrm_url ")


def test_legacy_visualstudio_url_points_to_dev_azure(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["organizations"][0].update(url="https://contoso.visualstudio.com"),
                   "organizations[0].url")
    assert "https://dev.azure.com/contoso" in problem.fix


def test_dev_azure_url_with_a_project_is_rejected(tmp_path: Path) -> None:
    problem = only(tmp_path,
                   lambda d: d["organizations"][0].update(url="https://dev.azure.com/contoso/PlatformOps"),
                   "organizations[0].url")
    assert "'url: https://dev.azure.com/contoso'" in problem.fix


def test_duplicate_organization_name(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["organizations"].append(copy.deepcopy(d["organizations"][0])),
                   "organizations[1].name")
    assert "already used by organizations[0]" in problem.problem


def test_unknown_credential_kind(tmp_path: Path) -> None:
    problem = only(tmp_path,
                   lambda d: d["organizations"][0].update(credential={"kind": "device_code"}),
                   "organizations[0].credential.kind")
    assert problem.fix.startswith("did you mean 'device-code'?")


def test_username_password_needs_a_source(tmp_path: Path) -> None:
    def change(d: Data) -> None:
        d["organizations"][0]["credential"] = {"kind": "username-password", "username_env": "BOT_USER"}
    problem = only(tmp_path, change, "organizations[0].credential")
    assert "username_env" in problem.fix
    assert "from_keyvault" in problem.fix


def test_username_password_not_both_sources(tmp_path: Path) -> None:
    def change(d: Data) -> None:
        d["organizations"][0]["credential"]["from_keyvault"] = {
            "vault_url": "https://v.vault.azure.net", "username_secret": "u", "password_secret": "p"}
    problem = only(tmp_path, change, "organizations[0].credential")
    assert "choose one" in problem.fix


def test_key_of_another_credential_kind(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["organizations"][0]["credential"].update(record_file="r.json"),
                   "organizations[0].credential.record_file")
    assert problem.problem == "'record_file' applies only to kind device-code"


def test_secrets_in_the_file_are_rejected_and_never_echoed(tmp_path: Path) -> None:
    def change(d: Data) -> None:
        d["organizations"][0]["credential"]["password"] = "hunter2-very-secret"
        d["organizations"][0]["credential"]["password_env"] = "hunter2 not a variable"
    data = base()
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    text = str(info.value)
    assert "hunter2" not in text
    by_path = {p.path: p for p in info.value.problems}
    assert "password_env" in by_path["organizations[0].credential.password"].fix
    problem = by_path["organizations[0].credential.password_env"].problem
    assert problem == "the value is not a valid password_env"


# --------------------------------------------------------------------------- clusters


def test_duplicate_cluster_name(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["clusters"].append({"name": "build-a", "context": "x"}),
                   "clusters[2].name")
    assert "already used by clusters[0]" in problem.problem


def test_cluster_needs_context_or_in_cluster(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["clusters"][0].pop("context"), "clusters[0]")
    assert "'context: NAME'" in problem.fix
    assert "'in_cluster: true'" in problem.fix


def test_cluster_not_both_context_and_in_cluster(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["clusters"][0].update(in_cluster=True), "clusters[0]")
    assert "not both" in problem.fix


def test_in_cluster_with_kubeconfig(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["clusters"].__setitem__(
        0, {"name": "build-a", "in_cluster": True, "kubeconfig": "k"}), "clusters[0].kubeconfig")
    assert "remove kubeconfig" in problem.fix


# --------------------------------------------------------------------------- tokens


def test_duplicate_token_name(tmp_path: Path) -> None:
    def change(d: Data) -> None:
        d["tokens"][1]["name"] = "keda"
    problem = only(tmp_path, change, "tokens[1].name")
    assert "already used by tokens[0]" in problem.problem


def test_token_name_must_be_a_short_name(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(name="Keda Token"), "tokens[0].name")
    assert "lowercase letters" in problem.fix


def test_token_organization_must_exist(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(organization="contso"), "tokens[0].organization")
    assert problem.problem == "unknown organization 'contso'"
    assert problem.fix.startswith("did you mean 'contoso'?")


def test_lifetime_at_most_a_year(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(lifetime="366d"), "tokens[0].lifetime")
    assert "365d or less" in problem.fix
    assert load(tmp_path, _set(base(), lifetime="365d")).token("keda").lifetime == timedelta(days=365)


def _set(data: Data, **values: Any) -> Data:
    data["tokens"][0].update(values)
    return data


def test_renew_before_shorter_than_lifetime(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(renew_before="30d"), "tokens[0].renew_before")
    assert "shorter than lifetime" in problem.problem


def test_renew_before_positive(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(renew_before="0s"), "tokens[0].renew_before")
    assert problem.problem == "must be longer than zero"


def test_duration_without_unit(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(lifetime=10), "tokens[0].lifetime")
    assert problem.fix == "write 10s, 10m, 10h or 10d"


def test_negative_duration(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(renew_before="-7d"), "tokens[0].renew_before")
    assert "negative" in problem.problem
    assert "'7d'" in problem.fix


def test_token_without_sinks(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].pop("sinks"), "tokens[0].sinks")
    assert problem.problem == "required key is missing"
    problem = only(tmp_path, lambda d: d["tokens"][0].update(sinks=[]), "tokens[0].sinks")
    assert problem.problem == "is empty"
    assert problem.fix.startswith("list at least one")


def test_sink_cluster_must_exist(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0]["sinks"][0].update(cluster="bui1d-a"),
                   "tokens[0].sinks[0].cluster")
    assert problem.problem == "unknown cluster 'bui1d-a'"
    assert problem.fix.startswith("did you mean 'build-a'?")


def test_sink_flux_policy(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0]["sinks"][0].update(flux="ignore"),
                   "tokens[0].sinks[0].flux")
    assert "refuse, ignore-drift-risk" in problem.fix
    data = base()
    data["tokens"][0]["sinks"][0]["flux"] = "ignore-drift-risk"
    sink = load(tmp_path, data).token("keda").sinks[0]
    assert isinstance(sink, KubernetesSecretSink)
    assert sink.flux == "ignore-drift-risk"


def test_keyvault_sink_must_be_https(tmp_path: Path) -> None:
    problem = only(tmp_path,
                   lambda d: d["tokens"][1]["sinks"][0].update(vault_url="http://contoso-checks.vault.azure.net"),
                   "tokens[1].sinks[0].vault_url")
    assert problem.fix.startswith("use https://")


def test_unknown_sink_kind(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0]["sinks"][0].update(kind="kubernetes_secret"),
                   "tokens[0].sinks[0].kind")
    assert problem.fix.startswith("did you mean 'kubernetes-secret'?")


def test_key_of_the_other_sink_kind(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][1]["sinks"][0].update(namespace="x"),
                   "tokens[1].sinks[0].namespace")
    assert problem.problem == "unknown key 'namespace'"


def test_duplicate_sink_in_a_token(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0]["sinks"].append(dict(d["tokens"][0]["sinks"][0])),
                   "tokens[0].sinks[1]")
    assert "listed twice" in problem.problem
    assert "remove the duplicate" in problem.fix


def test_two_tokens_writing_one_sink(tmp_path: Path) -> None:
    def change(d: Data) -> None:
        d["tokens"][1]["sinks"].append(dict(d["tokens"][0]["sinks"][0]))
    problem = only(tmp_path, change, "tokens[1].sinks[1]")
    assert "also written by tokens[0].sinks[0]" in problem.problem


def test_consumer_cluster_must_exist(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0]["consumers"][0].update(cluster="nowhere"),
                   "tokens[0].consumers[0].cluster")
    assert problem.fix == "define it under 'clusters:' or use one of: build-a, build-b"


def test_duplicate_consumer(tmp_path: Path) -> None:
    problem = only(tmp_path,
                   lambda d: d["tokens"][0]["consumers"].append(dict(d["tokens"][0]["consumers"][0])),
                   "tokens[0].consumers[1]")
    assert "listed twice" in problem.problem


# --------------------------------------------------------------------------- services


def test_lease_cluster_must_exist(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d.update(worker={"lease": {"cluster": "x", "namespace": "patrol"}}),
                   "worker.lease.cluster")
    assert problem.problem == "unknown cluster 'x'"


def test_client_secret_credential_needs_its_parts(tmp_path: Path) -> None:
    _, found = errors(tmp_path, lambda d: d.update(azure={"credential": "client-secret"}))
    assert set(found) == {"azure", "azure.tenant_id", "azure.client_id"}
    assert "client_secret_file" in found["azure"].fix


def test_webhook_token_in_the_file_is_rejected(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d.update(worker={"webhook_token": "s3cr3t-value"}),
                   "worker.webhook_token")
    assert "PATROL_WEBHOOK_TOKEN" in problem.fix
    assert "s3cr3t" not in str(problem)


def test_listen_address(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d.update(exporter={"listen": "9877"}), "exporter.listen")
    assert problem.fix.startswith("write e.g. 'listen: 0.0.0.0:9877'")


# --------------------------------------------------------------------------- all at once


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def change(d: Data) -> None:
        d["clusters"][0].pop("context")                          # clusters[0]
        d["tokens"][0].update(lifetime="30", allOrgs=True)      # tokens[0].lifetime, tokens[0].allOrgs
        d["tokens"][1]["sinks"][0]["vault_url"] = "http://x"    # tokens[1].sinks[0].vault_url
        d["worker"] = {"cooldown": "soon"}                       # worker.cooldown
    path, found = errors(tmp_path, change)
    assert set(found) == {"clusters[0]", "tokens[0].lifetime", "tokens[0].allOrgs",
                          "tokens[1].sinks[0].vault_url", "worker.cooldown"}
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    text = str(info.value)
    assert text.splitlines()[0] == f"{path}: 5 problems:"
    for problem in info.value.problems:
        assert str(problem) in text
    lines = [p.line or 0 for p in info.value.problems if isinstance(p, ConfigProblem)]
    assert lines == sorted(lines)


def test_a_single_problem_mirrors_it() -> None:
    one = ConfigProblem("f.yaml", "tokens[0].name", "bad", "fix it", 3)
    err = ConfigErrors("f.yaml", [one])
    assert (err.path, err.problem, err.fix) == ("tokens[0].name", "bad", "fix it")
    assert str(err) == "f.yaml:3: tokens[0].name: bad (fix: fix it)"
    assert isinstance(err, ConfigError)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)),
    ("15m", timedelta(minutes=15)),
    ("26h", timedelta(hours=26)),
    ("30d", timedelta(days=30)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("1d12h", timedelta(days=1, hours=12)),
    ("0s", timedelta(0)),
    (" 5m ", timedelta(minutes=5)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(("text", "fix"), [
    ("10", "write 10s, 10m, 10h or 10d"),
    ("-5m", "write a positive duration such as '5m'"),
    ("1.5h", "use whole numbers of a smaller unit, e.g. 1h30m instead of 1.5h"),
    ("", "write a duration such as 90s, 15m, 26h, 30d, or combined largest unit first like 1h30m"),
    ("5x", "write 90s, 15m, 26h, 30d, or combined largest unit first like 1h30m"),
    ("30m1h", "write 90s, 15m, 26h, 30d, or combined largest unit first like 1h30m"),
    ("1w", "write 90s, 15m, 26h, 30d, or combined largest unit first like 1h30m"),
    ("\u0663d", "write 90s, 15m, 26h, 30d, or combined largest unit first like 1h30m"),  # Arabic-Indic 3
    ("9999999999d", "write a shorter duration"),
])
def test_parse_duration_rejects(text: str, fix: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert info.value.fix == fix


parts = st.integers(min_value=0, max_value=10_000)


@given(parts, parts, parts, parts)
def test_parse_duration_adds_the_parts(d: int, h: int, m: int, s: int) -> None:
    text = "".join(f"{n}{unit}" for n, unit in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if n)
    expected = timedelta(days=d, hours=h, minutes=m, seconds=s)
    if not text:
        text = "0s"
    assert parse_duration(text) == expected


@given(st.integers(min_value=0, max_value=10**9).map(lambda n: timedelta(seconds=n)))
def test_format_then_parse_round_trips(value: timedelta) -> None:
    text = format_duration(value)
    assert parse_duration(text) == value
    assert re.fullmatch(r"(\d+d)?(\d+h)?(\d+m)?(\d+s)?", text)


@given(st.integers(min_value=0))
def test_a_bare_number_is_never_a_duration(n: int) -> None:
    with pytest.raises(DurationError, match="has no unit"):
        parse_duration(str(n))


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from("dhms"))
def test_negative_durations_are_refused(n: int, unit: str) -> None:
    with pytest.raises(DurationError, match="negative"):
        parse_duration(f"-{n}{unit}")


def test_format_duration_examples() -> None:
    assert format_duration(timedelta(hours=26)) == "1d2h"
    assert format_duration(timedelta(days=30)) == "30d"
    assert format_duration(timedelta(0)) == "0s"
    assert format_duration(timedelta(minutes=90)) == "1h30m"


# --------------------------------------------------------------------------- rotation safety keys


def test_rotation_safety_keys_take_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, base())
    keda, daily = cfg.token("keda"), cfg.token("daily-checks")
    assert keda.consumers[0].switch == "auto"
    assert keda.drain_max is None and daily.drain_max is None
    assert [s.refresh_interval for s in keda.sinks + daily.sinks] == [timedelta(0), timedelta(0)]


def test_rotation_safety_keys_are_read(tmp_path: Path) -> None:
    data = base()
    keda, daily = data["tokens"]
    keda["consumers"][0]["switch"] = "bump"
    keda["drain_max"] = "2h"
    keda["sinks"][0]["refresh_interval"] = "90s"
    daily["sinks"][0]["refresh_interval"] = "1h"
    daily["pipeline"] = {"project": "P", "definition": "daily-checks", "timeout": "45m"}
    keda["consumers"].append({"kind": "keda-scaledobject", "cluster": "build-b", "namespace": "ado",
                              "name": "so", "pool": "p", "switch": "refresh"})
    cfg = load(tmp_path, data)
    token = cfg.token("keda")
    assert [c.switch for c in token.consumers] == ["bump", "refresh"]
    assert token.drain_max == timedelta(hours=2)
    assert token.sinks[0].refresh_interval == timedelta(seconds=90)
    pipeline = cfg.token("daily-checks").pipeline
    assert pipeline is not None and pipeline.timeout == timedelta(minutes=45)
    assert cfg.token("daily-checks").sinks[0].refresh_interval == timedelta(hours=1)


def test_pipeline_timeout_defaults_to_ados_job_timeout(tmp_path: Path) -> None:
    data = base()
    data["tokens"][1]["pipeline"] = {"project": "P", "definition": "daily-checks"}
    pipeline = load(tmp_path, data).token("daily-checks").pipeline
    assert pipeline is not None and pipeline.timeout == timedelta(minutes=60)


def test_unknown_switch_mode_suggests(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0]["consumers"][0].update(switch="bumb"),
                   "tokens[0].consumers[0].switch")
    assert problem.fix.startswith("did you mean 'bump'?")
    assert "auto, refresh, bump" in problem.fix


def test_bump_is_refused_for_a_scaledobject(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0]["consumers"][0].update(kind="keda-scaledobject",
                                                                              switch="bump"),
                   "tokens[0].consumers[0].switch")
    assert problem.problem.startswith("a ScaledObject cannot be bumped")
    assert "switch: refresh" in problem.fix


def test_drain_max_must_be_positive_and_refresh_interval_a_duration(tmp_path: Path) -> None:
    problem = only(tmp_path, lambda d: d["tokens"][0].update(drain_max="0s"), "tokens[0].drain_max")
    assert problem.problem == "must be longer than zero"
    problem = only(tmp_path, lambda d: d["tokens"][0]["sinks"][0].update(refresh_interval="90"),
                   "tokens[0].sinks[0].refresh_interval")
    assert "no unit" in problem.problem and "90s" in problem.fix
    # refresh_interval: 0s is the default spelled out, and allowed
    data = base()
    data["tokens"][0]["sinks"][0]["refresh_interval"] = "0s"
    assert load(tmp_path, data).token("keda").sinks[0].refresh_interval == timedelta(0)


@pytest.mark.parametrize("text", [
    "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "a: " + "{x: " * 3000 + "1" + "}" * 3000 + "\n",
    "".join(" " * i + f"k{i}:\n" for i in range(3000)) + " " * 3000 + "v: 1\n",
], ids=["flow lists", "flow mappings", "block mappings"])
def test_deeply_nested_yaml_is_a_problem_naming_the_file_not_a_recursion_error(tmp_path: Path, text: str) -> None:
    problem = only(tmp_path, text, "")
    assert "nested too deeply" in problem.problem and "patrol config example" in problem.fix


def test_journal_bounds_are_read_and_rotations_outlive_decisions(tmp_path: Path) -> None:
    data = base()
    data["worker"] = {"decision_retention": "3d", "rotation_retention": "90d", "decisions_per_minute": 5}
    worker = load(tmp_path, data).worker
    assert (worker.decision_retention, worker.rotation_retention, worker.decisions_per_minute) == (
        timedelta(days=3), timedelta(days=90), 5)
    defaults = load(tmp_path, base()).worker
    assert defaults.rotation_retention > defaults.decision_retention and defaults.decisions_per_minute >= 1
    problem = only(tmp_path, lambda d: d.update(worker={"decision_retention": "30d", "rotation_retention": "7d"}),
                   "worker.rotation_retention")
    assert "shorter than decision_retention" in problem.problem
    only(tmp_path, lambda d: d.update(worker={"decisions_per_minute": 0}), "worker.decisions_per_minute")


# --------------------------------------------------------------------------- worker.rotate_alertnames


def test_rotate_alertnames_default_to_patrols_rotation_alerts(tmp_path: Path) -> None:
    assert load(tmp_path, base()).worker.rotate_alertnames == (
        "PatRenewalDue", "PatInvalid", "KedaScalerAuthFailing")


def test_rotate_alertnames_are_read_without_duplicates(tmp_path: Path) -> None:
    data = base()
    data["worker"] = {"rotate_alertnames": ["PatInvalid", "TeamPatLeaked", "PatInvalid"]}
    assert load(tmp_path, data).worker.rotate_alertnames == ("PatInvalid", "TeamPatLeaked")


@pytest.mark.parametrize(("value", "path", "says"), [
    ([], "worker.rotate_alertnames", "is empty"),
    ("PatInvalid", "worker.rotate_alertnames", "expected a list"),
    (["PatInvalid", "Pat Invalid"], "worker.rotate_alertnames[1]", "'Pat Invalid' is not an alert name"),
    ([7], "worker.rotate_alertnames[0]", "7 is not an alert name"),
])
def test_bad_rotate_alertnames_are_named(tmp_path: Path, value: object, path: str, says: str) -> None:
    problem = only(tmp_path, lambda d: d.update(worker={"rotate_alertnames": value}), path)
    assert says in str(problem)


# --------------------------------------------------------------------------- alerts


def test_alerts_section_is_read(tmp_path: Path) -> None:
    data = base()
    data["alerts"] = {"runbook_base_url": "https://wiki.example.org/patrol/runbook/",
                      "extra_labels": {"team": "platform", "env": "prod"},
                      "prometheusrule_labels": {"release": "kube-prometheus-stack"},
                      "exporter_job": "patrol/exporter", "worker_job": "patrol/worker"}
    alerts = load(tmp_path, data).alerts
    assert alerts.runbook_base_url == "https://wiki.example.org/patrol/runbook"
    assert alerts.extra_labels == (("team", "platform"), ("env", "prod"))
    assert alerts.prometheusrule_labels == (("release", "kube-prometheus-stack"),)
    assert (alerts.exporter_job, alerts.worker_job) == ("patrol/exporter", "patrol/worker")


def test_alerts_section_defaults_keep_the_shipped_values(tmp_path: Path) -> None:
    alerts = load(tmp_path, base()).alerts
    assert alerts.runbook_base_url is None and alerts.exporter_job is None and alerts.worker_job is None
    assert alerts.extra_labels == () and alerts.prometheusrule_labels == ()


@pytest.mark.parametrize(("alerts", "path", "says"), [
    ({"extra_labels": {"severity": "page"}}, "alerts.extra_labels.severity", "patrol's or Prometheus' own"),
    ({"extra_labels": {"remediation": "none"}}, "alerts.extra_labels.remediation", "patrol's or Prometheus' own"),
    ({"extra_labels": {"my-team": "x"}}, "alerts.extra_labels.my-team", "not a valid label name"),
    ({"extra_labels": {"team": ["a"]}}, "alerts.extra_labels.team", "expected a string"),
    ({"extra_labels": ["team"]}, "alerts.extra_labels", "expected a mapping"),
    ({"prometheusrule_labels": {"release": "not valid!"}}, "alerts.prometheusrule_labels.release",
     "not a valid Kubernetes label value"),
    ({"runbook_base_url": "wiki/runbook"}, "alerts.runbook_base_url", "is not an http(s) URL"),
    ({"exporter_job": ""}, "alerts.exporter_job", "is empty"),
    ({"runbok_base_url": "https://x"}, "alerts.runbok_base_url", "did you mean 'runbook_base_url'"),
])
def test_bad_alerts_settings_are_named(tmp_path: Path, alerts: Data, path: str, says: str) -> None:
    problem = only(tmp_path, lambda d: d.update(alerts=alerts), path)
    assert says in str(problem)
