"""Time to recovery: the KEDA PAT revoked out of band, again and again, through the whole loop.

The loop runs as ``make demo`` runs it (sandbox on the default scenario — KEDA polls every 2 s —
exporter and worker processes, real Prometheus and Alertmanager evaluating every second, rotate
alerts with ``for: 1s``). Each incident revokes the PAT the clusters hold (control API) and
measures: revocation → the worker's rotation finished with recovery confirmed, and revocation →
no rotate alert firing. Incidents are spaced by the worker's cool-down. Target: median time to
recovery ≤ 15 s.

    .venv/bin/python bench/mttr.py [--incidents 5]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import host

from patrol.soak import mttr

TARGET = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=5, help="out-of-band revocations to time")
    parser.add_argument("--workdir", default=None, help="keep the logs here (default: a temporary folder)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="patrol-mttr-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {host.describe()}")
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    with (workdir / "demo-output.log").open("w") as out:
        report = mttr(args.incidents, workdir=workdir, out=out, progress=lambda line: print(line, flush=True))
    for line in report.lines()[args.incidents:]:
        print(line)
    median = report.median()
    ok = median is not None and median <= TARGET
    print(f"target median <= {TARGET:.0f} s: {'met' if ok else 'missed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
