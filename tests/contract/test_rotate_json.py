"""``patrol rotate --json`` against the sandbox: the plan and the final result as one JSON document.

A script reads stdout only: it must parse as JSON whatever the command logs on stderr, carry the
outcome and the journal record, and never a token value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from patrol.cli import main
from sandbox.app import SandboxThread

pytestmark = pytest.mark.contract


def sink_value(sandbox: SandboxThread) -> str | None:
    value: str | None = sandbox.call(sandbox.world.clusters["build-a"].secret_value, "azure-devops",
                                     "azure-devops-token", "token")
    return value


def rotate(sandbox: SandboxThread, state: Path, *extra: str,
           capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["rotate", "keda", "--config", sandbox.ready["config"], "--state-dir", str(state), "--json",
                 *extra], env={})
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_rotate_json_prints_the_plan_then_the_final_result(sandbox: SandboxThread, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = sink_value(sandbox)
    code, plan, _ = rotate(sandbox, tmp_path, "--dry-run", capsys=capsys)
    assert code == 0 and plan["dry_run"] is True and plan["problems"] == []
    held = {sink["authorization_id"] for sink in plan["sinks"]}
    assert len(held) == 1 and plan["would_revoke"] == list(held)
    assert {(c["cluster"], c["ready"]) for c in plan["consumers"]} == {("build-a", True), ("build-b", True)}

    code, result, err = rotate(sandbox, tmp_path, "--reason", "json test", capsys=capsys)
    assert code == 0, result
    assert result["outcome"] == "succeeded" and result["token"] == "keda"
    record = result["rotation"]
    assert record["reason"] == "json test" and record["old_authorization_id"] in held
    assert result["message"] == f"rotation {record['id']} succeeded: now {record['new_authorization_id']}"
    assert [s["name"] for s in record["steps"]][:2] == ["plan", "create"]
    assert all(s["status"] == "done" for s in record["steps"])
    text = json.dumps(plan) + json.dumps(result) + err
    for value in (before, sink_value(sandbox)):
        assert value and value not in text, "a token value in the output"
