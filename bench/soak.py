"""Soak: at least 100 consecutive planned rotations of the KEDA token, judged by the world.

The whole loop runs as ``make demo`` runs it (sandbox, exporter and worker processes, real
Prometheus and Alertmanager) on the sandbox's ``soak`` scenario: PATs live about a minute and are
renewed at half-life by ``PatRenewalDue``, builds run across rotations, and an
External-Secrets-style reader holds the Key Vault token between refreshes. Targets, all read from
the sandbox's ``harm`` counters and the world: 0 builds interrupted, 0 agent unregister failures,
0 failed KEDA polls, 0 Key Vault reader failures, 0 failed pipeline runs, 0 patrol PATs left active
after their drain, exporter and worker RSS flat (end within 10 % of after the first rotation).
Exits 1 if any target is missed.

    .venv/bin/python bench/soak.py [--rotations 100] [--workdir DIR]      (make soak)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import host

from patrol.soak import soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rotations", type=int, default=100, help="planned KEDA rotations to wait for")
    parser.add_argument("--workdir", default=None, help="keep the logs here (default: a temporary folder)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="patrol-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {host.describe()}")
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"started: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; logs in {workdir}", flush=True)
    with (workdir / "demo-output.log").open("w") as out:
        report = soak(args.rotations, workdir=workdir, out=out, progress=lambda line: print(line, flush=True))
    for line in report.lines():
        print(line)
    problems = report.problems()
    for problem in problems:
        print(f"MISSED: {problem}")
    print("all targets met" if not problems else f"{len(problems)} target(s) missed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
