"""`tillstream ingest FILE --dry-run` reports what would happen and writes nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.pipeline import Pipeline
from tillstream.sample_data import generate_sales

pytestmark = [pytest.mark.integration, pytest.mark.broker_independent]


def end_offsets(bootstrap_servers: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers)
        await consumer.start()
        try:
            topics = [t for t in await consumer.topics() if not t.startswith("__")]
            partitions = [tp for t in topics for tp in _partitions(consumer, t)]
            ends = await consumer.end_offsets(partitions)
            return {f"{tp.topic}:{tp.partition}": offset for tp, offset in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]


def dry_run(pipeline: Pipeline, path: Path) -> str:
    done = subprocess.run(
        pipeline.command("ingest", str(path), "--dry-run", "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_a_dry_run_reports_the_outcome_and_writes_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    first = tmp_path / "first.csv"
    generate_sales(first, 2_000, seed=71, order_id_prefix="D")
    pipeline.start()
    shutil.copy(first, pipeline.inbox / first.name)
    pipeline.wait_for_status(first.name, "done")

    fresh = tmp_path / "fresh.csv"
    truth = generate_sales(fresh, 3_000, seed=72, order_id_prefix="E")
    resent = tmp_path / "resent.csv"
    resent.write_text("".join(first.read_text().splitlines(keepends=True)[:501]))
    bootstrap = pipeline.health()["kafka"]
    offsets, sales = end_offsets(bootstrap), pipeline.scalar("SELECT count() FROM tillstream.sales")

    report = json.loads(dry_run(pipeline, fresh))
    assert (report["rows"], report["valid"], report["duplicates"]) == (
        truth.rows,
        truth.valid,
        truth.duplicates,
    )
    assert report["rejected"] == truth.rejected
    assert json.loads(dry_run(pipeline, resent))["valid"] == 0, "its orders were accepted before"
    assert json.loads(dry_run(pipeline, first))["same_content_as"] == str(
        pipeline.inbox / first.name
    )

    assert end_offsets(bootstrap) == offsets, "nothing may be published"
    assert pipeline.scalar("SELECT count() FROM tillstream.sales") == sales
    assert [row["source_name"] for row in pipeline.status()] == [str(pipeline.inbox / first.name)]
