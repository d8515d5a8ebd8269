"""Which windows the sink must reconcile, read from the `sales.clean` values it wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.aggregates import WINDOWS, mask_windows, window_bounds
from processors.chunks import isoformat
from processors.dedupe import clean_message
from sinks.late_sales import late_windows_touched
from tillstream.records import encode

TEXT = st.text(alphabet=st.sampled_from(['"', "\\", "]", "[", ":", ",", "a", "é", "\n", " "]))
SALES = st.lists(
    st.tuples(
        st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)),
        TEXT,
        st.integers(0, 2 ** len(WINDOWS) - 1),
        st.booleans(),
    ),
    max_size=30,
)


def value(sold_at: datetime, product: str, late_mask: int, late_first: bool = False) -> bytes:
    """A `sales.clean` value as dedupe writes it, or with `late_windows` first and a
    later text ending in its name; the texts may look like JSON."""
    row = {
        "order_id": product,
        "sold_at": isoformat(sold_at.replace(tzinfo=UTC)),
        "product": f'"sold_at":"{product}',
        "category": '"late_windows":["minute"]',
    }
    if late_first:
        return encode({"late_windows": mask_windows(late_mask), **row, "store_id": '"late_windows'})
    return clean_message(product, encode(row), late_mask).value or b""


def parsed(values: list[bytes]) -> dict[str, list[int]]:
    """The same answer from each value parsed whole."""
    starts: dict[str, set[int]] = {}
    for sale in map(json.loads, values):
        moment = np.datetime64(sale["sold_at"].rstrip("Z"), "ms").astype(np.int64)
        for window in sale["late_windows"]:
            [start], _ = window_bounds(np.array([moment]), window)
            starts.setdefault(window, set()).add(int(start))
    return {window: sorted(found) for window, found in starts.items()}


@settings(max_examples=200, deadline=None)
@given(sales=SALES)
def test_the_windows_touched_are_those_of_each_value_parsed_whole(
    sales: list[tuple[datetime, str, int, bool]],
) -> None:
    values = [value(*sale) for sale in sales]
    assert late_windows_touched(values) == parsed(values)


def test_on_time_sales_touch_no_window() -> None:
    moment = datetime(2025, 3, 14, 9, 30)
    assert late_windows_touched([value(moment, "x", 0)]) == {}
    assert late_windows_touched([value(moment, "x", 0b0100)]) == {
        "day": [int(datetime(2025, 3, 14, tzinfo=UTC).timestamp() * 1000)]
    }
