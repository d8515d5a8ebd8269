"""Reviewing the quarantine: listing, showing and counting dead letters.

Every query takes a `QueryRunner`, so the same code reads through a running
`up` (whose process holds chDB) or straight from the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sinks.database import QueryRunner, in_array

__all__ = [
    "QuarantineFilter",
    "letters_by_id",
    "letters_with_ids",
    "list_letters",
    "show_letter",
    "stats",
    "statuses_since",
    "landed",
]


_COLUMNS = (
    "id, reasons, messages, original, source, source_kind, source_id, line, status, "
    "resolution, first_seen, last_seen"
)


@dataclass(frozen=True)
class QuarantineFilter:
    reason: str | None = None
    source: str | None = None
    """A piece of the source's name, or the start of its content hash."""
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """The WHERE clause and its bound parameters; user text never enters the SQL."""
        clauses = ["1"]
        parameters: dict[str, Any] = {}
        if self.reason:
            clauses.append("has(reasons, {reason:String})")
            parameters["reason"] = self.reason
        if self.source:
            clauses.append(
                "(positionCaseInsensitive(source, {source:String}) > 0 "
                "OR startsWith(source_id, lower({source:String})))"
            )
            parameters["source"] = self.source
        if self.status:
            clauses.append("status = {status:String}")
            parameters["status"] = self.status
        if self.since:
            clauses.append("last_seen >= {since:DateTime64(3, 'UTC')}")
            parameters["since"] = _clickhouse_time(self.since)
        if self.until:
            clauses.append("last_seen < {until:DateTime64(3, 'UTC')}")
            parameters["until"] = _clickhouse_time(self.until)
        return " AND ".join(clauses), parameters


def _clickhouse_time(moment: datetime) -> str:
    """As ClickHouse reads a DateTime64 parameter; the same over HTTP and in process."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def list_letters(
    run: QueryRunner, database: str, where: QuarantineFilter, limit: int
) -> list[dict[str, Any]]:
    clause, parameters = where.where()
    return await run(
        f"SELECT {_COLUMNS} FROM {database}.quarantine FINAL WHERE {clause} "
        "ORDER BY last_seen DESC, source, line LIMIT {limit:UInt32}",
        {**parameters, "limit": limit},
    )


async def show_letter(run: QueryRunner, database: str, letter_id: str) -> dict[str, Any] | None:
    found = await letters_with_ids(run, database, [letter_id])
    return found[0] if found else None


async def letters_with_ids(run: QueryRunner, database: str, ids: list[str]) -> list[dict[str, Any]]:
    return await run(
        f"SELECT {_COLUMNS} FROM {database}.quarantine FINAL "
        f"WHERE {in_array('id', 'ids', 'String')}",
        {"ids": ids},
    )


async def stats(run: QueryRunner, database: str, where: QuarantineFilter) -> dict[str, Any]:
    """Counts per reason (a row with two reasons counts for both) and per source."""
    clause, parameters = where.where()
    by_reason = await run(
        f"SELECT reason, count() AS rows FROM {database}.quarantine FINAL "
        f"ARRAY JOIN reasons AS reason WHERE {clause} GROUP BY reason ORDER BY rows DESC, reason",
        parameters,
    )
    by_source = await run(
        f"SELECT source, count() AS rows FROM {database}.quarantine FINAL "
        f"WHERE {clause} GROUP BY source ORDER BY rows DESC, source",
        parameters,
    )
    total = await run(
        f"SELECT count() AS rows FROM {database}.quarantine FINAL WHERE {clause}", parameters
    )
    return {
        "total": int(total[0]["rows"]),
        "by_reason": {row["reason"]: int(row["rows"]) for row in by_reason},
        "by_source": {row["source"]: int(row["rows"]) for row in by_source},
    }


async def letters_by_id(
    run: QueryRunner, database: str, where: QuarantineFilter, page: int = 10_000
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every matching row, in pages ordered by id, so memory stays bounded."""
    clause, parameters = where.where()
    after = ""
    while True:
        rows = await run(
            f"SELECT {_COLUMNS} FROM {database}.quarantine FINAL "
            f"WHERE {clause} AND id > {{after:String}} ORDER BY id LIMIT {{page:UInt32}}",
            {**parameters, "after": after, "page": page},
        )
        if not rows:
            return
        yield rows
        after = rows[-1]["id"]


async def statuses_since(
    run: QueryRunner, database: str, ids: list[str], since: datetime
) -> dict[str, str]:
    """The status of each of these rows that was updated since `since`."""
    rows = await run(
        f"SELECT id, status FROM {database}.quarantine FINAL "
        f"WHERE {in_array('id', 'ids', 'String')} "
        "AND last_seen >= {since:DateTime64(3, 'UTC')}",
        {"ids": ids, "since": _clickhouse_time(since)},
    )
    return {row["id"]: row["status"] for row in rows}


async def landed(
    run: QueryRunner, database: str, rows: set[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Which of these (source id, line) rows are in `sales` or `duplicates` now."""
    if not rows:
        return set()
    parameters = {
        "sources": sorted({source for source, _ in rows}),
        "lines": sorted({line for _, line in rows}),
    }
    found = await run(
        " UNION ALL ".join(
            f"SELECT source_id, line FROM {database}.{table} "
            f"WHERE {in_array('source_id', 'sources', 'String')} "
            f"AND {in_array('line', 'lines', 'UInt64')}"
            for table in ("sales", "duplicates")
        ),
        parameters,
    )
    return rows & {(row["source_id"], int(row["line"])) for row in found}
