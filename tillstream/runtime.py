"""Runtime: wires the components from settings and runs them until asked to stop.

`up` is every component in one process; `watch`, `poll`, `worker` and `sink` are
one each. The code is the same: only the configuration differs (where Kafka and
ClickHouse are), and an empty bootstrap address means "start the embedded
broker", which only `up` may do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import faust

from processors.app import build_app, worker_group_id
from processors.cleaning_process import CleaningProcess
from processors.corrections import CorrectionIntake
from processors.state import restore_changelogs
from processors.transactions import Transactions
from producers.file_ingest import FileIngestor
from producers.poller import Poller
from producers.publisher import KafkaPublisher
from producers.source_publisher import SourcePublisher
from producers.watcher import FolderWatcher
from sinks.accepted_orders import accepted_orders
from sinks.clickhouse_sink import ClickHouseSink
from sinks.database import Database
from sinks.history import HistoryEntry, IngestionHistory
from sinks.schema import migrate
from tillstream import metrics
from tillstream.broker import EmbeddedBroker, supports_transactions, wait_for_metadata
from tillstream.http_api import HttpApi, read_api_url
from tillstream.kafka_security import client_options
from tillstream.notifications import Notifier, notices_for
from tillstream.probes import DependencyProbe
from tillstream.settings import ConfigError, Settings
from tillstream.topics import Topics, ensure_topics

__all__ = ["Component", "Runtime", "run_poller_once"]

log = logging.getLogger(__name__)


class Component(StrEnum):
    WATCH = "watch"
    POLL = "poll"
    WORKER = "worker"
    SINK = "sink"


ALL_COMPONENTS = frozenset(Component)


@dataclass
class _Stack:
    """What has been started, stopped in reverse order."""

    stops: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    async def close(self) -> None:
        while self.stops:
            stop = self.stops.pop()
            try:
                await stop()
            except Exception:
                log.exception("error while stopping")


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Runtime:
    def __init__(self, settings: Settings, components: frozenset[Component]) -> None:
        if settings.embedded_broker and components != ALL_COMPONENTS:
            raise ConfigError(
                "invalid setting kafka.bootstrap_servers: required to run "
                f"{', '.join(sorted(components))} as a separate component"
            )
        if settings.embedded_broker and settings.kafka.security_protocol != "PLAINTEXT":
            raise ConfigError(
                "invalid setting kafka.security_protocol: the embedded broker speaks PLAINTEXT "
                "only; set kafka.bootstrap_servers to use "
                f"{settings.kafka.security_protocol}"
            )
        self.settings = settings
        self.components = components
        self._security = client_options(settings.kafka)
        self.topics = Topics.from_config(settings.kafka)
        self.bootstrap_servers = settings.kafka.bootstrap_servers
        self.api_url = ""
        self.exactly_once = False
        self.ready = asyncio.Event()
        self._stack = _Stack()
        self._tasks: dict[Component, asyncio.Future[Any]] = {}
        """What each component runs; any of them ending ends `run`."""
        self._app: faust.App | None = None
        self._ingestor: FileIngestor | None = None
        self._poll_sources: SourcePublisher | None = None
        self.pollers: dict[str, Poller] = {}
        self._notifier = Notifier(settings.notify)
        self._database: Database | None = None
        self._history: IngestionHistory | None = None
        self._poller_secrets = (
            {c.name: c.auth.secret(f"pollers.{c.name}") for c in settings.pollers}
            if Component.POLL in components
            else {}
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Start everything, run until `stop` is set or a component fails, stop cleanly."""
        try:
            await self._start()
            self.ready.set()
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [stopper, *self._tasks.values()], return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            for task in done - {stopper}:
                task.result()
        finally:
            await self._stop()

    async def _start(self) -> None:
        settings = self.settings
        running = read_api_url(settings.data_dir)
        if running is not None:
            raise ConfigError(
                f"invalid setting data_dir: {settings.data_dir} is in use by the tillstream "
                f"serving {running}; stop it or choose another data_dir"
            )
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.embedded_broker:
            broker = EmbeddedBroker(log_file=settings.data_dir / "broker.log")
            await broker.start()
            self._stack.stops.append(broker.stop)
            self.bootstrap_servers = broker.bootstrap_servers
        else:
            await wait_for_metadata(self.bootstrap_servers, security=self._security)
        await ensure_topics(self.bootstrap_servers, settings.kafka, self.topics.all())

        self.exactly_once = await self._exactly_once()
        publisher = KafkaPublisher(
            self.bootstrap_servers,
            settings.kafka.client_id,
            idempotent=self.exactly_once,
            security=self._security,
            compression=settings.kafka.compression,
        )
        await publisher.start()
        self._stack.stops.append(publisher.stop)

        if self.components & {Component.WATCH, Component.POLL, Component.SINK}:
            self._database = await self._open_database()
            self._history = IngestionHistory(self._database)
            notifying = asyncio.create_task(self._notifier.run(), name="notifier")
            self._stack.stops.append(lambda: _cancel(notifying))

        api = HttpApi(
            settings.metrics.host,
            settings.metrics.port,
            settings.data_dir,
            self._status if self._history is not None else None,
            self._health,
            self._query if self._database is not None else None,
            self.poll_once if Component.POLL in self.components else None,
        )
        await api.start()
        self._stack.stops.append(api.stop)
        self.api_url = api.url

        if Component.SINK in self.components:
            await self._start_sink()
        if Component.WORKER in self.components:
            cleaning = CleaningProcess(settings.cleaning, settings.kafka.partitions)
            self._stack.stops.append(cleaning.stop)
            await cleaning.start()
            transactions = Transactions(
                publisher,
                worker_group_id(settings),
                self._transactional_publisher if self.exactly_once else None,
            )
            self._stack.stops.append(transactions.stop)
            self._tasks[Component.WORKER] = transactions.fenced
            app, tables = build_app(
                settings, self.bootstrap_servers, self.topics, transactions, cleaning
            )
            # Before the consumer starts: a new group whose first metadata lacks a
            # changelog topic leaves it out of the assignment, and the table's agent
            # crashes on every event until the metadata is refreshed, minutes later.
            await ensure_topics(
                self.bootstrap_servers,
                settings.kafka,
                [tables.seen.changelog_spec(), tables.aggregates.changelog_spec()],
            )
            if self._database is not None:
                restored = await restore_changelogs(
                    tables.seen,
                    tables.aggregates,
                    self.bootstrap_servers,
                    publisher,
                    self.topics.aggregates.name,
                    settings.worker.allowed_lateness_seconds * 1000,
                    accepted_orders(self._database),
                    self._security,
                )
                if restored:
                    log.info("rebuilt worker state of %d orders from ClickHouse", restored)
            await app.start()
            metrics.COMPONENT_UP.labels("worker").set(1)
            self._stack.stops.append(app.stop)
            self._app = app
        if Component.WATCH in self.components:
            await self._start_watcher(publisher)
        if Component.POLL in self.components:
            self._start_pollers(publisher)
        await self._start_probe()

    async def _start_probe(self) -> None:
        worker = Component.WORKER in self.components
        probe = DependencyProbe(
            self.bootstrap_servers,
            self._database,
            worker_group_id(self.settings) if worker else None,
            [self.topics.raw.name, self.topics.validated.name],
            security=self._security,
        )
        await probe.start()
        self._stack.stops.append(probe.stop)

    def _transactional_publisher(self, transactional_id: str) -> KafkaPublisher:
        return KafkaPublisher(
            self.bootstrap_servers,
            self.settings.kafka.client_id,
            transactional_id=transactional_id,
            security=self._security,
            compression=self.settings.kafka.compression,
        )

    async def _exactly_once(self) -> bool:
        mode = self.settings.kafka.exactly_once
        if mode == "off":
            return False
        # An id under the workers' own prefix, which a secured cluster's ACLs allow them.
        probe = f"{worker_group_id(self.settings)}-probe"
        granted = await supports_transactions(self.bootstrap_servers, probe, self._security)
        if mode == "on" and not granted:
            raise ConfigError(
                "invalid setting kafka.exactly_once: 'on', but the broker at "
                f"{self.bootstrap_servers} refuses transactional producers"
            )
        return granted

    async def _open_database(self) -> Database:
        database = Database(self.settings.clickhouse_url, self.settings.clickhouse)
        await migrate(database)
        self._stack.stops.append(database.close)
        return database

    async def _start_sink(self) -> None:
        # The sink writes from its own thread and client, apart from the history readers,
        # and reconciles late sales from another, beside its writes.
        database = Database(self.settings.clickhouse_url, self.settings.clickhouse)
        late_sales_database = Database(self.settings.clickhouse_url, self.settings.clickhouse)
        self._stack.stops += [database.close, late_sales_database.close]
        sink = ClickHouseSink(
            self.bootstrap_servers,
            f"{self.settings.kafka.group_prefix}-sink",
            self.topics,
            database,
            late_sales_database,
            self.settings.sink,
            self.settings.kafka.session_timeout_seconds,
            self.settings.kafka.rebalance_timeout_seconds,
            on_sources_done=self._sources_done,
            kafka_security=self._security,
            read_committed=self.exactly_once,
        )
        task = asyncio.create_task(sink.run(), name="sink")
        self._tasks[Component.SINK] = task

        async def stop_sink() -> None:
            sink.stop()
            await task

        self._stack.stops.append(stop_sink)

    async def _start_watcher(self, publisher: KafkaPublisher) -> None:
        assert self._history is not None and self._database is not None  # noqa: S101 - opened for WATCH above
        config = self.settings.watch
        corrections = CorrectionIntake(
            self._database.records,
            self._database.name,
            publisher,
            self.topics.raw.name,
            config.chunk_rows,
        )
        ingestor = FileIngestor(
            config,
            self.settings.cleaning,
            publisher,
            self.topics.raw.name,
            self._history,
            on_finished=self._tell,
            corrections=corrections,
        )
        self._ingestor = ingestor
        watcher = FolderWatcher(config.inbox, config.stable_seconds)
        in_flight = asyncio.Semaphore(config.max_in_flight_files)
        ingests: set[asyncio.Task[Any]] = set()

        async def ingest(path: Path) -> None:
            try:
                await ingestor.ingest(path)
            except Exception:
                log.exception("ingesting %s failed; it stays in the inbox", path)
            finally:
                watcher.release(path)
                in_flight.release()

        async def watch() -> None:
            metrics.COMPONENT_UP.labels("watcher").set(1)
            try:
                async for path in watcher.ready_files():
                    await in_flight.acquire()
                    task = asyncio.create_task(ingest(path), name=f"ingest {path.name}")
                    ingests.add(task)
                    task.add_done_callback(ingests.discard)
            finally:
                metrics.COMPONENT_UP.labels("watcher").set(0)

        task = asyncio.create_task(watch(), name="watcher")
        self._tasks[Component.WATCH] = task

        async def stop_watcher() -> None:
            for running in [task, *ingests]:
                running.cancel()
            for running in [task, *ingests]:
                with contextlib.suppress(asyncio.CancelledError):
                    await running

        self._stack.stops.append(stop_watcher)

    def _start_pollers(self, publisher: KafkaPublisher) -> None:
        """Each configured poller on its own schedule; with none, the component idles."""
        assert self._history is not None  # noqa: S101 - opened for POLL above
        self._poll_sources = SourcePublisher(publisher, self.topics.raw.name, self._history)
        self.pollers = {
            config.name: Poller(
                config,
                self._poller_secrets[config.name],
                self.settings.cleaning,
                self._poll_sources,
                self.settings.data_dir,
            )
            for config in self.settings.pollers
        }

        async def poll() -> None:
            metrics.COMPONENT_UP.labels("poller").set(1)
            try:
                await asyncio.gather(*(poller.run() for poller in self.pollers.values()))
                await asyncio.Event().wait()
            finally:
                metrics.COMPONENT_UP.labels("poller").set(0)

        task = asyncio.create_task(poll(), name="pollers")
        self._tasks[Component.POLL] = task
        self._stack.stops.append(lambda: _cancel(task))

    async def poll_once(self, name: str) -> dict[str, Any] | None:
        """One run of a poller now (`tillstream poll --once`); None if there is no such one."""
        poller = self.pollers.get(name)
        if poller is None:
            return None
        return (await poller.poll_once()).to_json()

    async def _stop(self) -> None:
        await self._stack.close()
        metrics.COMPONENT_UP.labels("worker").set(0)

    async def _status(self, limit: int) -> list[dict[str, Any]]:
        assert self._history is not None  # noqa: S101 - only registered with a history
        return [entry.to_json() for entry in await self._history.recent(limit)]

    async def _query(self, sql: str, parameters: dict[str, Any]) -> dict[str, Any]:
        assert self._database is not None  # noqa: S101 - only registered with a database
        return await self._database.read_only_query(sql, parameters)

    async def _sources_done(self, entries: list[HistoryEntry]) -> None:
        if self._ingestor is not None:
            self._ingestor.sources_done(entry.source_id for entry in entries)
        if self._poll_sources is not None:
            self._poll_sources.sources_done(entry.source_id for entry in entries)
        for entry in entries:
            self._tell(entry)

    def _tell(self, entry: HistoryEntry) -> None:
        threshold = self.settings.notify.quarantine_rate_threshold
        for notice in notices_for(entry, threshold):
            self._notifier.notify(notice)

    def _running(self, component: Component) -> bool:
        if component is Component.WORKER:
            return self._app is not None and not (self._app.crashed or self._app.should_stop)
        task = self._tasks.get(component)
        return task is not None and not task.done()

    async def _health(self) -> dict[str, Any]:
        components = {str(c): self._running(c) for c in sorted(self.components)}
        return {
            "ok": all(components.values()),
            "components": components,
            "kafka": self.bootstrap_servers,
            "clickhouse": self.settings.clickhouse_url
            if self.components & {Component.WATCH, Component.POLL, Component.SINK}
            else None,
        }


async def run_poller_once(settings: Settings, name: str) -> HistoryEntry:
    """`tillstream poll --once NAME` with no `up` running: one run in this process, against
    the external Kafka and ClickHouse whose sink accounts for it."""
    config = next((c for c in settings.pollers if c.name == name), None)
    if config is None:
        raise ConfigError(f"invalid setting pollers: no poller is named {name}")
    if settings.embedded_broker:
        raise ConfigError(
            "invalid setting kafka.bootstrap_servers: `poll --once` needs a running "
            "`tillstream up` or an external Kafka"
        )
    secret = config.auth.secret(f"pollers.{name}")
    stack = _Stack()
    try:
        security = client_options(settings.kafka)
        await wait_for_metadata(settings.kafka.bootstrap_servers, security=security)
        publisher = KafkaPublisher(
            settings.kafka.bootstrap_servers,
            settings.kafka.client_id,
            security=security,
            compression=settings.kafka.compression,
        )
        await publisher.start()
        stack.stops.append(publisher.stop)
        database = Database(settings.clickhouse_url, settings.clickhouse)
        stack.stops.append(database.close)
        await migrate(database)
        topics = Topics.from_config(settings.kafka)
        sources = SourcePublisher(publisher, topics.raw.name, IngestionHistory(database))
        poller = Poller(config, secret, settings.cleaning, sources, settings.data_dir)
        return await poller.poll_once()
    finally:
        await stack.close()
