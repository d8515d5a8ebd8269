"""The `seen` table's packed memory holds what a dict would, and recovers as Faust does."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import TypeVar

import faust
import pytest
from faust.stores.memory import Store as MemoryStore
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from processors.seen import SeenEntries, SeenEntry, SeenStore
from processors.state import BatchedChangelogTable
from producers.publisher import partitions_for

ORDER_IDS = st.sampled_from([f"o{n}" for n in range(6)]) | st.text(max_size=12)
ENTRIES = st.tuples(
    st.integers(0, 2**64 - 1).map(lambda n: f"{n:016x}"),
    st.sampled_from(["a" * 64, "b" * 64]) | st.text(max_size=70),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 15),
    st.integers(-(2**63), 2**63 - 1),
)
CHANGES = st.lists(st.tuples(ORDER_IDS, st.none() | ENTRIES), max_size=40)
"""Updates to the table: an entry set, or an order forgotten (None)."""
Entry = tuple[str, str, int, int, int]
ENTRY: Entry = (f"{7:016x}", "c" * 64, 2, 0, 1_700_000_000)
PARTITIONS = 4


Table = TypeVar("Table", bound=MutableMapping[str, SeenEntry])


def applied(table: Table, changes: list[tuple[str, Entry | None]]) -> Table:
    for order_id, entry in changes:
        if entry is None:
            table.pop(order_id, None)
        else:
            table[order_id] = entry
    return table


@given(changes=CHANGES)
def test_entries_read_back_as_a_dict_would_hold_them(
    changes: list[tuple[str, Entry | None]],
) -> None:
    entries, expected = applied(SeenEntries(), changes), applied({}, changes)
    assert dict(entries.items()) == expected
    assert [entries.get(order_id) for order_id, _ in changes] == [
        expected.get(order_id) for order_id, _ in changes
    ]
    assert sorted(entries.seen_before(0)) == sorted(
        order_id for order_id, entry in expected.items() if entry[4] < 0
    )


@given(changes=CHANGES)
def test_a_source_id_is_let_go_once_no_order_refers_to_it(
    changes: list[tuple[str, Entry | None]],
) -> None:
    """A poller makes a source id every run: they must not pile up past retention."""
    entries = applied(SeenEntries(), changes)
    assert set(entries._source_numbers) == {entry[1] for _, entry in entries.items()}
    entries_left = list(entries)
    for order_id in entries_left:
        del entries[order_id]
    assert entries._source_numbers == {}


def test_an_order_id_not_there_is_none_and_a_key_error() -> None:
    entries = SeenEntries()
    assert entries.get("o1") is None
    with pytest.raises(KeyError):
        entries["o1"]
    with pytest.raises(KeyError):
        del entries["o1"]


def recovered(
    store_class: type[MemoryStore], changes: list[tuple[str, Entry | None]]
) -> BatchedChangelogTable:
    """A `seen` table with these changes applied from its changelog, as Faust recovers
    it: each in the partition of its order id, where dedupe publishes it."""
    table = BatchedChangelogTable(
        faust.App("test-seen", store="memory://"),
        name="seen",
        partitions=PARTITIONS,
        key_type=str,
        store_class=store_class,
    )
    partitions = partitions_for([order_id.encode() for order_id, _ in changes], PARTITIONS)
    table.apply_changelog_batch(
        [
            SimpleNamespace(
                key=order_id,
                value=None if entry is None else json.loads(json.dumps(entry)),
                message=SimpleNamespace(
                    value=None if entry is None else b"-", partition=int(partition)
                ),
            )
            for (order_id, entry), partition in zip(changes, partitions, strict=True)
        ]
    )
    assert isinstance(table.data, store_class)
    return table


def held(table: BatchedChangelogTable) -> dict[str, list[str | int]]:
    return {key: list(value) for key, value in table.data.data.items()}


@given(changes=CHANGES)
def test_a_changelog_recovers_to_what_fausts_own_store_recovers(
    changes: list[tuple[str, Entry | None]],
) -> None:
    assert held(recovered(SeenStore, changes)) == held(recovered(MemoryStore, changes))


@given(changes=CHANGES, kept=st.sets(st.integers(0, PARTITIONS - 1)))
async def test_after_a_rebalance_only_the_orders_of_partitions_kept_remain(
    changes: list[tuple[str, Entry | None]], kept: set[int]
) -> None:
    """As Faust's store forgets what it restored for partitions gone elsewhere, without
    its map of every key's partition; the orders dedupe added since go as well."""
    ours, fausts = recovered(SeenStore, changes), recovered(MemoryStore, changes)
    added_by_dedupe = {f"new{n}": ENTRY for n in range(8)}
    ours.entries.update(added_by_dedupe)
    active = {TP(ours.changelog_topic_name, partition) for partition in kept}
    for table in (ours, fausts):
        await table.data.on_recovery_completed(active, set())
    assert ours.data._key_partition == {}
    orders_kept = {
        order_id
        for order_id, partition in zip(
            added_by_dedupe,
            partitions_for([order_id.encode() for order_id in added_by_dedupe], PARTITIONS),
            strict=True,
        )
        if partition in kept
    }
    assert held(ours) == held(fausts) | {order_id: list(ENTRY) for order_id in orders_kept}
