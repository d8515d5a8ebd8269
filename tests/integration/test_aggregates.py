"""Incremental aggregates equal a GROUP BY over `sales`, exactly; late data; anomalies."""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from producers.publisher import partition_for
from sinks.clickhouse_sink import LATE_RECONCILE_SECONDS
from tests.integration.test_end_to_end import assert_matches_truth
from tests.pipeline import Pipeline
from tillstream.sample_data import generate_sales

pytestmark = pytest.mark.integration

WINDOW_STARTS = {
    "minute": "toStartOfInterval(sold_at, INTERVAL 1 MINUTE)",
    "hour": "toStartOfInterval(sold_at, INTERVAL 1 HOUR)",
    "day": "toStartOfInterval(sold_at, INTERVAL 1 DAY)",
    "month": "toStartOfInterval(sold_at, INTERVAL 1 MONTH)",
}
DIMENSIONS = {
    "total": "''",
    "product": "product",
    "region": "region",
    "category": "category",
    "store": "store_id",
}
_EXPECTED = " UNION ALL ".join(
    f"SELECT '{window}' AS window, toDateTime64({start}, 3, 'UTC') AS window_start, "
    f"'{dimension}' AS dimension, toString({column}) AS key, sum(revenue) AS revenue, "
    "toUInt64(sum(quantity)) AS units, count() AS orders, "
    "sum(discount) / count() AS average_discount "
    f"FROM tillstream.sales FINAL GROUP BY window_start, key"
    for window, start in WINDOW_STARTS.items()
    for dimension, column in DIMENSIONS.items()
)
_ACTUAL = (
    "SELECT window, window_start, dimension, key, revenue, units, orders, average_discount "
    "FROM tillstream.sales_aggregates"
)
HEADER = ["order_id", "sold_at", "product", "category", "region", "store_id", "quantity"]
HEADER += ["unit_price", "discount"]


def aggregate_differences(pipeline: Pipeline) -> list[list[Any]]:
    """Rows in one side and not the other, both ways (first few of each)."""
    return pipeline.query(
        f"SELECT 'missing or wrong', * FROM (({_EXPECTED}) EXCEPT ({_ACTUAL})) LIMIT 5 "
        f"UNION ALL SELECT 'unexpected', * FROM (({_ACTUAL}) EXCEPT ({_EXPECTED})) LIMIT 5"
    )


def assert_aggregates_match_sales(pipeline: Pipeline, timeout: float = 60) -> None:
    """Every window size and dimension equals a GROUP BY over `sales`, to the cent.

    Aggregates travel on their own topic, so they may land just after the history
    says a file is done: wait until they match, and say how they differ if they never do.
    """
    differences: list[list[Any]] = []

    def matching() -> bool:
        differences[:] = aggregate_differences(pipeline)
        return not differences

    try:
        pipeline.wait_for(matching, timeout, "the aggregates to equal GROUP BY over sales")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ndifferences: {differences}") from None
    groups = pipeline.scalar(f"SELECT count() FROM ({_ACTUAL})")
    assert groups > 0, "no aggregates at all"


def write_sales(path: Path, rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def sale(order_id: str, sold_at: str, quantity: int = 1, price: str = "10.00") -> list[Any]:
    return [order_id, sold_at, "Blender", "Home", "North", "ST-001", quantity, price, "0"]


def test_aggregates_equal_group_by_over_sales_with_duplicates_and_conflicts(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = tmp_path / "messy.csv"
    truth = generate_sales(source, 20_000, seed=41, order_id_prefix="A")
    assert truth.duplicates > 0 and truth.rejected.get("conflicting_duplicate")
    pipeline.start()
    shutil.copy(source, pipeline.inbox / source.name)
    pipeline.wait_for_status(source.name, "done")
    assert_aggregates_match_sales(pipeline)
    folded = pipeline.scalar(
        "SELECT count() FROM tillstream.aggregates FINAL WHERE partition < 65535"
    )
    assert folded > 0, "the workers folded nothing: everything came from late reconciliation"
    windows = pipeline.query(
        "SELECT window, dimension FROM tillstream.sales_aggregates GROUP BY ALL ORDER BY ALL"
    )
    assert len(windows) == len(WINDOW_STARTS) * len(DIMENSIONS)
    revenue = pipeline.scalar("SELECT toString(sum(revenue)) FROM tillstream.monthly_sales_summary")
    assert Decimal(revenue) == Decimal(truth.revenue), "the monthly report sums to the truth"


def test_late_sales_inside_the_lateness_update_their_window_and_later_ones_are_reconciled(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    pipeline = make_pipeline(config={"worker": {"allowed_lateness_seconds": 3600}})
    partitions = 4
    # Every partition's watermark reaches 12:00 on 1 January 2025.
    noon = []
    while {partition_for(row[0].encode(), partitions) for row in noon} != set(range(partitions)):
        noon.append(sale(f"N{len(noon)}", "2025-01-01T12:00:00"))
    first = write_sales(
        tmp_path / "morning.csv",
        [sale(f"M{minute}", f"2025-01-01T11:{minute:02d}:00", 2) for minute in range(60)] + noon,
    )
    second = write_sales(
        tmp_path / "stragglers.csv",
        [
            sale("ON-TIME", "2025-01-01T11:30:30", 3),  # its minute and hour are still open
            sale("LATE-HOUR", "2025-01-01T09:15:00", 4),  # late for minute and hour
            sale("LATE-MONTH", "2024-12-01T08:00:00", 5),  # late for every window
        ],
    )
    pipeline.start()
    shutil.copy(first, pipeline.inbox / first.name)
    pipeline.wait_for_status(first.name, "done")
    shutil.copy(second, pipeline.inbox / second.name)
    pipeline.wait_for_status(second.name, "done")

    late = dict(
        pipeline.query(
            "SELECT order_id, late_windows FROM tillstream.sales FINAL "
            "WHERE order_id IN ('ON-TIME', 'LATE-HOUR', 'LATE-MONTH')"
        )
    )
    assert late == {
        "ON-TIME": [],
        "LATE-HOUR": ["minute", "hour"],
        "LATE-MONTH": ["minute", "hour", "day", "month"],
    }
    assert pipeline.metric("tillstream_worker_late_sales_total", window="hour") == 2
    assert pipeline.metric("tillstream_worker_late_sales_total", window="month") == 1
    assert_aggregates_match_sales(pipeline)
    hour = pipeline.query(
        "SELECT toInt64(revenue * 100), units FROM tillstream.sales_aggregates "
        "WHERE window = 'hour' AND dimension = 'total' "
        "AND window_start = toDateTime64('2025-01-01 11:00:00', 3, 'UTC')"
    )
    assert hour == [[123000, 123]], "60 sales of 2 and the on-time straggler of 3, at 10.00"


def test_a_files_late_sales_are_in_the_reports_seconds_after_it_not_at_the_next_round(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    """While files are written the sink reconciles late sales every
    LATE_RECONCILE_SECONDS; a file dropped just after one has its late sales in the
    reports soon after it is done, not at the next round."""
    pipeline = make_pipeline()
    partitions = 4
    noon = []  # every partition's watermark reaches 12:00 on 1 January 2025
    while {partition_for(row[0].encode(), partitions) for row in noon} != set(range(partitions)):
        noon.append(sale(f"N{len(noon)}", "2025-01-01T12:00:00"))
    first = write_sales(tmp_path / "noon.csv", noon)
    second = write_sales(tmp_path / "late.csv", [sale("LATE", "2024-12-01T08:00:00", 5)])

    def december() -> list[list[Any]]:
        return pipeline.query(
            "SELECT units FROM tillstream.sales_aggregates WHERE window = 'month' "
            "AND dimension = 'total' AND window_start = toDateTime64('2024-12-01', 3, 'UTC')"
        )

    pipeline.start()
    shutil.copy(first, pipeline.inbox / first.name)
    pipeline.wait_for_status(first.name, "done")
    pipeline.wait_for(pipeline.late_sales_reconciled, 30, "a reconciliation after the first file")
    dropped = time.monotonic()
    shutil.copy(second, pipeline.inbox / second.name)
    pipeline.wait_for_status(second.name, "done")
    assert pipeline.wait_for(december, 30, "the late sale in the December total") == [[5]]
    took = time.monotonic() - dropped
    assert took < LATE_RECONCILE_SECONDS - 2, f"in the reports {took:.1f}s after the drop"


def test_files_with_overlapping_orders_in_either_order_give_identical_tables(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    days = [f"2025-02-{day:02d}T{hour:02d}:00:00" for day in range(1, 29) for hour in (9, 17)]
    rows = [sale(f"O{n}", str(rng.choice(days)), int(rng.integers(1, 9))) for n in range(3000)]
    first = write_sales(tmp_path / "first.csv", rows[:2000])
    second = write_sales(tmp_path / "second.csv", rows[1000:])
    tables = []
    for name, order in (("forward", [first, second]), ("backward", [second, first])):
        pipeline = make_pipeline(name)
        pipeline.start()
        for path in order:
            shutil.copy(path, pipeline.inbox / path.name)
            pipeline.wait_for_status(path.name, "done")
        assert_aggregates_match_sales(pipeline)
        tables.append(
            (
                pipeline.query(
                    "SELECT order_id, sold_at, product, quantity, revenue "
                    "FROM tillstream.sales FINAL ORDER BY order_id"
                ),
                pipeline.query(f"{_ACTUAL} ORDER BY ALL"),
            )
        )
        pipeline.close()
    assert len(tables[0][0]) == 3000
    assert tables[0] == tables[1]


def test_revenue_outliers_are_found_as_anomalies_and_normal_sales_are_not(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    rng = np.random.default_rng(8)
    prices = {"Blender": 40, "Desk Lamp": 25, "Yoga Mat": 30, "Laptop Pro": 1200}
    rows, outliers = [], set()
    for n in range(8000):
        product = list(prices)[n % len(prices)]
        quantity = int(rng.integers(1, 6))
        if rng.random() < 0.02:
            quantity = int(rng.integers(40, 80))
            outliers.add(f"S{n}")
        sold_at = f"2025-03-{1 + n * 28 // 8000:02d}T10:00:00"
        rows.append(
            [
                f"S{n}",
                sold_at,
                product,
                "Home",
                "North",
                "ST-001",
                quantity,
                f"{prices[product]}.00",
                "0",
            ]
        )
    source = write_sales(tmp_path / "sales.csv", rows)
    pipeline.start()
    shutil.copy(source, pipeline.inbox / source.name)
    pipeline.wait_for_status(source.name, "done")

    def anomalies_settled() -> set[str] | None:
        found = {row[0] for row in pipeline.query("SELECT order_id FROM tillstream.anomaly_report")}
        expected = int(pipeline.metric("tillstream_worker_anomalies_total"))
        return found if len(found) == expected else None

    found = pipeline.wait_for(anomalies_settled, 60, "every anomaly to be written")
    true_positives = len(found & outliers)
    precision = true_positives / len(found)
    recall = true_positives / len(outliers)
    print(
        f"anomalies: {len(found)} found, {len(outliers)} injected, "
        f"precision {precision:.3f}, recall {recall:.3f}"
    )
    assert precision >= 0.95
    assert recall >= 0.95


def test_replaying_every_topic_from_offset_zero_changes_nothing(
    pipeline: Pipeline, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A restart under new consumer groups: the workers clean `sales.raw` again from
    the beginning and the sink writes `sales.clean`, `sales.aggregates` and the rest
    again from offset zero. Sales, quarantine and aggregates stay exactly as they were."""
    if not kafka_bootstrap:
        pytest.skip(
            "SKIPPED LOUDLY: the embedded broker keeps topics in memory, so there is "
            "nothing to replay after a restart; tested with --broker apache"
        )
    source = tmp_path / "replayed.csv"
    truth = generate_sales(source, 20_000, seed=43, order_id_prefix="Z")
    pipeline.start()
    shutil.copy(source, pipeline.inbox / source.name)
    row = pipeline.wait_for_status(source.name, "done")
    assert_aggregates_match_sales(pipeline)
    snapshot = "SELECT * EXCEPT (version, written_at) FROM tillstream.aggregates FINAL ORDER BY ALL"
    before = pipeline.query(snapshot)
    assert pipeline.stop() == 0

    settings = yaml.safe_load(pipeline.config_file.read_text(encoding="utf-8"))
    settings["kafka"]["group_prefix"] += "-replay"
    pipeline.config_file.write_text(yaml.safe_dump(settings), encoding="utf-8")
    pipeline.start()
    pipeline.wait_for(
        lambda: pipeline.metric("tillstream_sink_rows_written_total", table="sales") >= truth.valid,
        120,
        "the new sink group to write sales.clean again from offset zero",
    )
    pipeline.wait_for(
        lambda: (
            pipeline.metric("tillstream_worker_rows_total", stage="dedupe", outcome="clean")
            >= truth.valid
        ),
        120,
        "the new worker group to clean sales.raw again from the beginning",
    )
    assert_matches_truth(pipeline, row["source_id"], truth)
    assert_aggregates_match_sales(pipeline)
    assert pipeline.query(snapshot) == before
