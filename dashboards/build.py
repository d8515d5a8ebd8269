"""The four provisioned dashboards, built with grafana-foundation-sdk.

    python -m dashboards.build           # writes dashboards/json/*.json
    python -m dashboards.build --check   # exits 1 if the committed JSON is stale

ClickHouse panels read the tables of `sinks/schema.py`: every count runs on `FINAL`
(or counts distinct keys), because replayed rows replace themselves only at merge
time; the reports read the views over the aggregates. Prometheus panels use only
metrics defined in `tillstream/metrics.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import (
    barchart,
    common,
    dashboard,
    piechart,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import piechart as piechart_models
from grafana_foundation_sdk.models.common import DataSourceRef

__all__ = ["JSON_DIR", "build_all", "main", "render"]

JSON_DIR = Path(__file__).resolve().parent / "json"

CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
CLICKHOUSE = DataSourceRef(type_val=CLICKHOUSE_TYPE, uid="clickhouse")
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
"""The uids of dashboards/provisioning/datasources/datasources.yml."""

TAGS = ["tillstream"]
WIDE = 24


class ClickHouseQuery(cogvariants.Dataquery):
    """A raw-SQL target of the official ClickHouse plugin (v4), which the SDK lacks.

    `format` 0 is a time series (first column the time), 1 a table; `queryType`
    is what the plugin's editor shows.
    """

    def __init__(self, ref_id: str, sql: str, kind: Literal["timeseries", "table"]) -> None:
        self.ref_id = ref_id
        self.sql = sql
        self.kind = kind

    def to_json(self) -> dict[str, object]:
        series = self.kind == "timeseries"
        return {
            "datasource": {"type": CLICKHOUSE.type_val, "uid": CLICKHOUSE.uid},
            "editorType": "sql",
            "format": 0 if series else 1,
            "queryType": "timeSeries" if series else "table",
            "rawSql": self.sql,
            "refId": self.ref_id,
        }


class SQL(cogbuilder.Builder[cogvariants.Dataquery]):
    """`{name}` in the (dedented) text is replaced by the part of that name, so shared
    clauses keep their indentation in the JSON people read."""

    def __init__(
        self,
        sql: str,
        kind: Literal["timeseries", "table"] = "table",
        ref_id: str = "A",
        **parts: str,
    ) -> None:
        text = textwrap.dedent(sql).strip()
        for name, part in parts.items():
            text = text.replace("{" + name + "}", part)
        self._query = ClickHouseQuery(ref_id, text, kind)

    def build(self) -> cogvariants.Dataquery:
        return self._query


def promql(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .range()
        .datasource(PROMETHEUS)
    )


PanelBuilder = timeseries.Panel | barchart.Panel | piechart.Panel | stat.Panel | table.Panel


def _place(panel: PanelBuilder, title: str, description: str, width: int, height: int) -> None:
    panel.title(title).description(description).span(width).height(height)


def ts_panel(
    title: str,
    description: str,
    targets: list[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    datasource: DataSourceRef,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    min_interval: str | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .datasource(datasource)
        .targets(targets)
        .unit(unit)
        .line_width(2)
        .fill_opacity(10)
        .show_points(common_models.VisibilityMode.NEVER)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if min_interval is not None:
        panel.interval(min_interval)
    _place(panel, title, description, width, height)
    return panel


def bar_panel(
    title: str,
    description: str,
    query: SQL,
    x_field: str,
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
) -> barchart.Panel:
    panel = (
        barchart.Panel()
        .datasource(CLICKHOUSE)
        .with_target(query)
        .x_field(x_field)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .show_value(common_models.VisibilityMode.AUTO)
        .unit(unit)
    )
    _place(panel, title, description, width, height)
    return panel


def pie_panel(
    title: str, description: str, query: SQL, *, unit: str = "short", width: int = 12
) -> piechart.Panel:
    panel = (
        piechart.Panel()
        .datasource(CLICKHOUSE)
        .with_target(query)
        .pie_type(piechart_models.PieChartType.DONUT)
        .reduce_options(common.ReduceDataOptions().values(True).calcs(["lastNotNull"]))
        .legend(
            piechart.PieChartLegendOptions()
            .display_mode(common_models.LegendDisplayMode.TABLE)
            .placement(common_models.LegendPlacement.RIGHT)
            .show_legend(True)
            .values([piechart_models.PieChartLegendValues.PERCENT])
        )
        .unit(unit)
    )
    _place(panel, title, description, width, 8)
    return panel


def stat_panel(
    title: str,
    description: str,
    target: cogbuilder.Builder[cogvariants.Dataquery],
    *,
    datasource: DataSourceRef = CLICKHOUSE,
    unit: str = "short",
    width: int = 6,
    decimals: int | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .datasource(datasource)
        .with_target(target)
        .unit(unit)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .color_mode(common_models.BigValueColorMode.VALUE)
        .reduce_options(common.ReduceDataOptions().values(False).calcs(["lastNotNull"]))
    )
    if decimals is not None:
        panel.decimals(decimals)
    _place(panel, title, description, width, 4)
    return panel


def table_panel(
    title: str, description: str, query: SQL, *, width: int = WIDE, height: int = 10
) -> table.Panel:
    panel = table.Panel().datasource(CLICKHOUSE).with_target(query).filterable(True)
    _place(panel, title, description, width, height)
    return panel


def _sql_variable(name: str, label: str, sql: str) -> dashboard.QueryVariable:
    """A multi-value variable with All, whose options come from ClickHouse.

    No custom all value: Grafana then expands All to every option, so queries
    can always say `col IN (${name:singlequote})`.
    """
    query = textwrap.dedent(sql).strip()
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(CLICKHOUSE)
        .query({"editorType": "sql", "rawSql": query})
        .multi(True)
        .include_all(True)
        .allow_custom_value(False)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def _database_variable() -> dashboard.ConstantVariable:
    """One place to name the database, as the datasource's default database can differ."""
    return (
        dashboard.ConstantVariable("database")
        .label("ClickHouse database")
        .value("tillstream")
        .description("The database of the tillstream tables (clickhouse.database).")
    )


def _dashboard(uid: str, title: str, description: str, time_from: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .timezone("utc")
        .time(time_from, "now")
        .refresh("30s")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .with_variable(_database_variable())
    )


# ---------------------------------------------------------------------------- sales overview

SALES_WHERE = """\
FROM ${database}.sales FINAL
WHERE $__timeFilter(sold_at)
  AND region IN (${region:singlequote})
  AND category IN (${category:singlequote})
  AND product IN (${product:singlequote})"""


def sales_overview() -> dashboard.Dashboard:
    board = _dashboard(
        "tillstream-sales-overview",
        "tillstream / Sales overview",
        "Revenue, products, regions and discounts of the clean sales, by sale time.",
        "now-3y",
    )
    board.with_variable(
        _sql_variable(
            "region", "Region", "SELECT DISTINCT region FROM ${database}.sales ORDER BY region"
        )
    ).with_variable(
        _sql_variable(
            "category",
            "Category",
            """
            SELECT DISTINCT category FROM ${database}.sales
            WHERE region IN (${region:singlequote})
            ORDER BY category""",
        )
    ).with_variable(
        _sql_variable(
            "product",
            "Product",
            """
            SELECT DISTINCT product FROM ${database}.sales
            WHERE region IN (${region:singlequote}) AND category IN (${category:singlequote})
            ORDER BY product""",
        )
    )
    board.with_panel(
        stat_panel(
            "Revenue",
            "Sum of revenue (quantity x unit price x (1 - discount)) in the time range.",
            SQL("SELECT sum(revenue) AS revenue\n{where}", where=SALES_WHERE),
            unit="currencyUSD",
        )
    ).with_panel(
        stat_panel(
            "Orders",
            "Distinct orders sold in the time range.",
            SQL("SELECT count() AS orders\n{where}", where=SALES_WHERE),
        )
    ).with_panel(
        stat_panel(
            "Units sold",
            "Sum of quantities.",
            SQL("SELECT sum(quantity) AS units\n{where}", where=SALES_WHERE),
        )
    ).with_panel(
        stat_panel(
            "Average discount",
            "Mean discount over the orders in the time range.",
            SQL("SELECT avg(discount) AS average_discount\n{where}", where=SALES_WHERE),
            unit="percentunit",
            decimals=1,
        )
    )
    board.with_panel(
        ts_panel(
            "Revenue trend",
            "Revenue per time bucket; the bucket grows with the time range (at least a day).",
            [
                SQL(
                    """
                    SELECT
                        toStartOfInterval(sold_at, INTERVAL $__interval_s second) AS time,
                        sum(revenue) AS revenue
                    {where}
                    GROUP BY time
                    ORDER BY time""",
                    "timeseries",
                    where=SALES_WHERE,
                )
            ],
            datasource=CLICKHOUSE,
            unit="currencyUSD",
            width=WIDE,
            min_interval="1d",
        )
    )
    board.with_panel(
        bar_panel(
            "Top products by revenue",
            "The ten products with the most revenue in the time range.",
            SQL(
                """
                SELECT product, sum(revenue) AS revenue
                {where}
                GROUP BY product
                ORDER BY revenue DESC
                LIMIT 10""",
                where=SALES_WHERE,
            ),
            "product",
            unit="currencyUSD",
        )
    ).with_panel(
        pie_panel(
            "Revenue share by region",
            "Each region's part of the revenue in the time range.",
            SQL(
                """
                SELECT region, sum(revenue) AS revenue
                {where}
                GROUP BY region
                ORDER BY revenue DESC""",
                where=SALES_WHERE,
            ),
            unit="currencyUSD",
        )
    )
    board.with_panel(
        bar_panel(
            "Discounts by category",
            "Mean discount per order, and the effective discount: the share of list value "
            "(quantity x unit price) not charged.",
            SQL(
                """
                SELECT
                    category,
                    toFloat64(avg(discount)) AS average_discount,
                    1 - toFloat64(sum(revenue)) / toFloat64(sum(quantity * unit_price))
                        AS effective_discount
                {where}
                GROUP BY category
                ORDER BY effective_discount DESC""",
                where=SALES_WHERE,
            ),
            "category",
            unit="percentunit",
        )
    ).with_panel(
        table_panel(
            "Monthly summary",
            "Orders, units, revenue and discounts per calendar month (UTC).",
            SQL(
                """
                SELECT
                    toStartOfMonth(sold_at) AS month,
                    count() AS orders,
                    sum(quantity) AS units,
                    sum(revenue) AS total_revenue,
                    round(toFloat64(total_revenue / orders), 2) AS average_order_value,
                    round(toFloat64(avg(discount)), 4) AS average_discount
                {where}
                GROUP BY month
                ORDER BY month DESC""",
                where=SALES_WHERE,
            ),
            width=12,
            height=8,
        )
    )
    board.with_panel(
        table_panel(
            "Anomalies",
            "Sales of any product whose revenue is an outlier for that product: robust "
            "z-score against its recent sales (empty score: the baseline had no spread).",
            SQL(
                """
                SELECT sold_at, order_id, product, revenue, round(score, 1) AS score,
                    baseline_median, baseline_mad
                FROM ${database}.anomaly_report
                WHERE $__timeFilter(sold_at)
                ORDER BY isNull(score) DESC, abs(score) DESC
                LIMIT 100"""
            ),
            height=8,
        )
    )
    return board


# ----------------------------------------------------------------------------------- reports

MONTHS_IN_RANGE = "month >= toStartOfMonth($__fromTime, 'UTC') AND month <= $__toTime"
"""The report views have a row per calendar month (UTC): every month the range touches."""

HEAT = [
    dashboard_models.DynamicConfigValue(
        "custom.cellOptions",
        common_models.TableColoredBackgroundCellOptions(
            mode=common_models.TableCellBackgroundDisplayMode.GRADIENT
        ),
    ),
    dashboard_models.DynamicConfigValue("color", {"mode": "continuous-GrYlRd"}),
]
"""Cells coloured by their value, green (low) to red (high), so a table reads as a heatmap."""


def reports() -> dashboard.Dashboard:
    board = _dashboard(
        "tillstream-reports",
        "tillstream / Reports",
        "The unfiltered report views of the incremental aggregates (late sales included): "
        "months, products, regions and category discounts.",
        "now-3y",
    )
    board.with_panel(
        ts_panel(
            "Revenue per month",
            "Revenue of every calendar month (UTC) the time range touches.",
            [
                SQL(
                    """
                    SELECT month AS time, revenue
                    FROM ${database}.monthly_sales_summary
                    WHERE {months}
                    ORDER BY time""",
                    "timeseries",
                    months=MONTHS_IN_RANGE,
                )
            ],
            datasource=CLICKHOUSE,
            unit="currencyUSD",
            width=12,
        )
    ).with_panel(
        table_panel(
            "Monthly sales summary",
            "Revenue, units, orders and discounts per calendar month (UTC) of the time range.",
            SQL(
                """
                SELECT
                    month,
                    revenue,
                    units,
                    orders,
                    round(toFloat64(revenue / orders), 2) AS average_order_value,
                    round(toFloat64(average_discount), 4) AS average_discount
                FROM ${database}.monthly_sales_summary
                WHERE {months}
                ORDER BY month DESC""",
                months=MONTHS_IN_RANGE,
            ),
            width=12,
            height=8,
        )
    )
    board.with_panel(
        bar_panel(
            "Top products by revenue (all time)",
            "The ten products with the most revenue since the first sale, whatever the "
            "time range (the view ranks over all months).",
            SQL(
                """
                SELECT product, revenue
                FROM ${database}.top_products
                WHERE rank_by_revenue <= 10
                ORDER BY rank_by_revenue"""
            ),
            "product",
            unit="currencyUSD",
        )
    ).with_panel(
        bar_panel(
            "Top products by units (all time)",
            "The ten products with the most units sold since the first sale, whatever the "
            "time range.",
            SQL(
                """
                SELECT product, units
                FROM ${database}.top_products
                WHERE rank_by_units <= 10
                ORDER BY rank_by_units"""
            ),
            "product",
        )
    )
    board.with_panel(
        table_panel(
            "Region performance",
            "Each region over the months of the time range: revenue and its share, units, "
            "orders, average order value and average discount per order.",
            SQL(
                """
                SELECT
                    region,
                    sum(revenue) AS total_revenue,
                    round(toFloat64(total_revenue) / toFloat64(sum(sum(revenue)) OVER ()), 4)
                        AS revenue_share,
                    sum(units) AS total_units,
                    sum(orders) AS total_orders,
                    round(toFloat64(total_revenue / total_orders), 2) AS average_order_value,
                    round(sum(toFloat64(average_discount) * orders) / total_orders, 4)
                        AS average_discount
                FROM ${database}.region_performance
                WHERE {months}
                GROUP BY region
                ORDER BY total_revenue DESC""",
                months=MONTHS_IN_RANGE,
            ),
            width=12,
            height=8,
        )
    ).with_panel(
        table_panel(
            "Category discount map",
            "Average discount per order for each category and calendar month of the time "
            "range; the colour runs from the lowest discount (green) to the highest (red).",
            SQL(
                """
                SELECT
                    month,
                    category,
                    round(toFloat64(average_discount), 4) AS average_discount,
                    orders
                FROM ${database}.category_discount_map
                WHERE {months}
                ORDER BY month DESC, category""",
                months=MONTHS_IN_RANGE,
            ),
            width=12,
            height=8,
        ).override_by_name("average_discount", HEAT)
    )
    return board


# ------------------------------------------------------------------------------ data quality

QUARANTINE_WHERE = """\
FROM ${database}.quarantine FINAL
WHERE $__timeFilter_ms(first_seen)
  AND hasAny(reasons, [${reason:singlequote}])"""


def data_quality() -> dashboard.Dashboard:
    board = _dashboard(
        "tillstream-data-quality",
        "tillstream / Data quality",
        "What happened to the rows that came in: valid, rejected (by reason), duplicated; "
        "per source, by ingestion time.",
        "now-7d",
    )
    board.with_variable(
        _sql_variable(
            "reason",
            "Reject reason",
            """
            SELECT DISTINCT arrayJoin(reasons) AS reason FROM ${database}.quarantine
            ORDER BY reason""",
        )
    )
    valid = "SELECT count() FROM ${database}.sales FINAL WHERE $__timeFilter_ms(ingested_at)"
    rejected = "SELECT count() FROM ${database}.quarantine FINAL WHERE $__timeFilter_ms(first_seen)"
    board.with_panel(
        stat_panel(
            "Valid rows",
            "Clean sales ingested in the time range.",
            SQL(valid.replace("count()", "count() AS valid", 1)),
        )
    ).with_panel(
        stat_panel(
            "Rejected rows",
            "Rows quarantined in the time range, whatever the reason.",
            SQL(rejected.replace("count()", "count() AS rejected", 1)),
        )
    ).with_panel(
        stat_panel(
            "Duplicates dropped",
            "Exact re-deliveries of an order already accepted.",
            SQL(
                "SELECT count() AS duplicates FROM ${database}.duplicates FINAL\n"
                "WHERE $__timeFilter_ms(detected_at)"
            ),
        )
    ).with_panel(
        stat_panel(
            "Reject rate",
            "Rejected / (valid + rejected) in the time range.",
            SQL(
                """
                SELECT rejected / greatest(valid + rejected, 1) AS reject_rate
                FROM ({valid}) AS v
                CROSS JOIN ({rejected}) AS r""",
                valid=valid.replace("count()", "count() AS valid", 1),
                rejected=rejected.replace("count()", "count() AS rejected", 1),
            ),
            unit="percentunit",
            decimals=2,
        )
    )
    board.with_panel(
        ts_panel(
            "Valid vs rejected rows",
            "Rows per time bucket by ingestion time: clean sales against quarantined rows.",
            [
                SQL(
                    """
                    SELECT time, sum(valid) AS valid, sum(rejected) AS rejected
                    FROM (
                        SELECT
                            toStartOfInterval(ingested_at, INTERVAL $__interval_s second) AS time,
                            count() AS valid,
                            0 AS rejected
                        FROM ${database}.sales FINAL
                        WHERE $__timeFilter_ms(ingested_at)
                        GROUP BY time
                        UNION ALL
                        SELECT
                            toStartOfInterval(first_seen, INTERVAL $__interval_s second) AS time,
                            0 AS valid,
                            count() AS rejected
                        FROM ${database}.quarantine FINAL
                        WHERE $__timeFilter_ms(first_seen)
                        GROUP BY time
                    )
                    GROUP BY time
                    ORDER BY time""",
                    "timeseries",
                )
            ],
            datasource=CLICKHOUSE,
            width=16,
        )
    ).with_panel(
        bar_panel(
            "Rejects by reason",
            "Quarantined rows per reason code (a row with two reasons counts in both).",
            SQL(
                """
                SELECT reason, count() AS rows
                FROM ${database}.quarantine FINAL
                ARRAY JOIN reasons AS reason
                WHERE $__timeFilter_ms(first_seen)
                  AND reason IN (${reason:singlequote})
                GROUP BY reason
                ORDER BY rows DESC"""
            ),
            "reason",
            width=8,
        )
    )
    board.with_panel(
        table_panel(
            "Ingestion history (files and polls)",
            "One row per source (a file's content, or an API poll): what was read and "
            "what became of it. `seconds` runs from the source being seen to its last "
            "row being visible in ClickHouse.",
            SQL(
                """
                SELECT
                    started_at,
                    source_kind,
                    source_name,
                    status,
                    rows_read,
                    valid,
                    rejected,
                    duplicates,
                    toString(rejected_by_reason) AS rejected_by_reason,
                    round(dateDiff('millisecond', seen_at, finished_at) / 1000, 3) AS seconds,
                    error
                FROM ${database}.ingestion_history FINAL
                WHERE $__timeFilter_ms(started_at)
                ORDER BY started_at DESC
                LIMIT 500"""
            ),
        )
    )
    board.with_panel(
        table_panel(
            "Quarantine browser",
            "The latest rejected rows as received, with their reason codes and messages.",
            SQL(
                """
                SELECT
                    first_seen,
                    arrayStringConcat(reasons, ', ') AS reason_codes,
                    toString(messages) AS messages,
                    original,
                    source,
                    line,
                    status
                {where}
                ORDER BY first_seen DESC, source, line
                LIMIT 1000""",
                where=QUARANTINE_WHERE,
            ),
            height=12,
        )
    )
    board.with_panel(
        ts_panel(
            "Duplicates over time",
            "Exact re-deliveries dropped per time bucket.",
            [
                SQL(
                    """
                    SELECT
                        toStartOfInterval(detected_at, INTERVAL $__interval_s second) AS time,
                        count() AS duplicates
                    FROM ${database}.duplicates FINAL
                    WHERE $__timeFilter_ms(detected_at)
                    GROUP BY time
                    ORDER BY time""",
                    "timeseries",
                )
            ],
            datasource=CLICKHOUSE,
        )
    ).with_panel(
        table_panel(
            "Duplicates by source",
            "Which sources re-delivered orders, and how many.",
            SQL(
                """
                SELECT
                    source,
                    count() AS duplicate_rows,
                    uniqExact(order_id) AS orders,
                    max(detected_at) AS last_detected
                FROM ${database}.duplicates FINAL
                WHERE $__timeFilter_ms(detected_at)
                GROUP BY source
                ORDER BY duplicate_rows DESC
                LIMIT 100"""
            ),
            width=12,
            height=8,
        )
    )
    return board


# --------------------------------------------------------------------------- pipeline health

RATE = "[$__rate_interval]"


def pipeline_health() -> dashboard.Dashboard:
    board = _dashboard(
        "tillstream-pipeline-health",
        "tillstream / Pipeline health",
        "Throughput, lag, latency, sink flushes and errors of the running components "
        "(Prometheus), and per-source timings (ClickHouse).",
        "now-1h",
    )
    board.with_panel(
        stat_panel(
            "Components up",
            "1 while a component runs in a scraped process.",
            promql("max by (component) (tillstream_component_up)", "{{component}}", "A"),
            datasource=PROMETHEUS,
            width=12,
        )
    ).with_panel(
        stat_panel(
            "Dependencies reachable",
            "1 while Kafka / ClickHouse answer the components' probes.",
            promql("min by (dependency) (tillstream_runtime_dependency_up)", "{{dependency}}", "A"),
            datasource=PROMETHEUS,
            width=12,
        )
    )
    board.with_panel(
        ts_panel(
            "Throughput per stage",
            "Rows per second read by the watcher, leaving each worker stage (by outcome), "
            "and written to each ClickHouse table.",
            [
                promql(f"sum(rate(tillstream_watcher_rows_read_total{RATE}))", "read", "A"),
                promql(
                    f"sum by (stage, outcome) (rate(tillstream_worker_rows_total{RATE}))",
                    "{{stage}} {{outcome}}",
                    "B",
                ),
                promql(
                    f"sum by (table) (rate(tillstream_sink_rows_written_total{RATE}))",
                    "written {{table}}",
                    "C",
                ),
            ],
            datasource=PROMETHEUS,
            unit="rowsps",
        )
    ).with_panel(
        ts_panel(
            "Late sales and anomalies",
            "Sales per second that arrived after their window closed (by window size; the "
            "sink reconciles them into the aggregates), and revenue outliers found.",
            [
                promql(
                    f"sum by (window) (rate(tillstream_worker_late_sales_total{RATE}))",
                    "late for {{window}}",
                    "A",
                ),
                promql(f"sum(rate(tillstream_worker_anomalies_total{RATE}))", "anomalies", "B"),
            ],
            datasource=PROMETHEUS,
            unit="rowsps",
        )
    ).with_panel(
        ts_panel(
            "Consumer lag",
            "Messages on the topics not yet processed, per consumer group and topic.",
            [
                promql(
                    "sum by (topic) (tillstream_sink_consumer_lag_messages)",
                    "sink {{topic}}",
                    "A",
                ),
                promql(
                    "sum by (topic) (max by (topic, partition) "
                    "(tillstream_worker_consumer_lag_messages))",
                    "worker {{topic}}",
                    "B",
                ),
            ],
            datasource=PROMETHEUS,
        )
    )
    board.with_panel(
        ts_panel(
            "End-to-end latency",
            "From a source being seen to all its rows being visible in ClickHouse.",
            [
                promql(
                    "histogram_quantile("
                    f"{q}, sum by (le) (rate(tillstream_end_to_end_seconds_bucket{RATE})))",
                    f"p{round(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
            ],
            datasource=PROMETHEUS,
            unit="s",
            width=8,
        )
    ).with_panel(
        ts_panel(
            "Sink flushes",
            "Batches written to ClickHouse per second, and their p95 duration.",
            [
                promql(f"sum(rate(tillstream_sink_flush_seconds_count{RATE}))", "flushes/s", "A"),
                promql(
                    "histogram_quantile("
                    f"0.95, sum by (le) (rate(tillstream_sink_flush_seconds_bucket{RATE})))",
                    "p95 seconds",
                    "B",
                ),
            ],
            datasource=PROMETHEUS,
            width=8,
        )
    ).with_panel(
        ts_panel(
            "Sink batch size",
            "Mean rows per ClickHouse insert.",
            [
                promql(
                    f"sum(rate(tillstream_sink_batch_rows_sum{RATE})) / "
                    f"sum(rate(tillstream_sink_batch_rows_count{RATE}))",
                    "rows per insert",
                    "A",
                )
            ],
            datasource=PROMETHEUS,
            width=8,
        )
    )
    board.with_panel(
        ts_panel(
            "Errors and retries",
            "Failed ClickHouse writes by kind (connection: retried; data: refused rows), "
            "retries, and files that could not be read.",
            [
                promql(
                    f"sum by (kind) (rate(tillstream_sink_errors_total{RATE}))",
                    "sink {{kind}} errors",
                    "A",
                ),
                promql(f"sum(rate(tillstream_sink_retries_total{RATE}))", "sink retries", "B"),
                promql(
                    f'sum(rate(tillstream_watcher_files_total{{status="failed"}}{RATE}))',
                    "files failed",
                    "C",
                ),
            ],
            datasource=PROMETHEUS,
            unit="ops",
        )
    ).with_panel(
        ts_panel(
            "DLQ rate",
            "Rows sent to the dead-letter topic per second, by reason code.",
            [
                promql(
                    f"sum by (reason) (rate(tillstream_worker_rejects_total{RATE}))",
                    "{{reason}}",
                    "A",
                )
            ],
            datasource=PROMETHEUS,
            unit="rowsps",
        )
    )
    board.with_panel(
        ts_panel(
            "Files by status",
            "Files finished per second by final status.",
            [
                promql(
                    f"sum by (status) (rate(tillstream_watcher_files_total{RATE}))",
                    "{{status}}",
                    "A",
                )
            ],
            datasource=PROMETHEUS,
            unit="ops",
        )
    ).with_panel(
        ts_panel(
            "Worker time per message",
            "p95 time to process one message, per worker stage.",
            [
                promql(
                    "histogram_quantile(0.95, sum by (le, stage) "
                    f"(rate(tillstream_worker_chunk_seconds_bucket{RATE})))",
                    "{{stage}}",
                    "A",
                )
            ],
            datasource=PROMETHEUS,
            unit="s",
        )
    )
    board.with_panel(
        ts_panel(
            "Poll runs",
            "Poll runs finished per second, by poller and status (done: every record "
            "accounted for in ClickHouse; failed: recorded in the history, retried on "
            "schedule).",
            [
                promql(
                    f"sum by (poller, status) (rate(tillstream_poller_runs_total{RATE}))",
                    "{{poller}} {{status}}",
                    "A",
                )
            ],
            datasource=PROMETHEUS,
            unit="ops",
            width=8,
        )
    ).with_panel(
        ts_panel(
            "Records pulled",
            "Records per second fetched from the APIs, by poller.",
            [
                promql(
                    f"sum by (poller) (rate(tillstream_poller_records_read_total{RATE}))",
                    "{{poller}}",
                    "A",
                )
            ],
            datasource=PROMETHEUS,
            unit="rowsps",
            width=8,
        )
    ).with_panel(
        ts_panel(
            "Poller request failures",
            "HTTP requests per second that did not succeed, by poller and outcome: server "
            "errors, rate limiting and connection errors are retried with backoff (up to "
            "max_attempts); a client error fails the run at once.",
            [
                promql(
                    "sum by (poller, outcome) "
                    f'(rate(tillstream_poller_requests_total{{outcome!="ok"}}{RATE}))',
                    "{{poller}} {{outcome}}",
                    "A",
                )
            ],
            datasource=PROMETHEUS,
            unit="reqps",
            width=8,
        )
    )
    board.with_panel(
        ts_panel(
            "Time to ClickHouse per source",
            "For each source that finished in the range: seconds from being seen to its "
            "last row being visible in ClickHouse (from the ingestion history, so it needs "
            "no Prometheus).",
            [
                SQL(
                    """
                    SELECT
                        finished_at AS time,
                        dateDiff('millisecond', seen_at, finished_at) / 1000 AS seconds
                    FROM ${database}.ingestion_history FINAL
                    WHERE status = 'done' AND $__timeFilter_ms(finished_at)
                    ORDER BY time""",
                    "timeseries",
                )
            ],
            datasource=CLICKHOUSE,
            unit="s",
            width=WIDE,
        )
    )
    return board


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "sales_overview": sales_overview,
    "reports": reports,
    "data_quality": data_quality,
    "pipeline_health": pipeline_health,
}


def render(board: dashboard.Dashboard) -> str:
    model: Any = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for number, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = number
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": render(make()) for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if the JSON in dashboards/json is stale"
    )
    parser.add_argument("--out", type=Path, default=JSON_DIR)
    args = parser.parse_args(argv)
    built = build_all()
    out: Path = args.out
    if args.check:
        stale = sorted(
            name
            for name, text in built.items()
            if not (out / name).exists() or (out / name).read_text(encoding="utf-8") != text
        )
        extra = sorted(p.name for p in out.glob("*.json") if p.name not in built)
        for name in stale:
            print(f"stale: {out / name}", file=sys.stderr)
        for name in extra:
            print(f"not built by dashboards/build.py: {out / name}", file=sys.stderr)
        if stale or extra:
            print("run: python -m dashboards.build", file=sys.stderr)
            return 1
        print(f"{len(built)} dashboards up to date")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in built.items():
        (out / name).write_text(text, encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
