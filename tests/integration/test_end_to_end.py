"""A dropped file lands in ClickHouse through Kafka and Faust, run as `tillstream up`."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline import Pipeline
from tillstream.sample_data import GroundTruth, generate_sales

pytestmark = pytest.mark.integration


def rejects_by_reason(pipeline: Pipeline, source_id: str) -> dict[str, int]:
    rows = pipeline.query(
        "SELECT reason, uniqExact(line) FROM tillstream.quarantine ARRAY JOIN reasons AS reason "
        f"WHERE source_id = '{source_id}' GROUP BY reason"
    )
    return {reason: int(count) for reason, count in rows}


def assert_matches_truth(pipeline: Pipeline, source_id: str, truth: GroundTruth) -> None:
    where = f"WHERE source_id = '{source_id}'"
    valid, revenue, units = pipeline.query(
        f"SELECT count(), toString(sum(revenue)), sum(quantity) FROM tillstream.sales FINAL {where}"
    )[0]
    assert int(valid) == truth.valid
    assert Decimal(revenue) == Decimal(truth.revenue)
    assert int(units) == truth.units
    assert rejects_by_reason(pipeline, source_id) == truth.rejected
    duplicates = pipeline.scalar(f"SELECT uniqExact(line) FROM tillstream.duplicates {where}")
    assert int(duplicates) == truth.duplicates


def assert_file_ends_at_truth(
    pipeline: Pipeline, name: str, truth: GroundTruth, timeout: float = 300
) -> dict[str, Any]:
    """Wait for the file to be done; its history and ClickHouse must equal the truth."""
    row = pipeline.wait_for_status(name, "done", timeout=timeout)
    assert (row["rows_read"], row["valid"], row["duplicates"]) == (
        truth.rows,
        truth.valid,
        truth.duplicates,
    )
    assert_matches_truth(pipeline, row["source_id"], truth)
    return row


def test_a_file_written_in_pieces_lands_exactly_once_with_its_ground_truth(
    pipeline: Pipeline, tmp_path: Path, kafka_bootstrap: str
) -> None:
    source = tmp_path / "sales.csv"
    truth = generate_sales(source, 50_000, seed=7)
    content = source.read_bytes()
    pipeline.start()

    # `kafka.exactly_once: auto` finds transactions on Apache Kafka, and none embedded.
    def summary_line() -> str | None:
        lines = pipeline.log_file.read_text().splitlines()
        return next((line for line in lines if "exactly-once" in line), None)

    summary = pipeline.wait_for(summary_line, 30, "the start-up summary")
    assert summary.endswith("exactly-once on" if kafka_bootstrap else "exactly-once off")

    partial = pipeline.inbox / "sales.csv.part"
    half = len(content) // 2
    partial.write_bytes(content[:half])
    # A writer pausing mid-file: nothing may be read from a temporary name meanwhile.
    time.sleep(1.0)
    assert pipeline.status() == []
    with partial.open("ab") as stream:
        stream.write(content[half:])
    partial.rename(pipeline.inbox / "sales.csv")

    row = pipeline.wait_for_status("sales.csv", "done")
    assert row["rows_read"] == truth.rows
    assert row["valid"] == truth.valid
    assert row["duplicates"] == truth.duplicates
    assert row["rejected_by_reason"] == truth.rejected
    assert row["rejected"] == sum(truth.rejected.values())
    assert_matches_truth(pipeline, row["source_id"], truth)
    pipeline.wait_for(lambda: (pipeline.archive / "sales.csv").exists(), 10, "the archive")
    assert not (pipeline.inbox / "sales.csv").exists()

    # What a user runs in another terminal while `up` holds the database.
    status = subprocess.run(
        pipeline.command("status", "--json"), capture_output=True, text=True, check=True
    )
    [shown] = json.loads(status.stdout)
    assert (shown["status"], shown["valid"], shown["rows_read"]) == (
        "done",
        truth.valid,
        truth.rows,
    )
    assert pipeline.stop() == 0
    # A run without a fault logs no error: not even the embedded broker still starting.
    # (aiokafka does log a fresh Apache Kafka creating its offsets topic on the first
    # group's request, and retries.)
    errors = [
        line
        for line in pipeline.log_file.read_text().splitlines()
        if " ERROR " in line and "GroupCoordinatorNotAvailableError" not in line
    ]
    assert errors == []


def test_a_slow_writer_under_the_final_name_is_read_only_when_complete(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = tmp_path / "slow.csv"
    truth = generate_sales(source, 3_000, seed=11)
    content = source.read_bytes()
    pipeline.start()
    target = pipeline.inbox / "slow.csv"
    step = len(content) // 8 + 1
    with target.open("wb") as stream:
        for offset in range(0, len(content), step):
            stream.write(content[offset : offset + step])
            stream.flush()
            time.sleep(0.1)  # a writer slower than the disk, faster than stable_seconds
    row = pipeline.wait_for_status("slow.csv", "done")
    assert row["rows_read"] == truth.rows
    assert_matches_truth(pipeline, row["source_id"], truth)


def test_restart_processes_nothing_twice_and_renamed_content_adds_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = tmp_path / "day1.csv"
    truth = generate_sales(source, 5_000, seed=3, order_id_prefix="R")
    pipeline.start()
    shutil.copy(source, pipeline.inbox / "day1.csv")
    first = pipeline.wait_for_status("day1.csv", "done")
    assert pipeline.stop() == 0

    pipeline.start()
    shutil.copy(source, pipeline.inbox / "renamed-copy.csv")
    pipeline.wait_for(
        lambda: (pipeline.archive / "renamed-copy.csv").exists(), 30, "the copy to be archived"
    )
    history = pipeline.status()
    assert [row["source_id"] for row in history] == [first["source_id"]]
    assert history[0]["status"] == "done"
    assert int(pipeline.scalar("SELECT count() FROM tillstream.sales")) == truth.valid
    assert_matches_truth(pipeline, first["source_id"], truth)


def test_a_latin1_file_with_its_own_headers_is_cleaned_through_configuration(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(
        config={"cleaning": {"product_aliases": {"machine à café": "Coffee Maker"}}}
    )
    pipeline.start()
    text = (
        "ID,Date,Product,Qty,Price,Store_ID\n"
        'L-1,2025/03/14,Machine à Café,2,"$1,200.00",Café-Nord\n'
        "L-2,14-Mar-2025,smartfone x,1,USD 500,S2\n"
        "L-3,2025/13/45,Desk Lamp,1,$20.00,S3\n"
    )
    (pipeline.inbox / "latin1.csv").write_bytes(text.encode("cp1252"))
    row = pipeline.wait_for_status("latin1.csv", "done")
    assert (row["valid"], row["rejected_by_reason"]) == (2, {"invalid_date": 1})
    sales = pipeline.query(
        "SELECT order_id, toString(sold_at), product, quantity, toString(unit_price), "
        "toString(revenue), store_id FROM tillstream.sales FINAL ORDER BY order_id"
    )
    assert sales == [
        ["L-1", "2025-03-14 00:00:00.000", "Coffee Maker", 2, "1200", "2400", "Café-Nord"],
        ["L-2", "2025-03-14 00:00:00.000", "Smartphone X", 1, "500", "500", "S2"],
    ]


def test_an_unreadable_file_moves_to_failed_with_its_reason(pipeline: Pipeline) -> None:
    pipeline.start()
    (pipeline.inbox / "photo.csv").write_bytes(bytes(range(256)) * 16)
    row = pipeline.wait_for_status("photo.csv", "failed")
    assert "binary" in row["error"]
    error_file = pipeline.failed / "photo.csv.error.txt"
    pipeline.wait_for(error_file.exists, 10, "the error sidecar")
    assert "binary" in error_file.read_text()
    assert (pipeline.failed / "photo.csv").exists()
