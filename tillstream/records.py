"""Record contracts: what travels on each topic, shared by every component.

Raw chunks are internal; clean sales, dead letters and duplicates are public
contracts (see docs/topics.md). Values that must stay exact (money, discounts)
travel as decimal strings, never as JSON floats.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_HEADER",
    "SCHEMA_HEADERS",
    "CLEAN_FIELDS",
    "ReasonCode",
    "SourceRef",
    "RawChunk",
    "QuarantineStatus",
    "RowOutcome",
    "dead_letter_id",
    "encode",
    "decode",
]

SCHEMA_VERSION = 1
SCHEMA_VERSION_HEADER = "tillstream-schema-version"
SCHEMA_HEADERS = [(SCHEMA_VERSION_HEADER, str(SCHEMA_VERSION).encode())]
"""The headers every message of a public topic carries."""

CLEAN_FIELDS: tuple[str, ...] = (
    "order_id",
    "fingerprint",
    "sold_at",
    "product",
    "category",
    "region",
    "store_id",
    "quantity",
    "unit_price",
    "discount",
    "revenue",
    "currency",
    "customer_email",
    "source",
    "source_kind",
    "source_id",
    "line",
    "seen_at",
    "ingested_at",
    "late_windows",
)
"""Fields of a `sales.clean` message, in order; the contract is docs/topics.md. The
cleaning stage writes all but the last, which dedupe adds once it has judged lateness."""


class ReasonCode(StrEnum):
    """Why a row was quarantined. A closed list: consumers may switch on it."""

    MISSING_ORDER_ID = "missing_order_id"
    MISSING_PRODUCT = "missing_product"
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_PRICE = "invalid_price"
    INVALID_DISCOUNT = "invalid_discount"
    INVALID_DATE = "invalid_date"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    UNPARSEABLE_ROW = "unparseable_row"
    MESSAGE_TOO_LARGE = "message_too_large"
    """Valid, but too large once cleaned for the broker to take."""


class QuarantineStatus(StrEnum):
    """Where a quarantined row stands; the latest message for an id wins."""

    QUARANTINED = "quarantined"
    REPLAYED = "replayed"
    """Cleaned again after a rule fix, and valid this time."""
    RESOLVED = "resolved"
    DISCARDED = "discarded"


class RowOutcome(StrEnum):
    """Where a row read from a source ended: every row ends in exactly one."""

    CLEAN = "clean"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Provenance of a chunk: which source, which content, which name it had."""

    kind: str
    """`file` or `poll`."""
    id: str
    """Content SHA-256 for a file; poller name and cursor for a poll."""
    name: str
    """The path the file had when it was read, or the poller's name."""


@dataclass(frozen=True, slots=True)
class RawChunk:
    """A chunk of rows from one source: the unit on `sales.raw`.

    Many rows per message is what makes the pipeline fast: Faust pays a fixed
    cost per event, pandas cleans a whole chunk column-wise.
    """

    source: SourceRef
    seq: int
    columns: list[str]
    rows: list[list[str | None]]
    lines: list[int]
    unparseable: list[tuple[int, str]] = field(default_factory=list)
    seen_at: float = 0.0
    """Unix time the source was first seen, for end-to-end latency."""
    release_status: str | None = None
    """Set when quarantined rows are sent again (`replayed`, or `resolved` for a hand
    correction): the status the valid ones leave the quarantine with."""
    release_resolution: dict[str, str] | None = None
    """Who released them, why and when, kept with each released row (a hand correction)."""

    def to_json(self) -> bytes:
        return encode(
            {
                "source": {
                    "kind": self.source.kind,
                    "id": self.source.id,
                    "name": self.source.name,
                },
                "seq": self.seq,
                "columns": self.columns,
                "rows": self.rows,
                "lines": self.lines,
                "unparseable": self.unparseable,
                "seen_at": self.seen_at,
                "release_status": self.release_status,
                "release_resolution": self.release_resolution,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> RawChunk:
        raw = decode(data)
        return cls(
            source=SourceRef(**raw["source"]),
            seq=raw["seq"],
            columns=raw["columns"],
            rows=raw["rows"],
            lines=raw["lines"],
            unparseable=[(line, text) for line, text in raw["unparseable"]],
            seen_at=raw["seen_at"],
            release_status=raw.get("release_status"),
            release_resolution=raw.get("release_resolution"),
        )


def dead_letter_id(source_id: str, line: int) -> str:
    """Stable id of a quarantined row: the same row always gets the same id."""
    return hashlib.blake2b(f"{source_id}:{line}".encode(), digest_size=12).hexdigest()


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes) -> Any:
    return json.loads(data)
