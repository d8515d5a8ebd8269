"""The `seen` table, on disk: what dedupe remembers of every order it accepted.

A worker remembers every order for the retention window (30 days by default),
millions of them: held in memory they were most of what `up` grew by with the file
(1.3 GB at a 10M-row file's 8.2M orders, even packed). They are kept in RocksDB
(rocksdict, the library of Faust's own `rocksdb://` store) under the worker's
`data_dir`, whose memory is bounded by its write buffers and caches.

The database stands in for the memory, not for the changelog: it is emptied when
the worker starts and filled by Faust's recovery from the changelog as the memory
store was, so recovery, rebalancing and the changelog's format are as before, and
nothing in it needs to survive a crash (no write-ahead log). Each write of orders
adds an index record under their first-seen time, so that expiry reads the records
of the orders it forgets, not every order remembered. Entries go in and come out as
`SeenEntry` tuples.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Container, Iterable, Iterator, Mapping, MutableMapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from faust.stores.memory import Store as MemoryStore
from faust.types import TP, EventT
from rocksdict import (
    BlockBasedOptions,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from producers.publisher import partitions_for
from tillstream.settings import ConfigError

__all__ = ["SeenEntries", "SeenEntry", "SeenStore", "SeenTableError", "orders_in"]

SeenEntry = Sequence[str | int]
"""(fingerprint, source id, line, late-window mask, first seen in epoch seconds): a
tuple when read from `SeenEntries`, a list when decoded from the changelog's JSON."""

_VALUE = struct.Struct("<qQqH")
"""First seen, fingerprint (16 hex digits, processors/chunks.py), line, late-window
mask; the source id follows in UTF-8."""
_INDEX_KEY = struct.Struct(">QQ")
"""After the prefix: first seen, offset by 2**63 so that the keys sort by time, negative
times first; then the record's number (big-endian, so that keys sort as numbers)."""
_ORDER = b"o"
"""Key prefix of an order: `o<order id>` -> its entry."""
_FIRST_SEEN = b"t"
"""Key prefix of the index: `t<first seen><number>` -> the ids of orders remembered
together then, in a JSON array (a write of a message's orders makes one record)."""
_WRITE_BUFFER_BYTES = 32 * 2**20
_ORDERS_PER_READ = 10_000
"""Orders read at once when every order is read, so that a rebalance does not hold
millions of order ids."""


class SeenTableError(ConfigError):
    """The table's database could not be opened: another process has the `data_dir`."""


class SeenEntries(MutableMapping[str, SeenEntry]):
    """Order id -> `SeenEntry`, in a RocksDB database at `path`, emptied on opening."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = str(path)
        self._db = _emptied(self._path)
        self._records = 0
        self._unlogged = WriteOptions()
        self._unlogged.disable_wal = True

    def close(self) -> None:
        """Close and delete the database: the next start fills it again."""
        self._db.close()
        Rdict.destroy(self._path)

    def get(self, order_id: str, default: Any = None) -> Any:
        packed = self._db.get(_ORDER + order_id.encode())
        return default if packed is None else _entry(packed)

    def get_many(self, order_ids: Sequence[str]) -> list[SeenEntry | None]:
        """What dedupe asks of every sale of a message, in one read."""
        packed = self._db[[_ORDER + order_id.encode() for order_id in order_ids]]
        return [None if value is None else _entry(value) for value in packed]

    def __getitem__(self, order_id: str) -> SeenEntry:
        entry = self.get(order_id)
        if entry is None:
            raise KeyError(order_id)
        return entry  # type: ignore[no-any-return]

    def __contains__(self, order_id: str) -> bool:
        return self.get(order_id) is not None

    def __setitem__(self, order_id: str, entry: SeenEntry) -> None:
        self.update([(order_id, entry)])

    def update(self, entries: Mapping[str, SeenEntry] | Iterable[tuple[str, SeenEntry]]) -> None:
        """Remember entries in one write, with an index record per first-seen time (one
        for a message's orders). A replaced order's old record is left as it is: expiry
        skips an order whose entry has another time."""
        pairs = entries.items() if isinstance(entries, Mapping) else entries
        batch = WriteBatch(raw_mode=True)
        seen_at: dict[int, list[str]] = {}
        sources: dict[str | int, bytes] = {}
        for order_id, (fingerprint, source_id, line, mask, first_seen) in pairs:
            source = sources.get(source_id)
            if source is None:
                source = sources[source_id] = str(source_id).encode()
            value = _VALUE.pack(int(first_seen), int(str(fingerprint), 16), int(line), int(mask))
            batch.put(_ORDER + order_id.encode(), value + source)
            seen_at.setdefault(int(first_seen), []).append(order_id)
        for first_seen, order_ids in seen_at.items():
            self._records += 1
            batch.put(_record_key(first_seen, self._records), json.dumps(order_ids).encode())
        self._db.write(batch, self._unlogged)

    def pop(self, order_id: str, default: Any = None) -> Any:
        """Forget an order; its id stays in its index record until expiry reads it."""
        entry = self.get(order_id)
        if entry is None:
            return default
        self._db.delete(_ORDER + order_id.encode(), self._unlogged)
        return entry

    def __delitem__(self, order_id: str) -> None:
        if self.pop(order_id) is None:
            raise KeyError(order_id)

    def __iter__(self) -> Iterator[str]:
        for key in self._db.keys(from_key=_ORDER, read_opt=_before(_after(_ORDER))):
            yield key[len(_ORDER) :].decode()

    def __len__(self) -> int:
        """Counted by reading every key: for tests and tools, not for dedupe."""
        return sum(1 for _ in self)

    def items(self) -> Iterator[tuple[str, SeenEntry]]:  # type: ignore[override]
        for key, packed in self._db.items(from_key=_ORDER, read_opt=_before(_after(_ORDER))):
            yield key[len(_ORDER) :].decode(), _entry(packed)

    def clear(self) -> None:
        self._db.close()
        self._db = _emptied(self._path)

    def expire(self, before: int, partitions: Container[int], of: int) -> list[str]:
        """Forget the orders of these `partitions` (of `of`) first seen before `before`
        (epoch seconds), reading only the index records before it; returns their ids.
        A record keeps the ids of other partitions, for their own expiry."""
        expired: dict[str, None] = {}  # an order written twice at once is in two records
        batch = WriteBatch(raw_mode=True)
        upto = _before(_record_key(before, 0))
        for key, listed in self._db.items(from_key=_FIRST_SEEN, read_opt=upto):
            first_seen = _INDEX_KEY.unpack_from(key, len(_FIRST_SEEN))[0] - 2**63
            order_ids: list[str] = json.loads(listed)
            owners = partitions_for([order_id.encode() for order_id in order_ids], of)
            mine: list[str] = []
            others: list[str] = []
            for order_id, owner in zip(order_ids, owners, strict=True):
                (mine if owner in partitions else others).append(order_id)
            if not mine:
                continue
            for order_id, entry in zip(mine, self.get_many(mine), strict=True):
                if entry is not None and entry[4] == first_seen:
                    batch.delete(_ORDER + order_id.encode())
                    expired[order_id] = None
            if others:
                batch.put(key, json.dumps(others).encode())
            else:
                batch.delete(key)
        self._db.write(batch, self._unlogged)
        return list(expired)


def _emptied(path: str) -> Rdict:
    """The database at `path`, emptied: RocksDB refuses while another process has it."""
    try:
        Rdict.destroy(path)
        return Rdict(path, _options())
    except Exception as exc:  # rocksdict raises Exception itself
        raise SeenTableError(
            f"cannot open the seen table at {path} ({exc}); "
            "does another worker use the same data_dir?"
        ) from None


def _options() -> Options:
    """Bounded memory (two 32 MB write buffers, RocksDB's 8 MB block cache), and bloom
    filters on the files and the write buffers, since most orders dedupe looks up are
    new: a lookup that misses then costs about what a dict's does."""
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    options = Options(raw_mode=True)
    options.set_write_buffer_size(_WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    options.set_memtable_prefix_bloom_ratio(0.1)
    options.set_memtable_whole_key_filtering(True)
    options.set_compression_type(DBCompressionType.lz4())
    options.set_block_based_table_factory(table)
    return options


def _entry(packed: bytes) -> tuple[str, str, int, int, int]:
    first_seen, fingerprint, line, mask = _VALUE.unpack_from(packed)
    return f"{fingerprint:016x}", packed[_VALUE.size :].decode(), line, mask, first_seen


def _record_key(first_seen: int, number: int) -> bytes:
    return _FIRST_SEEN + _INDEX_KEY.pack(first_seen + 2**63, number)


def _before(bound: bytes) -> ReadOptions:
    """Reading that stops before the key `bound`."""
    options = ReadOptions()
    options.set_iterate_upper_bound(bound)
    return options


def _after(prefix: bytes) -> bytes:
    """The first key past every key that starts with `prefix` (a single letter)."""
    return bytes([prefix[0] + 1])


class SeenStore(MemoryStore):  # type: ignore[misc]
    """Faust's in-memory store with `SeenEntries` (on disk) behind it, and without the
    key -> partition map Faust's store keeps of every key it restores (31 bytes an
    order): an order's partition is its id's (the clean stage routes by it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data = SeenEntries(Path(self.app.conf.tabledir) / self.table_name)

    async def on_stop(self) -> None:
        self.data.close()

    def apply_changelog_batch(self, batch: Iterable[EventT], to_key: Any, to_value: Any) -> None:
        """What Faust's store does, in order, without setting a deleted key to None first
        (it then removes every key whose value is falsy), which `SeenEntries` cannot hold;
        the entries between two deletes are written at once."""
        entries: list[tuple[str, SeenEntry]] = []
        for event in batch:
            key = to_key(event.key)
            if event.message.value is None:
                self.data.update(entries)
                entries = []
                self.data.pop(key, None)
            else:
                entries.append((key, to_value(event.value)))
        self.data.update(entries)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Forget the orders of partitions this worker no longer has, as Faust's store
        does for the ones it restored (a partition given back is restored again from its
        changelog's start); the ones dedupe added since are forgotten too."""
        partitions = self.table.partitions
        gone = set(range(partitions)) - {tp.partition for tp in active_tps}
        if not gone:
            return
        remembered = iter(self.data)  # a snapshot: deleting as it goes is safe
        while order_ids := list(islice(remembered, _ORDERS_PER_READ)):
            for order_id in orders_in(order_ids, gone, partitions):
                del self.data[order_id]


def orders_in(order_ids: list[str], wanted: Container[int], partitions: int) -> list[str]:
    """The orders whose partition, their id's (the clean stage routes by it), is wanted."""
    owners = partitions_for([order_id.encode() for order_id in order_ids], partitions)
    return [order_id for order_id, owner in zip(order_ids, owners, strict=True) if owner in wanted]
