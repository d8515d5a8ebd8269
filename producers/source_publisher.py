"""SourcePublisher: a source's rows onto `sales.raw`, then wait until they are accounted for.

Files and poll runs are both sources: each is published as numbered `RawChunk`s
keyed by its `source_id`, recorded in the ingestion history, and its checkpoint
(a file leaving the inbox, a poller's cursor) moves only once the sink reports
clean + rejected + duplicates = read. This is that shared part.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from producers.publisher import KafkaPublisher, Message
from producers.readers import RowChunk, UnreadableFileError
from sinks.history import HistoryEntry, IngestionHistory, SourceStatus
from tillstream.records import RawChunk, SourceRef

__all__ = ["MAX_CHUNK_MESSAGE_BYTES", "SourcePublisher", "raw_messages"]

log = logging.getLogger(__name__)

DONE_POLL_SECONDS = 1.0
WAIT_LOG_SECONDS = 30.0
MAX_CHUNK_MESSAGE_BYTES = 2**20
"""Apache Kafka's default `message.max.bytes`. A raw chunk, counted with its column
names on every row (the cleaning stage's messages carry each row as a JSON object),
stays under this, so what is made from it fits a broker left at its defaults:
a larger chunk is split, and a single record larger than this fails the source."""


@dataclass(frozen=True, slots=True)
class _Part:
    """Records of a chunk on their way to one `sales.raw` message."""

    rows: list[list[str | None]]
    lines: list[int]
    unparseable: list[tuple[int, str]]

    def pieces(self, count: int) -> list[_Part]:
        """About `count` parts of as many records each, in line order."""
        count = max(2, min(count, len(self)))
        rows, bad = len(self.rows), len(self.unparseable)
        parts = [
            _Part(
                self.rows[rows * i // count : rows * (i + 1) // count],
                self.lines[rows * i // count : rows * (i + 1) // count],
                self.unparseable[bad * i // count : bad * (i + 1) // count],
            )
            for i in range(count)
        ]
        return [part for part in parts if len(part)]

    def first_line(self) -> int:
        return min(self.lines[:1] + [line for line, _ in self.unparseable[:1]])

    def __len__(self) -> int:
        return len(self.rows) + len(self.unparseable)


def raw_messages(chunk: RowChunk, source: SourceRef, seq: int, seen_at: float) -> list[bytes]:
    """The chunk as `sales.raw` values numbered from `seq`, split in line order until
    each fits `MAX_CHUNK_MESSAGE_BYTES`; a single record that does not fails the source."""
    names_bytes = len(json.dumps(chunk.columns, ensure_ascii=False).encode())
    pending = [_Part(chunk.rows, chunk.lines, chunk.unparseable)]
    values: list[bytes] = []
    while pending:
        part = pending.pop()
        value = RawChunk(
            source=source,
            seq=seq + len(values),
            columns=chunk.columns,
            rows=part.rows,
            lines=part.lines,
            unparseable=part.unparseable,
            seen_at=seen_at,
        ).to_json()
        size = len(value) + len(part.rows) * names_bytes
        if size <= MAX_CHUNK_MESSAGE_BYTES:
            values.append(value)
        elif len(part) == 1:
            raise UnreadableFileError(
                f"record at line {part.first_line()} is too large: {size / 2**20:.1f} MiB as "
                f"a message, the limit is {MAX_CHUNK_MESSAGE_BYTES / 2**20:.0f} MiB"
            )
        else:
            pending += reversed(part.pieces(-(-size // MAX_CHUNK_MESSAGE_BYTES)))
    return values


class SourcePublisher:
    """Publishes sources' chunks and waits for their accounting, for files and pollers alike."""

    def __init__(
        self, publisher: KafkaPublisher, raw_topic: str, history: IngestionHistory
    ) -> None:
        self._publisher = publisher
        self._raw_topic = raw_topic
        self.history = history
        self._done: dict[str, asyncio.Event] = {}

    async def publish_chunk(
        self, source: SourceRef, chunk: RowChunk, seq: int, seen_at: float
    ) -> int:
        """Publish one chunk as messages numbered from `seq`; return how many messages.

        Raises UnreadableFileError for a record too large for any message."""
        values = await asyncio.to_thread(raw_messages, chunk, source, seq, seen_at)
        await self.publish(source, values)
        return len(values)

    async def publish(self, source: SourceRef, values: list[bytes]) -> None:
        """Publish `sales.raw` values made by `raw_messages`, one message per request."""
        for value in values:
            await self._publisher.publish(self._raw_topic, [Message(source.id.encode(), value)])

    def sources_done(self, source_ids: Iterable[str]) -> None:
        """Told by a sink in the same process, so a source need not wait for the next poll."""
        for source_id in source_ids:
            if (event := self._done.get(source_id)) is not None:
                event.set()

    async def wait_until_done(self, source_id: str) -> HistoryEntry:
        """Until the history says done: woken by `sources_done`, or polling for a sink
        that runs in another process."""
        event = self._done.setdefault(source_id, asyncio.Event())
        started = time.monotonic()
        try:
            while True:
                entry = await self.history.get(source_id)
                if entry is not None and entry.status is SourceStatus.DONE:
                    return entry
                if time.monotonic() - started > WAIT_LOG_SECONDS:
                    started = time.monotonic()
                    log.info("waiting for source id=%s to be fully written", source_id[:12])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), DONE_POLL_SECONDS)
                event.clear()
        finally:
            self._done.pop(source_id, None)
