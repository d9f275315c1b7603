"""The shipped rules: generated files up to date, promtool/amtool clean, every alert complete."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import rules
from core.config import DEFAULT_ROTATE_ALERTNAMES
from patrol.stack import find_binary, free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "alerts" / "patrol.rules.yml"
PROMETHEUS_RULE_FILE = ROOT / "deploy" / "prometheusrule.yaml"
ALERTMANAGER_EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.test.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# docs/alerting.md: the alerts patrol's worker can fix by rotating the token.
ROTATE_ALERTS = {"PatRenewalDue", "PatInvalid", "KedaScalerAuthFailing"}
DOCUMENTED_ALERTS = ROTATE_ALERTS | {
    "PatExpiringSoon", "PatExpired", "AgentPoolStarved", "DailyChecksStale", "DailyChecksFailing",
    "PatrolSourceDown", "PatrolRotationFailed", "PatrolRotationStuck",
    "PatUnmanaged", "PatGlobal",                   # issue 8: adopt a hand-pasted PAT, flag global PATs
    "PatrolJournalNotWritable", "PatrolJournalReset",     # issue 10: the worker's state volume
    "PatrolExporterDown", "PatrolWorkerDown", "PatrolWebhookUnauthorized",   # issue 8: the watchers
    "PatrolCredentialBroken",                      # issue 8: the tenant refuses the bot account
}



def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian packages prometheus and "
                    "prometheus-alertmanager (`make system-deps`)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def _rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))["groups"]
    return groups


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _rule_groups() for rule in group["rules"] if "alert" in rule]


def _alert_tests() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


# --- one source of truth -----------------------------------------------------------------------


def test_committed_rule_files_equal_the_generator_output() -> None:
    stale = rules.stale_files()
    assert not stale, "\n".join(stale.values())


def test_check_command_passes_on_the_committed_files() -> None:
    _run(sys.executable, "-m", "alerts.rules", "--check")


def test_prometheus_rule_holds_exactly_the_rule_file_groups() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE_FILE.read_text(encoding="utf-8"))
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert "release" not in resource["metadata"]["labels"], "set by deploy/components/prometheus-release"
    assert resource["spec"]["groups"] == _rule_groups()


def test_for_override_changes_only_the_for_of_alerts() -> None:
    fast = rules.rule_groups(for_override="5s")
    normal = rules.rule_groups()
    for fast_group, group in zip(fast, normal, strict=True):
        for fast_rule, rule in zip(fast_group["rules"], group["rules"], strict=True):
            if "alert" in rule:
                assert fast_rule == {**rule, "for": "5s"}
            else:
                assert fast_rule == rule


# --- promtool ------------------------------------------------------------------------------------


def test_promtool_check_rules_is_clean(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    spec_groups = yaml.safe_load(PROMETHEUS_RULE_FILE.read_text(encoding="utf-8"))["spec"]
    from_prometheus_rule = tmp_path / "from-prometheusrule.yml"
    from_prometheus_rule.write_text(yaml.safe_dump(spec_groups), encoding="utf-8")
    result = _run(promtool, "check", "rules", str(RULES_FILE), str(from_prometheus_rule))
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    assert RULE_TESTS, "no alerts/tests/*.test.yml"
    result = _run(promtool, "test", "rules", *(str(path.relative_to(ROOT)) for path in RULE_TESTS))
    assert "FAILED" not in result.stdout + result.stderr


def test_every_alert_has_a_firing_case_and_a_silent_case() -> None:
    cases = _alert_tests()
    for rule in _alert_rules():
        name = rule["alert"]
        own = [case for case in cases if case["alertname"] == name]
        firing = [case for case in own if case.get("exp_alerts")]
        assert firing, f"{name}: no promtool case where it fires"
        assert any(case.get("exp_alerts") == [] for case in own), f"{name}: no case where it must not fire"
        for case in firing:
            for alert in case["exp_alerts"]:
                labels, annotations = alert["exp_labels"], alert["exp_annotations"]
                assert labels["severity"] == rule["labels"]["severity"], name
                assert set(annotations) == {"summary", "description", "runbook_url"}, name
                if rule["labels"].get("remediation") == "rotate":
                    assert labels["remediation"] == "rotate", name
                    assert labels.get("token"), f"{name}: a rotate alert must carry the token label"


def test_the_recording_rule_has_a_unit_test() -> None:
    tested = {
        case["expr"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        for case in test.get("promql_expr_test", [])
    }
    records = {rule["record"] for group in _rule_groups() for rule in group["rules"] if "record" in rule}
    assert records == {"patrol:pat_days_to_expiry"}
    assert records <= tested


# --- structure -------------------------------------------------------------------------------------


def test_the_alerts_are_those_documented() -> None:
    assert {rule["alert"] for rule in _alert_rules()} == DOCUMENTED_ALERTS


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_is_complete(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
    assert rule["labels"]["severity"] in {"info", "warning", "critical"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == f"{rules.RUNBOOK_BASE_URL}#{rule['alert'].lower()}"


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_only_the_rotate_alerts_carry_remediation_and_they_keep_token(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    if name in ROTATE_ALERTS:
        assert rule["labels"]["remediation"] == "rotate"
        # the token label must survive the expression's aggregations
        assert "token" in rule["expr"], name
        assert "{{ $labels.token }}" in rule["annotations"]["description"], name
    else:
        assert "remediation" not in rule["labels"], name


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_runbook_url_points_at_a_runbook_section() -> None:
    anchors = _github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in _alert_rules():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base.endswith("/docs/runbook.md"), url
        assert anchor in anchors, f"{rule['alert']}: docs/runbook.md has no heading for #{anchor}"


def test_runbook_internal_links_resolve() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    anchors = _github_anchors(text)
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, f"docs/runbook.md links to missing #{anchor}"


def test_every_metric_in_the_rules_is_documented() -> None:
    documented = set(re.findall(r"^### `([^`]+)`", METRICS_DOC.read_text(encoding="utf-8"), re.MULTILINE))
    used = set()
    for group in _rule_groups():
        for rule in group["rules"]:
            used |= set(re.findall(r"\bpatrol(?:_|:)[a-z_:]+", rule["expr"]))
    assert used, "no patrol metric found in the rules"
    assert used <= documented, f"not in docs/metrics.md: {sorted(used - documented)}"


# --- Alertmanager ----------------------------------------------------------------------------------


def test_amtool_check_config_is_clean() -> None:
    result = _run(_tool("amtool"), "check-config", str(ALERTMANAGER_EXAMPLE))
    assert "SUCCESS" in result.stdout


def test_the_worker_receives_rotate_alerts_grouped_by_token_with_bearer_auth() -> None:
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    worker_routes = [r for r in config["route"]["routes"] if r["receiver"] == "patrol-worker"]
    assert len(worker_routes) == 1
    route = worker_routes[0]
    assert route["matchers"] == [
        'remediation="rotate"', f'alertname=~"{"|".join(DEFAULT_ROTATE_ALERTNAMES)}"']
    assert route["group_by"] == ["alertname", "token"]
    assert route["continue"] is True, "critical rotation alerts must reach a person too"
    assert config["route"]["routes"].index(route) == 0, "the worker's route must come first"
    (receiver,) = [r for r in config["receivers"] if r["name"] == "patrol-worker"]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"] == "http://patrol-worker:9878/webhook/alertmanager"
    assert webhook["send_resolved"] is True
    assert webhook["max_alerts"] == 0
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer", "credentials_file": "/etc/alertmanager/secrets/patrol-webhook-token",
    }


def _routes_test(labels: dict[str, str], expected: str) -> set[str]:
    """amtool fails unless the alert reaches exactly ``expected``; returns the receivers it printed."""
    result = _run(
        _tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}",
        f"--verify.receivers={expected}", *(f"{key}={value}" for key, value in labels.items()),
    )
    return set(result.stdout.strip().splitlines()[-1].split(","))


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_reaches_the_right_receivers(rule: dict[str, Any]) -> None:
    labels = {"alertname": rule["alert"], **rule["labels"]}
    people = {"critical": "platform-oncall"}.get(labels["severity"], "platform-team")
    if labels.get("remediation") == "rotate":
        labels["token"] = "keda"
        # Critical: the worker and a person. Otherwise (PatRenewalDue) the worker alone.
        expected = "patrol-worker,platform-oncall" if labels["severity"] == "critical" else "patrol-worker"
    else:
        expected = people
    _routes_test(labels, expected)


def test_info_inhibitors_copy_of_a_rotation_alert_does_not_reach_the_worker() -> None:
    """The labels promtool showed kube-prometheus-stack's InfoInhibitor fires with."""
    receivers = _routes_test({"alertname": "InfoInhibitor", "severity": "none", "remediation": "rotate",
                              "token": "keda", "organization": "contoso", "alertstate": "firing"}, "platform-team")
    assert "patrol-worker" not in receivers


# --- inhibition: one incident, one page -------------------------------------------------------------


_MATCHER = re.compile(r'^\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    for text in matchers:
        found = _MATCHER.match(text)
        assert found, f"matcher not understood by this test: {text}"
        name, op, value = found.groups()
        have = labels.get(name, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None, "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


def test_an_alert_the_worker_needs_is_only_inhibited_by_a_rotation_alert_of_the_same_token() -> None:
    """An inhibited alert reaches no receiver, the worker included."""
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    rules_by_name = {r["alert"]: {"alertname": r["alert"], **r["labels"]} for r in _alert_rules()}
    assert config["inhibit_rules"]
    for inhibit in config["inhibit_rules"]:
        sources = [n for n, labels in rules_by_name.items() if _matches(inhibit["source_matchers"], labels)]
        targets = [n for n, labels in rules_by_name.items() if _matches(inhibit["target_matchers"], labels)]
        assert sources and targets, f"inhibit rule matches none of patrol's alerts: {inhibit}"
        for target in targets:
            if target in DEFAULT_ROTATE_ALERTNAMES:
                assert "token" in inhibit.get("equal", []), inhibit
                assert set(sources) <= set(DEFAULT_ROTATE_ALERTNAMES), (
                    f"{target} would be kept from the worker by {sources}")


def _post_alerts(base: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(UTC)
    body = [{"labels": labels, "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}
            for labels in alerts]
    request = urllib.request.Request(f"{base}/api/v2/alerts", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_a_real_alertmanager_pages_once_per_incident(tmp_path: Path) -> None:
    """The example's inhibit rules, run by the real Alertmanager (API v2 reports inhibitedBy)."""
    binary = find_binary("prometheus-alertmanager", "alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager not found: install it (`make system-deps`)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, f"--config.file={ALERTMANAGER_EXAMPLE}", f"--storage.path={tmp_path / 'am'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"{base}/-/ready", proc=proc)
        keda = {"token": "keda", "organization": "contoso"}
        _post_alerts(base, [
            {"alertname": "PatExpired", "severity": "critical", **keda},
            {"alertname": "PatExpiringSoon", "severity": "critical", **keda},
            {"alertname": "PatInvalid", "severity": "critical", "remediation": "rotate", "token": "keda",
             "sink": "k8s/build-a/azure-devops/azure-devops-token"},
            {"alertname": "KedaScalerAuthFailing", "severity": "critical", "remediation": "rotate",
             "token": "keda", "pool": "agents-a", "cluster": "build-a", "namespace": "azure-devops",
             "kind": "ScaledJob", "name": "azure-devops-agent"},
            {"alertname": "AgentPoolStarved", "severity": "critical", "organization": "contoso",
             "pool": "agents-a"},
            # another token's PatExpiringSoon is another incident
            {"alertname": "PatExpiringSoon", "severity": "critical", "token": "daily-checks",
             "organization": "contoso"},
        ])
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=5) as response:
                alerts = json.loads(response.read())
            state = {(a["labels"]["alertname"], a["labels"].get("token", "")):
                     a["status"]["state"] for a in alerts}
            if len(state) == 6 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert state == {
        ("PatInvalid", "keda"): "active",                   # to the worker, and one page
        ("PatExpired", "keda"): "suppressed",               # by PatInvalid
        ("PatExpiringSoon", "keda"): "suppressed",          # by PatExpired
        ("KedaScalerAuthFailing", "keda"): "suppressed",    # by PatInvalid
        ("AgentPoolStarved", ""): "suppressed",             # by KedaScalerAuthFailing
        ("PatExpiringSoon", "daily-checks"): "active",
    }
