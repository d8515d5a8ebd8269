"""A rule fix in the configuration, then `quarantine replay`: exactly the fixable rows move."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.pipeline import Pipeline
from tillstream.settings import default_rules

pytestmark = pytest.mark.integration

HEADER = "OrderID,Date,Product,Qty,Price\n"


def replay(pipeline: Pipeline) -> dict[str, Any]:
    done = subprocess.run(
        pipeline.command("quarantine", "replay", "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def by_status(pipeline: Pipeline) -> dict[str, int]:
    rows = pipeline.query("SELECT status, count() FROM tillstream.quarantine FINAL GROUP BY status")
    return {status: int(count) for status, count in rows}


def test_replay_after_a_rule_fix_moves_exactly_the_fixable_rows_once(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline()
    pipeline.start()
    rows = [f"OK-{n},2025-03-{n + 1:02d},Desk Lamp,1,$10.00\n" for n in range(10)]
    rows += [f"DOT-{n},{n + 10}.03.2025,Desk Lamp,2,$10.00\n" for n in range(5)]
    rows += [f"QTY-{n},2025-03-01,Desk Lamp,two,$10.00\n" for n in range(3)]
    (pipeline.inbox / "dotted.csv").write_text(HEADER + "".join(rows), encoding="utf-8")
    row = pipeline.wait_for_status("dotted.csv", "done")
    assert row["rejected_by_reason"] == {"invalid_date": 5, "invalid_quantity": 3}
    assert pipeline.stop() == 0

    # The fix: day.month.year dates, in configuration alone.
    formats = [*default_rules().date_formats, "%d.%m.%Y"]
    fixed = make_pipeline(config={"cleaning": {"date_formats": formats}})
    fixed.start()
    first = replay(fixed)
    assert (first["sent"], first["statuses"], first["complete"]) == (
        8,
        {"replayed": 5, "quarantined": 3},
        True,
    )
    dotted = fixed.query(
        "SELECT order_id, toDate(sold_at) FROM tillstream.sales FINAL "
        "WHERE order_id LIKE 'DOT-%' ORDER BY order_id"
    )
    assert dotted == [[f"DOT-{n}", f"2025-03-{n + 10}"] for n in range(5)]
    assert int(fixed.scalar("SELECT count() FROM tillstream.sales FINAL")) == 15
    assert by_status(fixed) == {"replayed": 5, "quarantined": 3}

    second = replay(fixed)
    assert (second["sent"], second["statuses"]) == (3, {"quarantined": 3})
    assert int(fixed.scalar("SELECT count() FROM tillstream.sales FINAL")) == 15
    assert by_status(fixed) == {"replayed": 5, "quarantined": 3}
