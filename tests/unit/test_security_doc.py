"""docs/security.md cannot rot: every test it names exists, runs (not skipped), and every claim
names a test or says it is an assumption."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
CLAIM_ROW = re.compile(r"^\| ([A-Z]\d+) \| (.+) \| (.+) \|$")
SKIPPING = {"skip", "skipif", "xfail"}


def claims() -> dict[str, str]:
    """Claim id -> its "checked by" cell, from the doc's tables."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        found = CLAIM_ROW.match(line)
        if found:
            assert found.group(1) not in rows, f"claim {found.group(1)} appears twice"
            rows[found.group(1)] = found.group(3)
    return rows


def functions_in(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [*tree.body, *(n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body)]
    return {n.name: n for n in nodes if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def skip_marks(function: ast.FunctionDef) -> list[str]:
    """Names of skip/xfail marks on ``function`` (``@pytest.mark.skip``, ``...skipif(...)``)."""
    marks = []
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr in SKIPPING:
            marks.append(target.attr)
    return marks


def named_tests() -> list[tuple[str, str]]:
    return sorted(set(NODE.findall(DOC.read_text(encoding="utf-8"))))


def test_the_doc_has_claims_and_names_tests() -> None:
    assert len(claims()) >= 40 and len(named_tests()) >= 60


@pytest.mark.parametrize(("file", "name"), named_tests(), ids=[f"{f}::{n}" for f, n in named_tests()])
def test_every_test_the_doc_names_exists_and_is_not_skipped(file: str, name: str) -> None:
    path = ROOT / file
    assert path.is_file(), f"docs/security.md names {file}, which does not exist"
    functions = functions_in(path)
    assert name in functions, f"docs/security.md names {file}::{name}, which is not a test there"
    assert not skip_marks(functions[name]), f"{file}::{name} is skipped: it checks nothing"
    source = path.read_text(encoding="utf-8")
    body = ast.get_source_segment(source, functions[name]) or ""
    assert "pytest.skip(" not in body, f"{file}::{name} may skip itself"


def test_every_claim_names_a_test_or_says_it_is_an_assumption() -> None:
    for claim, checked_by in claims().items():
        assert NODE.search(checked_by) or checked_by.startswith("**assumption**"), (
            f"docs/security.md claim {claim} names no test and is not marked an assumption")


def test_the_checker_finds_a_missing_test_and_a_skipped_one(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text("import pytest\n\n@pytest.mark.skip(reason='x')\ndef test_skipped() -> None:\n    pass\n\n\n"
                      "def test_runs() -> None:\n    assert True\n")
    functions = functions_in(module)
    assert set(functions) == {"test_skipped", "test_runs"}
    assert skip_marks(functions["test_skipped"]) == ["skip"] and skip_marks(functions["test_runs"]) == []
    assert "test_missing" not in functions
