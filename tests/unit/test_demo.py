"""The demo's narration is pure: what it prints for a given look at the world."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from patrol.demo import Status, alert_name, parse_exporter, render, short_sink, synthetic_webhook
from patrol.stack import MonitoringStack
from remediation.alerts import parse_body

EXPOSITION = """\
# HELP patrol_pat_expiry_timestamp_seconds PAT validTo
# TYPE patrol_pat_expiry_timestamp_seconds gauge
patrol_pat_expiry_timestamp_seconds{organization="o",source="lifecycle-api",token="keda"} 1600.0
patrol_pat_expiry_timestamp_seconds{organization="o",source="annotation",token="keda"} 1500.0
# HELP patrol_pat_renewal_timestamp_seconds when rotation is due
# TYPE patrol_pat_renewal_timestamp_seconds gauge
patrol_pat_renewal_timestamp_seconds{organization="o",token="keda"} 900.0
# HELP patrol_pat_valid 1 if valid
# TYPE patrol_pat_valid gauge
patrol_pat_valid{sink="kubernetes-secret/cft-ptl/azure-devops/azure-devops-token/token",token="keda"} 0.0
patrol_pat_valid{sink="keyvault/vault.example/azure-devops-token",token="daily-checks"} 1.0
"""


def test_parse_exporter_takes_the_earliest_expiry_and_each_sink() -> None:
    status = Status(elapsed=0.0, now=1000.0)
    parse_exporter(EXPOSITION, status)
    assert status.expiry == {"keda": 1500.0}
    assert status.renewal == {"keda": 900.0}
    assert status.valid["keda"] == {"kubernetes-secret/cft-ptl/azure-devops/azure-devops-token/token": 0.0}


def test_render_says_what_is_due_invalid_and_unknown() -> None:
    status = Status(elapsed=12.0, now=1000.0)
    parse_exporter(EXPOSITION, status)
    status.keda = {"cft-ptl/azure-devops/agent": {"ready": "False", "queue_length": 3, "agents_running": 0,
                                                  "auth_failures": 4}}
    status.alerts = ["PatInvalid{token=keda}"]
    status.rotations = [{"id": "abc", "token": "keda", "state": "deliver", "outcome": None},
                        {"id": "def", "token": "keda", "state": "done", "outcome": "failed", "error": "scope mismatch"}]
    text = "\n".join(render(status))
    assert "keda" in text and "expires in   8m20s" in text and "renewal DUE" in text
    assert "cft-ptl=NO" in text
    assert "daily-checks" in text and "expiry unknown" in text and "keyvault=yes" in text
    assert "ready=False" in text and "queue=3" in text and "auth-failures=4" in text
    assert "alerts firing: PatInvalid{token=keda}" in text
    assert "rotation abc of keda: running, step deliver" in text
    assert "rotation def of keda: failed (scope mismatch)" in text


def test_short_sink_names() -> None:
    assert short_sink("kubernetes-secret/sds-ptl/ns/s/k") == "sds-ptl"
    assert short_sink("keyvault/127.0.0.1:1/azure-devops-token") == "keyvault"


def test_the_synthetic_webhook_is_a_valid_alertmanager_v4_body() -> None:
    body = synthetic_webhook("keda")
    parsed = parse_body(json.dumps(body).encode())
    [alert] = parsed.alerts
    assert alert.labels["token"] == "keda" and alert.labels["remediation"] == "rotate"
    assert alert.status == "firing"


def test_alert_names_say_what_they_are_about() -> None:
    assert alert_name({"alertname": "PatInvalid", "token": "keda", "sink": "x"}) == "PatInvalid{token=keda}"
    starved = {"alertname": "AgentPoolStarved", "pool": "hmcts-agents"}
    assert alert_name(starved) == "AgentPoolStarved{pool=hmcts-agents}"
    assert alert_name({"alertname": "Other"}) == "Other"


def test_the_demo_speeds_up_only_the_alerts_that_drive_a_rotation(tmp_path: Path) -> None:
    stack = MonitoringStack(directory=tmp_path, targets={}, webhook_url="http://x", webhook_token_file="f",
                            alert_for="3s", fast="rotate")
    rules = [r for g in yaml.safe_load(stack.rules_text())["groups"] for r in g["rules"] if "alert" in r]
    fast = {r["alert"] for r in rules if r.get("for") == "3s"}
    assert fast == {r["alert"] for r in rules if r.get("labels", {}).get("remediation") == "rotate"}
    assert {"PatInvalid", "KedaScalerAuthFailing", "PatRenewalDue"} <= fast
    assert "PatrolRotationStuck" not in fast
