"""From one raw chunk to the messages the cleaning stage emits.

Pure: the Faust agent is a thin shell around `clean_chunk`. Rejected rows become
dead letters; valid rows are grouped by the partition of their order id so the
dedupe stage, which owns that partition's state, receives them in one message.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processors.cleaning import CLEAN_COLUMNS, clean_rows
from producers.publisher import Message, partition_for
from tillstream.records import (
    SCHEMA_VERSION,
    QuarantineStatus,
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
    "decimal_text",
    "decode_validated",
    "isoformat",
    "isoformat_ms",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

FINGERPRINT_COLUMNS = [name for name in CLEAN_COLUMNS if name != "revenue_cents"]
"""What makes two deliveries of an order the same sale (revenue follows from the rest;
provenance is not part of it)."""


@dataclass(frozen=True, slots=True)
class ValidatedSale:
    """A clean row on its way to dedupe: its identity, its message, and the row as received."""

    order_id: str
    fingerprint: str
    line: int
    clean_json: str
    original_json: str
    """The row as received, a JSON object: what a conflict's dead letter carries."""


@dataclass(frozen=True, slots=True)
class CleanedChunk:
    dead_letters: list[Message]
    released: list[Message]
    """For a replay: the quarantine rows that are valid now, as `replayed`."""
    validated: list[Message]
    """One message per dedupe partition, carrying that partition's valid rows."""
    valid_rows: int
    rejects_by_reason: dict[str, int]


def isoformat(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def decimal_text(units: int, scale: int) -> str:
    """The exact decimal string of a non-negative integer in 1/10**scale units."""
    whole, fraction = divmod(units, 10**scale)
    return f"{whole}.{fraction:0{scale}d}"


def isoformat_ms(epoch_ms: int) -> str:
    return isoformat(_EPOCH + timedelta(milliseconds=epoch_ms))


def _decimal_text(units: pd.Series, scale: int) -> pd.Series:
    """Exact decimal strings from integers in 1/10**scale units (cents -> '12.34')."""
    divisor = 10**scale
    whole = (units // divisor).astype(str)
    fraction = (units % divisor).astype(str).str.zfill(scale)
    return whole + "." + fraction


def _iso_milliseconds(moments: pd.Series) -> pd.Series:
    """The same ISO 8601 form as `isoformat`, column-wise."""
    millis = (moments.dt.microsecond // 1000).astype(str).str.zfill(3)
    return moments.dt.strftime("%Y-%m-%dT%H:%M:%S.") + millis + "Z"


def _unique_columns(columns: list[str]) -> list[str]:
    """A header may repeat a name; pandas needs them distinct. The first keeps its name,
    a repeat gets the first `name.N` that no header has and no repeat was given."""
    taken = set(columns)
    seen: set[str] = set()
    unique = []
    for name in columns:
        distinct = name
        count = 0
        while distinct in seen or (count and distinct in taken):
            count += 1
            distinct = f"{name}.{count}"
        taken.add(distinct)
        seen.add(distinct)
        unique.append(distinct)
    return unique


def dead_letter(
    source: SourceRef,
    line: int,
    original: dict[str, Any] | str,
    reasons: list[str],
    messages: dict[str, str],
    now: datetime,
    extra: dict[str, Any] | None = None,
    status: QuarantineStatus = QuarantineStatus.QUARANTINED,
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
        "status": str(status),
        "first_seen": stamp,
        "last_seen": stamp,
        **(extra or {}),
    }
    return Message(key=letter_id.encode(), value=encode(value))


def _json_strings(values: pd.Series | str) -> pa.Array | pa.Scalar:
    """JSON string literals of a text column (each distinct value encoded once)."""
    if isinstance(values, str):
        return pa.scalar(encode_basestring(values))
    codes, uniques = pd.factorize(values, sort=False)
    literals = np.array([encode_basestring(str(value)) for value in uniques], dtype=object)
    return pa.array(literals[codes], pa.string())


def _json_numbers(values: pd.Series | pd.Index) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64).astype(str), pa.string())


def _clean_messages(
    clean: pd.DataFrame, fingerprints: pd.Series, chunk: RawChunk, now: datetime
) -> list[str]:
    """The `sales.clean` values, built column by column rather than row by row.

    Field order follows CLEAN_FIELDS; strings go through the json module's own
    escaping, so the text is what json.dumps would write, without a dict per row.
    """
    source = chunk.source
    seen_at = isoformat(datetime.fromtimestamp(chunk.seen_at, now.tzinfo))
    fields: dict[str, pa.Array | pa.Scalar] = {
        "schema_version": pa.scalar(str(SCHEMA_VERSION)),
        "order_id": _json_strings(clean["order_id"]),
        "fingerprint": _json_strings(fingerprints),
        "sold_at": _json_strings(_iso_milliseconds(clean["sold_at"])),
        "product": _json_strings(clean["product"]),
        "category": _json_strings(clean["category"]),
        "region": _json_strings(clean["region"]),
        "store_id": _json_strings(clean["store_id"]),
        "quantity": _json_numbers(clean["quantity"]),
        "unit_price": _json_strings(_decimal_text(clean["unit_price_cents"], 2)),
        "discount": _json_strings(_decimal_text(clean["discount_ppm"], 6)),
        "revenue": _json_strings(_decimal_text(clean["revenue_cents"], 2)),
        "currency": _json_strings(clean["currency"]),
        "customer_email": _json_strings(clean["customer_email"]),
        "source": _json_strings(source.name),
        "source_kind": _json_strings(source.kind),
        "source_id": _json_strings(source.id),
        "line": _json_numbers(clean.index),
        "seen_at": _json_strings(seen_at),
        "ingested_at": _json_strings(isoformat(now)),
    }
    parts: list[pa.Array | pa.Scalar] = []
    for position, (name, value) in enumerate(fields.items()):
        parts.append(pa.scalar(("{" if position == 0 else ",") + f'"{name}":'))
        parts.append(value)
    parts.append(pa.scalar("}"))
    if clean.empty:
        return []
    joined = pc.binary_join_element_wise(*parts, "")
    return joined.to_pylist()  # type: ignore[no-any-return]


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
    by_partition: dict[int, list[str]] = defaultdict(list)
    for order_id, fingerprint, line, clean_json in zip(
        clean["order_id"],
        fingerprints,
        clean.index,
        _clean_messages(clean, fingerprints, chunk, now),
        strict=True,
    ):
        original = encode(dict(zip(columns, originals[line], strict=True))).decode()
        by_partition[partition_for(order_id.encode(), partitions)].append(
            f"{encode_basestring(order_id)}\t{fingerprint}\t{line}\t{clean_json}\t{original}"
        )
    released = (
        [
            dead_letter(
                chunk.source,
                int(line),
                dict(zip(columns, originals[line], strict=True)),
                [],
                {},
                now,
                extra={"resolution": chunk.release_resolution or {}},
                status=QuarantineStatus(chunk.release_status),
            )
            for line in clean.index
        ]
        if chunk.release_status
        else []
    )
    header = encode(
        {"source": {"kind": chunk.source.kind, "id": chunk.source.id, "name": chunk.source.name}}
    )
    validated = [
        Message(
            key=f"{chunk.source.id}:{chunk.seq}:{partition}".encode(),
            value=b"\n".join([header, *(sale.encode() for sale in sales)]),
            partition=partition,
        )
        for partition, sales in sorted(by_partition.items())
    ]
    return CleanedChunk(dead_letters, released, validated, len(clean), dict(rejects_by_reason))


def decode_validated(value: bytes) -> tuple[SourceRef, list[ValidatedSale]]:
    """A `sales.validated` message: a JSON header line, then one line per sale of
    tab-separated fields (JSON escapes every tab and newline inside them)."""
    header, *lines = value.decode().split("\n")
    sales = []
    for text in lines:
        order_id, fingerprint, line, clean_json, original_json = text.split("\t", 4)
        sales.append(
            ValidatedSale(decode(order_id), fingerprint, int(line), clean_json, original_json)
        )
    return SourceRef(**decode(header.encode())["source"]), sales
