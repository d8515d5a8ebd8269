"""Reviewing quarantined rows from the command line, while `up` runs and after."""

from __future__ import annotations

import csv
import json
import os
import pwd
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


def quarantine_by_status(pipeline: Pipeline) -> dict[str, int]:
    rows = pipeline.query("SELECT status, count() FROM tillstream.quarantine FINAL GROUP BY status")
    return {status: int(count) for status, count in rows}


def test_a_corrected_export_dropped_back_resolves_its_rows_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    rows = [f"OK-{n},2025-03-{n + 1:02d},Desk Lamp,1,$10.00,North" for n in range(10)]
    rows += [f"PRICE-{n},2025-03-01,Desk Lamp,1,$abc,North" for n in range(3)]
    rows += [f"ALIAS-{n},2025-03-02,,2,$5.00,South" for n in range(2)]
    rows += ["KEEP-0,2025-03-03,Desk Lamp,1,free,East"]
    pipeline.start()
    (pipeline.inbox / "bad.csv").write_text(
        "OrderID,Date,Product,Qty,Price,Region\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )
    first = pipeline.wait_for_status("bad.csv", "done")
    assert (first["valid"], first["rejected"]) == (10, 6)

    export = tmp_path / "export.csv"
    subprocess.run(
        pipeline.command("quarantine", "export", "--out", str(export)),
        check=True,
        capture_output=True,
    )
    with export.open(newline="", encoding="utf-8") as stream:
        records = list(csv.reader(stream))
    header, body = records[0], records[1:]
    assert header == ["quarantine_id", "OrderID", "Date", "Product", "Qty", "Price", "Region"]
    assert len(body) == 6
    for record in body:
        if record[1].startswith("PRICE-"):
            record[5] = "$12.50"
        elif record[1].startswith("ALIAS-"):
            record[3] = "smartfone x"
    body.append(["0" * 24, "GHOST-1", "2025-03-04", "Desk Lamp", "1", "$1.00", "West"])
    corrected = tmp_path / "corrected.csv"
    with corrected.open("w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([header, *body])
    shutil.copy(corrected, pipeline.inbox / corrected.name)

    row = pipeline.wait_for_status("corrected.csv", "done")
    assert (row["rows_read"], row["valid"], row["rejected"], row["duplicates"]) == (7, 5, 2, 0)
    assert row["rejected_by_reason"] == {"invalid_price": 1, "unknown_quarantine_id": 1}
    assert row["error"] == f"not ingested, no quarantined row has the id (1): line 8 ('{'0' * 24}')"
    assert (pipeline.archive / "corrected.csv").exists()

    def sales() -> list[list[Any]]:
        return pipeline.query(
            "SELECT order_id, product, toString(unit_price), count() FROM tillstream.sales "
            "FINAL WHERE order_id NOT LIKE 'OK-%' GROUP BY order_id, product, unit_price "
            "ORDER BY order_id"
        )

    fixed = [
        ["ALIAS-0", "Smartphone X", "5", 1],
        ["ALIAS-1", "Smartphone X", "5", 1],
        ["PRICE-0", "Desk Lamp", "12.5", 1],
        ["PRICE-1", "Desk Lamp", "12.5", 1],
        ["PRICE-2", "Desk Lamp", "12.5", 1],
    ]
    assert sales() == fixed
    assert int(pipeline.scalar("SELECT count() FROM tillstream.sales")) == 15
    assert quarantine_by_status(pipeline) == {"resolved": 5, "quarantined": 1}
    resolved = review(pipeline, "list", "--status", "resolved")
    assert {r["resolution"]["why"] for r in resolved} == {"corrected in corrected.csv"}
    assert {r["resolution"]["by"] for r in resolved} == {pwd.getpwuid(os.getuid()).pw_name}
    assert {r["resolution"]["file_id"] for r in resolved} == {row["source_id"]}
    assert {json.loads(r["original"])["OrderID"][:5] for r in resolved} == {"PRICE", "ALIAS"}

    # Dropped again, byte for byte or saved anew (another content hash): nothing changes.
    shutil.copy(corrected, pipeline.inbox / "again.csv")
    resaved = corrected.read_text(encoding="utf-8").replace("\r\n", "\n")
    (pipeline.inbox / "resaved.csv").write_text(resaved, encoding="utf-8")
    again = pipeline.wait_for_status("resaved.csv", "done")
    assert (again["valid"], again["rejected"], again["duplicates"]) == (0, 2, 5)
    pipeline.wait_for(lambda: (pipeline.archive / "again.csv").exists(), 30, "again.csv archived")
    assert sales() == fixed
    assert int(pipeline.scalar("SELECT count() FROM tillstream.sales")) == 15
    assert quarantine_by_status(pipeline) == {"resolved": 5, "quarantined": 1}
