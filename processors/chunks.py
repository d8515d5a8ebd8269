"""From one raw chunk to the messages the cleaning stage emits.

Pure: the Faust agent is a thin shell around `clean_chunk`. Rejected rows become
dead letters; valid rows are grouped by the partition of their order id so the
dedupe stage, which owns that partition's state, receives them in one message.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from processors.cleaning import clean_rows
from producers.publisher import Message, partition_for
from tillstream.records import (
    SCHEMA_VERSION,
    RawChunk,
    ReasonCode,
    SourceRef,
    dead_letter_id,
    decode,
    encode,
)
from tillstream.settings import CleaningRules

__all__ = [
    "CleanedChunk",
    "ValidatedSale",
    "clean_chunk",
    "dead_letter",
    "decode_validated",
    "isoformat",
]

FINGERPRINT_COLUMNS = [
    "order_id",
    "sold_at",
    "product",
    "category",
    "region",
    "store_id",
    "quantity",
    "unit_price_cents",
    "discount_ppm",
    "currency",
    "customer_email",
]
"""What makes two deliveries of an order the same sale; provenance is not part of it."""


@dataclass(frozen=True, slots=True)
class ValidatedSale:
    """A clean row on its way to dedupe: its identity, its message, and the row as received."""

    order_id: str
    fingerprint: str
    line: int
    clean_json: str
    original: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class CleanedChunk:
    dead_letters: list[Message]
    validated: list[Message]
    """One message per dedupe partition, carrying that partition's valid rows."""
    valid_rows: int
    rejects_by_reason: dict[str, int]


def isoformat(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _decimal_text(units: pd.Series, scale: int) -> pd.Series:
    """Exact decimal strings from integers in 1/10**scale units (cents -> '12.34')."""
    divisor = 10**scale
    whole = (units // divisor).astype(str)
    fraction = (units % divisor).astype(str).str.zfill(scale)
    return whole + "." + fraction


def _unique_columns(columns: list[str]) -> list[str]:
    """A header may repeat a name; pandas needs them distinct, the first keeps its name."""
    seen: dict[str, int] = {}
    unique = []
    for name in columns:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}.{count}")
    return unique


def dead_letter(
    source: SourceRef,
    line: int,
    original: dict[str, Any] | str,
    reasons: list[str],
    messages: dict[str, str],
    now: datetime,
    extra: dict[str, Any] | None = None,
) -> Message:
    """A `sales.dlq` message: the contract is docs/topics.md."""
    letter_id = dead_letter_id(source.id, line)
    stamp = isoformat(now)
    value = {
        "schema_version": SCHEMA_VERSION,
        "id": letter_id,
        "reasons": sorted(reasons),
        "messages": messages,
        "original": original,
        "source": source.name,
        "source_kind": source.kind,
        "source_id": source.id,
        "line": line,
        "status": "quarantined",
        "first_seen": stamp,
        "last_seen": stamp,
        **(extra or {}),
    }
    return Message(key=letter_id.encode(), value=encode(value))


def _clean_messages(
    clean: pd.DataFrame, fingerprints: pd.Series, chunk: RawChunk, now: datetime
) -> list[str]:
    source = chunk.source
    table = pd.DataFrame(
        {
            "schema_version": SCHEMA_VERSION,
            "order_id": clean["order_id"],
            "fingerprint": fingerprints,
            "sold_at": clean["sold_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "product": clean["product"],
            "category": clean["category"],
            "region": clean["region"],
            "store_id": clean["store_id"],
            "quantity": clean["quantity"].astype("int64"),
            "unit_price": _decimal_text(clean["unit_price_cents"], 2),
            "discount": _decimal_text(clean["discount_ppm"], 6),
            "revenue": _decimal_text(clean["revenue_cents"], 2),
            "currency": clean["currency"],
            "customer_email": clean["customer_email"],
            "source": source.name,
            "source_kind": source.kind,
            "source_id": source.id,
            "line": clean.index.astype("int64"),
            "seen_at": isoformat(datetime.fromtimestamp(chunk.seen_at, now.tzinfo)),
            "ingested_at": isoformat(now),
        },
        index=clean.index,
    )
    return [encode(record).decode() for record in table.to_dict("records")]


def clean_chunk(
    chunk: RawChunk, rules: CleaningRules, partitions: int, now: datetime
) -> CleanedChunk:
    columns = _unique_columns(chunk.columns)
    frame = pd.DataFrame(chunk.rows, columns=columns, index=chunk.lines, dtype=object)
    result = clean_rows(frame, rules)
    originals = dict(zip(chunk.lines, chunk.rows, strict=True))

    dead_letters = [
        dead_letter(
            chunk.source,
            line,
            dict(zip(columns, originals[line], strict=True)),
            list(reasons),
            dict(messages),
            now,
        )
        for line, reasons, messages in zip(
            result.rejected.index,
            result.rejected["reasons"],
            result.rejected["messages"],
            strict=True,
        )
    ]
    dead_letters.extend(
        dead_letter(
            chunk.source,
            line,
            text,
            [ReasonCode.UNPARSEABLE_ROW],
            {"row": "fields do not match the header"},
            now,
        )
        for line, text in chunk.unparseable
    )
    rejects_by_reason: dict[str, int] = defaultdict(int)
    for reasons in result.rejected["reasons"]:
        for reason in reasons:
            rejects_by_reason[reason] += 1
    if chunk.unparseable:
        rejects_by_reason[ReasonCode.UNPARSEABLE_ROW] += len(chunk.unparseable)

    clean = result.clean
    fingerprints = pd.util.hash_pandas_object(clean[FINGERPRINT_COLUMNS], index=False).map(
        "{:016x}".format
    )
    by_partition: dict[int, list[list[Any]]] = defaultdict(list)
    for order_id, fingerprint, line, clean_json in zip(
        clean["order_id"],
        fingerprints,
        clean.index,
        _clean_messages(clean, fingerprints, chunk, now),
        strict=True,
    ):
        partition = partition_for(order_id.encode(), partitions)
        original = dict(zip(columns, originals[line], strict=True))
        by_partition[partition].append([order_id, fingerprint, int(line), clean_json, original])
    source = {"kind": chunk.source.kind, "id": chunk.source.id, "name": chunk.source.name}
    validated = [
        Message(
            key=f"{chunk.source.id}:{chunk.seq}:{partition}".encode(),
            value=encode({"source": source, "sales": sales}),
            partition=partition,
        )
        for partition, sales in sorted(by_partition.items())
    ]
    return CleanedChunk(dead_letters, validated, len(clean), dict(rejects_by_reason))


def decode_validated(value: bytes) -> tuple[SourceRef, list[ValidatedSale]]:
    message = decode(value)
    sales = [ValidatedSale(*entry) for entry in message["sales"]]
    return SourceRef(**message["source"]), sales
