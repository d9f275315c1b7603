"""``python -m exporter``: the same command as ``patrol exporter``, for running the exporter on its
own (benchmarks, end-to-end tests) with the same options and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from core import logs
from core.errors import ConfigError, PatrolError
from exporter.cli import add_parser, run


def main(argv: Sequence[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m exporter")
    sub = top.add_subparsers(dest="command")
    add_parser(sub, os.environ)
    args = top.parse_args(["exporter", *(sys.argv[1:] if argv is None else argv)])
    logs.configure(args.log_format, args.log_level)
    try:
        return run(args, os.environ)
    except ConfigError as exc:
        print(f"patrol exporter: configuration error: {exc}", file=sys.stderr)
        return 2
    except PatrolError as exc:
        print(f"patrol exporter: {logs.redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
