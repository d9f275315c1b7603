"""The fault matrix's table: complete, consistent, and the same in docs/reliability.md as what
``python -m tests.faults.matrix --markdown`` prints (regenerate the doc's block with it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.matrix import CALLS, CASES, NOT_APPLICABLE, Case, Expect, Fault, cell, markdown

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"
SAGA_EXPECT = {Expect.RETRIED, Expect.THROTTLED, Expect.FAILS_CLEAN, Expect.FAILS_SAFE, Expect.TOLERATED,
               Expect.UNCONFIRMED, Expect.RESUMED, Expect.PAUSED}


def test_every_cell_is_one_case_or_one_reason() -> None:
    for call in CALLS:
        for fault in Fault:
            cell(call, fault)                   # raises unless exactly one entry
    assert len(CASES) + len(NOT_APPLICABLE) == len(CALLS) * len(Fault)
    assert len({c.id for c in CALLS}) == len(CALLS)
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_expectation_fits_its_column(case: Case) -> None:
    assert (case.expect in SAGA_EXPECT) == (case.call.component == "saga")
    assert (case.expect is Expect.RESUMED) == (case.fault is Fault.SIGKILL)
    if case.call.component == "saga":
        assert case.call.token in ("keda", "daily-checks")
    else:
        assert case.call.source


def test_the_reasons_say_something_and_name_real_cases() -> None:
    ids = {c.id for c in CASES}
    for entry in NOT_APPLICABLE:
        assert len(entry.reason) > 20, entry
        assert entry.see is None or entry.see in ids, f"{entry.call.id} x {entry.fault.value}: no case {entry.see}"


def test_the_documented_table_is_the_generated_one() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} has no fault-matrix block"
    documented = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert documented == markdown(), (
        "docs/reliability.md's fault matrix differs from the generator: paste the output of "
        "`PYTHONPATH=. .venv/bin/python -m tests.faults.matrix --markdown` between the markers")


def test_the_generator_prints_it() -> None:
    done = subprocess.run([sys.executable, "-m", "tests.faults.matrix", "--markdown"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == markdown()
