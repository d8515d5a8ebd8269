"""Replaying quarantined rows through the current rules.

Each row goes back to `sales.raw` as it was received, under its own source and
line, so the pipeline treats it as the row it always was: a row valid now
becomes that sale (once, whatever happens to the message) and its quarantine
entry turns `replayed`; a row still bad is quarantined again under the same id
with its new reasons. Replaying again changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from producers.publisher import KafkaPublisher, Message
from sinks.database import QueryRunner
from sinks.quarantine import QuarantineFilter, landed, letters_by_id, statuses_since
from tillstream.records import QuarantineStatus, RawChunk, SourceRef, dead_letter_id

__all__ = [
    "ReplayOutcome",
    "ReplayPlan",
    "plan_replay",
    "publish_plan",
    "replay_quarantine",
    "wait_until_handled",
]


@dataclass(frozen=True)
class ReplayPlan:
    chunks: list[RawChunk]
    rows: int
    not_replayable: int
    """Rows that could not be split into fields when received: nothing to clean again."""


def plan_replay(
    letters: Iterable[dict[str, Any]],
    chunk_rows: int,
    status: QuarantineStatus = QuarantineStatus.REPLAYED,
    resolution: dict[str, str] | None = None,
) -> ReplayPlan:
    """Raw chunks of quarantined rows, grouped by source, in line order; the rows
    valid now leave the quarantine with `status` (and `resolution`, if given)."""
    by_source: dict[tuple[str, str, str], list[tuple[int, dict[str, Any]]]] = {}
    not_replayable = 0
    for letter in letters:
        original = json.loads(letter["original"])
        if not isinstance(original, dict):
            not_replayable += 1
            continue
        source = (letter["source_kind"], letter["source_id"], letter["source"])
        by_source.setdefault(source, []).append((int(letter["line"]), original))
    chunks = []
    now = time.time()
    for (kind, source_id, name), rows in by_source.items():
        rows.sort(key=lambda row: row[0])
        columns = list(dict.fromkeys(column for _, original in rows for column in original))
        for seq, start in enumerate(range(0, len(rows), chunk_rows)):
            part = rows[start : start + chunk_rows]
            chunks.append(
                RawChunk(
                    source=SourceRef(kind, source_id, name),
                    seq=seq,
                    columns=columns,
                    rows=[[original.get(column) for column in columns] for _, original in part],
                    lines=[line for line, _ in part],
                    seen_at=now,
                    release_status=str(status),
                    release_resolution=resolution,
                )
            )
    replayed = sum(len(chunk.rows) for chunk in chunks)
    return ReplayPlan(chunks, replayed, not_replayable)


@dataclass(frozen=True)
class ReplayOutcome:
    sent: int
    not_replayable: int
    statuses: dict[str, int]
    """Status of the sent rows once the pipeline has handled them (`replayed`: valid now)."""
    complete: bool
    """Whether every sent row was handled before the wait ran out."""


async def replay_quarantine(
    run: QueryRunner,
    database: str,
    where: QuarantineFilter,
    publisher: KafkaPublisher,
    raw_topic: str,
    chunk_rows: int,
    wait_seconds: float,
) -> ReplayOutcome:
    """Send every matching quarantined row again, then wait until each is handled:
    quarantined again, or `replayed` and its row in `sales` (or `duplicates`)."""
    started = datetime.now(UTC)
    sent: dict[str, tuple[str, int]] = {}
    not_replayable = 0
    pending = replace(where, status=str(QuarantineStatus.QUARANTINED))
    async for page in letters_by_id(run, database, pending):
        plan = plan_replay(page, chunk_rows)
        not_replayable += plan.not_replayable
        sent.update(await publish_plan(plan, publisher, raw_topic))
    statuses, complete = await wait_until_handled(run, database, sent, started, wait_seconds)
    counts = Counter(statuses.values())
    return ReplayOutcome(len(sent), not_replayable, dict(counts), complete)


async def publish_plan(
    plan: ReplayPlan, publisher: KafkaPublisher, raw_topic: str
) -> dict[str, tuple[str, int]]:
    """Send the plan's chunks; return the quarantine id of each row sent, with its
    source id and line."""
    sent = {}
    for chunk in plan.chunks:
        await publisher.publish(raw_topic, [Message(chunk.source.id.encode(), chunk.to_json())])
        for line in chunk.lines:
            sent[dead_letter_id(chunk.source.id, line)] = (chunk.source.id, line)
    return sent


async def wait_until_handled(
    run: QueryRunner,
    database: str,
    sent: dict[str, tuple[str, int]],
    since: datetime,
    wait_seconds: float,
) -> tuple[dict[str, str], bool]:
    """Until every sent row (quarantine id -> source id, line) is quarantined again or
    released with its row in `sales` (or `duplicates`), or `wait_seconds` ran out.
    Returns each row's status and whether all were handled."""
    deadline = time.monotonic() + wait_seconds
    while True:
        statuses = await statuses_since(run, database, list(sent), since)
        released = {
            sent[i]
            for i, status in statuses.items()
            if status in (QuarantineStatus.REPLAYED, QuarantineStatus.RESOLVED)
        }
        complete = len(statuses) == len(sent) and await landed(run, database, released) == released
        if complete or time.monotonic() >= deadline:
            return statuses, complete
        await asyncio.sleep(0.2)
