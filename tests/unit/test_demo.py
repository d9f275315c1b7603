"""The demo's own parts: the webhook it posts without Alertmanager, its alert timings, its logs folder.

The timeline and its printing are tested in test_demo_timeline.py and test_demo_narrator.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from patrol.demo import default_logs, run, synthetic_webhook
from patrol.stack import MonitoringStack
from remediation.alerts import parse_body


def test_the_synthetic_webhook_is_a_valid_alertmanager_v4_body() -> None:
    body = synthetic_webhook("keda")
    parsed = parse_body(json.dumps(body).encode())
    [alert] = parsed.alerts
    assert alert.labels["token"] == "keda" and alert.labels["remediation"] == "rotate"
    assert alert.status == "firing"


def test_the_demo_speeds_up_only_the_alerts_that_drive_a_rotation(tmp_path: Path) -> None:
    stack = MonitoringStack(directory=tmp_path, targets={}, webhook_url="http://x", webhook_token_file="f",
                            alert_for="3s", fast="rotate")
    rules = [r for g in yaml.safe_load(stack.rules_text())["groups"] for r in g["rules"] if "alert" in r]
    fast = {r["alert"] for r in rules if r.get("for") == "3s"}
    assert fast == {r["alert"] for r in rules if r.get("labels", {}).get("remediation") == "rotate"}
    assert {"PatInvalid", "KedaScalerAuthFailing", "PatRenewalDue"} <= fast
    assert "PatrolRotationStuck" not in fast


def test_the_logs_folder_is_kept_under_dot_demo_with_a_utc_timestamp() -> None:
    assert default_logs(0.0) == Path(".demo") / "19700101-000000Z"


def test_an_unwritable_logs_folder_is_one_clear_line_and_exit_2(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run(duration=1.0, workdir=str(blocker / "logs"), out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create the logs folder" in err and "--logs DIR" in err
