"""Discarding quarantined rows on purpose, saying who and why.

A discard is one more message on `sales.dlq` for the row's id, carrying the
row as it stands with status `discarded` and a `resolution` (by, why, at):
the latest message for an id wins, in the table and for any consumer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from processors.chunks import dead_letter, isoformat
from producers.publisher import Message
from tillstream.records import QuarantineStatus, SourceRef

__all__ = ["discard_message"]


def discard_message(letter: dict[str, Any], by: str, why: str, now: datetime) -> Message:
    """`letter` is a quarantine row as `sinks.quarantine` reads it."""
    first_seen = letter["first_seen"]
    if isinstance(first_seen, str):
        first_seen = datetime.fromisoformat(first_seen)
    return dead_letter(
        SourceRef(letter["source_kind"], letter["source_id"], letter["source"]),
        int(letter["line"]),
        letter["original"],
        list(letter["reasons"]),
        dict(letter["messages"]),
        now,
        extra={
            "first_seen": isoformat(first_seen.replace(tzinfo=first_seen.tzinfo or UTC)),
            "resolution": {"by": by, "why": why, "at": isoformat(now)},
        },
        status=QuarantineStatus.DISCARDED,
    )
