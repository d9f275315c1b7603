"""``python -m sandbox``: run the simulated world until interrupted (``patrol sandbox`` calls main)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from sandbox.scenarios import SCENARIOS


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Run a local simulation of Azure DevOps, Entra, Key Vault, Kubernetes and KEDA.")
    parser.add_argument("--ready-file", required=True,
                        help="write the ready JSON here (atomically) once every endpoint answers")
    parser.add_argument("--scenario", choices=SCENARIOS, default="default")
    parser.add_argument("--dir", dest="directory", default=None,
                        help="working directory for certificates, kubeconfig and patrol.yaml "
                             "(default: a temporary directory removed on exit)")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until SIGINT/SIGTERM)")
    return parser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``sandbox`` on an argparse sub-parsers object (for ``patrol sandbox``)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "sandbox", help="run the local simulation of ADO, Entra, Key Vault, Kubernetes and KEDA")
    return build_parser(parser)


def run_command(args: argparse.Namespace) -> int:
    """Run with arguments parsed by :func:`build_parser` / :func:`add_parser`."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from sandbox.app import run

    try:
        return asyncio.run(run(args.ready_file, args.scenario, args.directory, args.duration))
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
