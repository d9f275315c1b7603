"""The Grafana dashboard: built from code, importable anywhere, every query valid PromQL."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as grafana_dashboard

from dashboards import build

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = ROOT / "dashboards" / "patrol.json"
PROVISIONING_EXAMPLE = ROOT / "dashboards" / "provisioning.example.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"
PANEL_KINDS = {"row", "stat", "timeseries", "table", "state-timeline"}


def _committed() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    return dashboard


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def _walk(node: Any, path: str = "$") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def test_committed_json_equals_the_builder_output() -> None:
    diff = build.stale_diff()
    assert not diff, diff


def test_check_command_passes_on_the_committed_json() -> None:
    result = subprocess.run([sys.executable, "-m", "dashboards.build", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_identity_and_schema() -> None:
    dashboard = _committed()
    assert dashboard["uid"] == "patrol-pat-health"
    assert dashboard["title"] == "patrol / PAT health"
    assert dashboard["schemaVersion"] >= 39
    assert "patrol" in dashboard["tags"]
    assert dashboard["id"] is None


def test_grafana_s_dashboard_schema_reads_every_field() -> None:
    """Decoded into the SDK's model of Grafana's dashboard schema (each panel's options as its
    plugin's typed options) and encoded back, the JSON loses only what build.py adds on purpose:
    the null id and Prometheus's annotation options. A field Grafana does not know would be lost."""
    plugins.register_default_plugins()                       # panel options and queries, typed
    committed = _committed()
    decoded = grafana_dashboard.Dashboard.from_json(copy.deepcopy(committed))
    panels = [panel for panel in decoded.panels or [] if isinstance(panel, grafana_dashboard.Panel)]
    assert {type(panel.options).__module__ for panel in panels} == {
        f"grafana_foundation_sdk.models.{kind}" for kind in ("stat", "timeseries", "table", "statetimeline")}
    assert {type(target).__module__ for panel in panels for target in panel.targets or []} == {
        "grafana_foundation_sdk.models.prometheus"}
    again: dict[str, Any] = json.loads(json.dumps(decoded, cls=JSONEncoder))
    expected = copy.deepcopy(committed)
    del expected["id"]
    for annotation in expected["annotations"]["list"]:
        for key in build.ALERTS_ANNOTATION_PROMETHEUS_OPTIONS:
            del annotation[key]
    assert again == expected


def test_panel_ids_are_unique_positive_integers() -> None:
    ids = [panel["id"] for panel in _all_panels(_committed()["panels"])]
    assert all(isinstance(panel_id, int) and panel_id > 0 for panel_id in ids)
    assert len(ids) == len(set(ids))


def test_datasource_is_the_template_variable_everywhere() -> None:
    dashboard = _committed()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    datasources = [(path, value) for path, key, value in _walk(dashboard) if key == "datasource"]
    assert datasources
    for path, value in datasources:
        assert value == {"type": "prometheus", "uid": "${datasource}"}, path
    uids = [path for path, key, _ in _walk(dashboard) if key == "uid"]
    # the dashboard's own uid, and datasource references to the variable, nothing else
    assert all(path == "$" or path.endswith(".datasource") for path in uids), uids


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _all_panels(_committed()["panels"]):
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_queries_prometheus_with_distinct_ref_ids() -> None:
    for panel in _all_panels(_committed()["panels"]):
        assert panel["type"] in PANEL_KINDS, panel["type"]
        if panel["type"] == "row":
            continue
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_the_issue_s_panels_are_there() -> None:
    titles = {panel["title"] for panel in _all_panels(_committed()["panels"])}
    needed = {
        "Days to expiry (20 soonest)", "Expiry and renewal by token", "Renewal due in (20 soonest)",
        "Token valid per sink", "KEDA auth failures per ScaledJob", "KEDA scaler ready", "Queued jobs",
        "Oldest queued job wait", "Agents online / offline", "Daily checks: since last run",
        "Daily checks: since last success", "Rotations by result", "Rotation duration (p50 / p95)",
        "Rotation failures", "Source up", "Time since last successful refresh", "Refresh duration",
    }
    assert needed <= titles, sorted(needed - titles)


def test_days_to_expiry_thresholds_are_red_below_3_orange_below_7() -> None:
    (panel,) = [p for p in _committed()["panels"] if p["title"] == "Days to expiry (20 soonest)"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [
        {"color": "red", "value": None}, {"color": "orange", "value": 3}, {"color": "green", "value": 7},
    ]


def test_table_value_columns_match_its_queries() -> None:
    for panel in _all_panels(_committed()["panels"]):
        if panel["type"] != "table":
            continue
        organize = [t for t in panel["transformations"] if t["id"] == "organize"]
        renamed = set(organize[0]["options"]["renameByName"])
        assert renamed == {f"Value #{target['refId']}" for target in panel["targets"]}, panel["title"]
        assert all(target.get("format") == "table" for target in panel["targets"]), panel["title"]


def test_panel_queries_lists_every_target_with_variables_replaced() -> None:
    queries = build.panel_queries()
    targets = [t for p in _all_panels(_committed()["panels"]) for t in p.get("targets", [])]
    assert len(queries) == len(targets)
    for title, expr in queries:
        assert title and "$" not in expr, (title, expr)
    assert ("Queued jobs", "max by (organization, pool) (patrol_agent_pool_queued_jobs)") in queries


def test_substitute_rejects_an_unknown_variable() -> None:
    assert build.substitute("rate(x[$__rate_interval])", {"__rate_interval": "30s"}) == "rate(x[30s])"
    assert build.substitute("x{t=~\"${token}\"}", {"token": "a|b"}) == 'x{t=~"a|b"}'
    with pytest.raises(KeyError):
        build.substitute("x[$__nonsense]")


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression as the expr of a throwaway recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package prometheus (`make system-deps`)")
    queries = build.panel_queries() + build.annotation_queries()
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{
        "name": "dashboard",
        "rules": [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)],
    }]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True,
                            timeout=60, check=False)
    numbered = "\n".join(f"  query_{i}: [{title}] {expr}" for i, (title, expr) in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{numbered}"


def test_every_metric_in_the_queries_is_documented() -> None:
    documented = set(re.findall(r"^### `([^`]+)`", METRICS_DOC.read_text(encoding="utf-8"), re.MULTILINE))
    used = set()
    for _, expr in build.panel_queries():
        for name in re.findall(r"\bpatrol(?:_|:)[a-z_:]+", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used <= documented, f"not in docs/metrics.md: {sorted(used - documented)}"


def test_provisioning_example_is_a_file_provider() -> None:
    config = yaml.safe_load(PROVISIONING_EXAMPLE.read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
