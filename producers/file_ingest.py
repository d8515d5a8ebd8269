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
import functools
import hashlib
import logging
import os
import pwd
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from processors.chunks import isoformat
from processors.cleaning import map_columns
from processors.corrections import CorrectionIntake, is_export
from producers.publisher import KafkaPublisher
from producers.readers import RowChunk, UnreadableFileError, read_chunks, sha256_of
from producers.source_publisher import MAX_CHUNK_MESSAGE_BYTES, SourcePublisher
from sinks.history import HistoryEntry, IngestionHistory, SourceStatus
from tillstream import metrics
from tillstream.records import SourceRef
from tillstream.settings import CleaningRules, WatchConfig

__all__ = ["MAX_CHUNK_MESSAGE_BYTES", "FileIngestor"]

log = logging.getLogger(__name__)

MIN_RECOGNISED_COLUMNS = 2
ERROR_SUFFIX = ".error.txt"
MOVE_RETRY_MAX_SECONDS = 30.0


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
        on_finished: Callable[[HistoryEntry], None] | None = None,
        corrections: CorrectionIntake | None = None,
    ) -> None:
        """`on_finished` hears of each source this ingestor itself brings to its final
        status (a failure, a corrected export); the sink tells of the files it finds
        done. Without `corrections`, a corrected export fails rather than be taken for
        new sales."""
        self._config = config
        self._rules = rules
        self._sources = SourcePublisher(publisher, raw_topic, history)
        self._history = history
        self._on_finished = on_finished
        self._corrections = corrections
        self._unmoved: dict[Path, tuple[int, float]] = {}
        """Files done or failed that could not leave the inbox yet: failed tries so far,
        and when to try again (backing off, so a large file is not hashed over and over)."""

    async def ingest(self, path: Path) -> SourceStatus | None:
        """Process one file; return its final status, or None if it vanished or waits
        for its next try to leave the inbox."""
        if path in self._unmoved and time.monotonic() < self._unmoved[path][1]:
            return None
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
            if path not in self._unmoved:
                log.info(
                    "file %s has the content of %s (%s); not processing it again",
                    _printable(path.name),
                    _printable(entry.source_name),
                    entry.status,
                )
                metrics.FILES.labels("already_seen").inc()
            if entry.status is SourceStatus.DONE:
                self._move(path, self._config.archive, source_id, None)
            else:
                self._move(path, self._config.failed, source_id, entry.error)
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
            chunks = self._chunks(path)
            first = await anext(chunks, None)
            if first is not None and is_export(first.columns):
                return await self._resolve(path, entry, _chained(first, chunks))
            rows = await self._publish(source, _chained(first, chunks), seen_at.timestamp())
        except UnreadableFileError as exc:
            failed = await self._history.fail(entry, str(exc))
            self._move(path, self._config.failed, source_id, str(exc))
            self._finished(failed)
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

    async def _chunks(self, path: Path) -> AsyncIterator[RowChunk]:
        """The file's chunks, read on a thread one at a time: flat memory whatever its size."""
        config = self._config
        chunks = await asyncio.to_thread(
            functools.partial(
                read_chunks,
                path,
                config.chunk_rows,
                max_decompressed_bytes=config.max_decompressed_bytes,
                max_inflation=config.max_inflation,
            )
        )
        while (chunk := await asyncio.to_thread(_next_chunk, chunks)) is not None:
            yield chunk

    async def _publish(
        self, source: SourceRef, chunks: AsyncIterator[RowChunk], seen_at: float
    ) -> int:
        rows = 0
        seq = 0
        async for chunk in chunks:
            if seq == 0:
                self._check_header(chunk)
            published = await self._sources.publish_chunk(source, chunk, seq, seen_at)
            metrics.WATCHER_CHUNKS_PUBLISHED.inc(published)
            seq += published
            rows += len(chunk.rows) + len(chunk.unparseable)
        metrics.WATCHER_ROWS_READ.inc(rows)
        return rows

    async def _resolve(
        self, path: Path, entry: HistoryEntry, chunks: AsyncIterator[RowChunk]
    ) -> SourceStatus:
        """A corrected quarantine export: its rows resolve the quarantined rows they name,
        and the file is done once each is handled (see processors/corrections.py)."""
        if self._corrections is None:
            raise UnreadableFileError(
                "a corrected quarantine export, but this process has no database to match its ids"
            )
        resolution = {
            "by": _owner(path),
            "why": f"corrected in {path.name}",
            "at": isoformat(datetime.now(UTC)),
            "file_id": entry.source_id,
        }
        outcome = await self._corrections.resolve(chunks, resolution)
        done = await self._history.finish(
            replace(
                entry,
                rows_read=outcome.rows,
                valid=outcome.resolved,
                rejected=outcome.rejected,
                rejected_by_reason=dict(outcome.rejected_by_reason),
                duplicates=outcome.unchanged,
                error=outcome.note(),
            )
        )
        log.info(
            "corrections applied name=%s id=%s rows=%d resolved=%d still_quarantined=%d "
            "unknown=%d unchanged=%d",
            _printable(path.name),
            entry.source_id[:12],
            outcome.rows,
            outcome.resolved,
            outcome.rejected - len(outcome.unknown),
            len(outcome.unknown),
            outcome.unchanged,
        )
        self._move(path, self._config.archive, entry.source_id, None)
        self._finished(done)
        metrics.FILES.labels("done").inc()
        return SourceStatus.DONE

    def _finished(self, entry: HistoryEntry) -> None:
        if self._on_finished is not None:
            self._on_finished(entry)

    def _check_header(self, chunk: RowChunk) -> None:
        recognised = map_columns(chunk.columns, self._rules)
        if len(recognised) < MIN_RECOGNISED_COLUMNS:
            shown = ", ".join(repr(name) for name in chunk.columns[:8])
            raise UnreadableFileError(f"no recognisable header: columns {shown}")

    def sources_done(self, source_ids: Iterable[str]) -> None:
        """Told by a sink in the same process, so a file need not wait for the next poll."""
        self._sources.sources_done(source_ids)

    def _move(self, path: Path, folder: Path, source_id: str, error: str | None) -> None:
        """Move the entry itself (a link stays a link); a failure's reason goes beside it.

        A folder that cannot be written leaves the file in the inbox, said once in one
        line; the watcher offers it again, and it is moved when the folder takes it."""
        try:
            target = _destination(folder, path, source_id)
            shutil.move(path, target)
        except OSError as exc:
            tries = self._unmoved.get(path, (0, 0.0))[0] + 1
            delay = min(2.0 ** (tries - 1), MOVE_RETRY_MAX_SECONDS)
            self._unmoved[path] = (tries, time.monotonic() + delay)
            if tries == 1:
                log.error(
                    "cannot move %s to %s: %s; it stays in the inbox and is tried again",
                    _printable(str(path)),
                    folder,
                    exc.strerror or exc,
                )
            return
        if (tries := self._unmoved.pop(path, (0, 0.0))[0]) > 0:
            log.info("moved %s to %s after %d failed tries", _printable(path.name), folder, tries)
        if error is None:
            return
        sidecar = folder / _fitting_name(folder, target.name, ERROR_SUFFIX)
        try:
            sidecar.write_text(error + "\n", encoding="utf-8")
        except OSError as exc:
            log.error("cannot write %s: %s", _printable(str(sidecar)), exc)


def _next_chunk(chunks: Iterator[RowChunk]) -> RowChunk | None:
    return next(chunks, None)


async def _chained(
    first: RowChunk | None, rest: AsyncIterator[RowChunk]
) -> AsyncIterator[RowChunk]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk


def _owner(path: Path) -> str:
    """Who owns the file: the person a hand correction is put down to."""
    uid = path.lstat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
