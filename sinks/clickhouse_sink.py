"""ClickHouseSink: consumes the output topics and writes them to ClickHouse in batches.

Offsets are committed only after the batch they cover is written, so a crash
re-delivers rather than loses. Each insert carries a dedup token derived from
the batch's content, so a re-delivered batch is dropped by ClickHouse; rows
that come back in a differently cut batch replace themselves by key.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from aiokafka.structs import OffsetAndMetadata

from sinks.database import (
    Database,
    first_line,
    is_refused_data,
    is_retryable,
    retry_while_unavailable,
)
from sinks.history import HistoryEntry, IngestionHistory
from sinks.late_sales import LateSales
from tillstream import metrics
from tillstream.settings import SinkConfig
from tillstream.topics import Topics

__all__ = ["ClickHouseSink", "ScanSchedule"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_FETCH_BYTES = 16 * 2**20
FETCH_MAX_WAIT_MS = 100
"""The embedded broker answers a fetch only after this wait, even when records arrive
meanwhile (aiokafka's default is 500 ms): it is latency added to every file."""
RECONCILE_SECONDS = 0.5
"""How often finished sources are looked for: each look writes a history row for every
source whose counts moved, so not after every flush of a busy sink. Every 0.1 s made
no difference to the latency of a trickle of files (docs/benchmarks.md)."""
LATE_RECONCILE_SECONDS = 10.0
"""How often late sales are brought into the aggregates while files are being written.
Each reconciliation groups all those written since the last and writes a row per
window and dimension value they touch, however few they are: a backfill's 1M-row file
made 2.8-3.2M late rows in 16-20 reconciliations every 2 s, 1.8M in 5 every 10 s, and
was ingested 1.10x faster, for about 80 MB more of `up`'s peak (docs/benchmarks.md)."""
LATE_RECONCILE_DONE_SECONDS = 2.0
"""How soon after the last one a reconciliation runs once a file is done, so that its
late sales reach the aggregates within seconds of it."""
SCAN_SHARE = 0.2
"""The most of the time a periodic scan may take. The late-sales one takes CPU from the
ingestion, and more as `late_orders` grows; nothing is consumed while the history's
runs."""


@dataclass
class _Batch:
    """What has been consumed and not yet written, per table."""

    values: dict[str, list[bytes]] = field(default_factory=dict)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    started: float = 0.0

    @property
    def rows(self) -> int:
        return sum(len(values) for values in self.values.values())


@dataclass
class ScanSchedule:
    """When a periodic scan is next due: `interval` after the last one started (once
    hurried, `hurried_interval`), or later after a long one, so that it takes at most
    SCAN_SHARE of the time."""

    interval: float
    hurried_interval: float = math.inf
    """Once hurried, the interval if shorter."""
    _started: float = -math.inf
    _took: float = 0.0
    _hurried_at: float = -math.inf
    _rescheduled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def due_at(self) -> float:
        """A hurry since the last scan started counts for the next one: what came
        during a scan may have come too late for it."""
        hurried = self._hurried_at >= self._started
        interval = min(self.interval, self.hurried_interval) if hurried else self.interval
        return self._started + max(interval, self._took / SCAN_SHARE)

    def due(self, now: float) -> bool:
        return now >= self.due_at

    def ran(self, started: float, finished: float) -> None:
        self._started, self._took = started, finished - started

    def hurry(self, now: float) -> None:
        """What the scan looks for came at `now`: the next scan is due after
        `hurried_interval`."""
        self._hurried_at = now
        self._rescheduled.set()

    async def wait(self) -> None:
        """Until due, or sooner when hurried meanwhile."""
        while (delay := self.due_at - time.monotonic()) > 0:
            self._rescheduled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rescheduled.wait(), delay)


class ClickHouseSink:
    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Topics,
        database: Database,
        late_sales_database: Database,
        config: SinkConfig,
        session_timeout_seconds: float,
        rebalance_timeout_seconds: float,
        on_sources_done: Callable[[list[HistoryEntry]], Awaitable[None]] | None = None,
        kafka_security: Mapping[str, Any] | None = None,
        read_committed: bool = False,
    ) -> None:
        """`late_sales_database`: a client of its own for the late-sales reconciliation,
        which runs beside the writes. `read_committed`: the workers publish in
        transactions; skip what they abort."""
        self._tables = {
            topics.clean.name: "sales",
            topics.dlq.name: "quarantine",
            topics.duplicates.name: "duplicates",
            topics.aggregates.name: "aggregates",
            topics.anomalies.name: "anomalies",
        }
        self._consumer = AIOKafkaConsumer(
            *self._tables,
            **(kafka_security or {}),
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=f"{group_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=MAX_FETCH_BYTES,
            fetch_max_bytes=4 * MAX_FETCH_BYTES,
            session_timeout_ms=int(session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(session_timeout_seconds * 1000 / 3),
            rebalance_timeout_ms=int(rebalance_timeout_seconds * 1000),
            isolation_level="read_committed" if read_committed else "read_uncommitted",
        )
        self._db = database
        self._late_db = late_sales_database
        self._history = IngestionHistory(database)
        self._config = config
        self._on_sources_done = on_sources_done
        self._stopping = asyncio.Event()
        self._late_sales = LateSales()
        self._late_scan = ScanSchedule(LATE_RECONCILE_SECONDS, LATE_RECONCILE_DONE_SECONDS)
        self._history_scan = ScanSchedule(RECONCILE_SECONDS)

    async def run(self) -> None:
        """Consume and write until `stop`; the last partial batch is written first."""
        await self._consumer.start()
        metrics.COMPONENT_UP.labels("sink").set(1)
        metrics.SINK_LAST_WRITE.set_to_current_time()
        batch = _Batch()
        late_sales = asyncio.create_task(self._reconcile_late_sales(), name="late-sales")
        try:
            while not self._stopping.is_set():
                if late_sales.done():
                    late_sales.result()  # it failed: fail as a failed write would
                fetched = await self._consumer.getmany(
                    timeout_ms=100, max_records=self._config.batch_rows
                )
                for partition, records in fetched.items():
                    table = self._tables[partition.topic]
                    if not batch.rows:
                        batch.started = time.monotonic()
                    batch.values.setdefault(table, []).extend(
                        record.value for record in records if record.value is not None
                    )
                    batch.next_offsets[partition] = records[-1].offset + 1
                age = time.monotonic() - batch.started
                if batch.next_offsets and (
                    not fetched  # caught up: waiting longer would only add latency
                    or batch.rows >= self._config.batch_rows
                    or age >= self._config.batch_seconds
                ):
                    await self._flush(batch)
                    batch = _Batch()
                if not fetched:
                    await self._reconcile()
            if batch.next_offsets:
                await self._flush(batch)
        finally:
            late_sales.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await late_sales
            metrics.COMPONENT_UP.labels("sink").set(0)
            await self._consumer.stop()

    def stop(self) -> None:
        self._stopping.set()

    async def _flush(self, batch: _Batch) -> None:
        started = time.perf_counter()
        for table, values in batch.values.items():
            if values:
                await self._retrying(f"write to {table}", self._write_counting(table, values))
                metrics.SINK_ROWS_WRITTEN.labels(table).inc(len(values))
                metrics.SINK_BATCH_ROWS.observe(len(values))
                metrics.SINK_LAST_WRITE.set_to_current_time()
        metrics.SINK_FLUSH_SECONDS.observe(time.perf_counter() - started)
        await self._commit(batch.next_offsets)
        await self._reconcile()
        await self._record_lag()

    async def _commit(self, next_offsets: dict[TopicPartition, int]) -> None:
        """Commit what was written. A lost rebalance means the rows come again (and
        replace themselves); an unreachable broker is waited out."""
        delay = 0.1
        while True:
            try:
                await self._consumer.commit(
                    {tp: OffsetAndMetadata(offset, "") for tp, offset in next_offsets.items()}
                )
                return
            except CommitFailedError as exc:
                log.warning("offsets not committed (%s); the batch will be delivered again", exc)
                return
            except KafkaError as exc:
                if not (exc.retriable or isinstance(exc, KafkaTimeoutError)):
                    raise
                log.warning("committing offsets failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.retry_max_seconds)

    async def _retrying(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Retry connection and storage trouble forever: that is the backpressure, as
        nothing more is consumed meanwhile."""

        def count(_: BaseException) -> None:
            metrics.SINK_ERRORS.labels("connection").inc()
            metrics.SINK_RETRIES.inc()

        await retry_while_unavailable(
            work, f"ClickHouse {what}", self._config.retry_max_seconds, count
        )

    def _write_counting(self, table: str, values: list[bytes]) -> Callable[[], Awaitable[None]]:
        """The batch's write, each call the next attempt (see `Database.insert_json_rows`)."""
        attempts = itertools.count()
        return lambda: self._write_isolating(table, values, next(attempts))

    async def _write_isolating(self, table: str, values: list[bytes], attempt: int) -> None:
        """Write a batch (`attempt`: how many times it failed before); if ClickHouse
        refuses its content, split it until the offending messages are found, write the
        rest and log each offender."""
        try:
            await self._db.insert_json_rows(table, values, attempt)
        except Exception as exc:
            if not is_refused_data(exc):
                raise
            metrics.SINK_ERRORS.labels("data").inc()
            if len(values) == 1:
                log.error(
                    "message refused by table %s: %s: %r", table, first_line(exc), values[0][:500]
                )
                return
            middle = len(values) // 2
            await self._write_isolating(table, values[:middle], attempt)
            await self._write_isolating(table, values[middle:], attempt)

    async def _reconcile_late_sales(self) -> None:
        """Bring the late sales written since last time into the aggregates when due,
        in the background; while ClickHouse is away, try again next time."""
        while True:
            await self._late_scan.wait()
            try:
                await self._when_due(
                    self._late_scan, lambda: self._late_sales.reconcile(self._late_db)
                )
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                metrics.SINK_ERRORS.labels("connection").inc()
                log.warning("late sales not reconciled (%s); will retry", first_line(exc))

    async def _reconcile(self) -> None:
        """Mark finished sources done, when due; while ClickHouse is away, try again
        next time."""
        try:
            done = await self._when_due(self._history_scan, self._history.reconcile)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            metrics.SINK_ERRORS.labels("connection").inc()
            log.warning("ingestion history not updated (%s); will retry", first_line(exc))
            return
        if not done:
            return
        self._late_scan.hurry(time.monotonic())
        now = time.time()
        for entry in done:
            metrics.END_TO_END_SECONDS.observe(max(0.0, now - entry.seen_at.timestamp()))
            log.info(
                "source done id=%s name=%s read=%s valid=%d rejected=%d duplicates=%d",
                entry.source_id[:12],
                entry.source_name,
                entry.rows_read,
                entry.valid,
                entry.rejected,
                entry.duplicates,
            )
        if self._on_sources_done is not None:
            await self._on_sources_done(done)

    @staticmethod
    async def _when_due(schedule: ScanSchedule, scan: Callable[[], Awaitable[T]]) -> T | None:
        started = time.monotonic()
        if not schedule.due(started):
            return None
        try:
            return await scan()
        finally:
            schedule.ran(started, time.monotonic())

    async def _record_lag(self) -> None:
        for partition in self._consumer.assignment():
            highwater = self._consumer.highwater(partition)
            position = await self._consumer.position(partition)
            if highwater is not None:
                metrics.SINK_CONSUMER_LAG.labels(partition.topic, partition.partition).set(
                    max(0, highwater - position)
                )
