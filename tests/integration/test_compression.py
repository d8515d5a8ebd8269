"""Every topic tillstream writes carries zstd batches, or uncompressed ones with
`kafka.compression: none`: what a downstream consumer's fetch receives."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from tests.pipeline import Pipeline
from tillstream.sample_data import generate_sales

pytestmark = pytest.mark.integration

TOPICS = ("sales.raw", "sales.validated", "sales.clean", "sales.dlq", "sales.aggregates")
FETCH_BYTES = 16 * 2**20


async def batch_codecs(bootstrap_servers: str, topics: list[str]) -> dict[str, set[int]]:
    """Topic -> the codecs of its batches of records, from a plain fetch of every
    partition (a transaction's commit markers are batches too, never compressed)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    await client.bootstrap()
    codecs: dict[str, set[int]] = {topic: set() for topic in topics}
    try:
        cluster = await client.fetch_all_metadata()
        for topic in topics:
            for partition in cluster.partitions_for_topic(topic) or ():
                leader = cluster.leader_for_partition(TopicPartition(topic, partition))
                request = FetchRequest(
                    100, 1, FETCH_BYTES, 0, [(topic, [(partition, 0, FETCH_BYTES)])]
                )
                response = await client.send(leader, request)
                records = MemoryRecords(response.topics[0][1][0][-1])
                while (batch := records.next_batch()) is not None:
                    if not batch.is_control_batch:
                        codecs[topic].add(batch.compression_type)
    finally:
        await client.close()
    return codecs


@pytest.mark.parametrize(
    ("compression", "codec"),
    [("zstd", DefaultRecordBatch.CODEC_ZSTD), ("none", DefaultRecordBatch.CODEC_NONE)],
)
def test_every_topic_is_written_with_the_configured_codec(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path, compression: str, codec: int
) -> None:
    pipeline = make_pipeline(config={"kafka": {"compression": compression}})
    pipeline.start()
    generate_sales(tmp_path / "sales.csv", 500, seed=5)
    shutil.move(tmp_path / "sales.csv", pipeline.inbox / "sales.csv")
    pipeline.wait_for_status("sales.csv", "done")
    topics = [pipeline.topic_prefix + topic for topic in TOPICS]
    codecs = asyncio.run(batch_codecs(pipeline.health()["kafka"], topics))
    assert codecs == {topic: {codec} for topic in topics}
