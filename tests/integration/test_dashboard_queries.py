"""Every ClickHouse query of every dashboard runs on data the real pipeline produced.

The macros and template variables are expanded as Grafana and the ClickHouse plugin
expand them (dashboards/macros.py), then the SQL runs inside `tillstream up` through
its read-only query API: chDB, the real engine, the real schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from dashboards.macros import TimeRange, panel_sql, resolve_variables
from dashboards.model import Dashboard, Variable, load_dashboards
from tests.pipeline import Pipeline
from tillstream.sample_data import generate_sales

pytestmark = [pytest.mark.integration, pytest.mark.broker_independent]

QUOTED_PRODUCT = "Chef's Knife"
EXTRA_ROWS = (
    "order_id,sold_at,product,category,region,store_id,quantity,unit_price\n"
    f"Q-1,2025-06-01,{QUOTED_PRODUCT},Home Appliance,North,S1,2,$25.00\n"
)


def lamps(numbers: Iterable[int], quantity: Callable[[int], int]) -> str:
    rows = [f"L-{n},2025-06-02,Desk Lamp,Home,North,S1,{quantity(n)},$20.00\n" for n in numbers]
    return "order_id,sold_at,product,category,region,store_id,quantity,unit_price\n" + "".join(rows)


def _first_two(_: Variable, options: Sequence[str]) -> list[str]:
    return list(options[:2])


def _quoted_product(variable: Variable, options: Sequence[str]) -> list[str]:
    if variable.name != "product":
        return list(options)
    chosen = [option for option in options if "'" in option]
    assert chosen, f"no product with a quote among {options}"
    return chosen


SELECTIONS = {
    "all": None,
    "two of each": _first_two,
    "a value with a quote": _quoted_product,
}


def _run_every_clickhouse_query(pipeline: Pipeline, board: Dashboard, selection: str) -> list[str]:
    """The failures, one line each, so one run shows every broken panel."""
    time_range = TimeRange.parse(board.time_from, board.time_to)
    failures: list[str] = []
    values = resolve_variables(board, pipeline.query, time_range, pick=SELECTIONS[selection])
    for name, chosen in values.items():
        if not chosen:
            failures.append(f"{board.title}: variable {name} has no values ({selection})")
    for panel in board.panels:
        for target in panel.targets:
            if target.datasource != "clickhouse":
                continue
            sql = panel_sql(panel, target.text, values, time_range)
            where = f"{board.title} / {panel.title} [{target.ref_id}] ({selection})"
            try:
                rows = pipeline.query(sql)
            except AssertionError as exc:
                failures.append(f"{where}: {str(exc).splitlines()[0]}")
                continue
            if not rows:
                failures.append(f"{where}: no rows\n{sql}")
    return failures


def test_every_clickhouse_panel_query_returns_rows_on_pipeline_data(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.start()
    generate_sales(pipeline.inbox / "sales.csv", 5_000, seed=17)
    (pipeline.inbox / "quoted.csv").write_text(EXTRA_ROWS, encoding="utf-8")
    pipeline.wait_for_status("sales.csv", "done")
    pipeline.wait_for_status("quoted.csv", "done")
    # A product's baseline, then outliers against it, for the anomalies panel.
    (pipeline.inbox / "baseline.csv").write_text(lamps(range(200), quantity=lambda n: 1 + n % 3))
    pipeline.wait_for_status("baseline.csv", "done")
    (pipeline.inbox / "outliers.csv").write_text(lamps(range(200, 208), quantity=lambda n: 500))
    pipeline.wait_for_status("outliers.csv", "done")

    boards = load_dashboards()
    assert {board.uid for board in boards} == {
        "tillstream-sales-overview",
        "tillstream-reports",
        "tillstream-data-quality",
        "tillstream-pipeline-health",
    }
    queries = sum(
        1
        for board in boards
        for panel in board.panels
        for target in panel.targets
        if target.datasource == "clickhouse"
    )
    assert queries >= 20, "the dashboards lost their ClickHouse panels"

    failures = [
        failure
        for board in boards
        for selection in SELECTIONS
        for failure in _run_every_clickhouse_query(pipeline, board, selection)
    ]
    assert not failures, "\n".join(failures)


def test_a_time_range_without_data_gives_empty_panels_not_errors(pipeline: Pipeline) -> None:
    """The macros put the range into the SQL: a range before any sale selects nothing."""
    pipeline.start()
    generate_sales(pipeline.inbox / "sales.csv", 500, seed=5)
    pipeline.wait_for_status("sales.csv", "done")
    [board] = [b for b in load_dashboards() if b.uid == "tillstream-sales-overview"]
    empty = TimeRange.parse("2001-01-01", "2001-02-01")
    values = resolve_variables(board, pipeline.query, TimeRange.parse("now-30y", "now"))
    [trend] = [p for p in board.panels if p.title == "Revenue trend"]
    assert pipeline.query(panel_sql(trend, trend.targets[0].text, values, empty)) == []
    full = TimeRange.parse("2023-01-01", "now")
    assert pipeline.query(panel_sql(trend, trend.targets[0].text, values, full))
