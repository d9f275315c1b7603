"""``python -m exporter``: the same command as ``patrol exporter``, for running the exporter on its
own (benchmarks, end-to-end tests) with the same options and exit codes.

Like ``patrol/cli.py`` it is a composition root: it reads the environment here, once, and adds
the shared flags (``--config``, ``--log-format``, ``--log-level``) itself."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from core import logs
from core.errors import ConfigError, ListenError, PatrolError
from exporter.cli import add_parser, run


def shared_flags(env: Mapping[str, str]) -> Callable[[argparse.ArgumentParser], None]:
    """The flags every patrol command has, with the same environment defaults as ``patrol``."""
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", metavar="FILE", default=env.get("PATROL_CONFIG"),
                            help="patrol configuration file (env PATROL_CONFIG)")
        parser.add_argument("--log-format", choices=["text", "json"], default=env.get("PATROL_LOG_FORMAT", "text"),
                            help="log output format (env PATROL_LOG_FORMAT)")
        parser.add_argument("--log-level", default=env.get("PATROL_LOG_LEVEL", "INFO"),
                            help="log level (env PATROL_LOG_LEVEL)")
    return add


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    top = argparse.ArgumentParser(prog="python -m exporter")
    sub = top.add_subparsers(dest="command")
    add_parser(sub, env, common=shared_flags(env))
    args = top.parse_args(["exporter", *(sys.argv[1:] if argv is None else argv)])
    logs.configure(args.log_format, args.log_level)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"patrol exporter: configuration error: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"patrol exporter: {exc}", file=sys.stderr)
        return 2
    except PatrolError as exc:
        print(f"patrol exporter: {logs.redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
