"""A Faust table whose changelog is published in batches.

Stock Faust sends one changelog message per key through its producer buffer,
which caps a table at a few thousand updates per second. Here an update only
records the changelog message; the agent publishes them all with the batch
publisher before its input offset is committed. The messages are the ones
Faust would have sent (same topic, partition, key and value codecs), so
recovery after a restart or a rebalance is Faust's own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, MutableMapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.serializers import codecs

from producers.publisher import KafkaPublisher, Message, partitions_for

__all__ = ["BatchedChangelogTable", "restore_changelog"]


class BatchedChangelogTable(faust.Table):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[Message] = []

    @property
    def changelog_topic_name(self) -> str:
        return str(self.changelog_topic.get_topic_name())

    def on_key_set(self, key: Any, value: Any) -> None:
        self._record(key, codecs.dumps(self.value_serializer, value))
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        self._record(key, None)
        self._sensor_on_del(self, key)

    def _record(self, key: Any, value: bytes | None) -> None:
        partition = self.partition_for_key(key)
        encoded_key = codecs.dumps(self.key_serializer, key)
        self._pending.append(Message(encoded_key, value, partition))

    @property
    def entries(self) -> MutableMapping[Any, Any]:
        """The dict behind the table's memory store, without Faust's per-key hooks (a few
        microseconds per access): whoever updates it records the updates with `record`."""
        return self.data.data  # type: ignore[no-any-return]

    def record(self, updates: Iterable[tuple[str, Any]]) -> None:
        """The changelog messages of updates made through `entries` by the current event,
        encoded as Faust's json codec does, for the event's own partition."""
        updates = list(updates)
        if not updates:
            return
        partition = self.partition_for_key(updates[0][0])
        self._pending.extend(
            Message(json.dumps(key).encode(), json.dumps(value).encode(), partition)
            for key, value in updates
        )

    def take_changelog(self) -> list[Message]:
        """The changelog messages of the updates since the last call."""
        pending, self._pending = self._pending, []
        return pending


async def restore_changelog(
    table: BatchedChangelogTable,
    bootstrap_servers: str,
    publisher: KafkaPublisher,
    accepted: AsyncIterator[list[tuple[str, str, str, int]]],
) -> int:
    """Rebuild a lost `seen` changelog from the accepted orders ClickHouse holds.

    The embedded broker keeps topics in memory, so after a restart of `up` the
    changelog is gone while ClickHouse still has every sale written. Without
    this, an order seen before the restart would be accepted again. A changelog
    that still has records (Apache Kafka) is left alone. Returns how many
    entries were written.
    """
    topic = table.changelog_topic_name
    partitions = table.partitions
    replication = int(table.app.conf.topic_replication_factor)
    if await _has_records(bootstrap_servers, topic, partitions, replication):
        return 0
    restored = 0
    async for rows in accepted:
        owners = partitions_for([order_id.encode() for order_id, *_ in rows], partitions)
        messages = [
            Message(
                codecs.dumps(table.key_serializer, order_id),
                codecs.dumps(table.value_serializer, [fingerprint, source_id, line]),
                int(partition),
            )
            for (order_id, fingerprint, source_id, line), partition in zip(
                rows, owners, strict=True
            )
        ]
        restored += await publisher.publish(topic, messages, compressed=True)
    return restored


async def _has_records(
    bootstrap_servers: str, topic: str, partitions: int, replication: int
) -> bool:
    """Whether the changelog holds anything; a missing one is created as Faust would."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics(
                [
                    NewTopic(
                        topic, partitions, replication, topic_configs={"cleanup.policy": "compact"}
                    )
                ]
            )
            return False
        [description] = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return any(offset > 0 for offset in ends.values())
