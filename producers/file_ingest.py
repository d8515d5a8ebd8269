"""FileIngestor: one ready file, from the inbox to `sales.raw` to the archive.

The file's identity is its content hash, so a file is processed once whatever
its name. It moves to the archive only when the history says every row is
accounted for in ClickHouse; until then it stays in the inbox, so a crash at
any point means it is read again at start-up (and its rows replace themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from processors.cleaning import map_columns
from producers.publisher import KafkaPublisher, Message
from producers.readers import RowChunk, UnreadableFileError, read_chunks, sha256_of
from sinks.history import HistoryEntry, IngestionHistory, SourceStatus
from tillstream import metrics
from tillstream.records import RawChunk, SourceRef
from tillstream.settings import CleaningRules, WatchConfig

__all__ = ["FileIngestor"]

log = logging.getLogger(__name__)

DONE_POLL_SECONDS = 1.0
MIN_RECOGNISED_COLUMNS = 2


def _destination(folder: Path, path: Path, source_id: str) -> Path:
    """Keep the name; on a clash, add the content hash so nothing is overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{source_id[:12]}{path.suffix}"
    return target


class FileIngestor:
    def __init__(
        self,
        config: WatchConfig,
        rules: CleaningRules,
        publisher: KafkaPublisher,
        raw_topic: str,
        history: IngestionHistory,
    ) -> None:
        self._config = config
        self._rules = rules
        self._publisher = publisher
        self._raw_topic = raw_topic
        self._history = history
        self._done: dict[str, asyncio.Event] = {}

    async def ingest(self, path: Path) -> SourceStatus | None:
        """Process one file; return its final status, or None if it vanished."""
        seen_at = datetime.now(UTC)
        try:
            source_id = await asyncio.to_thread(sha256_of, path)
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            return None
        entry = await self._history.get(source_id)
        if entry is not None and entry.status is not SourceStatus.PROCESSING:
            log.info(
                "file %s has the content of %s (%s); not processing it again",
                path.name,
                entry.source_name,
                entry.status,
            )
            folder = (
                self._config.archive if entry.status is SourceStatus.DONE else self._config.failed
            )
            self._move(path, folder, source_id, entry.error or None)
            metrics.FILES.labels("already_seen").inc()
            return entry.status
        source = SourceRef(kind="file", id=source_id, name=str(path))
        if entry is None:
            entry = await self._history.start(source, seen_at)
        else:
            log.info("resuming file %s id=%s after a restart", path.name, source_id[:12])
        try:
            rows = await self._publish(path, source, seen_at.timestamp())
        except UnreadableFileError as exc:
            await self._history.fail(entry, str(exc))
            self._move(path, self._config.failed, source_id, str(exc))
            metrics.FILES.labels("failed").inc()
            log.warning("file failed name=%s id=%s reason=%s", path.name, source_id[:12], exc)
            return SourceStatus.FAILED
        entry = await self._history.finish_reading(entry, rows)
        log.info("file read name=%s id=%s rows=%d", path.name, source_id[:12], rows)
        await self._wait_until_done(source_id)
        self._move(path, self._config.archive, source_id, None)
        metrics.FILES.labels("done").inc()
        return SourceStatus.DONE

    async def _publish(self, path: Path, source: SourceRef, seen_at: float) -> int:
        """Publish chunk by chunk; one chunk in memory at a time whatever the file size."""
        chunks = await asyncio.to_thread(read_chunks, path, self._config.chunk_rows)
        rows = 0
        seq = 0
        while (chunk := await asyncio.to_thread(_next_chunk, chunks)) is not None:
            if seq == 0:
                self._check_header(chunk)
            raw = RawChunk(
                source=source,
                seq=seq,
                columns=chunk.columns,
                rows=chunk.rows,
                lines=chunk.lines,
                unparseable=chunk.unparseable,
                seen_at=seen_at,
            )
            await self._publisher.publish(
                self._raw_topic, [Message(source.id.encode(), raw.to_json())]
            )
            seq += 1
            rows += len(chunk.rows) + len(chunk.unparseable)
            metrics.WATCHER_CHUNKS_PUBLISHED.inc()
        metrics.WATCHER_ROWS_READ.inc(rows)
        return rows

    def _check_header(self, chunk: RowChunk) -> None:
        recognised = map_columns(chunk.columns, self._rules)
        if len(recognised) < MIN_RECOGNISED_COLUMNS:
            shown = ", ".join(repr(name) for name in chunk.columns[:8])
            raise UnreadableFileError(f"no recognisable header: columns {shown}")

    def sources_done(self, source_ids: Iterable[str]) -> None:
        """Told by a sink in the same process, so a file need not wait for the next poll."""
        for source_id in source_ids:
            if (event := self._done.get(source_id)) is not None:
                event.set()

    async def _wait_until_done(self, source_id: str) -> None:
        """Until the history says done: woken by `sources_done`, or polling for a sink
        that runs in another process."""
        event = self._done.setdefault(source_id, asyncio.Event())
        started = time.monotonic()
        try:
            while True:
                entry: HistoryEntry | None = await self._history.get(source_id)
                if entry is not None and entry.status is SourceStatus.DONE:
                    return
                if time.monotonic() - started > 30:
                    started = time.monotonic()
                    log.info("waiting for file id=%s to be fully written", source_id[:12])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), DONE_POLL_SECONDS)
                event.clear()
        finally:
            self._done.pop(source_id, None)

    def _move(self, path: Path, folder: Path, source_id: str, error: str | None) -> None:
        try:
            target = _destination(folder, path, source_id)
            shutil.move(path, target)
            if error is not None:
                target.with_name(target.name + ".error.txt").write_text(
                    error + "\n", encoding="utf-8"
                )
        except OSError as exc:
            log.error("cannot move %s to %s: %s; will retry", path, folder, exc)


def _next_chunk(chunks: Iterator[RowChunk]) -> RowChunk | None:
    return next(chunks, None)
