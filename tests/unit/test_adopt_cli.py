"""``patrol adopt`` on the command line: help, usage errors, quiet logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from patrol.cli import EXIT_USAGE, build_parser, main


def test_adopt_has_help_with_examples_and_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["adopt", "--help"], env={})
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--authorization-id", "--dry-run", "--yes", "--json", "--config", "examples:"):
        assert flag in out
    with pytest.raises(SystemExit):
        main(["--help"], env={})
    assert "adopt" in capsys.readouterr().out


def test_adopt_without_a_config_says_how_to_give_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["adopt", "keda", "--dry-run"], env={}) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "PATROL_CONFIG" in err or "--config" in err


ONE_TOKEN_CONFIG = (
    "organizations:\n"
    "  - name: contoso\n"
    "    url: https://dev.azure.com/contoso\n"
    "    credential: {kind: username-password, username_env: U, password_env: P}\n"
    "tokens:\n"
    "  - name: daily-checks\n"
    "    organization: contoso\n"
    "    scopes: [vso.build]\n"
    "    lifetime: 30d\n"
    "    renew_before: 7d\n"
    "    sinks: [{kind: keyvault, vault_url: 'https://kv.vault.azure.net', secret: ado}]\n"
)


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_adopt_of_an_unknown_token_is_a_usage_error_naming_the_configured_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], json_flag: list[str]) -> None:
    """With or without --json: exit 2, the reason on stderr, nothing on stdout."""
    config = tmp_path / "patrol.yaml"
    config.write_text(ONE_TOKEN_CONFIG, encoding="utf-8")
    assert main(["adopt", "keda", *json_flag, "--config", str(config)], env={}) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no token named 'keda'" in captured.err and "daily-checks" in captured.err


def test_adopt_logs_warnings_only_unless_asked() -> None:
    parser = build_parser({"PATROL_CONFIG": "/env.yaml"})
    args = parser.parse_args(["adopt", "keda"])
    assert args.log_level == "WARNING" and args.config == "/env.yaml"
    assert not args.yes and not args.dry_run and args.authorization_id is None and not args.json
    assert build_parser({}).parse_args(["adopt", "keda", "--json", "--yes"]).json
