"""The `seen` table on disk holds what a dict would, expires what it should, and recovers
as Faust does."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import faust
import pytest
from faust.stores.memory import Store as MemoryStore
from faust.types import TP
from hypothesis import example, given
from hypothesis import strategies as st

from processors.seen import SeenEntries, SeenEntry, SeenStore, SeenTableError, orders_in
from processors.state import BatchedChangelogTable
from producers.publisher import partitions_for

FIRST_SEEN = st.sampled_from([-1, 0, 1_700_000_000]) | st.integers(-(2**63), 2**63 - 1)
"""Times shared by many orders, as a message's are, and any others."""
ORDER_IDS = st.sampled_from([f"o{n}" for n in range(6)]) | st.text(max_size=12)
ENTRIES = st.tuples(
    st.integers(0, 2**64 - 1).map(lambda n: f"{n:016x}"),
    st.sampled_from(["a" * 64, "b" * 64]) | st.text(max_size=70),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 15),
    FIRST_SEEN,
)
CHANGES = st.lists(st.tuples(ORDER_IDS, st.none() | ENTRIES), max_size=40)
"""Updates to the table: an entry set, or an order forgotten (None)."""
Entry = tuple[str, str, int, int, int]
ENTRY: Entry = (f"{7:016x}", "c" * 64, 2, 0, 1_700_000_000)
PARTITIONS = 4


Table = TypeVar("Table", bound=MutableMapping[str, SeenEntry])


def applied(table: Table, changes: list[tuple[str, Entry | None]]) -> Table:
    """The entries set between two orders forgotten are written at once, as dedupe and
    recovery write them; a single one as `table[order_id] = entry`."""
    entries: list[tuple[str, Entry]] = []

    def write() -> None:
        if len(entries) == 1:
            table[entries[0][0]] = entries[0][1]
        else:
            table.update(entries)
        entries.clear()

    for order_id, entry in changes:
        if entry is None:
            write()
            table.pop(order_id, None)
        else:
            entries.append((order_id, entry))
    write()
    return table


@contextmanager
def fresh_entries() -> Iterator[SeenEntries]:
    """A table of its own for each example hypothesis makes."""
    with tempfile.TemporaryDirectory() as folder:
        entries = SeenEntries(Path(folder) / "seen")
        try:
            yield entries
        finally:
            entries.close()


@given(changes=CHANGES)
def test_entries_read_back_as_a_dict_would_hold_them(
    changes: list[tuple[str, Entry | None]],
) -> None:
    expected = applied({}, changes)
    with fresh_entries() as entries:
        applied(entries, changes)
        assert dict(entries.items()) == expected
        assert len(entries) == len(expected)
        asked = [order_id for order_id, _ in changes]
        assert [entries.get(order_id) for order_id in asked] == [
            expected.get(order_id) for order_id in asked
        ]
        assert entries.get_many(asked) == [expected.get(order_id) for order_id in asked]


@given(changes=CHANGES, cut=FIRST_SEEN, kept=st.sets(st.integers(0, PARTITIONS - 1)))
@example(  # written twice at the same time: in two index records
    changes=[("o1", ENTRY), ("o2", None), ("o1", ENTRY)],
    cut=ENTRY[4] + 1,
    kept=set(range(PARTITIONS)),
)
def test_expiry_forgets_exactly_the_orders_of_its_partitions_first_seen_before_the_cut(
    changes: list[tuple[str, Entry | None]], cut: int, kept: set[int]
) -> None:
    """Also when an order was remembered anew or forgotten since: its old place in the
    index must not take the order with it."""
    expected = applied({}, changes)
    mine = orders_in(list(expected), kept, PARTITIONS)
    due = {order_id for order_id in mine if expected[order_id][4] < cut}
    all_due = {order_id for order_id, entry in expected.items() if entry[4] < cut}
    with fresh_entries() as entries:
        applied(entries, changes)
        expired = entries.expire(cut, kept, PARTITIONS)
        assert sorted(expired) == sorted(due), "each order once"
        assert dict(entries.items()) == {
            order_id: entry for order_id, entry in expected.items() if order_id not in due
        }
        assert entries.expire(cut, kept, PARTITIONS) == []
        others = set(range(PARTITIONS)) - kept
        assert set(entries.expire(cut, others, PARTITIONS)) == all_due - due, (
            "the other partitions' orders wait in the index for their own expiry"
        )
        assert dict(entries.items()) == {
            order_id: entry for order_id, entry in expected.items() if order_id not in all_due
        }


def test_a_table_opened_again_starts_empty(tmp_path: Path) -> None:
    """The changelog fills it at start-up, so what a stopped worker left is not kept."""
    entries = SeenEntries(tmp_path / "seen")
    entries["o1"] = ENTRY
    entries._db.close()  # as a worker that died leaves it: closed, not deleted
    again = SeenEntries(tmp_path / "seen")
    assert again.get("o1") is None
    again.close()
    assert not (tmp_path / "seen").exists(), "closed, the table leaves nothing behind"


def test_a_table_in_use_by_another_worker_is_a_clear_error(tmp_path: Path) -> None:
    entries = SeenEntries(tmp_path / "seen")
    entries["o1"] = ENTRY
    with pytest.raises(SeenTableError, match="another worker use the same data_dir"):
        SeenEntries(tmp_path / "seen")
    assert entries["o1"] == ENTRY, "and the table in use is left as it was"
    entries.close()


def test_an_order_id_not_there_is_none_and_a_key_error(seen: SeenEntries) -> None:
    assert seen.get("o1") is None
    with pytest.raises(KeyError):
        seen["o1"]
    with pytest.raises(KeyError):
        del seen["o1"]


@contextmanager
def recovered(
    store_class: type[MemoryStore], changes: list[tuple[str, Entry | None]]
) -> Iterator[BatchedChangelogTable]:
    """A `seen` table with these changes applied from its changelog, as Faust recovers
    it: each in the partition of its order id, where dedupe publishes it."""
    with tempfile.TemporaryDirectory() as folder:
        table = BatchedChangelogTable(
            faust.App("test-seen", store="memory://", datadir=folder),
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
        try:
            yield table
        finally:
            if isinstance(table.data.data, SeenEntries):
                table.data.data.close()


def held(table: BatchedChangelogTable) -> dict[str, list[str | int]]:
    return {key: list(value) for key, value in table.data.data.items()}


@given(changes=CHANGES)
def test_a_changelog_recovers_to_what_fausts_own_store_recovers(
    changes: list[tuple[str, Entry | None]],
) -> None:
    with recovered(SeenStore, changes) as ours, recovered(MemoryStore, changes) as fausts:
        assert held(ours) == held(fausts)


@given(changes=CHANGES, kept=st.sets(st.integers(0, PARTITIONS - 1)))
async def test_after_a_rebalance_only_the_orders_of_partitions_kept_remain(
    changes: list[tuple[str, Entry | None]], kept: set[int]
) -> None:
    """As Faust's store forgets what it restored for partitions gone elsewhere, without
    its map of every key's partition; the orders dedupe added since go as well."""
    added_by_dedupe = {f"new{n}": ENTRY for n in range(8)}
    orders_kept = set(orders_in(list(added_by_dedupe), kept, PARTITIONS))
    with recovered(SeenStore, changes) as ours, recovered(MemoryStore, changes) as fausts:
        ours.entries.update(added_by_dedupe)
        active = {TP(ours.changelog_topic_name, partition) for partition in kept}
        for table in (ours, fausts):
            await table.data.on_recovery_completed(active, set())
        assert ours.data._key_partition == {}
        assert held(ours) == held(fausts) | {order_id: list(ENTRY) for order_id in orders_kept}
