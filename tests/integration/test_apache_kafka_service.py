"""The Apache Kafka that tests start serves what the embedded broker cannot.

Idempotent and transactional producers and read_committed consumers are what the
pipeline's exactly-once path needs; if this test fails, the tests built on ApacheKafka
would fail for reasons unrelated to the code they test.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections import Counter, defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.kafka_reading import read_to_end
from tests.services.apache_kafka import ApacheKafka

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("java") is None,
        reason="SKIPPED LOUDLY: Apache Kafka needs a Java 17+ runtime and no `java` is on PATH",
    ),
]

PARTITIONS = 4
MESSAGES = 1000

Message = tuple[bytes, bytes]


def _messages(kind: str, count: int) -> list[Message]:
    return [(f"order-{kind}-{i}".encode(), f"{kind}:{i}".encode()) for i in range(count)]


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, replication_factor=1)])
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert len(described["partitions"]) == PARTITIONS


async def _produce_idempotent(bootstrap: str, topic: str, messages: list[Message]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _produce_transactions(
    bootstrap: str, topic: str, committed: list[Message], aborted: list[Message]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-tx")
    await producer.start()
    try:
        async with producer.transaction():
            for key, value in committed:
                await producer.send(topic, value, key=key)
        await producer.begin_transaction()
        sent = [await producer.send(topic, value, key=key) for key, value in aborted]
        # Written to the log before the abort, so that read_committed has to filter them.
        await asyncio.gather(*sent)
        await producer.abort_transaction()
    finally:
        await producer.stop()


async def _consume(
    bootstrap: str, topic: str, isolation_level: str, group_id: str | None
) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        isolation_level=isolation_level,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    if group_id is None:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    else:
        consumer.subscribe([topic])
    await consumer.start()
    try:
        records = await read_to_end(consumer, PARTITIONS)
        if group_id is not None:
            await consumer.commit()
        return records
    finally:
        await consumer.stop()


def _contents(records: list[ConsumerRecord[bytes, bytes]]) -> Counter[Message]:
    return Counter((record.key, record.value) for record in records)


async def test_broker_serves_idempotent_and_transactional_producers() -> None:
    idempotent = _messages("idempotent", MESSAGES)
    committed = _messages("committed", MESSAGES)
    aborted = _messages("aborted", 100)
    topic = f"service-check-{uuid.uuid4().hex[:8]}"

    kafka = ApacheKafka()
    try:
        await asyncio.to_thread(kafka.start)
        bootstrap = kafka.bootstrap_servers
        async with asyncio.timeout(45):
            await _create_topic(bootstrap, topic)
            await _produce_idempotent(bootstrap, topic, idempotent)
            await _produce_transactions(bootstrap, topic, committed, aborted)
            visible = await _consume(bootstrap, topic, "read_committed", f"{topic}-group")
            everything = await _consume(bootstrap, topic, "read_uncommitted", None)
        # The JVM reports a shutdown that SIGTERM started as 143; -9 would mean it hung.
        assert await asyncio.to_thread(kafka.stop) == 143
    finally:
        await asyncio.to_thread(kafka.close)

    assert _contents(visible) == Counter(idempotent + committed)
    assert _contents(everything) == Counter(idempotent + committed + aborted)
    per_partition: defaultdict[int, list[int]] = defaultdict(list)
    for record in visible:
        if record.value.startswith(b"idempotent:"):
            per_partition[record.partition].append(int(record.value.split(b":")[1]))
    assert len(per_partition) == PARTITIONS
    assert all(sequence == sorted(sequence) for sequence in per_partition.values())
