"""The dashboards as code: the committed JSON is what the code builds, every panel
reads something that exists, and the macros expand as the ClickHouse plugin's do."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from dashboards.macros import (
    ExpansionError,
    TimeRange,
    expand_clickhouse,
    expand_prometheus,
    expand_variables,
    interval_seconds,
)
from dashboards.model import Dashboard, load_dashboards
from sinks.schema import TABLES, VIEWS
from tests.metric_names import metric_references, unknown_metric_references

ROOT = Path(__file__).resolve().parents[2]
PROVISIONED = ROOT / "dashboards" / "provisioning" / "datasources" / "datasources.yml"


@pytest.fixture(scope="module")
def boards() -> dict[str, Dashboard]:
    return {board.uid: board for board in load_dashboards()}


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dashboards.build", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_the_committed_json_is_what_the_code_builds() -> None:
    result = _build("--check")
    assert result.returncode == 0, result.stderr


def test_the_check_fails_on_stale_or_extra_json(tmp_path: Path) -> None:
    assert _build("--out", str(tmp_path)).returncode == 0
    built = tmp_path / "sales_overview.json"
    built.write_text(built.read_text().replace("Revenue trend", "Revenue"), encoding="utf-8")
    stale = _build("--check", "--out", str(tmp_path))
    assert stale.returncode == 1
    assert "stale" in stale.stderr and "sales_overview.json" in stale.stderr

    assert _build("--out", str(tmp_path)).returncode == 0
    (tmp_path / "hand_made.json").write_text("{}", encoding="utf-8")
    extra = _build("--check", "--out", str(tmp_path))
    assert extra.returncode == 1 and "hand_made.json" in extra.stderr


def test_the_dashboards_have_the_panels_the_issue_asks_for(boards: dict[str, Dashboard]) -> None:
    expected = {
        "tillstream-sales-overview": {
            "Revenue trend",
            "Top products by revenue",
            "Revenue share by region",
            "Discounts by category",
            "Monthly summary",
        },
        "tillstream-reports": {
            "Revenue per month",
            "Monthly sales summary",
            "Top products by revenue (all time)",
            "Top products by units (all time)",
            "Region performance",
            "Category discount map",
        },
        "tillstream-data-quality": {
            "Valid vs rejected rows",
            "Rejects by reason",
            "Ingestion history (files and polls)",
            "Quarantine browser",
            "Duplicates over time",
        },
        "tillstream-pipeline-health": {
            "Throughput per stage",
            "Consumer lag",
            "End-to-end latency",
            "Sink flushes",
            "Errors and retries",
            "DLQ rate",
            "Poll runs",
            "Records pulled",
            "Poller request failures",
        },
    }
    assert set(boards) == set(expected)
    for uid, titles in expected.items():
        assert titles <= {panel.title for panel in boards[uid].panels}, uid
    sales = boards["tillstream-sales-overview"]
    chosen = {v.name: v for v in sales.variables}
    for name in ("region", "category", "product"):
        assert chosen[name].type == "query" and chosen[name].multi and chosen[name].include_all


def test_every_target_uses_a_provisioned_datasource_and_has_a_query(
    boards: dict[str, Dashboard],
) -> None:
    provisioned = yaml.safe_load(PROVISIONED.read_text())["datasources"]
    uids = {source["uid"] for source in provisioned}
    for board in boards.values():
        for panel in board.panels:
            assert panel.targets, f"{board.title} / {panel.title} has no query"
            for target in panel.targets:
                assert target.text.strip()
    for path in (ROOT / "dashboards" / "json").glob("*.json"):
        text = path.read_text()
        used = set(re.findall(r'"uid": "([^"]+)"', text)) - {board.uid for board in boards.values()}
        assert used <= uids, f"{path.name} names datasources {used - uids}"


def test_clickhouse_queries_read_only_tables_of_the_schema(boards: dict[str, Dashboard]) -> None:
    queries = [
        target.text
        for board in boards.values()
        for panel in board.panels
        for target in panel.targets
        if target.datasource == "clickhouse"
    ] + [v.query for board in boards.values() for v in board.variables if v.type == "query"]
    for sql in queries:
        tables = set(re.findall(r"\$\{database\}\.(\w+)", sql))
        assert tables, f"no table named as ${{database}}.<table> in:\n{sql}"
        assert tables <= set(TABLES) | set(VIEWS), sql
        assert "tillstream." not in sql, "name the database through ${database}"


def test_every_metric_a_panel_uses_is_defined(boards: dict[str, Dashboard]) -> None:
    exprs = [
        target.text
        for board in boards.values()
        for panel in board.panels
        for target in panel.targets
        if target.datasource == "prometheus"
    ]
    assert len(exprs) >= 15
    assert metric_references(exprs)
    assert unknown_metric_references(exprs) == []


def test_the_metric_check_notices_a_misspelt_metric_or_label() -> None:
    assert unknown_metric_references(["rate(tillstream_sink_rows_writen_total[5m])"]) == [
        "tillstream_sink_rows_writen_total"
    ]
    assert unknown_metric_references(['tillstream_sink_errors_total{kynd="data"}']) == [
        "tillstream_sink_errors_total{kynd}"
    ]
    assert unknown_metric_references(["sum by (tabel) (tillstream_sink_rows_written_total)"]) == [
        "tillstream_sink_rows_written_total by (tabel)"
    ]


# ------------------------------------------------------------------------------------ macros

RANGE = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, 0, 0, 0, 500_000, UTC))


def test_time_macros_expand_as_the_clickhouse_plugin_does() -> None:
    sql = "WHERE $__timeFilter(t) AND x > $__fromTime AND x < $__toTime GROUP BY $__interval_s"
    assert expand_clickhouse(sql, RANGE, 60) == (
        "WHERE t >= toDateTime(1735689600) AND t <= toDateTime(1735776000)"
        " AND x > toDateTime(1735689600) AND x < toDateTime(1735776000) GROUP BY 60"
    )
    assert expand_clickhouse("$__timeFilter_ms(t)", RANGE, 1) == (
        "t >= fromUnixTimestamp64Milli(1735689600000)"
        " AND t <= fromUnixTimestamp64Milli(1735776000500)"
    )
    assert expand_clickhouse("$__timeInterval(t)", RANGE, 30) == (
        "toStartOfInterval(toDateTime(t), INTERVAL 30 second)"
    )
    assert expand_clickhouse("$__dateFilter(d)", RANGE, 30) == (
        "d >= toDate('2025-01-01') AND d <= toDate('2025-01-02')"
    )


def test_unknown_macros_and_variables_are_errors_not_text() -> None:
    with pytest.raises(ExpansionError, match="unknown ClickHouse macro"):
        expand_clickhouse("$__conditionalAll(x)", RANGE, 1)
    with pytest.raises(ExpansionError, match="one argument"):
        expand_clickhouse("$__timeFilter()", RANGE, 1)
    with pytest.raises(ExpansionError, match="unknown template variable"):
        expand_variables("region IN (${regoin:singlequote})", {"region": ["North"]})
    with pytest.raises(ExpansionError, match="how to join"):
        expand_variables("region = $region", {"region": ["North", "South"]})
    with pytest.raises(ExpansionError, match="unsupported variable format"):
        expand_variables("${region:json}", {"region": ["North"]})


def test_multi_value_variables_are_quoted_and_escaped() -> None:
    values = {"p": ["Chef's Knife", "Desk Lamp"], "db": ["tillstream"]}
    assert expand_variables("${db}.sales WHERE p IN (${p:singlequote})", values) == (
        "tillstream.sales WHERE p IN ('Chef\\'s Knife','Desk Lamp')"
    )
    assert expand_variables("${p:sqlstring}", values) == "'Chef''s Knife','Desk Lamp'"
    assert expand_variables("${p:csv}|[[db]]|$db", values) == (
        "Chef's Knife,Desk Lamp|tillstream|tillstream"
    )


def test_prometheus_interval_variables() -> None:
    assert expand_prometheus("rate(x[$__rate_interval])", {}, "1m") == "rate(x[1m])"
    assert expand_prometheus("rate(x[${__interval}])", {}, "15s") == "rate(x[15s])"


def test_time_ranges_and_intervals() -> None:
    now = datetime(2026, 3, 31, 12, tzinfo=UTC)
    assert TimeRange.parse("now-1M", "now", now).start == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert TimeRange.parse("now-3y", "now", now).start == datetime(2023, 3, 31, 12, tzinfo=UTC)
    assert TimeRange.parse("now-7d", "now", now).start == datetime(2026, 3, 24, 12, tzinfo=UTC)
    assert TimeRange.parse("2025-01-01", "now", now).start == datetime(2025, 1, 1, tzinfo=UTC)
    day = TimeRange(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC))
    assert interval_seconds(day) == 87
    assert interval_seconds(day, "1h") == 3600
    with pytest.raises(ExpansionError):
        TimeRange.parse("yesterday", "now")
