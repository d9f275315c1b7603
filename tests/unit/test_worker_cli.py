"""The worker's command line: parsing, settings precedence, history output, refusals."""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rotation_fakes import Clock, FakeWorld, make_config, seed

from core.arenas import WORKER_ARENAS
from core.errors import ConfigError
from remediation import cli
from remediation.journal import Journal
from remediation.saga import RotationSaga

CONFIG = """\
organizations:
  - name: org
    url: https://dev.azure.com/org
    credential: {kind: environment}
clusters:
  - {name: c1, context: c1}
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
  WEBHOOK
"""


def write_config(tmp_path: Path, webhook_file: Path | None = None) -> Path:
    text = CONFIG.replace("STATE", str(tmp_path / "state"))
    text = text.replace("WEBHOOK", f"webhook_token_file: {webhook_file}" if webhook_file else "")
    path = tmp_path / "patrol.yaml"
    path.write_text(text)
    return path


def parser(env: dict[str, str]) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="patrol")
    cli.add_parsers(root.add_subparsers(dest="command"), env)
    return root


def test_parsers_and_env_defaults() -> None:
    env = {"PATROL_CONFIG": "/etc/patrol.yaml", "PATROL_STATE_DIR": "/var/tmp/p"}
    args = parser(env).parse_args(["worker", "--listen", "127.0.0.1:9999", "--insecure-no-auth"])
    assert args.handler is cli.run_worker and args.config == "/etc/patrol.yaml"
    assert args.state_dir == "/var/tmp/p" and args.insecure_no_auth and args.env is env
    args = parser(env).parse_args(["rotate", "keda", "--dry-run", "--reason", "leak", "--config", "x.yaml"])
    assert (args.handler, args.token, args.dry_run, args.reason, args.config) == (
        cli.run_rotate, "keda", True, "leak", "x.yaml")
    args = parser({}).parse_args(["history", "keda", "--limit", "3", "--steps", "--json"])
    assert (args.handler, args.token, args.limit, args.steps, args.json, args.config) == (
        cli.run_history, "keda", 3, True, True, None)


def test_common_flags_come_from_the_composition_root() -> None:
    root = argparse.ArgumentParser(prog="patrol")
    seen: list[str] = []

    def common(p: argparse.ArgumentParser) -> None:
        seen.append(p.prog)
        p.add_argument("--config")

    cli.add_parsers(root.add_subparsers(dest="command"), {}, common)
    assert seen == ["patrol worker", "patrol rotate", "patrol history"]


def test_webhook_token_precedence(tmp_path: Path) -> None:
    from core.config import load_config

    token_file = tmp_path / "hook"
    token_file.write_text("from-file\n")
    cfg = load_config(str(write_config(tmp_path, token_file)))
    token = cli.webhook_token(cfg, {"PATROL_WEBHOOK_TOKEN": "from-env"})
    assert token is not None and token.reveal() == "from-env"
    token = cli.webhook_token(cfg, {})
    assert token is not None and token.reveal() == "from-file"
    token_file.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        cli.webhook_token(cfg, {})
    token_file.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        cli.webhook_token(cfg, {})
    assert cli.webhook_token(load_config(str(write_config(tmp_path))), {}) is None


def test_worker_refuses_to_start_without_a_webhook_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capped: list[int] = []
    monkeypatch.setattr(cli, "cap_arenas", lambda env, limit: capped.append(limit) or True)
    args = parser({}).parse_args(["worker", "--config", str(write_config(tmp_path))])
    with pytest.raises(ConfigError, match="PATROL_WEBHOOK_TOKEN"):
        cli.run_worker(args)
    assert not (tmp_path / "state").exists()
    assert capped == [WORKER_ARENAS]                       # before any thread (core/arenas.py)


@pytest.mark.parametrize(("text", "expected"), [("0.0.0.0:9878", ("0.0.0.0", 9878)),
                                                 ("[::1]:80", ("::1", 80)), (":9", ("0.0.0.0", 9))])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert cli.parse_listen(text) == expected


def test_parse_listen_refuses_garbage() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        cli.parse_listen("localhost")


def test_rotate_unknown_token_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parser({}).parse_args(["rotate", "nope", "--config", str(write_config(tmp_path))])
    assert cli.run_rotate(args) == cli.EXIT_USAGE
    assert "no token named 'nope'" in capsys.readouterr().err


def test_history(tmp_path: Path) -> None:
    state = tmp_path / "state"
    args = parser({}).parse_args(["history", "--state-dir", str(state)])
    out = io.StringIO()
    assert cli.run_history(args, out=out) == 0
    assert "no rotations recorded" in out.getvalue()
    with Journal.in_state_dir(state) as journal:
        journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="alert", reason="alert PatRenewalDue")
        journal.set_authorizations("aaaaaaaaaaaa", old="old-id", new="new-id")
        journal.finish("aaaaaaaaaaaa", "succeeded")
        journal.create_rotation("bbbbbbbbbbbb", "keda", trigger="manual", reason="by hand")
        journal.finish("bbbbbbbbbbbb", "failed", "create: patLifespanPolicyViolation")
    out = io.StringIO()
    assert cli.run_history(parser({}).parse_args(["history", "keda", "--steps", "--state-dir", str(state)]),
                           out=out) == 0
    text = out.getvalue()
    assert text.index("bbbbbbbbbbbb") < text.index("aaaaaaaaaaaa")         # newest first
    assert "old-id -> new-id" in text and "patLifespanPolicyViolation" in text
    assert "    create   skipped" in text
    out = io.StringIO()
    cli.run_history(parser({}).parse_args(["history", "--json", "--limit", "1", "--state-dir", str(state)]),
                    out=out)
    [doc] = json.loads(out.getvalue())
    assert doc["id"] == "bbbbbbbbbbbb" and doc["outcome"] == "failed"


def test_history_of_an_unknown_token_fails_listing_the_known_ones(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config_path = str(write_config(tmp_path))
    args = parser({}).parse_args(["history", "nope", "--config", config_path])
    assert cli.run_history(args, out=io.StringIO()) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "no token named 'nope'" in err and "(configured: keda)" in err
    assert cli.run_history(parser({}).parse_args(["history", "keda", "--config", config_path]),
                           out=io.StringIO()) == cli.EXIT_OK          # known, nothing rotated yet
    state = tmp_path / "elsewhere"
    no_config = parser({}).parse_args(["history", "nope", "--state-dir", str(state)])
    assert cli.run_history(no_config, out=io.StringIO()) == cli.EXIT_USAGE
    assert "no rotations of 'nope'" in capsys.readouterr().err
    with Journal.in_state_dir(state) as journal:
        journal.create_rotation("aaaaaaaaaaaa", "keda", trigger="alert", reason="alert PatRenewalDue")
    assert cli.run_history(no_config, out=io.StringIO()) == cli.EXIT_USAGE
    assert "(tokens with rotations: keda)" in capsys.readouterr().err
    assert cli.run_history(parser({}).parse_args(["history", "keda", "--state-dir", str(state)]),
                           out=io.StringIO()) == cli.EXIT_OK


def test_rotate_reads_the_worker_url_from_flag_or_env() -> None:
    args = parser({"PATROL_WORKER_URL": "http://w:9878"}).parse_args(["rotate", "keda", "--no-wait"])
    assert (args.worker_url, args.no_wait) == ("http://w:9878", True)
    args = parser({"PATROL_WORKER_URL": "http://w:9878"}).parse_args(
        ["rotate", "keda", "--worker-url", "http://127.0.0.1:9878"])
    assert (args.worker_url, args.no_wait) == ("http://127.0.0.1:9878", False)


def test_history_needs_a_state_dir() -> None:
    with pytest.raises(ConfigError, match="state dir"):
        cli.run_history(parser({}).parse_args(["history"]))


def test_dry_run_warns_about_scaledjobs_that_would_lose_their_running_jobs(tmp_path: Path) -> None:
    clock = Clock()
    cfg, world = make_config(), FakeWorld(clock)
    token = cfg.tokens[0]
    cfg = replace(cfg, tokens=(replace(token, consumers=tuple(replace(c, switch="bump")
                                                               for c in token.consumers)),))
    seed(world, cfg)
    world.clusters["c2"].scalers[("ado", "scaledjobs", "agent")].rollout_strategy = "gradual"
    with Journal(tmp_path / "journal.sqlite3", clock=clock) as journal:
        preview = RotationSaga(cfg, world, journal, clock=clock, sleep=clock.sleep).preview("keda")
    out = io.StringIO()
    cli.print_preview(preview, out)
    lines = out.getvalue().splitlines()
    assert ("    ScaledJob c1/ado/agent (pool pool1): generation 1, Ready True, rollout strategy default, "
            "switch bump") in lines
    assert ("    ScaledJob c2/ado/agent (pool pool2): generation 1, Ready True, rollout strategy gradual, "
            "switch bump") in lines
    warnings = [line for line in lines if line.startswith("  WARNING: ")]
    assert warnings == ["  WARNING: ScaledJob c1/ado/agent uses rollout strategy 'default': the switch step "
                        "(switch: bump) makes KEDA delete its running agent Jobs (builds in flight are "
                        "abandoned); set spec.rollout.strategy: gradual on it, or use switch: auto"]
    assert not any(line.startswith("  PROBLEM") for line in lines)
