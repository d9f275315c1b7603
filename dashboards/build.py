"""Builds the Grafana dashboard "patrol / PAT health" (``dashboards/patrol.json``).

The JSON is generated, not hand-edited: panels are declared below in reading order, and a
small layout pass gives them ids and grid positions, so adding a panel is one line and the
committed file changes by a reviewable diff. ``tests/unit/test_dashboard.py`` fails when the
committed JSON differs from what this module builds.

The datasource is the template variable ``${datasource}`` (no datasource UID is hard-coded),
so the same file imports into any Grafana and works with file provisioning
(``dashboards/provisioning.example.yml``).

    python -m dashboards.build --write    # regenerate dashboards/patrol.json
    python -m dashboards.build --check    # exit 1 if it is out of date

``panel_queries()`` lists every panel's PromQL with Grafana's variables replaced, ready to be
sent to a real Prometheus by an end-to-end test.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_FILE = ROOT / "dashboards" / "patrol.json"

UID = "patrol-pat-health"
TITLE = "patrol / PAT health"
SCHEMA_VERSION = 39
RUNBOOK_URL = "https://github.com/hmcts/patrol/blob/main/docs/runbook.md"
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

TOKEN = 'token=~"$token"'
DAILY_CHECKS_MAX_AGE_SECONDS = 26 * 3600

# What Grafana puts in place of its variables, for running the queries outside Grafana.
PROMETHEUS_SUBSTITUTIONS: dict[str, str] = {
    "__rate_interval": "2m",
    "__interval": "1m",
    "__range": "1h",
    "token": ".*",
}

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass(frozen=True)
class Panel:
    """One panel: what it shows and how big it is. Ids and positions come from the layout."""

    kind: str
    title: str
    description: str
    queries: tuple[Query, ...]
    width: int
    height: int
    field_config: JsonObject = field(default_factory=dict)
    options: JsonObject = field(default_factory=dict)
    transformations: tuple[JsonObject, ...] = ()


@dataclass(frozen=True)
class Row:
    title: str


def _ref_id(index: int) -> str:
    return chr(ord("A") + index)


# --- field configuration pieces -----------------------------------------------------------


def _steps(*steps: tuple[str, float | None]) -> JsonObject:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


DAYS_THRESHOLDS = _steps(("red", None), ("orange", 3), ("green", 7))
RENEWAL_THRESHOLDS = _steps(("orange", None), ("green", 0))
AGE_THRESHOLDS = _steps(("green", None), ("red", DAILY_CHECKS_MAX_AGE_SECONDS))
NEUTRAL_THRESHOLDS = _steps(("green", None))


def _value_map(*entries: tuple[int, str, str]) -> list[JsonObject]:
    return [
        {
            "type": "value",
            "options": {
                str(value): {"text": text, "color": color, "index": index}
                for index, (value, text, color) in enumerate(entries)
            },
        }
    ]


VALID_MAP = _value_map((0, "INVALID", "red"), (1, "valid", "green"))
READY_MAP = _value_map((0, "not ready", "red"), (1, "ready", "green"))
AUTH_FAILING_MAP = _value_map((0, "ok", "green"), (1, "AUTH FAILING", "red"))
UP_MAP = _value_map((0, "down", "red"), (1, "up", "green"))
ROTATING_MAP = _value_map((0, "idle", "transparent"), (1, "rotating", "blue"))


def _defaults(
    *,
    unit: str = "short",
    thresholds: JsonObject = NEUTRAL_THRESHOLDS,
    mappings: list[JsonObject] | None = None,
    decimals: int | None = None,
    color_mode: str = "thresholds",
    custom: JsonObject | None = None,
) -> JsonObject:
    defaults: JsonObject = {
        "unit": unit,
        "color": {"mode": color_mode},
        "thresholds": thresholds,
        "mappings": mappings or [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if custom is not None:
        defaults["custom"] = custom
    return defaults


def _by_name(name: str, **properties: Any) -> JsonObject:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


# --- panel kinds -----------------------------------------------------------------------------


def stat(
    title: str,
    description: str,
    *queries: Query,
    width: int = 12,
    height: int = 6,
    text_mode: str = "auto",
    color_mode: str = "background",
    overrides: Sequence[JsonObject] = (),
    **defaults: Any,
) -> Panel:
    return Panel(
        kind="stat",
        title=title,
        description=description,
        queries=queries,
        width=width,
        height=height,
        field_config={"defaults": _defaults(**defaults), "overrides": list(overrides)},
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": color_mode,
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text_mode,
            "wideLayout": True,
            "showPercentChange": False,
        },
    )


def timeseries(
    title: str,
    description: str,
    *queries: Query,
    width: int = 12,
    height: int = 8,
    bars: bool = False,
    threshold_style: str = "off",
    **defaults: Any,
) -> Panel:
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "thresholdsStyle": {"mode": threshold_style},
    }
    return Panel(
        kind="timeseries",
        title=title,
        description=description,
        queries=queries,
        width=width,
        height=height,
        field_config={
            "defaults": _defaults(color_mode="palette-classic", custom=custom, **defaults),
            "overrides": [],
        },
        options={
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def state_timeline(
    title: str,
    description: str,
    *queries: Query,
    mappings: list[JsonObject],
    width: int = 12,
    height: int = 6,
) -> Panel:
    return Panel(
        kind="state-timeline",
        title=title,
        description=description,
        queries=queries,
        width=width,
        height=height,
        field_config={
            "defaults": _defaults(mappings=mappings, custom={"lineWidth": 0, "fillOpacity": 80}),
            "overrides": [],
        },
        options={
            "mergeValues": True,
            "showValue": "never",
            "alignValue": "left",
            "rowHeight": 0.9,
            "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )


def table(
    title: str,
    description: str,
    *queries: Query,
    columns: Sequence[str],
    overrides: Sequence[JsonObject],
    width: int = 12,
    height: int = 6,
) -> Panel:
    """Instant queries merged on their labels; ``columns`` names each query's value column."""
    renames = {f"Value #{_ref_id(index)}": name for index, name in enumerate(columns)}
    return Panel(
        kind="table",
        title=title,
        description=description,
        queries=tuple(Query(q.expr, q.legend, instant=True, table=True) for q in queries),
        width=width,
        height=height,
        field_config={
            "defaults": _defaults(custom={"align": "auto", "cellOptions": {"type": "auto"}}),
            "overrides": list(overrides),
        },
        options={
            "showHeader": True,
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
            "sortBy": [{"displayName": columns[0], "desc": False}],
        },
        transformations=(
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "renameByName": renames, "indexByName": {}},
            },
        ),
    )


# --- the dashboard ---------------------------------------------------------------------------

DAYS = f"patrol:pat_days_to_expiry{{{TOKEN}}}"
RENEWAL_IN = f"min by (token, organization) (patrol_pat_renewal_timestamp_seconds{{{TOKEN}}}) - time()"

LAYOUT: tuple[Row | Panel, ...] = (
    Row("PAT expiry"),
    stat(
        "Days to expiry (20 soonest)",
        "Days until each PAT expires (recording rule patrol:pat_days_to_expiry). "
        "Red below 3 days, orange below 7.",
        Query(f"bottomk(20, {DAYS})", "{{token}}", instant=True),
        unit="suffix: d",
        decimals=1,
        thresholds=DAYS_THRESHOLDS,
    ),
    table(
        "Expiry and renewal by token",
        "Per token: days to expiry, time until patrol rotates it (negative: overdue) and the "
        "expiry date.",
        Query(f"min by (token, organization) ({DAYS})"),
        Query(RENEWAL_IN),
        Query(f"1000 * (time() + 86400 * {DAYS})"),
        columns=("Days to expiry", "Renewal in", "Expires"),
        overrides=(
            _by_name(
                "Days to expiry",
                unit="suffix: d",
                decimals=1,
                thresholds=DAYS_THRESHOLDS,
                **{"custom.cellOptions": {"type": "color-background", "mode": "basic"}},
            ),
            _by_name(
                "Renewal in",
                unit="s",
                thresholds=RENEWAL_THRESHOLDS,
                **{"custom.cellOptions": {"type": "color-text"}},
            ),
            _by_name("Expires", unit="dateTimeAsIso"),
        ),
    ),
    timeseries(
        "Days to expiry over time",
        "Each PAT's days to expiry; a rotation shows as a jump up.",
        Query(DAYS, "{{token}}"),
        unit="suffix: d",
        decimals=1,
        thresholds=DAYS_THRESHOLDS,
        threshold_style="line+area",
    ),
    stat(
        "Renewal due in (20 soonest)",
        "Time until each PAT's renewal time (expiry - renew_before), when PatRenewalDue makes "
        "patrol rotate it. Orange: overdue.",
        Query(f"bottomk(20, {RENEWAL_IN})", "{{token}}", instant=True),
        width=12,
        height=8,
        unit="s",
        thresholds=RENEWAL_THRESHOLDS,
    ),
    Row("Token validity"),
    stat(
        "Token valid per sink",
        "Whether the token each sink holds authenticates now (patrol_pat_valid).",
        Query(f"min by (token, sink) (patrol_pat_valid{{{TOKEN}}})", "{{token}} @ {{sink}}", instant=True),
        mappings=VALID_MAP,
        thresholds=_steps(("red", None), ("green", 1)),
    ),
    state_timeline(
        "Token validity over time",
        "When each sink's token stopped (red) or started (green) authenticating.",
        Query(f"min by (token, sink) (patrol_pat_valid{{{TOKEN}}})", "{{token}} @ {{sink}}"),
        mappings=VALID_MAP,
    ),
    Row("KEDA"),
    state_timeline(
        "KEDA failing to authenticate",
        "When KEDA's azure-pipelines scaler of each ScaledJob/ScaledObject failed to authenticate "
        "(red): its Ready condition and newest KEDAScalerFailed event (patrol_keda_scaler_auth_failing, "
        "what KedaScalerAuthFailing fires on).",
        Query(
            "max by (cluster, namespace, kind, name) (patrol_keda_scaler_auth_failing)",
            "{{cluster}} {{namespace}}/{{name}}",
        ),
        mappings=AUTH_FAILING_MAP,
        width=24,
    ),
    timeseries(
        "KEDA auth failures per ScaledJob",
        "Authentication failures as KEDA's event recorder wrote them to KEDAScalerFailed events, "
        "per ScaledJob/ScaledObject. KEDA >= 2.20 writes a series' count at the 2nd failure and "
        "then every 30 min: bars lag an outage; the timeline above is the live signal.",
        Query(
            "sum by (cluster, namespace, kind, name) "
            "(increase(patrol_keda_scaler_auth_failures_total[$__rate_interval]))",
            "{{cluster}} {{namespace}}/{{name}}",
        ),
        bars=True,
        decimals=0,
    ),
    stat(
        "KEDA scaler ready",
        "The Ready condition of each ScaledJob/ScaledObject.",
        Query(
            "min by (cluster, namespace, kind, name) (patrol_keda_scaler_ready)",
            "{{cluster}} {{namespace}}/{{name}}",
            instant=True,
        ),
        height=8,
        mappings=READY_MAP,
        thresholds=_steps(("red", None), ("green", 1)),
    ),
    Row("Agent pools"),
    timeseries(
        "Queued jobs",
        "Jobs waiting for an agent, counted as KEDA counts its queue.",
        Query("max by (organization, pool) (patrol_agent_pool_queued_jobs)", "{{pool}}"),
        width=8,
        decimals=0,
    ),
    timeseries(
        "Oldest queued job wait",
        "How long the oldest waiting job has waited.",
        Query("max by (organization, pool) (patrol_agent_pool_oldest_queued_job_age_seconds)", "{{pool}}"),
        width=8,
        unit="s",
    ),
    timeseries(
        "Agents online / offline",
        "Registered agents by status. KEDA's agents live only while jobs run, so 0 online is "
        "normal when nothing is queued.",
        Query("max by (organization, pool, status) (patrol_agent_pool_agents)", "{{pool}} {{status}}"),
        width=8,
        decimals=0,
    ),
    Row("Daily checks"),
    stat(
        "Daily checks: since last run",
        "Time since the latest completed run finished, with its result.",
        Query(
            "time() - max by (pipeline, result) (patrol_pipeline_last_run_timestamp_seconds)",
            "{{pipeline}} ({{result}})",
            instant=True,
        ),
        width=8,
        unit="s",
        thresholds=AGE_THRESHOLDS,
    ),
    stat(
        "Daily checks: since last success",
        "Time since the latest successful run finished; red after 26h (DailyChecksStale).",
        Query(
            "time() - max by (pipeline) (patrol_pipeline_last_success_timestamp_seconds)",
            "{{pipeline}}",
            instant=True,
        ),
        width=8,
        unit="s",
        thresholds=AGE_THRESHOLDS,
    ),
    stat(
        "Daily checks: latest result",
        "The result of the latest completed run.",
        Query(
            "topk by (pipeline) (1, max by (pipeline, result) (patrol_pipeline_last_run_timestamp_seconds))",
            "{{pipeline}}: {{result}}",
            instant=True,
        ),
        width=8,
        text_mode="name",
        color_mode="none",
    ),
    Row("Rotations"),
    stat(
        "Rotations by result",
        "Rotations finished in the selected time range.",
        Query(
            f"sum by (result) (increase(patrol_rotations_total{{{TOKEN}}}[$__range]))",
            "{{result}}",
            instant=True,
        ),
        width=6,
        height=8,
        decimals=0,
        color_mode="value",
        overrides=(
            _by_name("failed", color={"mode": "fixed", "fixedColor": "red"}),
            _by_name("succeeded", color={"mode": "fixed", "fixedColor": "green"}),
        ),
    ),
    stat(
        "Rotation duration (p50 / p95)",
        "From the alert's arrival to confirmed recovery, over the selected time range.",
        Query(
            "histogram_quantile(0.5, sum by (le) "
            f"(increase(patrol_rotation_duration_seconds_bucket{{{TOKEN}}}[$__range])))",
            "p50",
            instant=True,
        ),
        Query(
            "histogram_quantile(0.95, sum by (le) "
            f"(increase(patrol_rotation_duration_seconds_bucket{{{TOKEN}}}[$__range])))",
            "p95",
            instant=True,
        ),
        width=6,
        height=8,
        unit="s",
        color_mode="none",
    ),
    timeseries(
        "Rotation failures",
        "Rotations that gave up (PatrolRotationFailed).",
        Query(
            "sum by (token) "
            f'(increase(patrol_rotations_total{{result="failed", {TOKEN}}}[$__rate_interval]))',
            "{{token}}",
        ),
        width=6,
        bars=True,
        decimals=0,
    ),
    state_timeline(
        "Rotations in progress",
        "When a rotation of each token ran (PatrolRotationStuck after 30 minutes).",
        Query(f"max by (token) (patrol_rotation_in_progress{{{TOKEN}}})", "{{token}}"),
        mappings=ROTATING_MAP,
        width=6,
        height=8,
    ),
    timeseries(
        "Webhook deliveries by status",
        "Alertmanager deliveries to the worker, by HTTP status (401: wrong bearer token).",
        Query("sum by (code) (rate(patrol_webhook_requests_total[$__rate_interval]))", "{{code}}"),
        width=24,
        height=6,
        unit="reqps",
    ),
    Row("patrol sources"),
    stat(
        "Source up",
        "Whether the exporter's last refresh of each data source succeeded.",
        Query("min by (source) (patrol_source_up)", "{{source}}", instant=True),
        width=8,
        height=8,
        mappings=UP_MAP,
        thresholds=_steps(("red", None), ("green", 1)),
    ),
    timeseries(
        "Time since last successful refresh",
        "Age of each source's data; it grows while a source is down.",
        Query("time() - max by (source) (patrol_source_last_success_timestamp_seconds)", "{{source}}"),
        width=8,
        unit="s",
    ),
    timeseries(
        "Refresh duration",
        "How long each source's last refresh took.",
        Query("max by (source) (patrol_source_duration_seconds)", "{{source}}"),
        width=8,
        unit="s",
    ),
)


def _target(query: Query, index: int) -> JsonObject:
    target: JsonObject = {
        "datasource": DATASOURCE,
        "refId": _ref_id(index),
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "editorMode": "code",
        "range": not query.instant,
        "instant": query.instant,
    }
    if query.table:
        target["format"] = "table"
    return target


def _panels(layout: Sequence[Row | Panel]) -> list[JsonObject]:
    """Give each panel an id and a gridPos: rows span the width, panels flow left to right."""
    panels: list[JsonObject] = []
    x = y = line_height = 0
    for panel_id, item in enumerate(layout, start=1):
        if isinstance(item, Row) or x + item.width > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        if isinstance(item, Row):
            panels.append(
                {
                    "type": "row",
                    "id": panel_id,
                    "title": item.title,
                    "collapsed": False,
                    "panels": [],
                    "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                }
            )
            y += 1
            continue
        panel: JsonObject = {
            "type": item.kind,
            "id": panel_id,
            "title": item.title,
            "description": item.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": item.height, "w": item.width, "x": x, "y": y},
            "targets": [_target(query, index) for index, query in enumerate(item.queries)],
            "fieldConfig": item.field_config,
            "options": item.options,
        }
        if item.transformations:
            panel["transformations"] = list(item.transformations)
        panels.append(panel)
        x += item.width
        line_height = max(line_height, item.height)
    return panels


def _templating() -> JsonObject:
    token_query = "label_values(patrol_pat_expiry_timestamp_seconds, token)"
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "options": [],
            },
            {
                "name": "token",
                "label": "Token",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": token_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                "definition": token_query,
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "multi": True,
                "includeAll": True,
                "allValue": ".*",
                "refresh": 2,
                "sort": 1,
                "hide": 0,
                "regex": "",
                "options": [],
            },
        ]
    }


ALERTS_ANNOTATION_EXPR = (
    'ALERTS{alertstate="firing", '
    'alertname=~"Pat.*|KedaScalerAuthFailing|AgentPoolStarved|DailyChecks.*"}'
)


def dashboard() -> JsonObject:
    return {
        "id": None,
        "uid": UID,
        "title": TITLE,
        "description": "Azure DevOps PATs watched and rotated by patrol: expiry, validity, KEDA, "
        "agent pools, daily checks, rotations and patrol's own sources.",
        "tags": ["patrol", "azure-devops", "keda", "pat"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "links": [
            {
                "title": "Runbook",
                "type": "link",
                "url": RUNBOOK_URL,
                "icon": "doc",
                "targetBlank": True,
                "tooltip": "What each patrol alert means and how to fix it",
                "asDropdown": False,
                "includeVars": False,
                "keepTime": False,
                "tags": [],
            }
        ],
        "annotations": {
            "list": [
                {
                    "name": "patrol alerts",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "hide": False,
                    "iconColor": "red",
                    "expr": ALERTS_ANNOTATION_EXPR,
                    "step": "1m",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{token}}{{pool}}{{pipeline}}{{source}}",
                    "tagKeys": "severity,remediation",
                    "useValueForTime": False,
                }
            ]
        },
        "templating": _templating(),
        "panels": _panels(LAYOUT),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str] = PROMETHEUS_SUBSTITUTIONS) -> str:
    """Replace Grafana variables as Grafana would; an unknown variable raises KeyError."""
    return _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def _targets(panels: Sequence[JsonObject]) -> Iterator[tuple[str, str]]:
    for panel in panels:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def panel_queries(values: Mapping[str, str] = PROMETHEUS_SUBSTITUTIONS) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, Grafana variables replaced."""
    return [(title, substitute(expr, values)) for title, expr in _targets(dashboard()["panels"])]


def annotation_queries(values: Mapping[str, str] = PROMETHEUS_SUBSTITUTIONS) -> list[tuple[str, str]]:
    """(annotation name, PromQL): these return series only while a patrol alert fires."""
    return [
        (item["name"], substitute(item["expr"], values)) for item in dashboard()["annotations"]["list"]
    ]


def stale_diff() -> str:
    """A unified diff of the committed JSON against the build, or "" when they are equal."""
    current = DASHBOARD_FILE.read_text(encoding="utf-8") if DASHBOARD_FILE.exists() else ""
    built = render()
    if current == built:
        return ""
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            built.splitlines(keepends=True),
            fromfile="dashboards/patrol.json (committed)",
            tofile="dashboards/patrol.json (built)",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards.build", description="Build patrol's Grafana dashboard."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate dashboards/patrol.json")
    action.add_argument("--check", action="store_true", help="exit 1 if dashboards/patrol.json is stale")
    args = parser.parse_args(argv)
    if args.write:
        DASHBOARD_FILE.write_text(render(), encoding="utf-8")
        sys.stdout.write(f"wrote {DASHBOARD_FILE.relative_to(ROOT)}\n")
        return 0
    diff = stale_diff()
    if diff:
        sys.stdout.write(diff + "stale: run `python -m dashboards.build --write`\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
