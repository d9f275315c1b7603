"""``patrol exporter``'s flags: the shared ones come from the composition root, env via args."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core.arenas import EXPORTER_ARENAS
from exporter import cli
from exporter.__main__ import shared_flags
from patrol.cli import build_parser


def test_patrol_exporter_uses_the_shared_flags_and_carries_the_environment() -> None:
    env = {"PATROL_CONFIG": "/env/patrol.yaml", "PATROL_LOG_FORMAT": "json", "PATROL_LOG_LEVEL": "DEBUG",
           "PATROL_EXPORTER_LISTEN": "127.0.0.1:19877"}
    args = build_parser(env).parse_args(["exporter"])
    assert args.handler is cli.run and args.env is env
    assert (args.config, args.log_format, args.log_level, args.listen, args.once) == (
        "/env/patrol.yaml", "json", "DEBUG", "127.0.0.1:19877", False)
    args = build_parser(env).parse_args(["exporter", "--config", "/flag.yaml", "--log-format", "text",
                                         "--listen", "0.0.0.0:1", "--once"])
    assert (args.config, args.log_format, args.listen, args.once) == ("/flag.yaml", "text", "0.0.0.0:1", True)


def test_help_lists_the_shared_and_the_exporter_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):          # a flag defined twice would raise ArgumentError instead
        build_parser({}).parse_args(["exporter", "--help"])
    out = capsys.readouterr().out
    for flag in ("--config FILE", "--log-format {text,json}", "--log-level", "--listen HOST:PORT", "--once"):
        assert flag in out, flag


def test_without_common_only_config_is_added_here() -> None:
    root = argparse.ArgumentParser()
    cli.add_parser(root.add_subparsers(dest="command"), {"PATROL_CONFIG": "/c.yaml"})
    args = root.parse_args(["exporter"])
    assert args.config == "/c.yaml" and args.env == {"PATROL_CONFIG": "/c.yaml"}
    assert not hasattr(args, "log_format")


def test_python_m_exporter_adds_the_same_shared_flags() -> None:
    env = {"PATROL_LOG_LEVEL": "WARNING"}
    root = argparse.ArgumentParser()
    cli.add_parser(root.add_subparsers(dest="command"), env, common=shared_flags(env))
    args = root.parse_args(["exporter", "--config", "x.yaml"])
    assert (args.config, args.log_format, args.log_level, args.env) == ("x.yaml", "text", "WARNING", env)


TWO_CLUSTERS = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "config" / "two-clusters.yaml"


class Stop(Exception):
    pass


def test_the_exporter_tunes_malloc_before_building_its_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, object, int | None]] = []

    def cap(env: object, limit: int) -> bool:
        calls.append(("arenas", env, limit))
        return True

    def fix(env: object) -> bool:
        calls.append(("mmap", env, None))
        raise Stop                                  # nothing after it runs: no sources, no threads

    monkeypatch.setattr(cli, "cap_arenas", cap)
    monkeypatch.setattr(cli, "fix_mmap_threshold", fix)
    env = {"PATROL_LOG_LEVEL": "WARNING"}
    args = build_parser(env).parse_args(["exporter", "--config", str(TWO_CLUSTERS)])
    with pytest.raises(Stop):
        cli.run(args)
    assert calls == [("arenas", env, EXPORTER_ARENAS), ("mmap", env, None)]
    assert EXPORTER_ARENAS == 1                      # one arena (docs/benchmarks.md)
