"""The lock (constraints.txt): what the tests run on is what the image installs.

``make venv`` and the Dockerfile install with ``-c constraints.txt``; ``make lock`` writes it
from the venv (tools/lock.py). These tests hold the three together: the file pins exactly
what this venv has, inside pyproject's ranges, and nothing patrol does not install.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools.lock import freeze, render, requirement_closure

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_every_line_is_an_exact_pin() -> None:
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line), line


def test_the_lock_is_what_this_venv_runs() -> None:
    """A venv moved on without `make lock` (or a lock edited by hand) fails here."""
    locked = _pins(LOCK.read_text(encoding="utf-8"))
    current = _pins(render(freeze(), requirement_closure()))
    stale = {name: (locked.get(name), version) for name, version in current.items() if locked.get(name) != version}
    assert not stale, f"constraints.txt differs from the venv (locked, installed): {stale}; run `make lock`"
    assert set(locked) == set(current), f"pins for what patrol does not install: {set(locked) - set(current)}"


def test_every_direct_dependency_is_locked_inside_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    locked = _pins(LOCK.read_text(encoding="utf-8"))
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(text.split("#")[0])
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not locked"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} is outside pyproject's {requirement.specifier}: run `make lock`")


def test_the_closure_follows_extras_and_markers() -> None:
    closure = requirement_closure()
    assert {"prometheus-client", "kubernetes", "azure-identity", "pytest", "kubernetes-validate"} <= closure
    assert "msal" in closure                               # azure-identity's, two levels down
    assert "ado-patrol" not in closure and "pip" not in closure
    runtime = requirement_closure(extras=())
    assert "pytest" not in runtime and "kubernetes" in runtime


def test_render_refuses_a_requirement_that_is_not_installed() -> None:
    with pytest.raises(SystemExit, match="not installed"):
        render({"a": "a==1"}, {"a", "b"})


def test_make_lock_writes_the_file_with_the_lock_tool() -> None:
    plan = subprocess.run(["make", "-n", "lock"], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=60).stdout
    assert "tools/lock.py constraints.txt" in plan
    venv = subprocess.run(["make", "-n", "-B", ".venv/.installed-x", "STAMP=.venv/.installed-x"], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=60).stdout
    assert "-c constraints.txt" in venv, "make venv installs the locked versions"


def test_the_lock_tool_writes_what_render_makes(tmp_path: Path) -> None:
    out = tmp_path / "constraints.txt"
    subprocess.run([sys.executable, str(ROOT / "tools" / "lock.py"), str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    assert _pins(out.read_text(encoding="utf-8")) == _pins(LOCK.read_text(encoding="utf-8"))
