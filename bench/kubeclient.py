"""RSS of the ``kubernetes`` client as patrol loads it, for one or more (interpreter, tree) pairs.

Guarantees: every figure is the VmRSS of a fresh process right after one statement, the median of
``--rounds`` runs; the pairs are measured in the same run, round by round, so a busy machine
weighs on all of them alike. Each process runs image-like: the distributions that ``pip install .``
(the image) would not install are hidden by an import hook, as ``bench/rotation.py`` does, because
``kubernetes.dynamic`` imports ``kubernetes_validate`` (a dev tool here) when it finds it.

Why pairs: to compare two client versions, measure the old venv on the old tree beside the new
ones, e.g. (``git archive OLD | tar -x -C /tmp/old`` and a copy of the venv made before the
upgrade)::

    .venv/bin/python bench/kubeclient.py --pair /tmp/venv-old/bin/python:/tmp/old --pair .venv/bin/python:.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A kubeconfig that loads without a cluster behind it: building a KubeCluster sends no request.
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: bench-not-a-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""

# (label, statement); each statement alone in a fresh process.
STEPS: tuple[tuple[str, str], ...] = (
    ("interpreter (`-c pass`)", "pass"),
    ("`import kubernetes.client, kubernetes.watch`", "import kubernetes.client, kubernetes.watch"),
    ("`core.kube` imported and one `KubeCluster` built",
     "import core.config, core.kube; core.kube.KubeCluster(core.config.Cluster(name='c', context='c', "
     "kubeconfig={kubeconfig!r}))"),
    # What core.kube no longer touches: the generated API classes it called before (37 loads an
    # API module, and every model it names, on first attribute access).
    ("`kubernetes.client` + `CoreV1Api`, `CustomObjectsApi`, `CoordinationV1Api` loaded",
     "import kubernetes.client as c; c.CoreV1Api, c.CustomObjectsApi, c.CoordinationV1Api"),
    ("the exporter's imports (`exporter.cli`, `exporter.assembly`)", "import exporter.cli, exporter.assembly"),
    ("the worker's imports (`patrol.cli`, `remediation.*`, `core.lease`)",
     "import patrol.cli, remediation.cli, remediation.service, remediation.world, core.lease"),
)

# Runs first in every measured process (as bench/rotation.py's PRELUDE): hide what the image lacks.
PRELUDE = """\
import os, sys
_hidden = frozenset(filter(None, os.environ.get("PATROL_BENCH_HIDE", "").split(",")))
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
if _hidden:
    sys.meta_path.insert(0, _NotInstalled())
"""
MEASURE = PRELUDE + """\
@STATEMENT@
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")))
"""
# Top-level modules of distributions outside ado-patrol's runtime closure, and the client version.
SURVEY = """\
import json, re
from importlib import metadata
from packaging.requirements import Requirement
def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()
keep, todo = set(), ["ado-patrol"]
while todo:
    name = todo.pop()
    if key(name) in keep:
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    keep.add(key(name))
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
hidden = sorted(m for m, dists in metadata.packages_distributions().items()
                if not any(key(d) in keep for d in dists))
print(json.dumps({"hidden": hidden, "kubernetes": metadata.version("kubernetes")}))
"""


def run(python: str, tree: Path, code: str, env: dict[str, str]) -> str:
    return subprocess.run([python, "-c", code], cwd=tree, env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pair", action="append", metavar="PYTHON:TREE",
                        help="an interpreter and the source tree it runs (default: this one, this tree)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    pairs = [(p.split(":", 1)[0], Path(p.split(":", 1)[1]).resolve()) for p in args.pair or []] \
        or [(sys.executable, ROOT)]
    with tempfile.TemporaryDirectory(prefix="patrol-bench-kube-") as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG)
        envs, versions = [], []
        for python, tree in pairs:
            env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
            survey = json.loads(run(python, tree, SURVEY, env))
            envs.append({**env, "PATROL_BENCH_HIDE": ",".join(survey["hidden"])})
            versions.append(survey["kubernetes"])
        samples: dict[tuple[int, int], list[float]] = {}
        for _ in range(args.rounds):
            for s, (_, statement) in enumerate(STEPS):
                code = MEASURE.replace("@STATEMENT@", statement.format(kubeconfig=str(kubeconfig)))
                for p, (python, tree) in enumerate(pairs):
                    rss_kb = int(run(python, tree, code, envs[p]))
                    samples.setdefault((s, p), []).append(rss_kb / 1024)
    header = " | ".join(f"kubernetes {v}" for v in versions)
    print(f"| RSS of a fresh process after (median of {args.rounds}) | {header} |")
    print("|---|" + "---:|" * len(pairs))
    for s, (label, _) in enumerate(STEPS):
        cells = " | ".join(f"{statistics.median(samples[(s, p)]):.1f} MB" for p in range(len(pairs)))
        print(f"| {label} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
