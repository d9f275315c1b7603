"""Builds the Grafana dashboard "patrol / PAT health" (``dashboards/patrol.json``).

Guarantees: the committed JSON is exactly what this module builds
(``tests/unit/test_dashboard.py`` fails otherwise); every panel queries the datasource template
variable ``${datasource}`` (no datasource UID is hard-coded, so the file imports into any Grafana
and works with ``dashboards/provisioning.example.yml``); panel ids are unique and every query has
its own refId.

Panels are written with grafana-foundation-sdk's typed builders (the Grafana 11.6 dashboard
schema, pinned in pyproject.toml): an option that does not exist for a panel kind, or a value
outside its enum, is a mypy error here rather than a panel Grafana silently ignores. The SDK
lays panels out left to right under each row; it sets neither panel ids nor refIds, so
``dashboard()`` numbers them, and it has no field for Prometheus's annotation options (title and
text formats), which ``dashboard()`` adds to the one annotation.

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
from pathlib import Path
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cog
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, units
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_FILE = ROOT / "dashboards" / "patrol.json"

UID = "patrol-pat-health"
TITLE = "patrol / PAT health"
RUNBOOK_URL = "https://patrol.example/docs/runbook.md"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

TOKEN = 'token=~"$token"'
DAYS_UNIT = "suffix: d"            # a custom unit: the SDK's unit constants have no plain "days"
DAILY_CHECKS_MAX_AGE_SECONDS = 26 * 3600

# What Grafana puts in place of its variables, for running the queries outside Grafana.
PROMETHEUS_SUBSTITUTIONS: dict[str, str] = {
    "__rate_interval": "2m",
    "__interval": "1m",
    "__range": "1h",
    "token": ".*",
}

JsonObject = dict[str, Any]
# The SDK generates each panel kind's builder separately (no common base class), so what all
# panels share is written once against this type variable.
AnyPanel = TypeVar("AnyPanel", stat.Panel, timeseries.Panel, statetimeline.Panel, table.Panel)
PanelBuilder = stat.Panel | timeseries.Panel | statetimeline.Panel | table.Panel


def _ref_id(index: int) -> str:
    return chr(ord("A") + index)


def query(expr: str, legend: str = "__auto", *, instant: bool = False) -> prometheus.Dataquery:
    """One PromQL query as written in Grafana's code editor; its refId is given by the panel."""
    built = prometheus.Dataquery().expr(expr).legend_format(legend).editor_mode(prometheus_model.QueryEditorMode.CODE)
    return built.instant() if instant else built.range()


# --- field configuration pieces -----------------------------------------------------------


def _steps(*steps: tuple[str, float | None]) -> dashboard_builder.ThresholdsConfig:
    return (
        dashboard_builder.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(color=color, value=value) for color, value in steps])
    )


DAYS_THRESHOLDS = _steps(("red", None), ("orange", 3), ("green", 7))
RENEWAL_THRESHOLDS = _steps(("orange", None), ("green", 0))
AGE_THRESHOLDS = _steps(("green", None), ("red", DAILY_CHECKS_MAX_AGE_SECONDS))
NEUTRAL_THRESHOLDS = _steps(("green", None))
RED_BELOW_1 = _steps(("red", None), ("green", 1))


def _value_map(*entries: tuple[int, str, str]) -> list[model.ValueMapping]:
    options = {
        str(value): model.ValueMappingResult(text=text, color=color, index=index)
        for index, (value, text, color) in enumerate(entries)
    }
    return [model.ValueMap(options=options)]


VALID_MAP = _value_map((0, "INVALID", "red"), (1, "valid", "green"))
READY_MAP = _value_map((0, "not ready", "red"), (1, "ready", "green"))
AUTH_FAILING_MAP = _value_map((0, "ok", "green"), (1, "AUTH FAILING", "red"))
UP_MAP = _value_map((0, "down", "red"), (1, "up", "green"))
ROTATING_MAP = _value_map((0, "idle", "transparent"), (1, "rotating", "blue"))
DRAINING_MAP = _value_map((0, "idle", "transparent"), (1, "draining", "purple"))
MANAGED_MAP = _value_map((0, "hand-pasted: patrol adopt", "orange"), (1, "managed", "green"))
GLOBAL_MAP = _value_map((0, "one organization", "green"), (1, "GLOBAL", "red"))


def _color(mode: model.FieldColorModeId) -> dashboard_builder.FieldColor:
    return dashboard_builder.FieldColor().mode(mode)


def _common(
    panel: AnyPanel,
    title: str,
    description: str,
    queries: Sequence[prometheus.Dataquery],
    *,
    width: int,
    height: int,
    unit: str,
    thresholds: dashboard_builder.ThresholdsConfig,
    mappings: list[model.ValueMapping],
    decimals: int | None,
) -> AnyPanel:
    """What every panel sets alike: text, size, queries (refIds A, B, ...) and its field defaults."""
    panel = (
        panel.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(height)
        .targets([q.ref_id(_ref_id(index)).datasource(DATASOURCE) for index, q in enumerate(queries)])
        .unit(unit)
        .thresholds(thresholds)
        .mappings(mappings)
    )
    return panel if decimals is None else panel.decimals(decimals)


# --- panel kinds -----------------------------------------------------------------------------


def stat_panel(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    width: int = 12,
    height: int = 6,
    unit: str = units.Short,
    thresholds: dashboard_builder.ThresholdsConfig = NEUTRAL_THRESHOLDS,
    mappings: Sequence[model.ValueMapping] = (),
    decimals: int | None = None,
    text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
    color_mode: common.BigValueColorMode = common.BigValueColorMode.BACKGROUND,
    colors_by_name: Mapping[str, str] | None = None,
) -> stat.Panel:
    panel = _common(
        stat.Panel(), title, description, queries, width=width, height=height, unit=unit,
        thresholds=thresholds, mappings=list(mappings), decimals=decimals,
    )
    panel = (
        panel.color_scheme(_color(model.FieldColorModeId.THRESHOLDS))
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(color_mode)
        .graph_mode(common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .text_mode(text_mode)
        .wide_layout(True)
        .show_percent_change(False)
    )
    for name, color in (colors_by_name or {}).items():
        panel = panel.override_by_name(name, [model.DynamicConfigValue(
            id_val="color", value=model.FieldColor(mode=model.FieldColorModeId.FIXED, fixed_color=color),
        )])
    return panel


def timeseries_panel(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    width: int = 12,
    height: int = 8,
    bars: bool = False,
    threshold_style: common.GraphThresholdsStyleMode = common.GraphThresholdsStyleMode.OFF,
    unit: str = units.Short,
    thresholds: dashboard_builder.ThresholdsConfig = NEUTRAL_THRESHOLDS,
    decimals: int | None = None,
) -> timeseries.Panel:
    panel = _common(
        timeseries.Panel(), title, description, queries, width=width, height=height, unit=unit,
        thresholds=thresholds, mappings=[], decimals=decimals,
    )
    return (
        panel.color_scheme(_color(model.FieldColorModeId.PALETTE_CLASSIC))
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .thresholds_style(common_builder.GraphThresholdsStyleConfig().mode(threshold_style))
        .legend(
            common_builder.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .calcs([])
        )
        .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
    )


def state_timeline_panel(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    mappings: Sequence[model.ValueMapping],
    width: int = 12,
    height: int = 6,
) -> statetimeline.Panel:
    panel = _common(
        statetimeline.Panel(), title, description, queries, width=width, height=height, unit=units.Short,
        thresholds=NEUTRAL_THRESHOLDS, mappings=list(mappings), decimals=None,
    )
    return (
        panel.color_scheme(_color(model.FieldColorModeId.THRESHOLDS))
        .line_width(0)
        .fill_opacity(80)
        .merge_values(True)
        .show_value(common.VisibilityMode.NEVER)
        .align_value(common.TimelineValueAlignment.LEFT)
        .row_height(0.9)
        .legend(
            common_builder.VizLegendOptions()
            .show_legend(False)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE).sort(common.SortOrder.NONE))
    )


def _column(name: str, *properties: tuple[str, object]) -> tuple[str, list[model.DynamicConfigValue]]:
    return name, [model.DynamicConfigValue(id_val=key, value=value) for key, value in properties]


def table_panel(
    title: str,
    description: str,
    *queries: prometheus.Dataquery,
    columns: Sequence[str],
    overrides: Sequence[tuple[str, list[model.DynamicConfigValue]]],
    width: int = 12,
    height: int = 6,
) -> table.Panel:
    """Instant queries merged on their labels; ``columns`` names each query's value column."""
    renames = {f"Value #{_ref_id(index)}": name for index, name in enumerate(columns)}
    panel = _common(
        table.Panel(), title, description,
        [q.instant().format(prometheus_model.PromQueryFormat.TABLE) for q in queries],
        width=width, height=height, unit=units.Short, thresholds=NEUTRAL_THRESHOLDS, mappings=[], decimals=None,
    )
    panel = (
        panel.color_scheme(_color(model.FieldColorModeId.THRESHOLDS))
        .align(common.FieldTextAlignment.AUTO)
        .cell_options(common.TableAutoCellOptions())
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(common_builder.TableFooterOptions().show(False).reducer(["sum"]).fields([]))
        .sort_by([common_builder.TableSortByFieldState().display_name(columns[0]).desc(False)])
        .transformations([
            model.DataTransformerConfig(id_val="merge", options={}),
            model.DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True}, "renameByName": renames, "indexByName": {},
            }),
        ])
    )
    for name, properties in overrides:
        panel = panel.override_by_name(name, properties)
    return panel


# --- the dashboard ---------------------------------------------------------------------------

DAYS = f"patrol:pat_days_to_expiry{{{TOKEN}}}"
RENEWAL_IN = f"min by (token, organization) (patrol_pat_renewal_timestamp_seconds{{{TOKEN}}}) - time()"

def layout() -> list[dashboard_builder.Row | PanelBuilder]:
    """Rows and panels in reading order; fresh builders on each call (the SDK's builders mutate)."""
    return [
        dashboard_builder.Row("PAT expiry"),
        stat_panel(
            "Days to expiry (20 soonest)",
            "Days until each PAT expires (recording rule patrol:pat_days_to_expiry). "
            "Red below 3 days, orange below 7.",
            query(f"bottomk(20, {DAYS})", "{{token}}", instant=True),
            unit=DAYS_UNIT,
            decimals=1,
            thresholds=DAYS_THRESHOLDS,
        ),
        table_panel(
            "Expiry and renewal by token",
            "Per token: days to expiry, time until patrol rotates it (negative: overdue) and the "
            "expiry date.",
            query(f"min by (token, organization) ({DAYS})"),
            query(RENEWAL_IN),
            query(f"1000 * (time() + 86400 * {DAYS})"),
            columns=("Days to expiry", "Renewal in", "Expires"),
            overrides=(
                _column(
                    "Days to expiry",
                    ("unit", DAYS_UNIT),
                    ("decimals", 1),
                    ("thresholds", DAYS_THRESHOLDS.build()),
                    ("custom.cellOptions", common.TableColoredBackgroundCellOptions(
                        mode=common.TableCellBackgroundDisplayMode.BASIC,
                    )),
                ),
                _column(
                    "Renewal in",
                    ("unit", units.Seconds),
                    ("thresholds", RENEWAL_THRESHOLDS.build()),
                    ("custom.cellOptions", common.TableColorTextCellOptions()),
                ),
                _column("Expires", ("unit", units.DatetimeISO)),
            ),
        ),
        timeseries_panel(
            "Days to expiry over time",
            "Each PAT's days to expiry; a rotation shows as a jump up.",
            query(DAYS, "{{token}}"),
            unit=DAYS_UNIT,
            decimals=1,
            thresholds=DAYS_THRESHOLDS,
            threshold_style=common.GraphThresholdsStyleMode.LINE_AND_AREA,
        ),
        stat_panel(
            "Renewal due in (20 soonest)",
            "Time until each PAT's renewal time (expiry - renew_before), when PatRenewalDue makes "
            "patrol rotate it. Orange: overdue.",
            query(f"bottomk(20, {RENEWAL_IN})", "{{token}}", instant=True),
            width=12,
            height=8,
            unit=units.Seconds,
            thresholds=RENEWAL_THRESHOLDS,
        ),
        dashboard_builder.Row("Token validity"),
        stat_panel(
            "Token valid per sink",
            "Whether the token each sink holds authenticates now (patrol_pat_valid).",
            query(f"min by (token, sink) (patrol_pat_valid{{{TOKEN}}})", "{{token}} @ {{sink}}", instant=True),
            mappings=VALID_MAP,
            thresholds=RED_BELOW_1,
        ),
        state_timeline_panel(
            "Token validity over time",
            "When each sink's token stopped (red) or started (green) authenticating.",
            query(f"min by (token, sink) (patrol_pat_valid{{{TOKEN}}})", "{{token}} @ {{sink}}"),
            mappings=VALID_MAP,
        ),
        stat_panel(
            "Managed by patrol",
            "Whether patrol knows which PAT each token's sinks hold (patrol_pat_managed). A hand-pasted "
            "token has no expiry series until `patrol adopt TOKEN` (PatUnmanaged).",
            query(f"min by (token, organization) (patrol_pat_managed{{{TOKEN}}})", "{{token}}", instant=True),
            mappings=MANAGED_MAP,
            thresholds=_steps(("orange", None), ("green", 1)),
        ),
        stat_panel(
            "Global PATs",
            "Whether the PAT behind each token is valid for all organizations (patrol_pat_global). Global "
            "PATs stopped authenticating on 2026-12-01 (PatGlobal says how to replace one).",
            query(f"max by (token, organization) (patrol_pat_global{{{TOKEN}}})", "{{token}}", instant=True),
            mappings=GLOBAL_MAP,
            thresholds=_steps(("green", None), ("red", 1)),
        ),
        dashboard_builder.Row("KEDA"),
        state_timeline_panel(
            "KEDA failing to authenticate",
            "When KEDA's azure-pipelines scaler of each ScaledJob/ScaledObject failed to authenticate "
            "(red): its Ready condition and newest KEDAScalerFailed event (patrol_keda_scaler_auth_failing, "
            "what KedaScalerAuthFailing fires on).",
            query(
                "max by (cluster, namespace, kind, name) (patrol_keda_scaler_auth_failing)",
                "{{cluster}} {{namespace}}/{{name}}",
            ),
            mappings=AUTH_FAILING_MAP,
            width=24,
        ),
        timeseries_panel(
            "KEDA auth failures per ScaledJob",
            "Authentication failures as KEDA's event recorder wrote them to KEDAScalerFailed events, "
            "per ScaledJob/ScaledObject. KEDA >= 2.20 writes a series' count at the 2nd failure and "
            "then every 30 min: bars lag an outage; the timeline above is the live signal.",
            query(
                "sum by (cluster, namespace, kind, name) "
                "(increase(patrol_keda_scaler_auth_failures_total[$__rate_interval]))",
                "{{cluster}} {{namespace}}/{{name}}",
            ),
            bars=True,
            decimals=0,
        ),
        stat_panel(
            "KEDA scaler ready",
            "The Ready condition of each ScaledJob/ScaledObject.",
            query(
                "min by (cluster, namespace, kind, name) (patrol_keda_scaler_ready)",
                "{{cluster}} {{namespace}}/{{name}}",
                instant=True,
            ),
            height=8,
            mappings=READY_MAP,
            thresholds=RED_BELOW_1,
        ),
        dashboard_builder.Row("Agent pools"),
        timeseries_panel(
            "Queued jobs",
            "Jobs waiting for an agent, counted as KEDA counts its queue.",
            query("max by (organization, pool) (patrol_agent_pool_queued_jobs)", "{{pool}}"),
            width=8,
            decimals=0,
        ),
        timeseries_panel(
            "Oldest queued job wait",
            "How long the oldest waiting job has waited.",
            query("max by (organization, pool) (patrol_agent_pool_oldest_queued_job_age_seconds)", "{{pool}}"),
            width=8,
            unit=units.Seconds,
        ),
        timeseries_panel(
            "Agents online / offline",
            "Registered agents by status. KEDA's agents live only while jobs run, so 0 online is "
            "normal when nothing is queued.",
            query("max by (organization, pool, status) (patrol_agent_pool_agents)", "{{pool}} {{status}}"),
            width=8,
            decimals=0,
        ),
        dashboard_builder.Row("Daily checks"),
        stat_panel(
            "Daily checks: since last run",
            "Time since the latest completed run finished, with its result.",
            query(
                "time() - max by (organization, project, pipeline, result) "
                "(patrol_pipeline_last_run_timestamp_seconds)",
                "{{project}}/{{pipeline}} ({{result}})",
                instant=True,
            ),
            width=8,
            unit=units.Seconds,
            thresholds=AGE_THRESHOLDS,
        ),
        stat_panel(
            "Daily checks: since last success",
            "Time since the latest successful run finished; red after 26h (DailyChecksStale).",
            query(
                "time() - max by (organization, project, pipeline) (patrol_pipeline_last_success_timestamp_seconds)",
                "{{project}}/{{pipeline}}",
                instant=True,
            ),
            width=8,
            unit=units.Seconds,
            thresholds=AGE_THRESHOLDS,
        ),
        stat_panel(
            "Daily checks: latest result",
            "The result of the latest completed run.",
            query(
                "topk by (organization, project, pipeline) (1, max by (organization, project, pipeline, result) "
                "(patrol_pipeline_last_run_timestamp_seconds))",
                "{{project}}/{{pipeline}}: {{result}}",
                instant=True,
            ),
            width=8,
            text_mode=common.BigValueTextMode.NAME,
            color_mode=common.BigValueColorMode.NONE,
        ),
        dashboard_builder.Row("Rotations"),
        stat_panel(
            "Rotations by result",
            "Rotations finished in the selected time range.",
            query(
                f"sum by (result) (increase(patrol_rotations_total{{{TOKEN}}}[$__range]))",
                "{{result}}",
                instant=True,
            ),
            width=6,
            height=8,
            decimals=0,
            color_mode=common.BigValueColorMode.VALUE,
            colors_by_name={"failed": "red", "succeeded": "green"},
        ),
        stat_panel(
            "Rotation duration (p50 / p95)",
            "From the alert's arrival to confirmed recovery, over the selected time range.",
            query(
                "histogram_quantile(0.5, sum by (le) "
                f"(increase(patrol_rotation_duration_seconds_bucket{{{TOKEN}}}[$__range])))",
                "p50",
                instant=True,
            ),
            query(
                "histogram_quantile(0.95, sum by (le) "
                f"(increase(patrol_rotation_duration_seconds_bucket{{{TOKEN}}}[$__range])))",
                "p95",
                instant=True,
            ),
            width=6,
            height=8,
            unit=units.Seconds,
            color_mode=common.BigValueColorMode.NONE,
        ),
        timeseries_panel(
            "Rotation failures",
            "Rotations that gave up (PatrolRotationFailed).",
            query(
                "sum by (token) "
                f'(increase(patrol_rotations_total{{result="failed", {TOKEN}}}[$__rate_interval]))',
                "{{token}}",
            ),
            width=6,
            bars=True,
            decimals=0,
        ),
        state_timeline_panel(
            "Rotations in progress",
            "When a rotation of each token ran (PatrolRotationStuck after 30 minutes).",
            query(f"max by (token) (patrol_rotation_in_progress{{{TOKEN}}})", "{{token}}"),
            mappings=ROTATING_MAP,
            width=6,
            height=8,
        ),
        state_timeline_panel(
            "Previous PAT draining",
            "When a rotation kept the previous PAT valid after delivering the new one, until the agent "
            "Jobs, sink readers and pipeline runs holding it were done (patrol_rotation_draining; "
            "PatrolRotationStuck does not count this time).",
            query(f"max by (token) (patrol_rotation_draining{{{TOKEN}}})", "{{token}}"),
            mappings=DRAINING_MAP,
            width=12,
        ),
        timeseries_panel(
            "Webhook deliveries by status",
            "Alertmanager deliveries to the worker, by HTTP status (401: wrong bearer token).",
            query("sum by (code) (rate(patrol_webhook_requests_total[$__rate_interval]))", "{{code}}"),
            width=12,
            height=6,
            unit=units.RequestsPerSecond,
        ),
        dashboard_builder.Row("patrol sources"),
        stat_panel(
            "Source up",
            "Whether the exporter's last refresh of each data source succeeded.",
            query("min by (source) (patrol_source_up)", "{{source}}", instant=True),
            width=8,
            height=8,
            mappings=UP_MAP,
            thresholds=RED_BELOW_1,
        ),
        timeseries_panel(
            "Time since last successful refresh",
            "Age of each source's data; it grows while a source is down.",
            query("time() - max by (source) (patrol_source_last_success_timestamp_seconds)", "{{source}}"),
            width=8,
            unit=units.Seconds,
        ),
        timeseries_panel(
            "Refresh duration",
            "How long each source's last refresh took.",
            query("max by (source) (patrol_source_duration_seconds)", "{{source}}"),
            width=8,
            unit=units.Seconds,
        ),
        stat_panel(
            "patrol versions running",
            "Processes (exporter and worker) per version, revision and Python (patrol_build_info); two "
            "versions at once during a roll-out.",
            query("count by (version, revision, python) (patrol_build_info)",
                  "{{version}} ({{revision}}, Python {{python}})", instant=True),
            width=24,
            height=4,
            text_mode=common.BigValueTextMode.VALUE_AND_NAME,
            color_mode=common.BigValueColorMode.NONE,
            decimals=0,
        ),
    ]


def _templating() -> list[cog.Builder[model.VariableModel]]:
    token_query = "label_values(patrol_pat_expiry_timestamp_seconds, token)"
    return [
        dashboard_builder.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .hide(model.VariableHide.DONT_HIDE),
        dashboard_builder.QueryVariable("token")
        .label("Token")
        .datasource(DATASOURCE)
        .query({"query": token_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .hide(model.VariableHide.DONT_HIDE)
        .regex(""),
    ]


ALERTS_ANNOTATION_EXPR = (
    'ALERTS{alertstate="firing", '
    'alertname=~"Pat.*|KedaScalerAuthFailing|AgentPoolStarved|DailyChecks.*"}'
)
# Prometheus's annotation options, which the SDK's AnnotationQuery has no field for.
ALERTS_ANNOTATION_PROMETHEUS_OPTIONS: JsonObject = {
    "step": "1m",
    "titleFormat": "{{alertname}}",
    "textFormat": "{{token}}{{pool}}{{pipeline}}{{source}}",
    "tagKeys": "severity,remediation",
    "useValueForTime": False,
}


def _builder() -> dashboard_builder.Dashboard:
    built = (
        dashboard_builder.Dashboard(TITLE)
        .uid(UID)
        .description(
            "Azure DevOps PATs watched and rotated by patrol: expiry, validity, KEDA, agent pools, "
            "daily checks, rotations and patrol's own sources."
        )
        .tags(["patrol", "azure-devops", "keda", "pat"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .fiscal_year_start_month(0)
        .live_now(False)
        .refresh("1m")
        .time("now-24h", "now")
        .timezone("browser")
        .week_start("")
        .link(
            dashboard_builder.DashboardLink("Runbook")
            .type(model.DashboardLinkType.LINK)
            .url(RUNBOOK_URL)
            .icon("doc")
            .target_blank(True)
            .tooltip("What each patrol alert means and how to fix it")
            .as_dropdown(False)
            .include_vars(False)
            .keep_time(False)
            .tags([])
        )
        .annotation(
            dashboard_builder.AnnotationQuery()
            .name("patrol alerts")
            .datasource(DATASOURCE)
            .enable(True)
            .hide(False)
            .icon_color("red")
            .expr(ALERTS_ANNOTATION_EXPR)
        )
        .variables(_templating())
    )
    for item in layout():
        built = built.with_row(item) if isinstance(item, dashboard_builder.Row) else built.with_panel(item)
    return built


def dashboard() -> JsonObject:
    """The dashboard as Grafana's JSON: the SDK's model, with ids and Prometheus's annotation options."""
    document: JsonObject = json.loads(json.dumps(_builder().build(), cls=JSONEncoder))
    document["id"] = None  # Grafana assigns its own on import
    for panel_id, panel in enumerate(document["panels"], start=1):
        panel["id"] = panel_id
    for annotation in document["annotations"]["list"]:
        annotation.update(ALERTS_ANNOTATION_PROMETHEUS_OPTIONS)
    return document


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
