"""A Faust table whose changelog is published in batches.

Stock Faust sends one changelog message per key through its producer buffer,
which caps a table at a few thousand updates per second. Here the agent updates
the store's dict directly (`entries`) and records what it changed (`record`);
it publishes the changelog with the batch publisher before its input offset is
committed. The messages are the ones
Faust would have sent (same topic, partition, key and value codecs), so
recovery after a restart or a rebalance is Faust's own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, MutableMapping
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

import faust
import numpy as np
import pandas as pd
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.stores.memory import Store as MemoryStore

from processors.aggregates import WINDOWS, Marker, evict_closed, fold, update_messages
from producers.publisher import KafkaPublisher, Message, partitions_for
from tillstream.records import SCHEMA_HEADERS
from tillstream.topics import TopicSpec

if TYPE_CHECKING:
    from yarl import URL

__all__ = ["BatchedChangelogTable", "changelog_message", "restore_changelogs"]


class BatchedChangelogTable(faust.Table):  # type: ignore[misc]
    def __init__(
        self, *args: Any, store_class: type[MemoryStore] = MemoryStore, **kwargs: Any
    ) -> None:
        self._store_class = store_class
        super().__init__(*args, **kwargs)
        self._pending: list[Message] = []

    def _new_store_by_url(self, url: str | URL) -> MemoryStore:
        """Faust's choice of store, made by `store_class` instead of the URL: `entries`
        needs an in-memory store, and the `seen` table one of its own (processors/seen.py)."""
        return self._store_class(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )

    @property
    def changelog_topic_name(self) -> str:
        return str(self.changelog_topic.get_topic_name())

    def changelog_spec(self) -> TopicSpec:
        """The changelog topic as Faust creates it: compacted (so retention is unused),
        a partition per partition of the table's source topic."""
        return TopicSpec(self.changelog_topic_name, self.partitions, 0, compacted=True)

    @property
    def entries(self) -> MutableMapping[Any, Any]:
        """The dict behind the table's memory store, without Faust's per-key hooks (a few
        microseconds per access): whoever updates it records the updates with `record`."""
        return self.data.data  # type: ignore[no-any-return]

    def record(self, updates: Iterable[tuple[str, Any]]) -> None:
        """The changelog messages of updates made through `entries` by the current event,
        for the event's own partition; a value of None deletes the key."""
        updates = list(updates)
        if not updates:
            return
        partition = self.partition_for_key(updates[0][0])
        self._pending.extend(changelog_message(key, value, partition) for key, value in updates)

    def take_changelog(self) -> list[Message]:
        """The changelog messages of the updates since the last call."""
        pending, self._pending = self._pending, []
        return pending


async def restore_changelogs(
    seen: BatchedChangelogTable,
    aggregates: BatchedChangelogTable,
    bootstrap_servers: str,
    publisher: KafkaPublisher,
    aggregates_topic: str,
    lateness_ms: int,
    accepted: AsyncIterator[pd.DataFrame],
    security: Mapping[str, Any] | None = None,
) -> int:
    """Rebuild lost worker state from the accepted orders ClickHouse holds.

    The embedded broker keeps topics in memory, so after a restart of `up` the
    changelogs are gone while ClickHouse still has every sale written. Without
    this, an order seen before the restart would be accepted again, and the
    aggregates would start again from zero. Both are rebuilt from the same
    `sales` rows, so they agree. Every window is sent to `sales.aggregates` again,
    closed ones too, since their last update may not have reached ClickHouse.
    A changelog that still has records (Apache Kafka) is left alone. Returns how
    many orders were restored.
    """
    if await _has_records(bootstrap_servers, seen, security or {}):
        return 0
    partitions = seen.partitions
    totals: dict[str, list[int]] = {}
    watermarks: dict[int, int] = {}
    restored = 0
    async for page in accepted:
        order_partitions = partitions_for(
            [order_id.encode() for order_id in page["order_id"]], partitions
        )
        masks = np.array(
            [sum(1 << WINDOWS.index(w) for w in late) for late in page["late_windows"]],
            dtype=np.int64,
        )
        entries = [
            (order_id, [fingerprint, source_id, int(line), int(mask), int(first_seen)], partition)
            for order_id, fingerprint, source_id, line, mask, first_seen, partition in zip(
                page["order_id"],
                page["fingerprint"],
                page["source_id"],
                page["line"],
                masks,
                page["first_seen"],
                order_partitions,
                strict=True,
            )
        ]
        restored += await publisher.publish(
            seen.changelog_topic_name,
            [changelog_message(*entry) for entry in entries],
            exact_end_offset=True,
        )
        for partition in np.unique(order_partitions):
            mine = order_partitions == partition
            fold(totals, int(partition), page[mine], masks[mine])
            latest = int(page["sold_at_ms"][mine].max())
            watermarks[int(partition)] = max(watermarks.get(int(partition), latest), latest)
    await publisher.publish(aggregates_topic, update_messages(totals, list(totals)), SCHEMA_HEADERS)
    for partition, watermark in watermarks.items():
        evict_closed(totals, partition, watermark, lateness_ms)
        Marker(-1, watermark, watermark).store(totals, partition)
    await publisher.publish(
        aggregates.changelog_topic_name,
        [changelog_message(key, value, int(key.split("|", 1)[0])) for key, value in totals.items()],
        exact_end_offset=True,
    )
    return restored


def changelog_message(key: str, value: Any, partition: int) -> Message:
    """What Faust sends for an update of a table with the json codec (None: a delete)."""
    encoded = None if value is None else _json(value).encode()
    return Message(_json(key).encode(), encoded, partition)


_JSON_ATOMS: dict[type, Callable[[Any], str]] = {str: encode_basestring_ascii, int: int.__repr__}


def _json(value: Any) -> str:
    """`json.dumps(value)`, written directly for the keys and the flat rows of text and
    integers the tables hold: json.dumps costs a microsecond a call in set-up, and dedupe
    calls it twice for every sale it accepts."""
    if type(value) is str:
        return encode_basestring_ascii(value)  # type: ignore[no-any-return]
    if type(value) in (list, tuple):
        try:
            return "[" + ", ".join([_JSON_ATOMS[type(item)](item) for item in value]) + "]"
        except KeyError:
            pass
    return json.dumps(value)


async def _has_records(
    bootstrap_servers: str, table: BatchedChangelogTable, security: Mapping[str, Any]
) -> bool:
    """Whether the changelog (created at start-up from `changelog_spec`) holds anything."""
    topic = table.changelog_topic_name
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **security)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
    finally:
        await admin.close()
    if not partitions:
        # Created a moment ago, so empty. (A consumer asked for no offsets returns at
        # once, and aiokafka's stop() then raises the CancelledError of a task that
        # never ran: `up` died at start-up once in a dozen runs.)
        return False
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **security
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return any(offset > 0 for offset in ends.values())
