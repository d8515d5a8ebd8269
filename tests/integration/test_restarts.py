"""A crash mid-file loses nothing and counts nothing twice, and dedupe outlives restarts."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.test_aggregates import assert_aggregates_match_sales
from tests.integration.test_end_to_end import (
    assert_file_ends_at_truth,
    assert_matches_truth,
    rejects_by_reason,
)
from tests.pipeline import Pipeline
from tillstream.sample_data import generate_sales

pytestmark = pytest.mark.integration


def test_sigkill_mid_file_then_restart_ends_exactly_at_the_ground_truth(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    first = tmp_path / "first.csv"
    first_truth = generate_sales(first, 5_000, seed=21, order_id_prefix="F")
    big = tmp_path / "big.csv"
    big_truth = generate_sales(big, 100_000, seed=22, order_id_prefix="B")
    pipeline.start()
    shutil.copy(first, pipeline.inbox / first.name)
    first_row = pipeline.wait_for_status(first.name, "done")

    shutil.copy(big, pipeline.inbox / big.name)

    def big_half_written() -> bool:
        written = int(
            pipeline.scalar("SELECT count() FROM tillstream.sales WHERE source LIKE '%big.csv'")
        )
        return 10_000 < written < big_truth.valid

    pipeline.wait_for(big_half_written, 120, "the big file to be partly written")
    pipeline.kill()

    pipeline.start()
    assert_file_ends_at_truth(pipeline, big.name, big_truth)
    assert_matches_truth(pipeline, first_row["source_id"], first_truth)
    assert int(pipeline.scalar("SELECT count() FROM tillstream.sales FINAL")) == (
        first_truth.valid + big_truth.valid
    )
    assert_aggregates_match_sales(pipeline)


def test_orders_seen_before_a_restart_are_still_known_after_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = tmp_path / "monday.csv"
    labels = tmp_path / "monday.labels"
    generate_sales(source, 4_000, seed=31, order_id_prefix="M", labels_path=labels)
    pipeline.start()
    shutil.copy(source, pipeline.inbox / source.name)
    pipeline.wait_for_status(source.name, "done")
    assert pipeline.stop() == 0

    # The first rows of Monday's file again, as a new file, after a restart.
    resent_rows = 1_500
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "resent.csv").write_text("".join(lines[: resent_rows + 1]), encoding="utf-8")
    outcomes = Counter(labels.read_text().split()[:resent_rows])
    pipeline.start()
    shutil.copy(tmp_path / "resent.csv", pipeline.inbox / "resent.csv")
    row = pipeline.wait_for_status("resent.csv", "done")

    assert row["valid"] == 0, "every accepted order was accepted before the restart"
    assert row["duplicates"] == outcomes["valid"] + outcomes["duplicate"]
    expected_rejects = {
        label: count for label, count in outcomes.items() if label not in ("valid", "duplicate")
    }
    assert rejects_by_reason(pipeline, row["source_id"]) == expected_rejects
