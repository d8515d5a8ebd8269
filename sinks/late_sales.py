"""Late sales reconciled into the aggregates, from ClickHouse.

A worker drops a window's state once it is closed, so it cannot fold a sale that
comes later; it flags the sale instead (`late_windows`). After writing such sales
the sink recomputes, for every window they touched, the totals of all late sales of
that window from `sales` and writes them as one more partition of `aggregates`
(`LATE_PARTITION`). The result is absolute and versioned like the workers' own
rows, so reconciling twice, or after a crash, gives the same totals.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from processors.aggregates import WINDOWS, window_bounds
from sinks.database import Database
from sinks.schema import LATE_PARTITION, late_sales_totals

__all__ = ["late_windows_touched", "reconcile_late_sales"]

_ON_TIME = b'"late_windows":[]'


def late_windows_touched(values: list[bytes]) -> dict[str, list[int]]:
    """Window size -> starts (epoch ms) of the windows these `sales.clean` values
    were late for. Only late values are parsed: on-time ones are recognised by bytes."""
    sold_at: dict[str, list[str]] = {window: [] for window in WINDOWS}
    for value in values:
        if _ON_TIME in value:
            continue
        sale = json.loads(value)
        for window in sale.get("late_windows", ()):
            sold_at[window].append(sale["sold_at"])
    touched = {}
    for window, moments in sold_at.items():
        if moments:
            millis = pd.to_datetime(moments, utc=True, format="ISO8601").as_unit("ms")
            starts, _ = window_bounds(millis.asi8, window)
            touched[window] = sorted(int(start) for start in np.unique(starts))
    return touched


async def reconcile_late_sales(database: Database, touched: dict[str, list[int]]) -> None:
    if not touched:
        return
    starts = "toUnixTimestamp64Milli(window_start)"
    where = " OR ".join(
        f"(window = '{window}' AND {starts} IN {{{window}:Array(Int64)}})" for window in touched
    )
    await database.command(
        f"INSERT INTO {database.name}.aggregates (window, window_start, dimension, key, "
        "partition, revenue, units, orders, discount_sum, version) "
        f"SELECT window, window_start, dimension, key, {LATE_PARTITION}, revenue, units, "
        f"orders, discount_sum, {time.time_ns()} FROM ({late_sales_totals(database.name, where)})",
        dict(touched),
    )
