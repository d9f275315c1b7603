"""Which patrol this is: ``patrol --version`` and ``patrol_build_info`` on the exporter and the worker."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import build
from core.build import BuildInfo, baked_revision, build_info, git_revision, installed_version, resolve
from exporter.assembly import BuildInfoCollector
from exporter.exposition import Exposition
from patrol.cli import main
from remediation.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
INFO = BuildInfo(version="1.2.3", revision="abc1234", python="3.11.9")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd,
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def test_version_names_the_version_revision_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"], env={})
    assert exc.value.code == 0
    out = capsys.readouterr().out
    match = re.fullmatch(r"patrol (\S+) \((\S+), Python (\S+)\)\n", out)
    assert match, out
    assert match.group(1) == VERSION
    assert match.group(3) == platform.python_version()
    assert match.group(2) == build_info().revision != ""


def test_the_installed_console_script_answers_version() -> None:
    patrol = Path(sys.executable).parent / "patrol"
    result = subprocess.run([str(patrol), "--version"], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"patrol {VERSION} (")


def test_the_version_comes_from_the_installed_metadata() -> None:
    assert installed_version() == VERSION
    assert installed_version("no-such-distribution-for-patrol") == "unknown"


def test_a_baked_revision_wins_over_git_and_git_over_unknown() -> None:
    assert resolve(version="1", baked="b1", git="g1", python="3.11.0").revision == "b1"
    assert resolve(version="1", baked=None, git="g1", python="3.11.0").revision == "g1"
    assert resolve(version="1", baked=None, git=None, python="3.11.0").revision == "unknown"
    assert resolve(version="", baked=None, git=None, python="").labels() == {
        "version": "unknown", "revision": "unknown", "python": "unknown"}


def test_the_revision_of_a_git_checkout(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("x")
    _git(tmp_path, "add", "f")
    _git(tmp_path, "commit", "-q", "-m", "one")
    assert git_revision(tmp_path) == _git(tmp_path, "rev-parse", "--short", "HEAD")


def test_no_checkout_or_a_broken_one_is_no_revision_and_no_error(tmp_path: Path) -> None:
    assert git_revision(tmp_path) is None                      # no .git: git is not even run
    (tmp_path / ".git").write_text("gitdir: /nonexistent\n")   # a worktree whose repository is gone
    assert git_revision(tmp_path) is None


def test_the_generated_build_module_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "patrol_test_build_a.py").write_text('REVISION = "0123abc"\n')
    (tmp_path / "patrol_test_build_b.py").write_text('REVISION = "unknown"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert baked_revision("patrol_test_build_a") == "0123abc"
    assert baked_revision("patrol_test_build_b") is None       # the Dockerfile's default: ask git
    assert baked_revision("patrol_test_build_missing") is None
    assert build.BUILD_MODULE == "core._build"


def test_the_exporter_exports_build_info() -> None:
    body = Exposition([BuildInfoCollector(INFO)]).body().decode()
    (family,) = [f for f in text_string_to_metric_families(body) if f.name == "patrol_build_info"]
    assert family.type == "gauge"
    assert [(s.labels, s.value) for s in family.samples] == [(INFO.labels(), 1.0)]


def test_the_worker_exports_build_info() -> None:
    metrics = WorkerMetrics(info=INFO)
    assert metrics.registry.get_sample_value("patrol_build_info", INFO.labels()) == 1.0
    default = WorkerMetrics()
    assert default.registry.get_sample_value("patrol_build_info", build_info().labels()) == 1.0


def test_the_describe_line() -> None:
    assert INFO.describe() == "patrol 1.2.3 (abc1234, Python 3.11.9)"
