"""DependencyProbe: asks Kafka and ClickHouse, every few seconds, whether they answer.

The components notice an outage only when they next need the dependency, and
then retry quietly; the probe makes it visible as `tillstream_runtime_dependency_up`
and, in a process that runs the worker, exports the worker group's consumer lag
(committed offset against the end of each partition), which Faust does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.cluster import ClusterMetadata

from sinks.database import Database
from tillstream import metrics

__all__ = ["DependencyProbe"]

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0


class DependencyProbe:
    def __init__(
        self,
        bootstrap_servers: str,
        database: Database | None,
        worker_group: str | None = None,
        worker_topics: Sequence[str] = (),
        interval_seconds: float = 5.0,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._security = dict(security or {})
        self._database = database
        self._worker_group = worker_group
        self._worker_topics = list(worker_topics)
        self._interval = interval_seconds
        self._client: AIOKafkaClient | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._cluster: ClusterMetadata | None = None
        self._lag_error = ""

    async def start(self) -> None:
        await self.probe()
        self._task = asyncio.create_task(self._run(), name="dependency probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        closers = [
            self._client.close if self._client is not None else None,
            self._admin.close if self._admin is not None else None,
            self._offsets.stop if self._offsets is not None else None,
        ]
        for close in closers:
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe()

    async def probe(self) -> None:
        kafka = await self._answers(self._kafka)
        metrics.RUNTIME_DEPENDENCY_UP.labels("kafka").set(int(kafka))
        if self._database is not None:
            clickhouse = await self._answers(self._clickhouse)
            metrics.RUNTIME_DEPENDENCY_UP.labels("clickhouse").set(int(clickhouse))
        if kafka and self._worker_group is not None:
            try:
                await asyncio.wait_for(self._worker_lag(), TIMEOUT_SECONDS)
                self._lag_error = ""
            except Exception as exc:
                if str(exc) != self._lag_error:  # once per distinct failure, not every 5 s
                    log.warning("cannot measure the worker group's lag: %r", exc)
                self._lag_error = str(exc)

    async def _answers(self, check: Callable[[], Awaitable[None]]) -> bool:
        try:
            await asyncio.wait_for(check(), TIMEOUT_SECONDS)
        except Exception as exc:
            log.debug("probe %s failed: %s", check.__name__, exc)
            return False
        return True

    async def _kafka(self) -> None:
        if self._client is None:
            client = AIOKafkaClient(
                bootstrap_servers=self._bootstrap_servers,
                request_timeout_ms=4000,
                **self._security,
            )
            await client.bootstrap()
            self._client = client
        self._cluster = await self._client.fetch_all_metadata()

    async def _clickhouse(self) -> None:
        assert self._database is not None  # noqa: S101 - only called with a database
        await self._database.command("SELECT 1")

    async def _worker_lag(self) -> None:
        assert self._worker_group is not None  # noqa: S101 - only called with a group
        if self._admin is None or self._offsets is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap_servers, **self._security)
            await admin.start()
            self._admin = admin
            offsets = AIOKafkaConsumer(bootstrap_servers=self._bootstrap_servers, **self._security)
            await offsets.start()
            self._offsets = offsets
        cluster = self._cluster
        partitions = [
            TopicPartition(topic, partition)
            for topic in self._worker_topics
            for partition in sorted(
                (cluster.partitions_for_topic(topic) if cluster is not None else None) or ()
            )
        ]
        if not partitions:
            return
        committed = await self._admin.list_consumer_group_offsets(
            self._worker_group, partitions=partitions
        )
        ends = await self._offsets.end_offsets(partitions)
        for partition in partitions:
            done = committed.get(partition)
            position = done.offset if done is not None and done.offset >= 0 else 0
            metrics.WORKER_CONSUMER_LAG.labels(partition.topic, partition.partition).set(
                max(0, ends[partition] - position)
            )
