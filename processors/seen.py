"""The `seen` table's memory: what dedupe remembers of every order it accepted.

A worker remembers every order for the retention window, millions of them, so an
entry is kept as one bytes object of fixed layout rather than a tuple of five
objects: 155 bytes an order with its key and the dict's share instead of 269
(benchmarks/seen_table.py). A source id, the same for every order of a file
or a poll, is kept once and referred to by number while an order refers to it.
Entries go in and come out as `SeenEntry` tuples, so dedupe, the changelog and
recovery see the same values as before.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterable, Iterator, MutableMapping, Sequence
from typing import Any

from faust.stores.memory import Store as MemoryStore
from faust.types import TP, EventT

from producers.publisher import partitions_for

__all__ = ["SeenEntries", "SeenEntry", "SeenStore", "orders_in"]

SeenEntry = Sequence[str | int]
"""(fingerprint, source id, line, late-window mask, first seen in epoch seconds): a
tuple when read from `SeenEntries`, a list when decoded from the changelog's JSON."""

_LAYOUT = struct.Struct("<qQIqH")
"""First seen (first, so that expiry reads it alone), fingerprint (16 hex digits,
processors/chunks.py), source number, line, late-window mask."""
_FIRST_SEEN = struct.Struct("<q")


class SeenEntries(MutableMapping[str, SeenEntry]):
    """Order id -> `SeenEntry`, packed."""

    def __init__(self) -> None:
        self._packed: dict[str, bytes] = {}
        self._source_numbers: dict[str, int] = {}
        self._source_ids: list[str] = []
        self._orders_of_source: list[int] = []
        self._free_numbers: list[int] = []

    def __getitem__(self, order_id: str) -> tuple[str, str, int, int, int]:
        first_seen, fingerprint, number, line, mask = _LAYOUT.unpack(self._packed[order_id])
        return f"{fingerprint:016x}", self._source_ids[number], line, mask, first_seen

    def get(self, order_id: str, default: Any = None) -> Any:
        """What dedupe asks of every sale; most are not there, so no KeyError is raised."""
        return self[order_id] if order_id in self._packed else default

    def __setitem__(self, order_id: str, entry: SeenEntry) -> None:
        fingerprint, source_id, line, mask, first_seen = entry
        number = self._source_numbers.get(str(source_id))
        if number is None:
            number = self._add_source(str(source_id))
        self._orders_of_source[number] += 1
        replaced = self._packed.get(order_id)
        self._packed[order_id] = _LAYOUT.pack(
            first_seen, int(str(fingerprint), 16), number, line, mask
        )
        if replaced is not None:
            self._let_go(replaced)

    def __delitem__(self, order_id: str) -> None:
        self._let_go(self._packed.pop(order_id))

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._packed

    def clear(self) -> None:
        for kept in (
            self._packed,
            self._source_numbers,
            self._source_ids,
            self._orders_of_source,
            self._free_numbers,
        ):
            kept.clear()

    def seen_before(self, before: int) -> list[str]:
        """The orders first seen before `before` (epoch seconds), without unpacking the
        rest of each entry: expiry asks this of every order remembered."""
        unpack = _FIRST_SEEN.unpack_from
        return [order_id for order_id, packed in self._packed.items() if unpack(packed)[0] < before]

    def _add_source(self, source_id: str) -> int:
        if self._free_numbers:
            number = self._free_numbers.pop()
            self._source_ids[number] = source_id
        else:
            number = len(self._source_ids)
            self._source_ids.append(source_id)
            self._orders_of_source.append(0)
        self._source_numbers[source_id] = number
        return number

    def _let_go(self, packed: bytes) -> None:
        """Forget a source id once no order refers to it: a poller makes one every run."""
        number = _LAYOUT.unpack(packed)[2]
        self._orders_of_source[number] -= 1
        if not self._orders_of_source[number]:
            del self._source_numbers[self._source_ids[number]]
            self._source_ids[number] = ""
            self._free_numbers.append(number)


class SeenStore(MemoryStore):  # type: ignore[misc]
    """Faust's in-memory store with `SeenEntries` behind it, and without the key ->
    partition map Faust's store keeps of every key it restores (31 bytes an order):
    an order's partition is its id's (the clean stage routes by it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data = SeenEntries()

    def apply_changelog_batch(self, batch: Iterable[EventT], to_key: Any, to_value: Any) -> None:
        """What Faust's store does, in order, without setting a deleted key to None first
        (it then removes every key whose value is falsy), which `SeenEntries` cannot hold."""
        for event in batch:
            key = to_key(event.key)
            if event.message.value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = to_value(event.value)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Forget the orders of partitions this worker no longer has, as Faust's store
        does for the ones it restored (a partition given back is restored again from its
        changelog's start); the ones dedupe added since are forgotten too."""
        partitions = self.table.partitions
        gone = set(range(partitions)) - {tp.partition for tp in active_tps}
        if gone:
            for order_id in orders_in(list(self.data), gone, partitions):
                del self.data[order_id]


def orders_in(order_ids: list[str], wanted: Container[int], partitions: int) -> list[str]:
    """The orders whose partition, their id's (the clean stage routes by it), is wanted."""
    owners = partitions_for([order_id.encode() for order_id in order_ids], partitions)
    return [order_id for order_id, owner in zip(order_ids, owners, strict=True) if owner in wanted]
