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

__all__ = ["ReplayOutcome", "ReplayPlan", "plan_replay", "replay_quarantine"]


@dataclass(frozen=True)
class ReplayPlan:
    chunks: list[RawChunk]
    rows: int
    not_replayable: int
    """Rows that could not be split into fields when received: nothing to clean again."""


def plan_replay(letters: Iterable[dict[str, Any]], chunk_rows: int) -> ReplayPlan:
    """Raw chunks of quarantined rows, grouped by source, in line order."""
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
                    release_status=str(QuarantineStatus.REPLAYED),
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
        for chunk in plan.chunks:
            await publisher.publish(raw_topic, [Message(chunk.source.id.encode(), chunk.to_json())])
            for line in chunk.lines:
                sent[dead_letter_id(chunk.source.id, line)] = (chunk.source.id, line)
    deadline = time.monotonic() + wait_seconds
    statuses: dict[str, str] = {}
    while True:
        statuses = await statuses_since(run, database, list(sent), started)
        released = {
            sent[i] for i, status in statuses.items() if status == QuarantineStatus.REPLAYED
        }
        complete = len(statuses) == len(sent) and await landed(run, database, released) == released
        if complete or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    counts = Counter(statuses.values())
    return ReplayOutcome(len(sent), not_replayable, dict(counts), complete)
