"""What a reader that trusts a partition's end offset finds after a publish: Faust's
recovery reads a changelog up to it, and must find every message the worker sent.

The embedded broker reports a partition's end offset as the base offset of its last
batch plus one, so the publisher ends a changelog's group with a batch of one message.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from producers.publisher import KafkaPublisher, Message
from tillstream.broker import EmbeddedBroker
from tillstream.settings import KafkaConfig
from tillstream.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration

MESSAGES = 50


@pytest.fixture
async def bootstrap(kafka_bootstrap: str) -> AsyncIterator[str]:
    """The session's Apache Kafka, or an embedded broker of this test's own."""
    if kafka_bootstrap:
        yield kafka_bootstrap
        return
    broker = EmbeddedBroker()
    await broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        await broker.stop()


async def test_a_changelog_group_ends_where_its_end_offset_says(bootstrap: str) -> None:
    topic = f"changelog-{uuid.uuid4().hex[:8]}"
    await ensure_topics(
        bootstrap,
        KafkaConfig(bootstrap_servers=bootstrap),
        [TopicSpec(topic, 1, 0, compacted=True)],
    )
    publisher = KafkaPublisher(bootstrap, "test-end-offsets")
    await publisher.start()
    try:
        sent = await publisher.publish(
            topic,
            [Message(f"key-{i}".encode(), b"value", 0) for i in range(MESSAGES)],
            exact_end_offset=True,
        )
    finally:
        await publisher.stop()
    partition = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([partition])
    finally:
        await consumer.stop()
    assert sent == MESSAGES
    assert ends[partition] == MESSAGES
