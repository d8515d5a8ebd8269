"""The Poller against an in-process API, with the history and Kafka in memory: the
cursor waits for accounting, and what a page must not do fails the run with a reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from producers import poller as poller_module
from producers.poller import Poller, state_file
from producers.publisher import KafkaPublisher, Message
from producers.source_publisher import SourcePublisher
from sinks.history import HistoryEntry, IngestionHistory, SourceStatus
from tillstream.records import RawChunk, SourceRef
from tillstream.settings import PollerConfig, default_rules

SECRET = "tok-5e3c7a9b1d"  # noqa: S105 - asserted never to leak


class MemoryKafka:
    def __init__(self) -> None:
        self.chunks: list[RawChunk] = []

    async def publish(self, topic: str, messages: list[Message]) -> int:
        self.chunks += [RawChunk.from_json(m.value or b"") for m in messages]
        return len(messages)


class MemoryHistory:
    """Runs are accounted for (all rows valid) once `accounting` is set."""

    def __init__(self) -> None:
        self.entries: dict[str, HistoryEntry] = {}
        self.accounting = asyncio.Event()
        self.accounting.set()

    async def get(self, source_id: str) -> HistoryEntry | None:
        entry = self.entries.get(source_id)
        if entry and entry.rows_read is not None and self.accounting.is_set():
            entry = replace(entry, status=SourceStatus.DONE, valid=entry.rows_read)
            self.entries[source_id] = entry
        return entry

    async def start(
        self, source: SourceRef, seen_at: datetime, started_at: datetime | None = None
    ) -> HistoryEntry:
        entry = HistoryEntry(source.id, source.kind, source.name, SourceStatus.PROCESSING)
        self.entries[source.id] = entry
        return entry

    async def finish_reading(self, entry: HistoryEntry, rows_read: int) -> HistoryEntry:
        self.entries[entry.source_id] = replace(entry, rows_read=rows_read)
        return self.entries[entry.source_id]

    async def fail(self, entry: HistoryEntry, error: str) -> HistoryEntry:
        self.entries[entry.source_id] = replace(entry, status=SourceStatus.FAILED, error=error)
        return self.entries[entry.source_id]


Handler = Callable[[web.Request], Any]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Any]]:
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/sales", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/sales"))

    yield start
    for server in servers:
        await server.close()


def make_poller(
    tmp_path: Path, url: str, history: MemoryHistory, kafka: MemoryKafka, **settings: Any
) -> Poller:
    config = PollerConfig(
        name="shop",
        url=url,
        auth={"kind": "bearer", "secret_env": "UNUSED"},
        backoff_seconds=0.01,
        **settings,
    )
    sources = SourcePublisher(
        cast(KafkaPublisher, kafka), "sales.raw", cast(IngestionHistory, history)
    )
    return Poller(config, SecretStr(SECRET), default_rules(), sources, tmp_path)


def sale(n: int) -> dict[str, Any]:
    return {"order_id": f"A-{n}", "product": "Blender", "qty": 1, "price": 9.5, "id": n}


async def test_the_cursor_moves_only_once_the_run_is_accounted_for(
    tmp_path: Path, serve: Callable[[Handler], Any]
) -> None:
    async def sales(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {SECRET}"
        since = int(request.query.get("since_id", "0"))
        return web.json_response([sale(n) for n in range(since + 1, 4)])

    history, kafka = MemoryHistory(), MemoryKafka()
    poller = make_poller(
        tmp_path, await serve(sales), history, kafka, cursor={"field": "id", "param": "since_id"}
    )
    history.accounting.clear()
    run = asyncio.create_task(poller.poll_once())
    while not kafka.chunks:
        await asyncio.sleep(0.01)
    state = json.loads(state_file(tmp_path, "shop").read_text())
    assert state["cursor"] is None and state["pending"]["next_cursor"] == "3"

    history.accounting.set()
    entry = await run
    assert (entry.status, entry.rows_read) == (SourceStatus.DONE, 3)
    assert json.loads(state_file(tmp_path, "shop").read_text()) == {"cursor": "3", "pending": None}
    [chunk] = kafka.chunks
    assert (chunk.source.kind, chunk.source.name, chunk.lines) == ("poll", "shop", [1, 2, 3])
    assert chunk.columns[:4] == ["order_id", "product", "quantity", "unit_price"]

    assert (await poller.poll_once()).rows_read == 0  # since_id=3: nothing new


async def test_a_next_link_to_another_host_is_not_followed(
    tmp_path: Path, serve: Callable[[Handler], Any]
) -> None:
    async def sales(request: web.Request) -> web.Response:
        link = '<http://elsewhere.invalid/sales?page=2>; rel="next"'
        return web.json_response([sale(1)], headers={"Link": link})

    history, kafka = MemoryHistory(), MemoryKafka()
    poller = make_poller(tmp_path, await serve(sales), history, kafka, pagination={"style": "link"})
    entry = await poller.poll_once()
    assert entry.status is SourceStatus.FAILED
    assert entry.error.startswith("page 1: the next link leaves http://127.0.0.1:")
    assert kafka.chunks == [] and not state_file(tmp_path, "shop").exists()


async def test_a_page_too_large_to_hold_fails_the_run(
    tmp_path: Path, serve: Callable[[Handler], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poller_module, "MAX_PAGE_BYTES", 2**20)

    async def sales(request: web.Request) -> web.Response:
        return web.json_response([sale(n) for n in range(20_000)])

    history, kafka = MemoryHistory(), MemoryKafka()
    entry = await make_poller(tmp_path, await serve(sales), history, kafka).poll_once()
    assert (entry.status, entry.error) == (SourceStatus.FAILED, "page 1 is larger than 1 MiB")


async def test_no_error_carries_the_secret(
    tmp_path: Path, serve: Callable[[Handler], Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A server that answers 500 and puts what it was sent into its error body."""

    async def sales(request: web.Request) -> web.Response:
        return web.Response(status=500, text=request.headers["Authorization"])

    history, kafka = MemoryHistory(), MemoryKafka()
    url = await serve(sales)
    entry = await make_poller(tmp_path, url, history, kafka, max_attempts=2).poll_once()
    assert (entry.status, entry.error) == (SourceStatus.FAILED, "page 1: HTTP 500 after 2 attempts")
    assert SECRET not in caplog.text
    assert "attempt 2 of 2" in caplog.text
