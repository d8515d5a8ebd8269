"""The Faust app: two agents, cleaning then dedupe.

`clean` turns each raw chunk into dead letters and, per dedupe partition, one
message of validated rows. `dedupe` owns the `seen` table for its partitions
and emits clean sales, conflicts and duplicates. Both publish through the batch
publisher and finish publishing before Faust commits their input offset, so a
crash re-delivers rather than loses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import faust

from processors.chunks import CleanedChunk, clean_chunk, decode_validated
from processors.dedupe import dedupe
from processors.faust_app import App
from processors.state import BatchedChangelogTable
from producers.publisher import KafkaPublisher
from tillstream import metrics
from tillstream.records import SCHEMA_VERSION, SCHEMA_VERSION_HEADER, RawChunk
from tillstream.settings import CleaningRules, Settings
from tillstream.topics import Topics

__all__ = ["build_app"]

log = logging.getLogger(__name__)

_HEADERS = [(SCHEMA_VERSION_HEADER, str(SCHEMA_VERSION).encode())]


def build_app(
    settings: Settings, bootstrap_servers: str, topics: Topics, publisher: KafkaPublisher
) -> tuple[faust.App, BatchedChangelogTable]:
    """The app and its dedupe table, whose changelog may need restoring before start."""
    partitions = settings.kafka.partitions
    app = App(
        f"{settings.kafka.group_prefix}-worker",
        broker=[f"kafka://{server}" for server in bootstrap_servers.split(",")],
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_max_request_size=8 * 2**20,
        consumer_max_fetch_size=16 * 2**20,
        broker_session_timeout=settings.kafka.session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka.session_timeout_seconds / 3,
        broker_rebalance_timeout=settings.kafka.rebalance_timeout_seconds,
        web_enabled=False,
    )
    raw_topic = app.topic(topics.raw.name, key_serializer="raw", value_serializer="raw")
    validated_topic = app.topic(topics.validated.name, key_serializer="raw", value_serializer="raw")
    seen = app.tables.add(
        BatchedChangelogTable(
            app,
            name="seen",
            beacon=app.tables.beacon,
            partitions=partitions,
            key_type=str,
            help="order id -> [fingerprint, source id, line] of its accepted delivery",
        )
    )
    rules = settings.cleaning

    @app.agent(raw_topic, name="clean")
    async def clean(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            started = time.perf_counter()
            cleaned = await asyncio.to_thread(_clean, value, rules, partitions)
            await publisher.publish(
                topics.dlq.name, [*cleaned.dead_letters, *cleaned.released], _HEADERS
            )
            await publisher.publish(topics.validated.name, cleaned.validated, compressed=True)
            rejected = len(cleaned.dead_letters)
            metrics.WORKER_ROWS.labels("clean", "valid").inc(cleaned.valid_rows)
            metrics.WORKER_ROWS.labels("clean", "rejected").inc(rejected)
            for reason, count in cleaned.rejects_by_reason.items():
                metrics.WORKER_REJECTS.labels(reason).inc(count)
            metrics.WORKER_CHUNK_SECONDS.labels("clean").observe(time.perf_counter() - started)

    @app.agent(validated_topic, name="dedupe")
    async def deduplicate(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            started = time.perf_counter()
            source, sales = decode_validated(value)
            output = dedupe(source, sales, seen.entries, datetime.now(UTC))
            seen.record(output.accepted)
            await publisher.publish(
                seen.changelog_topic_name, seen.take_changelog(), compressed=True
            )
            await publisher.publish(topics.clean.name, output.clean, _HEADERS)
            await publisher.publish(topics.dlq.name, output.dead_letters, _HEADERS)
            await publisher.publish(topics.duplicates.name, output.duplicates, _HEADERS)
            metrics.WORKER_ROWS.labels("dedupe", "clean").inc(len(output.clean))
            metrics.WORKER_ROWS.labels("dedupe", "conflict").inc(len(output.dead_letters))
            metrics.WORKER_REJECTS.labels("conflicting_duplicate").inc(len(output.dead_letters))
            metrics.WORKER_DUPLICATES.inc(len(output.duplicates))
            metrics.WORKER_CHUNK_SECONDS.labels("dedupe").observe(time.perf_counter() - started)

    return app, seen


def _clean(value: bytes, rules: CleaningRules, partitions: int) -> CleanedChunk:
    """Decoding and cleaning a chunk, run off the event loop: much of Arrow's and pandas'
    work releases the GIL, and the loop meanwhile serves dedupe, the sink and Kafka."""
    return clean_chunk(RawChunk.from_json(value), rules, partitions, datetime.now(UTC))
