"""Reviewing quarantined rows from the command line, while `up` runs and after."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline import Pipeline
from tillstream.sample_data import generate_sales

pytestmark = pytest.mark.integration


def review(pipeline: Pipeline, *args: str) -> Any:
    done = subprocess.run(
        pipeline.command("quarantine", *args, "--json"), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_quarantined_rows_can_be_counted_filtered_and_shown(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = tmp_path / "review.csv"
    truth = generate_sales(source, 3_000, seed=61, order_id_prefix="Q")
    pipeline.start()
    shutil.copy(source, pipeline.inbox / source.name)
    pipeline.wait_for_status(source.name, "done")

    summary = review(pipeline, "stats")
    assert summary["by_reason"] == truth.rejected
    assert summary["total"] == sum(truth.rejected.values())
    assert list(summary["by_source"].values()) == [summary["total"]]

    prices = review(pipeline, "list", "--reason", "invalid_price", "--limit", "10000")
    assert len(prices) == truth.rejected["invalid_price"]
    assert all("invalid_price" in row["reasons"] for row in prices)
    assert review(pipeline, "list", "--source", "no-such-file") == []
    assert review(pipeline, "list", "--since", "2999-01-01") == []

    with source.open(newline="", encoding="utf-8") as stream:
        records = list(csv.reader(stream))
    letter = review(pipeline, "show", prices[0]["id"])
    assert json.loads(letter["original"]) == dict(
        zip(records[0], records[letter["line"] - 1], strict=True)
    )
    assert letter["status"] == "quarantined"

    # Discarding two rows on purpose keeps who and why with them.
    dropped = [row["id"] for row in prices[:2]]
    subprocess.run(
        pipeline.command("quarantine", "discard", *dropped, "--why", "test orders", "--by", "qa"),
        check=True,
        capture_output=True,
    )
    discarded = review(pipeline, "list", "--status", "discarded")
    assert sorted(row["id"] for row in discarded) == sorted(dropped)
    assert all(row["resolution"]["why"] == "test orders" for row in discarded)
    assert all(row["resolution"]["by"] == "qa" for row in discarded)

    # With `up` stopped, the same commands read the database directly.
    assert pipeline.stop() == 0
    assert review(pipeline, "stats") == summary
