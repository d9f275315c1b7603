"""The command line: help that helps, exit codes 0/1/2, flag > env precedence."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from patrol.cli import EXIT_USAGE, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
TWO_CLUSTERS = ROOT / "tests" / "fixtures" / "config" / "two-clusters.yaml"
PATROL = Path(sys.executable).parent / "patrol"
COMMANDS = [[], ["config"], ["config", "check"], ["config", "example"], ["sandbox"], ["demo"], ["exporter"],
            ["worker"], ["rotate"], ["history"], ["login"]]

# Every address here is loopback; the cluster's API server port refuses connections at once,
# and the bot's "environment" credential fails without a network call (its variables are unset).
UNREACHABLE_CONFIG = """\
organizations:
  - name: org
    url: https://dev.azure.com/org
    credential: {kind: environment}
clusters:
  - {name: c1, context: c1, kubeconfig: KUBECONFIG}
tokens:
  - name: keda
    organization: org
    scopes: [vso.agentpools_manage]
    lifetime: 30d
    renew_before: 7d
    sinks:
      - {kind: kubernetes-secret, cluster: c1, namespace: ado, secret: pat, key: token}
worker:
  state_dir: STATE
"""
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c1, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-secret}}]
contexts: [{name: c1, context: {cluster: c1, user: u}}]
current-context: c1
"""


def test_top_level_help_lists_every_command_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"], env={})
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("config", "sandbox", "demo", "exporter", "worker", "rotate", "history", "login"):
        assert command in out
    assert "examples:" in out and "exit codes" in out


@pytest.mark.parametrize("command", [["config", "check"], ["sandbox"], ["demo"], ["exporter"], ["worker"],
                                     ["rotate"], ["history"], ["login"]])
def test_every_subcommand_has_help_with_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"], env={})
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], env={}) == EXIT_USAGE
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["config", "check", "--no-such-flag"], env={})
    assert exc.value.code == EXIT_USAGE


def test_config_comes_from_env_unless_a_flag_says_otherwise() -> None:
    parser = build_parser({"PATROL_CONFIG": "/from/env.yaml", "PATROL_LOG_FORMAT": "json"})
    args = parser.parse_args(["history"])
    assert args.config == "/from/env.yaml" and args.log_format == "json"
    args = parser.parse_args(["history", "--config", "/from/flag.yaml", "--log-format", "text"])
    assert args.config == "/from/flag.yaml" and args.log_format == "text"


def test_missing_config_file_is_exit_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["config", "check", str(missing)], env={}) == EXIT_USAGE
    assert str(missing) in capsys.readouterr().err


def test_rotate_without_any_config_says_how_to_give_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rotate", "keda", "--dry-run"], env={}) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "PATROL_CONFIG" in err or "--config" in err


def test_the_installed_console_script_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "patrol", "--help"], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "patrol" in result.stdout


def test_interactive_commands_log_warnings_only_unless_asked() -> None:
    parser = build_parser({})
    assert parser.parse_args(["rotate", "keda"]).log_level == "WARNING"
    assert parser.parse_args(["worker"]).log_level == "INFO"
    assert parser.parse_args(["rotate", "keda", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert build_parser({"PATROL_LOG_LEVEL": "INFO"}).parse_args(["history"]).log_level == "INFO"


# -- help texts ---------------------------------------------------------------------------------

def _help(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"], env={})
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())          # unwrapped: a line break hides nothing


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "patrol")
def test_help_never_says_default_none_nor_a_default_twice(command: list[str], capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = _help(command, capsys)
    for empty in ("(default: None)", "(default: False)", "(default: ==SUPPRESS==)", "(default: )"):
        assert empty not in text
    assert not re.search(r"\(default[^()]*\) \(default", text), text


def test_help_shows_a_default_that_says_something(capsys: pytest.CaptureFixture[str]) -> None:
    assert "seconds between looks at the world (default: 1.0)" in _help(["demo"], capsys)
    assert "log output format (env PATROL_LOG_FORMAT) (default: text)" in _help(["demo"], capsys)
    text = _help(["config", "check"], capsys)
    assert "file the file (default: --config / PATROL_CONFIG) options:" in text
    assert "--json print one JSON document on stdout" in text


# -- config check --json ------------------------------------------------------------------------

def _check_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["config", "check", *argv, "--json"], env={})
    out, err = capsys.readouterr()
    assert err == ""
    return code, json.loads(out)


def test_config_check_json_of_a_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _check_json([str(TWO_CLUSTERS)], capsys)
    assert code == 0
    assert (doc["file"], doc["valid"], doc["problems"]) == (str(TWO_CLUSTERS), True, [])
    summary = doc["summary"]
    assert isinstance(summary, dict)
    assert summary["organizations"] == ["contoso"] and summary["clusters"] == ["build-a", "build-b"]
    keda = summary["tokens"][0]
    assert keda["name"] == "keda" and keda["scopes"] == ["vso.agentpools_manage"]
    assert "kubernetes-secret/build-a/azure-devops/azure-devops-token/token" in keda["sinks"]
    assert keda["consumers"] == ["build-a/azure-devops/azure-devops-agent", "build-b/azure-devops/azure-devops-agent"]


def test_config_check_json_lists_every_problem_with_its_line_path_and_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(TWO_CLUSTERS.read_text()
                    .replace("scopes: [vso.agentpools_manage]", "scopes: [app_token]")
                    .replace("{name: build-b, context: build-b}", "{name: build-b}"))
    code, doc = _check_json([str(path)], capsys)
    assert code == EXIT_USAGE and doc["valid"] is False and "summary" not in doc
    problems = doc["problems"]
    assert isinstance(problems, list)
    assert [(p["file"], p["line"], p["path"]) for p in problems] == [
        (str(path), 11, "clusters[1]"), (str(path), 15, "tokens[0].scopes[0]")]
    assert all(set(p) == {"file", "line", "path", "problem", "fix"} for p in problems)
    assert "grants full access" in problems[1]["problem"] and problems[1]["fix"]


def test_config_check_json_of_a_missing_or_absent_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _check_json(["/nonexistent/patrol.yaml"], capsys)
    assert code == EXIT_USAGE and doc["valid"] is False
    [problem] = doc["problems"]
    assert problem["file"] == "/nonexistent/patrol.yaml" and problem["problem"] == "no such file"
    code, doc = _check_json([], capsys)
    assert code == EXIT_USAGE
    [problem] = doc["problems"]
    assert problem["file"] is None and "PATROL_CONFIG" in problem["fix"]


# -- services that cannot listen, sources that are down -----------------------------------------

@pytest.fixture
def unreachable(tmp_path: Path) -> Path:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    path = tmp_path / "patrol.yaml"
    path.write_text(UNREACHABLE_CONFIG.replace("KUBECONFIG", str(kubeconfig))
                    .replace("STATE", str(tmp_path / "state")))
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def _patrol(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PATROL), *argv], capture_output=True, text=True, check=False, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("service", [["exporter"], ["worker", "--insecure-no-auth"]], ids=lambda s: s[0])
def test_a_busy_port_is_one_line_and_exit_2(service: list[str], unreachable: Path, busy_port: int) -> None:
    result = _patrol(*service, "--config", str(unreachable), "--listen", f"127.0.0.1:{busy_port}")
    assert (result.returncode, result.stdout) == (EXIT_USAGE, "")
    assert result.stderr == (f"patrol {service[0]}: cannot listen on 127.0.0.1:{busy_port}: "
                             "address already in use (use --listen)\n")


def test_exporter_once_fails_naming_each_source_that_is_down(unreachable: Path) -> None:
    result = _patrol("exporter", "--once", "--config", str(unreachable), "--log-level", "ERROR")
    assert result.returncode == 1
    assert 'patrol_source_up{source="kubernetes/c1"} 0.0' in result.stdout      # the exposition all the same
    down = sorted(line for line in result.stderr.splitlines() if line.startswith("patrol exporter: source "))
    assert [line.split(" is down: ")[0] for line in down] == [
        "patrol exporter: source kubernetes/c1", "patrol exporter: source pat-lifecycle/org"]
    assert "cannot reach the API server" in down[0] and "AZURE_" in down[1]
    assert "Traceback" not in result.stderr


def test_a_closed_pipe_is_no_traceback() -> None:
    """`patrol config example | head -1`: the reader leaves before patrol writes."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([str(PATROL), "config", "example"], stdout=write, stderr=subprocess.PIPE,
                                text=True, check=False, timeout=60)
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == 1
