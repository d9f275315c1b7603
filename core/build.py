"""Which patrol this is: version, source revision and Python, for ``--version`` and ``patrol_build_info``.

Guarantees: :func:`build_info` never raises and never blocks for long; every field is a
non-empty string ("unknown" when it cannot be known). It is computed once per process.

Where each value comes from, first that answers:

- ``version``: the installed distribution's metadata (``importlib.metadata``, from pyproject's
  ``version``), so the number has one source; "unknown" when patrol runs from a source tree
  that was never installed.
- ``revision``: ``core/_build.py``'s ``REVISION``, written at image build time from the
  Dockerfile's ``REVISION`` build argument (an image has no ``.git``); else
  ``git rev-parse --short HEAD`` when the code runs from a git checkout (a developer's clone,
  an editable install); else "unknown".
- ``python``: the running interpreter's version.
"""

from __future__ import annotations

import functools
import importlib
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "ado-patrol"
UNKNOWN = "unknown"
# A generated module (never committed): the Dockerfile writes it before installing.
BUILD_MODULE = "core._build"
GIT_TIMEOUT_SECONDS = 2.0
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildInfo:
    version: str
    revision: str
    python: str

    def describe(self, program: str = "patrol") -> str:
        """The ``--version`` line: ``patrol 0.1.0 (1a2b3c4, Python 3.11.13)``."""
        return f"{program} {self.version} ({self.revision}, Python {self.python})"

    def labels(self) -> dict[str, str]:
        """The labels of ``patrol_build_info``."""
        return {"version": self.version, "revision": self.revision, "python": self.python}


def installed_version(distribution: str = DISTRIBUTION) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def baked_revision(module: str = BUILD_MODULE) -> str | None:
    """``REVISION`` of the generated build module, or None when there is none (or it is empty)."""
    try:
        value = getattr(importlib.import_module(module), "REVISION", None)
    except ImportError:
        return None
    if isinstance(value, str) and value.strip() and value.strip() != UNKNOWN:
        return value.strip()
    return None


def git_revision(root: Path = SOURCE_ROOT, timeout: float = GIT_TIMEOUT_SECONDS) -> str | None:
    """The short commit of the checkout at ``root``, or None (not a checkout, no git, git failed).

    ``.git`` is a directory in a clone and a file in a worktree; an installed copy in
    site-packages has neither, so git is not even started there.
    """
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    revision = result.stdout.strip()
    return revision if result.returncode == 0 and revision else None


def resolve(*, version: str, baked: str | None, git: str | None, python: str) -> BuildInfo:
    """The precedence above, as a pure function."""
    return BuildInfo(version=version or UNKNOWN, revision=baked or git or UNKNOWN, python=python or UNKNOWN)


@functools.cache
def build_info() -> BuildInfo:
    """This process's build identity (cached: git runs at most once)."""
    baked = baked_revision()
    return resolve(version=installed_version(), baked=baked, git=None if baked else git_revision(),
                   python=platform.python_version())
