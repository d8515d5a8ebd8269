"""Windows, lateness and folding: the pure parts of incremental aggregation."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from random import Random

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.aggregates import (
    DIMENSIONS,
    WINDOWS,
    Marker,
    evict_closed,
    facts_from_clean,
    fold,
    late_masks,
    mask_windows,
    sale_facts,
    update_messages,
    window_bounds,
)
from processors.chunks import clean_chunk, decode_validated
from producers.readers import read_chunks
from tillstream.records import RawChunk, SourceRef
from tillstream.sample_data import generate_sales
from tillstream.settings import default_rules

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_window_bounds_follow_the_calendar() -> None:
    sold = np.array([ms("2024-02-29T23:59:59.999")])
    assert [window_bounds(sold, window) for window in WINDOWS] == [
        (np.array([ms("2024-02-29T23:59:00")]), np.array([ms("2024-03-01T00:00:00")])),
        (np.array([ms("2024-02-29T23:00:00")]), np.array([ms("2024-03-01T00:00:00")])),
        (np.array([ms("2024-02-29T00:00:00")]), np.array([ms("2024-03-01T00:00:00")])),
        (np.array([ms("2024-02-01T00:00:00")]), np.array([ms("2024-03-01T00:00:00")])),
    ]


def test_a_sale_is_late_for_exactly_the_windows_closed_before_the_watermark() -> None:
    watermark = ms("2025-01-15T12:00:00")
    sold = np.array(
        [
            ms("2025-01-15T11:30:00"),
            ms("2025-01-15T10:59:59"),
            ms("2025-01-10T10:00:00"),
            ms("2024-12-31T23:59:59"),
        ]
    )
    masks = late_masks(sold, watermark, lateness_ms=3_600_000)
    assert [mask_windows(int(mask)) for mask in masks] == [
        [],
        ["minute", "hour"],
        ["minute", "hour", "day"],
        ["minute", "hour", "day", "month"],
    ]
    assert mask_windows(int(late_masks(sold[:1], watermark, 0)[0])) == ["minute", "hour"], (
        "without lateness a window closes as the watermark reaches its end"
    )


sales_rows = st.lists(
    st.tuples(
        st.integers(ms("2024-01-01T00:00:00"), ms("2024-03-01T00:00:00")),
        st.sampled_from(["Blender", "Yoga Mat", "Desk Lamp"]),
        st.sampled_from(["North", "South"]),
        st.integers(1, 50),
        st.integers(0, 10_000_000),
        st.integers(0, 1_000_000),
        st.integers(0, 15),
    ),
    min_size=1,
    max_size=60,
)


def frame(rows: list[tuple[int, str, str, int, int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order_id": [f"o{n}" for n in range(len(rows))],
            "sold_at_ms": [row[0] for row in rows],
            "product": [row[1] for row in rows],
            "region": [row[2] for row in rows],
            "category": "Home",
            "store_id": "ST-1",
            "quantity": [row[3] for row in rows],
            "revenue_cents": [row[4] for row in rows],
            "discount_ppm": [row[5] for row in rows],
        }
    )


@settings(max_examples=60, deadline=None)
@given(sales_rows, st.integers(1, 5))
def test_folding_in_any_batches_equals_one_group_by(
    rows: list[tuple[int, str, str, int, int, int, int]], batches: int
) -> None:
    """Whatever the batch boundaries, the state is the GROUP BY of the on-time sales."""
    facts = frame(rows)
    masks = np.array([row[6] for row in rows], dtype=np.int64)
    state: dict[str, list[int]] = {}
    for part in np.array_split(np.arange(len(rows)), batches):
        fold(state, 3, facts.iloc[part], masks[part])

    expected: dict[str, list[int]] = {}
    for position, row in facts.iterrows():
        for bit, window in enumerate(WINDOWS):
            if masks[position] >> bit & 1:
                continue
            start, _ = window_bounds(np.array([row["sold_at_ms"]]), window)
            for dimension, column in DIMENSIONS.items():
                key = f"3|{window}|{start[0]}|{dimension}|{'' if column is None else row[column]}"
                totals = expected.setdefault(key, [0, 0, 0, 0])
                totals[0] += row["revenue_cents"]
                totals[1] += row["quantity"]
                totals[2] += 1
                totals[3] += row["discount_ppm"]
    assert {key: value[:4] for key, value in state.items()} == expected


@settings(max_examples=60, deadline=None)
@given(sales_rows, st.integers(1, 4), st.randoms(use_true_random=False))
def test_a_message_folded_again_after_a_partial_changelog_counts_once(
    rows: list[tuple[int, str, str, int, int, int, int]], batches: int, random: Random
) -> None:
    """A crash can make part of a message's changelog durable and not the marker; the
    message then comes again and must add only to the keys that missed it."""
    facts = frame(rows)
    masks = np.array([row[6] for row in rows], dtype=np.int64)
    messages = list(enumerate(np.array_split(np.arange(len(rows)), batches)))
    once: dict[str, list[int]] = {}
    for offset, part in messages:
        fold(once, 3, facts.iloc[part], masks[part], offset)

    recovered: dict[str, list[int]] = {}
    for offset, part in messages:
        before = {key: list(value) for key, value in recovered.items()}
        changed = fold(recovered, 3, facts.iloc[part], masks[part], offset)
        lost = [key for key in changed if random.random() < 0.5]
        for key in lost:  # what the restarted worker recovers: the old value, or none
            if key in before:
                recovered[key] = before[key]
            else:
                del recovered[key]
        fold(recovered, 3, facts.iloc[part], masks[part], offset)
    assert {k: v[:4] for k, v in recovered.items()} == {k: v[:4] for k, v in once.items()}


def test_every_update_of_a_key_has_a_higher_version() -> None:
    facts = frame([(ms("2024-01-01T10:00:00"), "Blender", "North", 1, 100, 0, 0)])
    state: dict[str, list[int]] = {}
    [key] = [k for k in fold(state, 0, facts, np.array([0])) if "|month|" in k and "|total|" in k]
    first = state[key][4]
    fold(state, 0, facts, np.array([0]))
    assert state[key][4] > first
    assert state[key][:3] == [200, 2, 2]


def test_closed_windows_are_evicted_and_the_marker_kept() -> None:
    facts = frame([(ms("2024-01-01T10:00:00"), "Blender", "North", 1, 100, 0, 0)])
    state: dict[str, list[int]] = {}
    fold(state, 1, facts, np.array([0]))
    Marker(7, 0, ms("2024-01-01T10:00:00")).store(state, 1)
    evicted = evict_closed(state, 1, ms("2024-01-01T11:00:00"), lateness_ms=0)
    assert len(evicted) == 2 * len(DIMENSIONS), "the minute and the hour closed"
    assert {key.split("|")[1] for key in state} == {"day", "month", "marker"}
    assert Marker.load(state, 1) == Marker(7, 0, ms("2024-01-01T10:00:00"))
    assert Marker.load(state, 2) == Marker(), "another partition has its own marker"


def test_update_messages_carry_absolute_exact_totals() -> None:
    facts = frame([(ms("2024-01-01T10:00:00"), 'Blender "Pro" é', "North", 3, 12_345, 250_000, 0)])
    state: dict[str, list[int]] = {}
    changed = fold(state, 2, facts, np.array([0]))
    messages = {
        m.key.decode(): (m.partition, json.loads(m.value)) for m in update_messages(state, changed)
    }
    partition, value = messages[f'day|{ms("2024-01-01T00:00:00")}|product|Blender "Pro" é']
    assert partition == 2
    assert value["revenue"] == "123.45" and value["discount_sum"] == "0.250000"
    assert value["units"] == 3 and value["orders"] == 1
    assert value["window_start"] == "2024-01-01T00:00:00.000Z"
    assert value["window_end"] == "2024-01-02T00:00:00.000Z"


def test_facts_from_clean_messages_are_exact_integers() -> None:
    clean = json.dumps(
        {
            "order_id": "o1",
            "sold_at": "2024-05-06T07:08:09.010Z",
            "product": "Blender",
            "category": "Home",
            "region": "North",
            "store_id": "ST-1",
            "quantity": 2,
            "revenue": "0.07",
            "discount": "0.100000",
        }
    ).encode()
    [row] = facts_from_clean([clean]).to_dict("records")
    assert row["sold_at_ms"] == ms("2024-05-06T07:08:09.010")
    assert (row["revenue_cents"], row["discount_ppm"], row["quantity"]) == (7, 100_000, 2)
    assert facts_from_clean([]).empty


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    file_format=st.sampled_from(["csv", "json"]),
    kept=st.lists(st.booleans(), min_size=400, max_size=400),
)
def test_the_facts_a_validated_message_carries_are_those_its_clean_values_say(
    tmp_path_factory: pytest.TempPathFactory, seed: int, file_format: str, kept: list[bool]
) -> None:
    """Dedupe folds the facts the clean stage sent beside the sales, not the sales'
    clean values: the two must agree for any subset of a message's sales, and a message
    from before the facts were carried is read from its clean values."""
    path = tmp_path_factory.mktemp("facts") / f"sales.{file_format}"
    generate_sales(path, 400, seed, file_format=file_format)  # type: ignore[arg-type]
    source = SourceRef("file", "f" * 64, str(path))
    for seq, chunk in enumerate(read_chunks(path, 400)):
        raw = RawChunk(source, seq, chunk.columns, chunk.rows, chunk.lines, chunk.unparseable)
        for value in clean_chunk(raw, default_rules(), 3, NOW).validated:
            message = decode_validated(value.value or b"")
            assert message.facts is not None
            positions = [
                position
                for position, keep in zip(range(len(message.order_ids)), kept, strict=False)
                if keep
            ]
            pd.testing.assert_frame_equal(
                sale_facts(message, positions),
                facts_from_clean([message.clean_values[position] for position in positions]),
            )
            assert sale_facts(replace(message, facts=None), positions).equals(
                sale_facts(message, positions)
            )
