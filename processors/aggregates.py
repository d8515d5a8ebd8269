"""Incremental aggregates: tumbling windows over sale time, per dimension.

The dedupe agent folds every newly accepted sale of its partition into that
partition's aggregates, so each aggregate row in ClickHouse is one partition's
share of a window (summed across partitions by the report views). A window
stays open until the partition's watermark (the latest sale time it has seen)
passes the window's end plus the allowed lateness; then its state is dropped.
A sale for a closed window is *late for that window*: it is not folded, its
`sales` row lists the window in `late_windows`, and the sink reconciles late
sales into the aggregates from ClickHouse (see sinks/late_sales.py).

Pure functions over pandas/numpy: the agent is a thin shell around `fold`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import numpy as np
import pandas as pd

from processors.chunks import (
    FACT_COLUMNS,
    ValidatedMessage,
    ValidatedSale,
    decimal_text,
    isoformat_ms,
)
from producers.publisher import Message
from tillstream.records import SCHEMA_VERSION

__all__ = [
    "DIMENSIONS",
    "WINDOWS",
    "Marker",
    "evict_closed",
    "facts_from_clean",
    "fold",
    "late_masks",
    "mask_windows",
    "sale_facts",
    "update_messages",
    "window_bounds",
]

WINDOWS: tuple[str, ...] = ("minute", "hour", "day", "month")
_WINDOW_UNITS = {"minute": "m", "hour": "h", "day": "D", "month": "M"}

DIMENSIONS: dict[str, str | None] = {
    "total": None,
    "product": "product",
    "region": "region",
    "category": "category",
    "store": "store_id",
}
"""Dimension name -> the sales column it groups by (`total` groups everything)."""

MARKER = "marker"

Totals = list[int]
"""[revenue in cents, units, orders, discount sum in millionths, version, window end in ms,
the last `sales.validated` offset folded in (-1: none known)]."""


@dataclass(frozen=True, slots=True)
class Marker:
    """Per partition: the last validated offset folded, and the watermark before and
    after it. A re-delivered last message (the worker died between publishing the
    aggregates and the dedupe state) is then recognised, and judged late or on time
    against the same watermark as the first time."""

    offset: int = -1
    watermark_before_ms: int = 0
    watermark_ms: int = 0

    @staticmethod
    def key(partition: int) -> str:
        return f"{partition}|{MARKER}"

    @classmethod
    def load(cls, state: MutableMapping[str, list[int]], partition: int) -> Marker:
        value = state.get(cls.key(partition))
        return cls(*value) if value else cls()

    def store(self, state: MutableMapping[str, list[int]], partition: int) -> None:
        state[self.key(partition)] = [
            self.offset,
            self.watermark_before_ms,
            self.watermark_ms,
        ]


def sale_facts(message: ValidatedMessage, sales: list[ValidatedSale]) -> pd.DataFrame:
    """What aggregation needs of these sales of `message`, one row per sale: from the
    facts the message carries, or from the sales' clean values in a message without."""
    if message.facts is None:
        return facts_from_clean(sale.clean_json for sale in sales)
    positions = [sale.position for sale in sales]
    facts = message.facts
    return _facts_frame(
        [sale.order_id for sale in sales],
        {name: np.asarray(facts[name], dtype)[positions] for name, dtype in FACT_COLUMNS.items()},
    )


def facts_from_clean(clean_json: Iterable[str]) -> pd.DataFrame:
    """What aggregation needs of `sales.clean` values, as exact integers.

    Money travels as decimal strings with a fixed scale (see chunks.py), so
    dropping the point gives integer cents and millionths; times are ISO 8601 in
    UTC with milliseconds. The values are decoded as one JSON array, which costs a
    tenth of pandas' JSON reader.
    """
    docs = json.loads("[" + ",".join(clean_json) + "]")
    return _facts_frame(
        [doc["order_id"] for doc in docs],
        {
            "sold_at_ms": np.array(
                [doc["sold_at"].rstrip("Z") for doc in docs], dtype="datetime64[ms]"
            ).astype(np.int64),
            "product": [doc["product"] for doc in docs],
            "category": [doc["category"] for doc in docs],
            "region": [doc["region"] for doc in docs],
            "store_id": [doc["store_id"] for doc in docs],
            "quantity": [doc["quantity"] for doc in docs],
            "revenue_cents": [int(doc["revenue"].replace(".", "")) for doc in docs],
            "discount_ppm": [int(doc["discount"].replace(".", "")) for doc in docs],
        },
    )


def _facts_frame(order_ids: list[str], facts: Mapping[str, Any]) -> pd.DataFrame:
    """One shape whichever way the facts were read: integers as int64, text as objects."""
    return pd.DataFrame(
        {
            "order_id": np.asarray(order_ids, dtype=object),
            **{name: np.asarray(facts[name], dtype) for name, dtype in FACT_COLUMNS.items()},
        }
    )


def window_bounds(sold_at_ms: np.ndarray, window: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive), in epoch milliseconds, of each sale's window."""
    unit = _WINDOW_UNITS[window]
    start = np.asarray(sold_at_ms, dtype="datetime64[ms]").astype(f"datetime64[{unit}]")
    end = start + np.timedelta64(1, unit)
    return (
        start.astype("datetime64[ms]").astype(np.int64),
        end.astype("datetime64[ms]").astype(np.int64),
    )


def late_masks(sold_at_ms: np.ndarray, watermark_ms: int, lateness_ms: int) -> np.ndarray:
    """Bit i set when the sale's window of size WINDOWS[i] had closed already."""
    masks = np.zeros(len(sold_at_ms), dtype=np.int64)
    for bit, window in enumerate(WINDOWS):
        _, end = window_bounds(sold_at_ms, window)
        masks |= (end + lateness_ms <= watermark_ms).astype(np.int64) << bit
    return masks


def mask_windows(mask: int) -> list[str]:
    return [window for bit, window in enumerate(WINDOWS) if mask >> bit & 1]


def fold(
    state: MutableMapping[str, list[int]],
    partition: int,
    facts: pd.DataFrame,
    masks: np.ndarray,
    offset: int = -1,
) -> list[str]:
    """Add these sales to the open windows they are on time for; return the state
    keys that changed. One groupby over every (window, dimension) pair at once.

    `offset` is the `sales.validated` offset the sales came from. A key that holds it
    already is left alone: a crash can make some of a message's changelog durable and
    not the rest, nor the partition's marker, and the message is then folded again.
    -1 (a rebuild from ClickHouse, with no offsets) folds into every key.
    """
    columns = {name: facts[name].to_numpy() for name in facts.columns}
    parts: list[dict[str, np.ndarray]] = []
    for bit, window in enumerate(WINDOWS):
        on_time = (masks >> bit & 1) == 0
        count = int(on_time.sum())
        if not count:
            continue
        sales = {name: values[on_time] for name, values in columns.items()}
        start, end = window_bounds(sales["sold_at_ms"], window)
        for dimension, column in DIMENSIONS.items():
            parts.append(
                {
                    "window": np.full(count, window, dtype=object),
                    "start": start,
                    "end": end,
                    "dimension": np.full(count, dimension, dtype=object),
                    "key": np.full(count, "", dtype=object) if column is None else sales[column],
                    "revenue_cents": sales["revenue_cents"],
                    "units": sales["quantity"],
                    "orders": np.ones(count, dtype=np.int64),
                    "discount_ppm": sales["discount_ppm"],
                }
            )
    if not parts:
        return []
    # One frame for every (window, dimension) pair: a frame per pair cost more than
    # the grouping itself.
    sums = (
        pd.DataFrame({name: np.concatenate([part[name] for part in parts]) for name in parts[0]})
        .groupby(["window", "start", "end", "dimension", "key"], sort=False)
        .sum()
        .reset_index()
    )
    version = time.time_ns()
    changed = []
    # Plain lists: iterating the frame's index and columns made numpy scalars, and the
    # loop runs once per group (a few per row, for minute windows).
    grouped = [sums[name].tolist() for name in sums.columns]
    for window, start, end, dimension, key, revenue, units, orders, discount in zip(
        *grouped, strict=True
    ):
        state_key = f"{partition}|{window}|{start}|{dimension}|{key}"
        old = state.get(state_key)
        if old is None:
            state[state_key] = [revenue, units, orders, discount, version, end, offset]
        elif offset < 0 or _folded_offset(old) < offset:
            state[state_key] = [
                old[0] + revenue,
                old[1] + units,
                old[2] + orders,
                old[3] + discount,
                max(version, old[4] + 1),
                end,
                offset,
            ]
        else:
            continue
        changed.append(state_key)
    return changed


def _folded_offset(totals: Totals) -> int:
    """Totals written before the offset was kept have none."""
    return totals[6] if len(totals) > 6 else -1


def evict_closed(
    state: MutableMapping[str, list[int]], partition: int, watermark_ms: int, lateness_ms: int
) -> list[str]:
    """Drop this partition's windows that no sale can reopen (their final values
    were emitted when they last changed); return their keys."""
    prefix = f"{partition}|"
    closed = [
        key
        for key, totals in list(state.items())
        if key.startswith(prefix)
        and not key.endswith(MARKER)
        and totals[5] + lateness_ms <= watermark_ms
    ]
    for key in closed:
        del state[key]
    return closed


def update_messages(state: MutableMapping[str, list[int]], keys: Iterable[str]) -> list[Message]:
    """`sales.aggregates` values: absolute totals with a version, so a consumer (and
    the sink) keeps the latest per key and a replay never double counts. Written
    by hand, with each window's times formatted once: a message can change
    thousands of keys."""
    times: dict[int, str] = {}

    def iso(epoch_ms: int) -> str:
        text = times.get(epoch_ms)
        if text is None:
            text = times[epoch_ms] = isoformat_ms(epoch_ms)
        return text

    messages = []
    for state_key in keys:
        partition, window, start, dimension, key = state_key.split("|", 4)
        revenue, units, orders, discount, version, end = state[state_key][:6]
        value = (
            f'{{"schema_version":{SCHEMA_VERSION},"window":"{window}",'
            f'"window_start":"{iso(int(start))}","window_end":"{iso(end)}",'
            f'"dimension":"{dimension}","key":{encode_basestring(key)},'
            f'"partition":{partition},"revenue":"{decimal_text(revenue, 2)}",'
            f'"units":{units},"orders":{orders},'
            f'"discount_sum":"{decimal_text(discount, 6)}","version":{version}}}'
        )
        messages.append(
            Message(f"{window}|{start}|{dimension}|{key}".encode(), value.encode(), int(partition))
        )
    return messages
