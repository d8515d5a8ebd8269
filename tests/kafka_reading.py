"""Reading a topic to its end, as a downstream consumer would."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

__all__ = ["read_committed", "read_to_end"]

Record = ConsumerRecord[bytes, bytes]


async def read_to_end(consumer: AIOKafkaConsumer, partitions: int) -> list[Record]:
    """Everything up to the end offsets, once `partitions` are assigned: the position
    also passes transaction markers, which no record stands for."""
    records: list[Record] = []
    while len(consumer.assignment()) < partitions:
        for batch in (await consumer.getmany(timeout_ms=100)).values():
            records.extend(batch)
    assigned = sorted(consumer.assignment())
    end = await consumer.end_offsets(assigned)
    while any([await consumer.position(tp) < end[tp] for tp in assigned]):
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
    return records


async def read_committed(bootstrap_servers: str, topic: str, partitions: int) -> list[Record]:
    """Every committed message of a topic: what a consumer with
    `isolation.level=read_committed` reads from the beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        return await read_to_end(consumer, partitions)
    finally:
        await consumer.stop()
