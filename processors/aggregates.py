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

from processors.chunks import FACT_COLUMNS, ValidatedMessage, decimal_text, isoformat_ms
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


def sale_facts(message: ValidatedMessage, positions: list[int]) -> pd.DataFrame:
    """What aggregation needs of the sales at these positions of `message`, one row per
    sale: from the facts the message carries, or from the sales' clean values in a
    message without."""
    if message.facts is None:
        return facts_from_clean([message.clean_values[position] for position in positions])
    facts = message.facts
    return _facts_frame(
        [message.order_ids[position] for position in positions],
        {name: np.asarray(facts[name], dtype)[positions] for name, dtype in FACT_COLUMNS.items()},
    )


def facts_from_clean(clean_values: list[bytes]) -> pd.DataFrame:
    """What aggregation needs of `sales.clean` values, as exact integers.

    Money travels as decimal strings with a fixed scale (see chunks.py), so
    dropping the point gives integer cents and millionths; times are ISO 8601 in
    UTC with milliseconds. The values are decoded as one JSON array, which costs a
    tenth of pandas' JSON reader.
    """
    docs = json.loads(b"[" + b",".join(clean_values) + b"]")
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
    keys that changed.

    `offset` is the `sales.validated` offset the sales came from. A key that holds it
    already is left alone: a crash can make some of a message's changelog durable and
    not the rest, nor the partition's marker, and the message is then folded again.
    -1 (a rebuild from ClickHouse, with no offsets) folds into every key.
    """
    columns = {name: facts[name].to_numpy() for name in facts.columns}
    version = time.time_ns()
    changed = []
    for bit, window in enumerate(WINDOWS):
        on_time = np.flatnonzero((masks >> bit & 1) == 0)
        if not len(on_time):
            continue
        start, end = window_bounds(columns["sold_at_ms"][on_time], window)
        start_codes, distinct_starts = pd.factorize(start)
        starts = distinct_starts.tolist()
        ends = np.empty(len(starts), dtype=np.int64)
        ends[start_codes] = end
        window_ends = ends.tolist()
        measures = np.stack(
            [
                columns["revenue_cents"][on_time],
                columns["quantity"][on_time],
                np.ones(len(on_time), dtype=np.int64),
                columns["discount_ppm"][on_time],
            ]
        )
        for dimension, column in DIMENSIONS.items():
            if column is None:
                key_codes, keys = np.zeros(len(on_time), dtype=np.intp), [""]
            else:
                key_codes, distinct_keys = pd.factorize(columns[column][on_time])
                keys = distinct_keys.tolist()
            groups = _sums(start_codes * len(keys) + key_codes, measures, key_codes >= 0)
            for group, revenue, units, orders, discount in groups:
                at, key = divmod(group, len(keys))
                state_key = f"{partition}|{window}|{starts[at]}|{dimension}|{keys[key]}"
                old = state.get(state_key)
                if old is None:
                    totals = [revenue, units, orders, discount, version, window_ends[at], offset]
                elif offset < 0 or _folded_offset(old) < offset:
                    totals = [
                        old[0] + revenue,
                        old[1] + units,
                        old[2] + orders,
                        old[3] + discount,
                        max(version, old[4] + 1),
                        window_ends[at],
                        offset,
                    ]
                else:
                    continue
                state[state_key] = totals
                changed.append(state_key)
    return changed


def _sums(groups: np.ndarray, measures: np.ndarray, kept: np.ndarray) -> list[list[int]]:
    """[group, *column sums of `measures`] per group of the kept rows, exact in int64:
    numpy on a few hundred rows costs a fraction of a pandas groupby's fixed cost."""
    groups, measures = groups[kept], measures[:, kept]
    if not len(groups):
        return []
    order = np.argsort(groups, kind="stable")
    groups = groups[order]
    firsts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    sums = np.add.reduceat(measures[:, order], firsts, axis=1)
    return np.vstack([groups[firsts], sums]).T.tolist()  # type: ignore[no-any-return]


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
