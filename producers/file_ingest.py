"""FileIngestor: one ready file, from the inbox to `sales.raw` to the archive.

The file's identity is its content hash, so a file is processed once whatever
its name. It moves to the archive only when the history says every row is
accounted for in ClickHouse; until then it stays in the inbox, so a crash at
any point means it is read again at start-up (and its rows replace themselves).

What cannot be read (a link, a pipe, a file without read permission) is refused
like an unreadable file: recorded as failed, under an id made from its name and
inode since it has no content to hash, and moved (never its target) to failed/.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from processors.cleaning import map_columns
from producers.publisher import KafkaPublisher
from producers.readers import RowChunk, UnreadableFileError, read_chunks, sha256_of
from producers.source_publisher import MAX_CHUNK_MESSAGE_BYTES, SourcePublisher
from sinks.history import IngestionHistory, SourceStatus
from tillstream import metrics
from tillstream.records import SourceRef
from tillstream.settings import CleaningRules, WatchConfig

__all__ = ["MAX_CHUNK_MESSAGE_BYTES", "FileIngestor"]

log = logging.getLogger(__name__)

MIN_RECOGNISED_COLUMNS = 2
ERROR_SUFFIX = ".error.txt"


def _destination(folder: Path, path: Path, source_id: str) -> Path:
    """Keep the name; on a clash, add the content hash so nothing is overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if os.path.lexists(target):
        target = folder / _fitting_name(folder, path.stem, f".{source_id[:12]}{path.suffix}")
    return target


def _fitting_name(folder: Path, stem: str, suffix: str) -> str:
    """`stem + suffix`, the stem shortened if the name would exceed the file system's limit."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    room = limit - len(os.fsencode(suffix))
    encoded = os.fsencode(stem)
    if len(encoded) > room:
        stem = os.fsdecode(encoded[:room])
    return stem + suffix


def _display_name(path: Path) -> str:
    """The path as text that can be stored and sent: bytes that are not UTF-8 as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _printable(text: str) -> str:
    """For a log line: a newline in a file name must not start a line of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _refused_id(path: Path) -> str:
    """A stable id for an entry that cannot be hashed: a link, a pipe, an unreadable file."""
    status = os.lstat(path)
    identity = b"\0".join(
        [b"refused", os.fsencode(path.name), b"%d" % status.st_ino, b"%d" % status.st_mtime_ns]
    )
    return hashlib.sha256(identity).hexdigest()


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
        self._sources = SourcePublisher(publisher, raw_topic, history)
        self._history = history

    async def ingest(self, path: Path) -> SourceStatus | None:
        """Process one file; return its final status, or None if it vanished."""
        seen_at = datetime.now(UTC)
        refusal: str | None = None
        try:
            try:
                source_id = await asyncio.to_thread(sha256_of, path)
            except UnreadableFileError as exc:
                refusal = str(exc)
                source_id = _refused_id(path)
        except OSError as exc:
            log.warning("cannot read %s: %s", _printable(str(path)), exc)
            return None
        entry = await self._history.get(source_id)
        if entry is not None and entry.status is not SourceStatus.PROCESSING:
            log.info(
                "file %s has the content of %s (%s); not processing it again",
                _printable(path.name),
                _printable(entry.source_name),
                entry.status,
            )
            folder = (
                self._config.archive if entry.status is SourceStatus.DONE else self._config.failed
            )
            self._move(path, folder, source_id, entry.error or None)
            metrics.FILES.labels("already_seen").inc()
            return entry.status
        source = SourceRef(kind="file", id=source_id, name=_display_name(path))
        if entry is None:
            entry = await self._history.start(source, seen_at)
        else:
            log.info(
                "resuming file %s id=%s after a restart", _printable(path.name), source_id[:12]
            )
        try:
            if refusal is not None:
                raise UnreadableFileError(refusal)
            rows = await self._publish(path, source, seen_at.timestamp())
        except UnreadableFileError as exc:
            await self._history.fail(entry, str(exc))
            self._move(path, self._config.failed, source_id, str(exc))
            metrics.FILES.labels("failed").inc()
            log.warning(
                "file failed name=%s id=%s reason=%s",
                _printable(path.name),
                source_id[:12],
                _printable(str(exc)),
            )
            return SourceStatus.FAILED
        entry = await self._history.finish_reading(entry, rows)
        log.info("file read name=%s id=%s rows=%d", _printable(path.name), source_id[:12], rows)
        await self._sources.wait_until_done(source_id)
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
            published = await self._sources.publish_chunk(source, chunk, seq, seen_at)
            metrics.WATCHER_CHUNKS_PUBLISHED.inc(published)
            seq += published
            rows += len(chunk.rows) + len(chunk.unparseable)
        metrics.WATCHER_ROWS_READ.inc(rows)
        return rows

    def _check_header(self, chunk: RowChunk) -> None:
        recognised = map_columns(chunk.columns, self._rules)
        if len(recognised) < MIN_RECOGNISED_COLUMNS:
            shown = ", ".join(repr(name) for name in chunk.columns[:8])
            raise UnreadableFileError(f"no recognisable header: columns {shown}")

    def sources_done(self, source_ids: Iterable[str]) -> None:
        """Told by a sink in the same process, so a file need not wait for the next poll."""
        self._sources.sources_done(source_ids)

    def _move(self, path: Path, folder: Path, source_id: str, error: str | None) -> None:
        """Move the entry itself (a link stays a link); a failure's reason goes beside it."""
        try:
            target = _destination(folder, path, source_id)
            shutil.move(path, target)
        except OSError as exc:
            log.error("cannot move %s to %s: %s; will retry", _printable(str(path)), folder, exc)
            return
        if error is None:
            return
        sidecar = folder / _fitting_name(folder, target.name, ERROR_SUFFIX)
        try:
            sidecar.write_text(error + "\n", encoding="utf-8")
        except OSError as exc:
            log.error("cannot write %s: %s", _printable(str(sidecar)), exc)


def _next_chunk(chunks: Iterator[RowChunk]) -> RowChunk | None:
    return next(chunks, None)
