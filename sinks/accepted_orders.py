"""The accepted orders ClickHouse holds, read in pages, to rebuild worker state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pandas as pd

from sinks.database import Database, QueryRunner, in_array

__all__ = ["accepted_orders", "find_accepted"]


async def accepted_orders(database: Database, page: int = 100_000) -> AsyncIterator[pd.DataFrame]:
    """Every sale once, in pages ordered by order id, so memory stays bounded: what
    dedupe remembers of it, and what aggregation needs (as processors/aggregates.py
    `facts_from_clean` gives it)."""
    after = ""
    while True:
        frame = await database.frame(
            "SELECT order_id, fingerprint, source_id, line, late_windows, "
            "toInt64(toUnixTimestamp(seen_at)) AS first_seen, "
            "toUnixTimestamp64Milli(sold_at) AS sold_at_ms, product, region, category, "
            "store_id, toInt64(quantity) AS quantity, toInt64(revenue * 100) AS revenue_cents, "
            "toInt64(toDecimal64(discount, 6) * 1000000) AS discount_ppm "
            f"FROM {database.name}.sales FINAL "
            "WHERE order_id > {after:String} ORDER BY order_id LIMIT {page:UInt32}",
            {"after": after, "page": page},
        )
        if frame.empty:
            return
        yield frame
        after = str(frame["order_id"].iat[-1])


async def find_accepted(
    run: QueryRunner, database: str, order_ids: list[str]
) -> dict[str, list[str | int]]:
    """The accepted delivery of each of these orders that ClickHouse holds, as the
    dedupe table keeps it (processors/seen.py `SeenEntry`; lateness and age left 0,
    as classifying does not look at them)."""
    rows = await run(
        f"SELECT order_id, fingerprint, source_id, line FROM {database}.sales FINAL "
        f"WHERE {in_array('order_id', 'ids', 'String')}",
        {"ids": order_ids},
    )
    return {
        row["order_id"]: [row["fingerprint"], row["source_id"], int(row["line"]), 0, 0]
        for row in rows
    }
