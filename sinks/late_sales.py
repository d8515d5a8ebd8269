"""Late sales reconciled into the aggregates, from ClickHouse.

A worker drops a window's state once it is closed, so it cannot fold a sale that
comes later; it flags the sale instead (`late_windows`). Every few seconds the sink
totals the late sales of the orders written since the last time, per window and
dimension value, and writes them as rows of one more partition of `aggregates`
(`LATE_PARTITION`), which the report views add up. It runs beside the sink's
writes, on a ClickHouse client of its own, and reads only what is new: a backfill
is late for nearly every window, and recomputing the touched windows from all of
`sales` each time raised `up`'s peak on a 10M-row file by 350 MB (docs/benchmarks.md).

"Written since the last time" is read from ClickHouse, not remembered by the sink:
`sales` keeps each row's block number (`enable_block_number_column`), which a
table's inserts take in the order they are committed. An order is counted once,
however often it is written (a file read again after a crash writes its sales
again): the orders counted are kept in `late_orders`, with the reconciliation that
counted them, since a merge of `sales` keeps one copy of an order and may keep the
later one. A reconciliation is named by the block it starts after, and is written
in three steps, each repeatable: its orders, their totals (absolute for the
reconciliation, so written again they replace themselves), and the block it
reached, in `late_reconciliations`. After a crash the next one starts after the
last block reached, and so redoes an unfinished one whole.
"""

from __future__ import annotations

import time

from sinks.database import Database
from sinks.schema import LATE_PARTITION, late_sales_totals

__all__ = ["BACKGROUND_SETTINGS", "LateSales"]

BACKGROUND_SETTINGS = (
    "max_threads = 1, max_bytes_before_external_group_by = 200000000, "
    "min_insert_block_size_rows = 262144, min_insert_block_size_bytes = 33554432"
)
"""The reconciliation is background work sharing `up`'s process and cores with the
ingestion: on one thread (on both, a 3M-row file took 146 s against 136 s), and with
its memory bounded, since in a backfill a reconciliation groups every sale written
since the last one. Grouping spills to disk past 200 MB and the insert goes in
blocks of 32 MB: on the database of a 3M-row file, totalling every late sale raised
the process's peak by 370 MB in 10.5 s, against 900 MB in 8.7 s."""


class LateSales:
    """The late sales' reconciliations of one database, from the block of `sales` the
    last finished one reached (read from `late_reconciliations` at the first)."""

    def __init__(self) -> None:
        self._reconciled_upto: int | None = None

    async def reconcile(self, database: Database) -> None:
        """Add the late sales of the orders written since the last reconciliation to
        the aggregates. Rows written while it runs may be taken too: their orders are
        then counted, and left out next time."""
        db = database.name
        if self._reconciled_upto is None:
            [(upto,)] = await database.rows(f"SELECT max(upto) FROM {db}.late_reconciliations")
            self._reconciled_upto = int(upto)
        after = {"after": self._reconciled_upto}
        [(newest,)] = await database.rows(f"SELECT max(_block_number) FROM {db}.sales")
        if newest <= self._reconciled_upto:
            return
        written = (
            f"SELECT order_id FROM {db}.sales PREWHERE _block_number > {{after:UInt64}} "
            "WHERE notEmpty(late_windows)"
        )
        await database.command(
            f"INSERT INTO {db}.late_orders (order_id, reconciliation) "
            f"SELECT DISTINCT order_id, {{after:UInt64}} FROM ({written}) "
            f"WHERE order_id NOT IN (SELECT order_id FROM {db}.late_orders "
            f"PREWHERE reconciliation < {{after:UInt64}} WHERE order_id IN ({written})) "
            f"SETTINGS {BACKGROUND_SETTINGS}",
            after,
        )
        counted = (
            f"SELECT * FROM {db}.sales PREWHERE _block_number > {{after:UInt64}} "
            f"WHERE order_id IN (SELECT order_id FROM {db}.late_orders "
            "WHERE reconciliation = {after:UInt64}) LIMIT 1 BY order_id"
        )
        await database.command(
            f"INSERT INTO {db}.aggregates (window, window_start, dimension, key, partition, "
            "reconciliation, revenue, units, orders, discount_sum, version) "
            f"SELECT window, window_start, dimension, key, {LATE_PARTITION}, "
            f"{{after:UInt64}}, revenue, units, orders, discount_sum, {time.time_ns()} "
            f"FROM ({late_sales_totals(counted)}) SETTINGS {BACKGROUND_SETTINGS}",
            after,
        )
        await database.command(
            f"INSERT INTO {db}.late_reconciliations (upto) VALUES ({{newest:UInt64}})",
            {"newest": newest},
        )
        self._reconciled_upto = newest
