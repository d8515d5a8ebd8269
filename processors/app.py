"""The Faust app: two agents, cleaning then dedupe and aggregation.

`clean` turns each raw chunk into dead letters and, per dedupe partition, one
message of validated rows; the cleaning itself runs in a process of its own
(processors/cleaning_process.py). `dedupe` owns the `seen` and `aggregates` tables for
its partitions: it emits clean sales, conflicts and duplicates, folds each newly
accepted sale into the windowed aggregates and scores it for anomalies. Both
hand their outputs to processors/transactions.py: with exactly-once on, an event's
outputs and its input offset are committed in one Kafka transaction; off, they are
published before Faust commits the input offset, so a crash re-delivers rather
than loses.

The dedupe agent publishes its outputs first, then the aggregate updates, the
aggregates changelog (with the partition's marker) and the `seen` changelog; with
exactly-once on, those three come first and the other outputs after them, in the
transaction. A crash between any two leaves state that the re-delivered message
recognises (docs/architecture.md, "Aggregates"), so no sale is folded twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import faust
from faust.types import TP

from processors.aggregates import (
    WINDOWS,
    Marker,
    evict_closed,
    fold,
    late_masks,
    sale_facts,
    update_messages,
)
from processors.anomalies import RevenueBaseline, anomaly_message
from processors.chunks import decode_validated
from processors.cleaning_process import CleaningProcess
from processors.dedupe import accept, classify
from processors.faust_app import App
from processors.oversize import publish_cleaned, publish_fitting, shrink_dead_letter
from processors.seen import SeenStore
from processors.state import BatchedChangelogTable
from processors.transactions import Transactions
from producers.publisher import KafkaPublisher, Message
from tillstream import metrics
from tillstream.kafka_security import faust_credentials
from tillstream.records import SCHEMA_HEADERS
from tillstream.settings import Settings
from tillstream.topics import Topics

__all__ = ["WorkerTables", "build_app", "worker_group_id"]

log = logging.getLogger(__name__)

_EVICTION_INTERVAL_SECONDS = 10.0
"""How often a partition's closed windows are looked for: it scans the aggregates, so
not after every message."""
_EXPIRY_INTERVAL_SECONDS = 600.0
"""How often a partition's orders past retention are looked for. Orders are kept for
days; a look reads the index of the orders remembered up to the cut-off."""
_CHUNKS_BUFFERED_PER_AGENT = 32
"""How many messages Faust fetches ahead of each agent. Its default, 4,096, suits
messages of one event; ours are chunks of thousands of rows, so a backlog (a big file
read faster than it is cleaned) filled the buffers with hundreds of MB of chunks."""


@dataclass(frozen=True, slots=True)
class WorkerTables:
    """The app's state, whose changelogs may need restoring before start."""

    seen: BatchedChangelogTable
    aggregates: BatchedChangelogTable


def worker_group_id(settings: Settings) -> str:
    """The workers' consumer group, which is also the Faust app's id."""
    return f"{settings.kafka.group_prefix}-worker"


def build_app(
    settings: Settings,
    bootstrap_servers: str,
    topics: Topics,
    transactions: Transactions,
    cleaning: CleaningProcess,
) -> tuple[faust.App, WorkerTables]:
    partitions = settings.kafka.partitions
    app = App(
        worker_group_id(settings),
        broker=[f"kafka://{server}" for server in bootstrap_servers.split(",")],
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_max_request_size=8 * 2**20,
        consumer_max_fetch_size=16 * 2**20,
        stream_buffer_maxsize=_CHUNKS_BUFFERED_PER_AGENT,
        broker_session_timeout=settings.kafka.session_timeout_seconds,
        broker_heartbeat_interval=settings.kafka.session_timeout_seconds / 3,
        broker_rebalance_timeout=settings.kafka.rebalance_timeout_seconds,
        web_enabled=False,
        broker_credentials=faust_credentials(settings.kafka),
    )
    app.offsets_in_transactions = transactions.enabled
    raw_topic = app.topic(topics.raw.name, key_serializer="raw", value_serializer="raw")
    validated_topic = app.topic(topics.validated.name, key_serializer="raw", value_serializer="raw")
    inputs = {topics.raw.name, topics.validated.name}

    @app.on_partitions_revoked.connect
    async def let_go(_: faust.App, revoked: set[TP], **__: object) -> None:
        await transactions.drop(revoked)

    @app.on_partitions_assigned.connect
    async def take_over(_: faust.App, assigned: set[TP], **__: object) -> None:
        await transactions.take_over(tp for tp in assigned if tp.topic in inputs)

    def table(name: str, description: str, **options: Any) -> BatchedChangelogTable:
        return app.tables.add(
            BatchedChangelogTable(
                app,
                name=name,
                beacon=app.tables.beacon,
                partitions=partitions,
                key_type=str,
                help=description,
                **options,
            )
        )

    seen = table(
        "seen", "order id -> its accepted delivery (processors/dedupe.py)", store_class=SeenStore
    )
    aggregates = table(
        "aggregates", "partition|window|start|dimension|key -> totals (processors/aggregates.py)"
    )
    lateness_ms = settings.worker.allowed_lateness_seconds * 1000
    retention_seconds = settings.worker.dedupe_retention_days * 86_400
    baseline = RevenueBaseline(settings.anomalies)
    evicted_at: dict[int, float] = {}
    expired_at: dict[int, float] = {}

    @app.agent(raw_topic, name="clean")
    async def clean(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            started = time.perf_counter()
            cleaned = await cleaning.clean(event.value)
            publish = partial(
                publish_cleaned,
                dlq_topic=topics.dlq.name,
                validated_topic=topics.validated.name,
                cleaned=cleaned,
                headers=SCHEMA_HEADERS,
                now=datetime.now(UTC),
            )
            await transactions.deliver(event.message.tp, event.message.offset, publish)
            rejected = len(cleaned.dead_letters)
            metrics.WORKER_ROWS.labels("clean", "valid").inc(cleaned.valid_rows)
            metrics.WORKER_ROWS.labels("clean", "rejected").inc(rejected)
            for reason, count in cleaned.rejects_by_reason.items():
                metrics.WORKER_REJECTS.labels(reason).inc(count)
            metrics.WORKER_CHUNK_SECONDS.labels("clean").observe(time.perf_counter() - started)

    @app.agent(validated_topic, name="dedupe")
    async def deduplicate(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            started = time.perf_counter()
            partition, offset = event.message.partition, event.message.offset
            now = datetime.now(UTC)
            message = decode_validated(event.value)
            source = message.source
            sorted_out = classify(message, seen.entries.get_many(message.order_ids), now)
            marker = Marker.load(aggregates.entries, partition)
            first_time = offset > marker.offset
            facts = sale_facts(message, sorted_out.new)
            sold_at = facts["sold_at_ms"].to_numpy()
            masks = late_masks(
                sold_at,
                marker.watermark_ms if first_time else marker.watermark_before_ms,
                lateness_ms,
            )
            accepted, entries = accept(message, sorted_out.new, masks.tolist(), seen.entries, now)
            seen.record(entries)
            updates: list[Message] = []
            anomalies: list[Message] = []
            if first_time and len(facts):
                changed = fold(aggregates.entries, partition, facts, masks, offset)
                watermark = max(marker.watermark_ms, int(sold_at.max()))
                Marker(offset, marker.watermark_ms, watermark).store(aggregates.entries, partition)
                aggregates.record(
                    (key, aggregates.entries[key]) for key in [*changed, Marker.key(partition)]
                )
                updates = update_messages(aggregates.entries, changed)
                anomalies = [anomaly_message(a, source, now) for a in baseline.score(facts)]
                for bit, window in enumerate(WINDOWS):
                    metrics.WORKER_LATE_SALES.labels(window).inc(int((masks >> bit & 1).sum()))
            if _due(evicted_at, partition, _EVICTION_INTERVAL_SECONDS):
                evict(partition)
            if _due(expired_at, partition, _EXPIRY_INTERVAL_SECONDS):
                forget(partition, int(now.timestamp()) - retention_seconds)
            clean = [*sorted_out.clean, *accepted]
            outputs = _Outputs(
                {
                    topics.clean.name: clean,
                    topics.duplicates.name: sorted_out.duplicates,
                    topics.anomalies.name: anomalies,
                },
                (topics.dlq.name, sorted_out.dead_letters),
                (topics.aggregates.name, updates),
                [
                    (aggregates.changelog_topic_name, aggregates.take_changelog()),
                    (seen.changelog_topic_name, seen.take_changelog()),
                ],
            )
            await transactions.deliver(
                event.message.tp, offset, outputs.publish, outputs.publish_state
            )
            metrics.WORKER_ROWS.labels("dedupe", "clean").inc(len(clean))
            metrics.WORKER_ROWS.labels("dedupe", "conflict").inc(len(sorted_out.dead_letters))
            metrics.WORKER_REJECTS.labels("conflicting_duplicate").inc(len(sorted_out.dead_letters))
            metrics.WORKER_DUPLICATES.inc(len(sorted_out.duplicates))
            metrics.WORKER_AGGREGATE_UPDATES.inc(len(updates))
            metrics.WORKER_ANOMALIES.inc(len(anomalies))
            metrics.WORKER_CHUNK_SECONDS.labels("dedupe").observe(time.perf_counter() - started)

    def evict(partition: int) -> None:
        """Drop a partition's closed windows, and record it."""
        watermark = Marker.load(aggregates.entries, partition).watermark_ms
        closed = evict_closed(aggregates.entries, partition, watermark, lateness_ms)
        aggregates.record((key, None) for key in closed)
        metrics.WORKER_EXPIRED.labels("aggregates").inc(len(closed))

    def forget(partition: int, seen_before: int) -> None:
        """Drop a partition's orders past retention, and record it."""
        expired = seen.entries.expire(seen_before, {partition}, partitions)
        seen.record((order_id, None) for order_id in expired)
        metrics.WORKER_EXPIRED.labels("seen").inc(len(expired))

    return app, WorkerTables(seen, aggregates)


@dataclass(frozen=True, slots=True)
class _Outputs:
    """What one validated message publishes, kept whole so that a failed transaction
    can send it again."""

    messages: dict[str, list[Message]]
    """Topic -> messages: sent together, one round trip to the broker, not four."""
    dead_letters: tuple[str, list[Message]]
    updates: tuple[str, list[Message]]
    """The aggregate updates: absolute and versioned, so sent with the state."""
    changelogs: list[tuple[str, list[Message]]]

    async def publish(self, publisher: KafkaPublisher) -> None:
        dlq_topic, dead_letters = self.dead_letters
        await asyncio.gather(
            *(publisher.publish(t, group, SCHEMA_HEADERS) for t, group in self.messages.items()),
            publish_fitting(publisher, dlq_topic, dead_letters, SCHEMA_HEADERS, shrink_dead_letter),
        )

    async def publish_state(self, publisher: KafkaPublisher) -> None:
        """The aggregate updates, then the changelogs one after another (see "Exactly
        once per order"): the updates go before the aggregates changelog that holds
        them, so that a message found folded after a crash has had its updates sent."""
        topic, updates = self.updates
        await publisher.publish(topic, updates, SCHEMA_HEADERS)
        for topic, changelog in self.changelogs:
            await publisher.publish(topic, changelog, exact_end_offset=True)


def _due(last_run: dict[int, float], partition: int, interval_seconds: float) -> bool:
    """Whether a partition's periodic work is due; if so, it counts as run now."""
    now = time.monotonic()
    if now - last_run.get(partition, 0.0) < interval_seconds:
        return False
    last_run[partition] = now
    return True
