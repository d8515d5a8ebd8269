"""Late sales reconciled into the aggregates, from ClickHouse.

A worker drops a window's state once it is closed, so it cannot fold a sale that
comes later; it flags the sale instead (`late_windows`). Every few seconds the sink
recomputes, for the windows that late sales written since the last time belong to,
the totals of all their late sales from `sales`, and writes them as one more
partition of `aggregates` (`LATE_PARTITION`). The result is absolute and versioned
like the workers' own rows, so reconciling a window twice gives the same totals.
It runs beside the sink's writes, on a ClickHouse client of its own: on big tables
one takes seconds, and files would wait for it.

"Written since the last time" is read from ClickHouse, not remembered by the sink:
`sales` keeps each row's block number (`enable_block_number_column`), which a
table's inserts take in the order they are committed. So the sink does not look
into the values it writes, a reconciliation misses no row committed before it
started, and after a restart the first one takes every window.
"""

from __future__ import annotations

import time

from sinks.database import Database
from sinks.schema import LATE_PARTITION, late_sales_totals, late_windows_written

__all__ = ["BACKGROUND_SETTINGS", "LateSales"]

BACKGROUND_SETTINGS = (
    "max_threads = 1, max_bytes_before_external_group_by = 200000000, "
    "min_insert_block_size_rows = 262144, min_insert_block_size_bytes = 33554432"
)
"""The reconciliation is background work sharing `up`'s process and cores with the
ingestion: on one thread (on both, a 3M-row file took 146 s against 136 s), and with
its memory bounded, since a backfill is late for nearly every window and so groups
and inserts most of `sales` each time. Grouping spills to disk past 200 MB and the
insert goes in blocks of 32 MB: on the database of a 3M-row file, reconciling every
window raised the process's peak by 370 MB in 10.5 s, against 900 MB in 8.7 s."""


class LateSales:
    """How far the late sales in `sales` are reconciled: the last block number seen
    by a reconciliation that completed. Zero at start, so the first one takes every
    window (what happened before a restart is unknown)."""

    def __init__(self) -> None:
        self._reconciled_upto = 0

    async def reconcile(self, database: Database) -> None:
        """Write the totals of every window that a late sale written since the last
        reconciliation belongs to. Rows written while it runs may be taken too; they
        are taken again next time, which changes nothing."""
        [(newest,)] = await database.rows(f"SELECT max(_block_number) FROM {database.name}.sales")
        if newest <= self._reconciled_upto:
            return
        written = late_windows_written(database.name, "{after:UInt64}")
        await database.command(
            f"INSERT INTO {database.name}.aggregates (window, window_start, dimension, key, "
            "partition, revenue, units, orders, discount_sum, version) "
            f"SELECT window, window_start, dimension, key, {LATE_PARTITION}, revenue, units, "
            f"orders, discount_sum, {time.time_ns()} "
            f"FROM ({late_sales_totals(database.name, f'(window, window_start) IN ({written})')}) "
            f"SETTINGS {BACKGROUND_SETTINGS}",
            {"after": self._reconciled_upto},
        )
        self._reconciled_upto = newest
