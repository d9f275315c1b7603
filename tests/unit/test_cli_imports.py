"""Building patrol's parser must not load the worker's rotation machinery.

``patrol.cli`` mounts every subcommand, so whatever ``remediation.cli`` imports at module level
lands in every patrol process, the exporter included. The journal (sqlite3), planner and saga
are imported inside the commands that need them; this guards that in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("remediation.journal", "remediation.planner", "remediation.saga", "remediation.service",
         "exporter.assembly", "exporter.validity", "exporter.keda")

PROBE = """
import json, sys
from patrol import cli
cli.build_parser({})
print(json.dumps(sorted(m for m in sys.modules if m in sys.argv[1:])))
"""


def test_building_the_parser_does_not_import_the_saga() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *HEAVY], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert json.loads(out) == []
