"""Late sales reconciled into the aggregates, from ClickHouse.

A worker drops a window's state once it is closed, so it cannot fold a sale that
comes later; it flags the sale instead (`late_windows`). The sink remembers which
windows the late sales it wrote belong to, and every few seconds recomputes, for
those windows, the totals of all their late sales from `sales` and writes them
as one more partition of `aggregates` (`LATE_PARTITION`). The result is absolute and
versioned like the workers' own rows, so reconciling twice gives the same totals.
It runs beside the sink's writes, on a ClickHouse client of its own: on big tables
one takes seconds, and files would wait for it.
What a crash forgets is covered by reconciling every window once when the sink
starts.
"""

from __future__ import annotations

import functools
import json
import re
import time

import numpy as np
import pandas as pd

from processors.aggregates import WINDOWS, window_bounds
from sinks.database import Database, in_array
from sinks.schema import LATE_PARTITION, late_sales_totals

__all__ = ["BACKGROUND_SETTINGS", "LateWindows", "late_windows_touched"]

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

_LATE_WINDOWS = re.compile(rb'"late_windows"\s*:\s*\[([^\]]*)\]')
_SOLD_AT = re.compile(rb'"sold_at"\s*:\s*"([^"]*)"')
"""Fields of the flat `sales.clean` object, found without parsing all of it: inside a
JSON string every quote is escaped, so a quoted name and a colon can only be a key."""


def late_windows_touched(values: list[bytes]) -> dict[str, list[int]]:
    """Window size -> starts (epoch ms) of the windows these `sales.clean` values were
    late for. Once a partition's watermark moves on most sales are late for some window,
    and parsing each whole value cost as much as the rest of the sink; sales share their
    times (a backfill's dates), so each distinct time is converted once."""
    moments: dict[str, set[bytes]] = {window: set() for window in WINDOWS}
    for value in values:
        late = _late_windows(value)
        if late is None or not late[1]:
            continue
        moment = _SOLD_AT.search(value)
        if moment is None:
            continue
        for window in _window_names(late[1]):
            moments[window].add(moment[1])
    touched = {}
    for window, distinct in moments.items():
        if distinct:
            texts = [text.decode() for text in distinct]
            millis = pd.to_datetime(texts, utc=True, format="ISO8601").as_unit("ms")
            starts, _ = window_bounds(millis.asi8, window)
            touched[window] = sorted(int(start) for start in np.unique(starts))
    return touched


def _late_windows(value: bytes) -> re.Match[bytes] | None:
    """The `late_windows` field, looked for first where dedupe writes it: at the end."""
    last = value.rfind(b'"late_windows"')
    found = _LATE_WINDOWS.match(value, last) if last >= 0 else None
    return found or _LATE_WINDOWS.search(value)


@functools.cache
def _window_names(listed: bytes) -> tuple[str, ...]:
    """The window names of a `late_windows` list: a few distinct lists for every sale."""
    return tuple(window for window in json.loads(b"[" + listed + b"]") if window in WINDOWS)


class LateWindows:
    """The windows whose late sales need reconciling: all of them until the first
    reconciliation (what happened before a restart is unknown), then those written
    since the last one. The sink adds windows while a reconciliation runs; those wait
    for the next one, since the one running may have read `sales` before their rows
    were written."""

    def __init__(self) -> None:
        self._everything = True
        self._touched: dict[str, set[int]] = {}

    def add(self, touched: dict[str, list[int]]) -> None:
        for window, starts in touched.items():
            self._touched.setdefault(window, set()).update(starts)

    async def reconcile(self, database: Database) -> None:
        """Write the totals of the windows added so far; if that fails, keep them for
        the next time."""
        if not (self._everything or self._touched):
            return
        everything, self._everything = self._everything, False
        taken, self._touched = self._touched, {}
        try:
            await self._write(database, everything, taken)
        except BaseException:
            self._everything = self._everything or everything
            self.add({window: list(starts) for window, starts in taken.items()})
            raise

    @staticmethod
    async def _write(database: Database, everything: bool, taken: dict[str, set[int]]) -> None:
        touched = {window: sorted(starts) for window, starts in taken.items()}
        window_start = "toUnixTimestamp64Milli(window_start)"
        where = (
            "1"
            if everything
            else " OR ".join(
                f"(window = '{window}' AND {in_array(window_start, window, 'Int64')})"
                for window in touched
            )
        )
        await database.command(
            f"INSERT INTO {database.name}.aggregates (window, window_start, dimension, key, "
            "partition, revenue, units, orders, discount_sum, version) "
            f"SELECT window, window_start, dimension, key, {LATE_PARTITION}, revenue, units, "
            f"orders, discount_sum, {time.time_ns()} "
            f"FROM ({late_sales_totals(database.name, where)}) "
            f"SETTINGS {BACKGROUND_SETTINGS}",
            dict(touched),
        )
