"""Speed and memory of the late-sales totals: grouping sets against a row per dimension.

The sink reconciles late sales into the aggregates by totalling them per window and
dimension value (sinks/schema.py: `late_sales_totals`); in a backfill nearly every
sale is late, and the first reconciliation of a database totals all of them. This
fills a `sales` table in chDB with a backfill's late sales, in two shapes: a date
and no time of day (the generator's files: few distinct windows) and a second of the
day each (nearly every sale a minute window of its own), and totals them both ways,
side by side in one run: as the sink does, one grouping set per dimension over the
rows fanned out by window, and as it did before, every row fanned out by dimension
too and grouped once. Each query runs in a fresh process, whose peak RSS above its
RSS before the query is the memory figure; both must give the same totals.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import fmt_int, own_memory_mb, progress, report, start  # noqa: E402
from sinks.database import Database  # noqa: E402
from sinks.late_sales import BACKGROUND_SETTINGS  # noqa: E402
from sinks.schema import TABLES, late_sale_windows, late_sales_totals  # noqa: E402
from tillstream.settings import ClickHouseConfig  # noqa: E402

DATABASE = "bench"

Measured = tuple[float, float, tuple[int, ...]]
"""Seconds, MB of peak RSS above the RSS before the query, a checksum of the totals."""


LATE_SALES = f"SELECT * FROM {DATABASE}.sales FINAL WHERE notEmpty(late_windows)"
"""Every late sale once: what the first reconciliation of a database totals."""


def fanned_out_totals(sales: str) -> str:
    """The totals as the sink computed them before grouping sets: a row per late sale,
    window and dimension, grouped once."""
    return f"""
        SELECT window, window_start, dimension_key.1 AS dimension, dimension_key.2 AS key,
            sum(revenue) AS revenue, sum(quantity) AS units, count() AS orders,
            sum(discount) AS discount_sum
        FROM ({late_sale_windows(sales)})
        ARRAY JOIN [('total', ''), ('product', product), ('region', region),
            ('category', category), ('store', store_id)] AS dimension_key
        GROUP BY window, window_start, dimension, key"""


QUERIES: dict[str, Callable[[str], str]] = {
    "grouping sets (the sink's)": late_sales_totals,
    "a row per dimension (before)": fanned_out_totals,
}
SHAPES: dict[str, str] = {
    "dates only (the generator's)": "0",
    "a second of the day each": "rand(7) % 86400",
}
"""Shape -> the seconds added to each sale's day."""


def _database(path: Path) -> Database:
    return Database(f"chdb://{path}", ClickHouseConfig(database=DATABASE))


async def _fill(path: Path, sales: int, seconds: str) -> None:
    """A backfill's late sales: two years of days, 10 products in 4 categories, 5 regions,
    44 stores; every sale late for its minute, hour and day, half for the month too."""
    database = _database(path)
    try:
        await database.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        await database.command(TABLES["sales"].format(db=DATABASE))
        await database.command(
            f"""INSERT INTO {DATABASE}.sales (order_id, fingerprint, sold_at, product,
                category, region, store_id, quantity, unit_price, discount, revenue,
                currency, customer_email, late_windows, source, source_kind, source_id,
                line, seen_at, ingested_at)
            SELECT toString(number), '', toDateTime64('2024-01-01', 3, 'UTC')
                    + toIntervalDay(rand(1) % 730) + toIntervalSecond({seconds}),
                concat('P', toString(rand(2) % 10)), concat('C', toString(rand(2) % 10 % 4)),
                concat('R', toString(rand(3) % 5)), concat('S', toString(rand(4) % 44)),
                1 + rand(5) % 5, 10.50, 0.1, 47.25, 'USD', 'anonymous',
                arraySlice(['minute', 'hour', 'day', 'month'], 1, 3 + rand(6) % 2),
                'bench.csv', 'file', 'bench', number, now64(3), now64(3)
            FROM numbers({sales})"""
        )
    finally:
        await database.close()


def run_query(path: Path, name: str) -> Measured:
    """Run in a fresh process, so that its peak RSS is the query's."""

    async def measured() -> Measured:
        database = _database(path)
        try:
            await database.rows("SELECT 1")
            before = own_memory_mb("VmRSS")
            began = time.perf_counter()
            [checksum] = await database.rows(
                "SELECT count(), toInt64(sum(orders)), toInt64(sum(units)), "
                "toInt64(sum(revenue) * 100), sum(cityHash64(window, window_start, "
                "dimension, key, revenue, units, orders, discount_sum)) "
                f"FROM ({QUERIES[name](LATE_SALES)}) SETTINGS {BACKGROUND_SETTINGS}"
            )
            seconds = time.perf_counter() - began
            return seconds, own_memory_mb("VmHWM") - before, tuple(checksum)
        finally:
            await database.close()

    return asyncio.run(measured())


def in_fresh_process(path: Path, name: str) -> Measured:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as process:
        return process.submit(run_query, path, name).result()


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--sales", type=int, default=3_000_000, help="late sales in the table")
    arguments.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = start(arguments, argv)
    rows: list[list[str]] = []
    notes: list[str] = []
    for shape, seconds in SHAPES.items():
        with tempfile.TemporaryDirectory(prefix="tillstream-late-") as folder:
            path = Path(folder) / "chdb"
            progress(f"{shape}: filling `sales` with {args.sales:,} late sales")
            asyncio.run(_fill(path, args.sales, seconds))
            figures: dict[str, Measured] = {}
            for name in QUERIES:
                progress(f"{shape}: {name}")
                figures[name] = in_fresh_process(path, name)
        (now, now_mb, totals), (before, before_mb, before_totals) = figures.values()
        if totals != before_totals:
            raise SystemExit(f"{shape}: the two queries disagree: {totals} != {before_totals}")
        rows += [
            [shape, name, fmt_int(checksum[0]), f"{took:.2f}", fmt_int(mb), f"{before / took:.2f}x"]
            for name, (took, mb, checksum) in figures.items()
        ]
        notes.append(
            f"{shape}: grouping sets {before / now:.2f}x the speed of a row per dimension, "
            f"{now_mb - before_mb:+,.0f} MB of peak; the same totals ({fmt_int(totals[0])} rows)"
        )
    report(
        f"Late-sales totals, {args.sales:,} late sales",
        ["sales", "query", "totals", "seconds", "peak MB above start", "speed vs before"],
        rows,
        notes,
        [
            "each query in a fresh process on one thread, with the reconciliation's settings; "
            "the table written once per shape and read by both"
        ],
        recorded=args.record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
