"""The accepted orders ClickHouse holds, read in pages, to rebuild dedupe state."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sinks.database import Database, QueryRunner

__all__ = ["accepted_orders", "find_accepted"]

AcceptedOrder = tuple[str, str, str, int]
"""order id, fingerprint, source id, line."""


async def accepted_orders(
    database: Database, page: int = 100_000
) -> AsyncIterator[list[AcceptedOrder]]:
    """Every sale once, in pages ordered by order id, so memory stays bounded."""
    after = ""
    while True:
        rows = await database.rows(
            f"SELECT order_id, fingerprint, source_id, line FROM {database.name}.sales FINAL "
            "WHERE order_id > {after:String} ORDER BY order_id LIMIT {page:UInt32}",
            {"after": after, "page": page},
        )
        if not rows:
            return
        yield [(str(o), str(f), str(s), int(n)) for o, f, s, n in rows]
        after = str(rows[-1][0])


async def find_accepted(
    run: QueryRunner, database: str, order_ids: list[str]
) -> dict[str, list[str | int]]:
    """The accepted delivery of each of these orders that ClickHouse holds, as the
    dedupe table keeps it: [fingerprint, source id, line]."""
    rows = await run(
        f"SELECT order_id, fingerprint, source_id, line FROM {database}.sales FINAL "
        "WHERE order_id IN {ids:Array(String)}",
        {"ids": order_ids},
    )
    return {
        row["order_id"]: [row["fingerprint"], row["source_id"], int(row["line"])] for row in rows
    }
