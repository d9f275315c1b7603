"""``patrol config check`` / ``patrol config example``: exit codes and what they print."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from core.config import ConfigErrors, load_config
from patrol import config_cmd

ROOT = Path(__file__).resolve().parent.parent.parent
TWO_CLUSTERS = ROOT / "tests" / "fixtures" / "config" / "two-clusters.yaml"


def check(file: str | None, **extra: object) -> int:
    return config_cmd.run(argparse.Namespace(config_command="check", file=file, **extra))


def test_check_valid_file_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert check(str(TWO_CLUSTERS)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0] == (f"{TWO_CLUSTERS}: OK - 1 organization(s), 2 cluster(s), 2 token(s)")
    assert "  contoso: https://dev.azure.com/contoso (credential: username-password, from Key Vault " \
           "https://contoso-bot.vault.azure.net)" in out
    assert "  build-a: context build-a" in out
    assert "  keda (contoso)\n    scopes: vso.agentpools_manage\n    lifetime: 30d, renew_before: 7d\n" in out
    assert "    sink: kubernetes-secret/build-b/azure-devops/azure-devops-token/token (flux: refuse)" in out
    assert "    consumer: ScaledJob build-a/azure-devops/azure-devops-agent (pool agents-a)" in out
    assert "    scopes: vso.agentpools vso.build vso.pipelineresources_use vso.release" in out
    assert "    sink: keyvault/contoso-checks.vault.azure.net/azure-devops-token" in out
    assert "    pipeline: Operations/daily-checks, stale after 1d2h" in out
    assert len(out.splitlines()) <= 40                         # one screen


def test_check_invalid_file_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (TWO_CLUSTERS.read_text()
            .replace("scopes: [vso.agentpools_manage]", "scopes: [app_token]")
            .replace("lifetime: 30d\n    renew_before: 7d\n    sinks:\n      - {kind: keyvault",
                     "lifetime: 10\n    renew_before: 7d\n    sinks:\n      - {kind: keyvault")
            .replace("{name: build-b, context: build-b}", "{name: build-b}"))
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert check(str(path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"{path}: 3 problems:"
    assert lines[1].startswith(f"  {path}:11: clusters[1]: a cluster needs 'context' or 'in_cluster: true'")
    assert lines[2].startswith(f"  {path}:15: tokens[0].scopes[0]: 'app_token' grants full access")
    assert lines[3] == (f"  {path}:27: tokens[1].lifetime: duration '10' has no unit "
                        "(fix: write 10s, 10m, 10h or 10d)")


def test_check_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert check("/nonexistent/patrol.yaml") == 2
    _, err = capsys.readouterr()
    assert "/nonexistent/patrol.yaml: no such file" in err


def test_check_falls_back_to_the_config_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert check(None, config=str(TWO_CLUSTERS)) == 0
    assert "OK" in capsys.readouterr().out


def test_check_without_any_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert check(None) == 2
    assert "PATROL_CONFIG" in capsys.readouterr().err


def test_example_is_printed_and_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert config_cmd.run(argparse.Namespace(config_command="example")) == 0
    out = capsys.readouterr().out
    assert out == config_cmd.EXAMPLE_CONFIG
    path = tmp_path / "patrol.yaml"
    path.write_text(out)
    config = load_config(str(path))
    assert [t.name for t in config.tokens] == ["keda", "daily-checks"]
    assert config.worker.webhook_token_file == "/var/run/secrets/patrol/webhook-token"


def test_docs_show_the_same_annotated_example() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", docs, flags=re.DOTALL)
    assert config_cmd.EXAMPLE_CONFIG in blocks


def test_docs_error_messages_are_the_real_ones(tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    path = tmp_path / "patrol.yaml"
    path.write_text((ROOT / "tests" / "fixtures" / "config" / "docs-broken-example.yaml").read_text())
    with pytest.raises(ConfigErrors) as info:
        load_config(str(path))
    assert f"patrol.yaml: {len(info.value.problems)} problems:" in docs
    for problem in info.value.problems:
        assert "  " + str(problem).replace(str(path), "patrol.yaml", 1) + "\n" in docs


def test_add_parser_wires_both_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="patrol")
    config_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["config", "check", str(TWO_CLUSTERS)])
    assert args.func is config_cmd.run
    assert args.func(args) == 0
    args = parser.parse_args(["config", "example"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.endswith(config_cmd.EXAMPLE_CONFIG)


def test_check_deeply_nested_yaml_exits_2_naming_the_file(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert check(str(path)) == 2
    _, err = capsys.readouterr()
    assert str(path) in err and "nested too deeply" in err and "Traceback" not in err
