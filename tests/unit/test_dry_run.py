"""A dry run, without ClickHouse: a file's outcome from the same reader, cleaning and
dedupe as the pipeline, when no order of it was accepted before."""

from __future__ import annotations

import asyncio
from pathlib import Path

from processors.dry_run import dry_run
from processors.seen import SeenEntry
from tillstream.sample_data import generate_sales
from tillstream.settings import load_settings


async def nothing_accepted_before(order_ids: list[str]) -> dict[str, SeenEntry]:
    return {}


def test_a_dry_run_gives_the_ground_truth_and_tells_how_far_it_got(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv"
    truth = generate_sales(path, 10_000, seed=3)
    progress: list[int] = []
    report = asyncio.run(
        dry_run(
            path,
            load_settings(watch={"chunk_rows": 1_000}),
            nothing_accepted_before,
            progress.append,
        )
    )
    assert (report.rows, report.valid, report.duplicates) == (
        truth.rows,
        truth.valid,
        truth.duplicates,
    )
    assert dict(report.rejected) == truth.rejected
    assert len(progress) >= 10
    assert progress == sorted(progress)
    assert progress[-1] == truth.rows
