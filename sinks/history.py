"""Ingestion history: the fate of every source, and the checkpoint of the sources.

A source is `done` only when ClickHouse accounts for every row read from it:
clean + rejected + duplicate = read. Until then it stays `processing`, and a
restart reads it again (the rows replace themselves by key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sinks.database import Database, QueryRunner, in_array, retry_while_unavailable
from tillstream.records import SourceRef

__all__ = ["SourceStatus", "HistoryEntry", "IngestionHistory", "find_source"]

WRITE_RETRY_MAX_SECONDS = 5.0
"""History rows are small: once ClickHouse is back, they should follow within seconds."""


class SourceStatus(StrEnum):
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class HistoryEntry:
    source_id: str
    source_kind: str
    source_name: str
    status: SourceStatus
    rows_read: int | None = None
    valid: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    error: str = ""
    seen_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None

    def to_row(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in self.__dataclass_fields__}
        row["status"] = str(self.status)
        row["version"] = time.time_ns()
        return row

    def to_json(self) -> dict[str, Any]:
        """For `status --json` and the HTTP API."""
        row = {name: getattr(self, name) for name in self.__dataclass_fields__}
        row["status"] = str(self.status)
        for name in ("seen_at", "started_at", "finished_at"):
            row[name] = row[name].isoformat() if row[name] else None
        return row


_COLUMNS = tuple(HistoryEntry.__dataclass_fields__)


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class IngestionHistory:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._table = f"{database.name}.ingestion_history"

    async def _write(self, entry: HistoryEntry) -> None:
        row = entry.to_row()
        names = list(row)
        await self._db.run(lambda client: client.insert(self._table, [list(row.values())], names))

    async def _save(self, entry: HistoryEntry) -> None:
        """A write of the ingestor's, which cannot go on without it: waits out an
        unavailable ClickHouse (a versioned row may then be written twice)."""
        await retry_while_unavailable(
            lambda: self._write(entry),
            f"ingestion history write for {entry.source_id[:12]}",
            WRITE_RETRY_MAX_SECONDS,
        )

    async def _select(
        self, where: str, parameters: dict[str, Any], limit: int
    ) -> list[HistoryEntry]:
        rows = await self._db.records(
            f"SELECT {', '.join(_COLUMNS)} FROM {self._table} FINAL WHERE {where} "
            f"ORDER BY started_at DESC LIMIT {int(limit)}",
            parameters,
        )
        return [
            HistoryEntry(
                **{
                    **row,
                    "status": SourceStatus(row["status"]),
                    "rejected_by_reason": dict(row["rejected_by_reason"]),
                    "seen_at": _utc(row["seen_at"]),
                    "started_at": _utc(row["started_at"]),
                    "finished_at": _utc(row["finished_at"]),
                }
            )
            for row in rows
        ]

    async def get(self, source_id: str) -> HistoryEntry | None:
        found = await self._select("source_id = {id:String}", {"id": source_id}, 1)
        return found[0] if found else None

    async def recent(self, limit: int = 50) -> list[HistoryEntry]:
        return await self._select("1", {}, limit)

    async def start(
        self, source: SourceRef, seen_at: datetime, started_at: datetime | None = None
    ) -> HistoryEntry:
        entry = HistoryEntry(
            source_id=source.id,
            source_kind=source.kind,
            source_name=source.name,
            status=SourceStatus.PROCESSING,
            seen_at=seen_at,
            started_at=started_at or datetime.now(UTC),
        )
        await self._save(entry)
        return entry

    async def finish_reading(self, entry: HistoryEntry, rows_read: int) -> HistoryEntry:
        entry = replace(entry, rows_read=rows_read)
        await self._save(entry)
        return entry

    async def fail(self, entry: HistoryEntry, error: str) -> HistoryEntry:
        entry = replace(
            entry, status=SourceStatus.FAILED, error=error, finished_at=datetime.now(UTC)
        )
        await self._save(entry)
        return entry

    async def finish(self, entry: HistoryEntry) -> HistoryEntry:
        """Done, with the counts given: for a source the ingestor accounts for itself."""
        entry = replace(entry, status=SourceStatus.DONE, finished_at=datetime.now(UTC))
        await self._save(entry)
        return entry

    async def reconcile(self) -> list[HistoryEntry]:
        """Mark done every fully read source whose rows are all accounted for."""
        pending = await self._select("status = 'processing' AND rows_read IS NOT NULL", {}, 1000)
        if not pending:
            return []
        counts = await self._counts([entry.source_id for entry in pending])
        finished = []
        for entry in pending:
            valid, rejected, by_reason, duplicates = counts.get(entry.source_id, (0, 0, {}, 0))
            updated = replace(
                entry,
                valid=valid,
                rejected=rejected,
                rejected_by_reason=by_reason,
                duplicates=duplicates,
            )
            if valid + rejected + duplicates == entry.rows_read:
                updated = replace(updated, status=SourceStatus.DONE, finished_at=datetime.now(UTC))
                finished.append(updated)
            if updated != entry:
                await self._write(updated)
        return finished

    async def _counts(
        self, source_ids: list[str]
    ) -> dict[str, tuple[int, int, dict[str, int], int]]:
        """Distinct lines per source, which a redelivered row does not change, from
        the bitmaps of `source_lines` (sinks/schema.py)."""
        found = await self._db.rows(
            "SELECT source_id, outcome, reason, groupBitmapMerge(lines) "
            f"FROM {self._db.name}.source_lines WHERE {in_array('source_id', 'ids', 'String')} "
            "GROUP BY source_id, outcome, reason",
            {"ids": source_ids},
        )
        lines: dict[tuple[str, str], int] = {}
        reasons: dict[str, dict[str, int]] = {}
        for source_id, outcome, reason, count in found:
            if reason:
                reasons.setdefault(source_id, {})[reason] = count
            else:
                lines[source_id, outcome] = count
        return {
            source_id: (
                lines.get((source_id, "valid"), 0),
                lines.get((source_id, "rejected"), 0),
                reasons.get(source_id, {}),
                lines.get((source_id, "duplicate"), 0),
            )
            for source_id in source_ids
        }


async def find_source(run: QueryRunner, database: str, source_id: str) -> dict[str, Any] | None:
    """Name and status of a source already in the history, if it is."""
    rows = await run(
        f"SELECT source_name, status FROM {database}.ingestion_history FINAL "
        "WHERE source_id = {id:String}",
        {"id": source_id},
    )
    return rows[0] if rows else None
