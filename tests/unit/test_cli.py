"""The command line: help that helps, exit codes 0/1/2, flag > env precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from patrol.cli import EXIT_USAGE, build_parser, main


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
