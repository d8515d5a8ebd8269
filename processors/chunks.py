"""From one raw chunk to the messages the cleaning stage emits.

Pure: the Faust agent is a thin shell around `clean_chunk`. Rejected rows become
dead letters; valid rows are grouped by the partition of their order id so the
dedupe stage, which owns that partition's state, receives them in one message.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processors.cleaning import CLEAN_COLUMNS, clean_rows
from producers.publisher import Message, partitions_for
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
    "FACT_COLUMNS",
    "CleanedChunk",
    "ValidatedMessage",
    "clean_chunk",
    "dead_letter",
    "decimal_text",
    "decode_validated",
    "isoformat",
    "isoformat_ms",
    "validated_value",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

FINGERPRINT_COLUMNS = [name for name in CLEAN_COLUMNS if name != "revenue_cents"]
"""What makes two deliveries of an order the same sale (revenue follows from the rest;
provenance is not part of it)."""

FACT_COLUMNS: dict[str, type] = {
    "sold_at_ms": np.int64,
    "product": object,
    "category": object,
    "region": object,
    "store_id": object,
    "quantity": np.int64,
    "revenue_cents": np.int64,
    "discount_ppm": np.int64,
}
"""What aggregation needs of a sale, and its type (text is None where missing): carried
column-wise in each `sales.validated` message, so that dedupe need not parse every
clean value again."""


@dataclass(frozen=True, slots=True)
class ValidatedMessage:
    """A `sales.validated` message, column by column: dedupe takes hundreds of sales at
    a time, and an object per sale cost more than deduplicating it."""

    source: SourceRef
    order_ids: list[str]
    fingerprints: list[str]
    lines: list[int]
    clean_values: list[bytes]
    """The `sales.clean` value of each sale, but for the windows it was late for."""
    originals: list[bytes]
    """Each row as received, a JSON object: what a conflict's dead letter carries."""
    facts: dict[str, list[Any]] | None
    """FACT_COLUMNS of every sale, in message order; None in a message written before
    versions carried them (its sales' facts are in their clean values)."""


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


def _decimal_text(units: pd.Series, scale: int) -> pa.Array:
    """Exact decimal strings from integers in 1/10**scale units (cents -> '12.34')."""
    values = units.to_numpy(dtype=np.int64)
    divisor = 10**scale
    whole = pc.cast(pa.array(values // divisor), pa.string())
    padded = pc.cast(pa.array(values % divisor + divisor), pa.string())
    return pc.binary_join_element_wise(whole, pc.utf8_slice_codeunits(padded, 1), ".")


def _epoch_ms(moments: pd.Series) -> np.ndarray:
    """Milliseconds since the epoch, truncated as the ISO 8601 form is."""
    nanoseconds = moments.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").view("i8")
    return nanoseconds // 1_000_000


def _iso_milliseconds(moments: pd.Series) -> pa.Array:
    """The same ISO 8601 form as `isoformat`, column-wise. Sales repeat their dates, and
    Arrow's strftime costs a microsecond a value, so each distinct moment is formatted once
    (Arrow prints a millisecond timestamp's seconds with their fraction)."""
    codes, distinct = pd.factorize(_epoch_ms(moments))
    texts = pc.strftime(pa.array(distinct, pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%S")
    return pc.binary_join_element_wise(texts.take(pa.array(codes)), "Z", "")


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
    original_json: str,
    reasons: list[str],
    messages: dict[str, str],
    now: datetime,
    extra: dict[str, Any] | None = None,
    status: QuarantineStatus = QuarantineStatus.QUARANTINED,
) -> Message:
    """A `sales.dlq` message: the contract is docs/topics.md.

    `original_json` is the row as received, already JSON (an object, or a string for an
    unparseable record): it is spliced in as it is rather than decoded and encoded again.
    """
    letter_id = dead_letter_id(source.id, line)
    stamp = isoformat(now)
    head = encode(
        {
            "schema_version": SCHEMA_VERSION,
            "id": letter_id,
            "reasons": sorted(reasons),
            "messages": messages,
        }
    )
    tail = encode(
        {
            "source": source.name,
            "source_kind": source.kind,
            "source_id": source.id,
            "line": line,
            "status": str(status),
            "first_seen": stamp,
            "last_seen": stamp,
            **(extra or {}),
        }
    )
    value = b"".join([head[:-1], b',"original":', original_json.encode(), b",", tail[1:]])
    return Message(key=letter_id.encode(), value=value)


def _quoted(text: pa.Array) -> pa.Array:
    """JSON literals of text that needs no escaping (digits, dates)."""
    return pc.binary_join_element_wise('"', text, '"', "")


def _json_strings(values: pd.Series | str) -> pa.Array | pa.Scalar:
    """JSON string literals of a text column, `null` where a value is missing: what
    json.dumps(ensure_ascii=False) writes. That escapes only quotes, backslashes and
    control characters; a column with a control character (rare) goes through the json
    module itself, the others through Arrow kernels, skipped when nothing needs escaping."""
    if isinstance(values, str):
        return pa.scalar(encode_basestring(values))
    text = pa.array(values, pa.string(), from_pandas=True)
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    data = np.frombuffer(text.buffers()[2] or b"", dtype=np.uint8)
    if (data < 0x20).any():
        literals = pa.array(
            [None if value is None else encode_basestring(value) for value in text.to_pylist()],
            pa.string(),
        )
    else:
        if ((data == ord('"')) | (data == ord("\\"))).any():
            text = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
        literals = _quoted(text)
    return pc.fill_null(literals, "null") if literals.null_count else literals


def _json_numbers(values: pd.Series | pd.Index) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64).astype(str), pa.string())


def _json_objects(fields: list[tuple[str, pa.Array | pa.Scalar]], rows: int) -> pa.Array:
    """One JSON object per row from JSON-encoded columns, in the fields' order: the text
    json.dumps would write, without a dict per row."""
    if rows == 0:
        return pa.array([], pa.string())
    parts: list[pa.Array | pa.Scalar] = []
    for position, (name, value) in enumerate(fields):
        parts.append(pa.scalar(("{" if position == 0 else ",") + encode_basestring(name) + ":"))
        parts.append(value)
    parts.append(pa.scalar("}"))
    return pc.binary_join_element_wise(*parts, "")


def _fingerprints(clean: pd.DataFrame) -> np.ndarray[Any, np.dtype[np.str_]]:
    """16 hex digits per row, hashing the content that makes two deliveries the same sale."""
    hashes = pd.util.hash_pandas_object(clean[FINGERPRINT_COLUMNS], index=False).to_numpy()
    digits = hashes.astype(">u8").tobytes().hex().encode()
    return np.frombuffer(digits, dtype="S16").astype(str)


def _clean_messages(
    clean: pd.DataFrame,
    fingerprints: np.ndarray[Any, np.dtype[np.str_]],
    chunk: RawChunk,
    now: datetime,
) -> pa.Array:
    """The `sales.clean` values, built column by column; field order follows CLEAN_FIELDS."""
    source = chunk.source
    seen_at = isoformat(datetime.fromtimestamp(chunk.seen_at, now.tzinfo))
    fields = {
        "schema_version": pa.scalar(str(SCHEMA_VERSION)),
        "order_id": _json_strings(clean["order_id"]),
        "fingerprint": _quoted(pa.array(fingerprints)),
        "sold_at": _quoted(_iso_milliseconds(clean["sold_at"])),
        "product": _json_strings(clean["product"]),
        "category": _json_strings(clean["category"]),
        "region": _json_strings(clean["region"]),
        "store_id": _json_strings(clean["store_id"]),
        "quantity": _json_numbers(clean["quantity"]),
        "unit_price": _quoted(_decimal_text(clean["unit_price_cents"], 2)),
        "discount": _quoted(_decimal_text(clean["discount_ppm"], 6)),
        "revenue": _quoted(_decimal_text(clean["revenue_cents"], 2)),
        "currency": _json_strings(clean["currency"]),
        "customer_email": _json_strings(clean["customer_email"]),
        "source": _json_strings(source.name),
        "source_kind": _json_strings(source.kind),
        "source_id": _json_strings(source.id),
        "line": _json_numbers(clean.index),
        "seen_at": _json_strings(seen_at),
        "ingested_at": _json_strings(isoformat(now)),
    }
    return _json_objects(list(fields.items()), len(clean))


def clean_chunk(
    chunk: RawChunk, rules: CleaningRules, partitions: int, now: datetime
) -> CleanedChunk:
    """Column-wise from end to end: per row, only the dead letters are built one by one."""
    columns = _unique_columns(chunk.columns)
    frame = pd.DataFrame(chunk.rows, columns=columns, index=chunk.lines, dtype=object)
    originals = _json_objects(
        [(name, _json_strings(frame.iloc[:, i])) for i, name in enumerate(columns)], len(frame)
    ).to_numpy(zero_copy_only=False)
    result = clean_rows(frame, rules)
    rejected = result.rejected

    dead_letters = [
        dead_letter(chunk.source, line, original, list(reasons), dict(messages), now)
        for line, original, reasons, messages in zip(
            rejected.index,
            originals[frame.index.get_indexer(rejected.index)],
            rejected["reasons"],
            rejected["messages"],
            strict=True,
        )
    ]
    dead_letters.extend(
        dead_letter(
            chunk.source,
            line,
            encode_basestring(text),
            [ReasonCode.UNPARSEABLE_ROW],
            {"row": "fields do not match the header"},
            now,
        )
        for line, text in chunk.unparseable
    )
    rejects_by_reason: dict[str, int] = defaultdict(int)
    for reasons in rejected["reasons"]:
        for reason in reasons:
            rejects_by_reason[reason] += 1
    if chunk.unparseable:
        rejects_by_reason[ReasonCode.UNPARSEABLE_ROW] += len(chunk.unparseable)

    clean = result.clean
    clean_originals = originals[frame.index.get_indexer(clean.index)]
    released = (
        [
            dead_letter(
                chunk.source,
                int(line),
                original,
                [],
                {},
                now,
                extra={"resolution": chunk.release_resolution or {}},
                status=QuarantineStatus(chunk.release_status),
            )
            for line, original in zip(clean.index, clean_originals, strict=True)
        ]
        if chunk.release_status
        else []
    )
    return CleanedChunk(
        dead_letters,
        released,
        _validated(clean, clean_originals, chunk, partitions, now),
        len(clean),
        dict(rejects_by_reason),
    )


def _facts(clean: pd.DataFrame) -> dict[str, np.ndarray]:
    """FACT_COLUMNS of the clean rows."""
    return {
        name: _epoch_ms(clean["sold_at"])
        if name == "sold_at_ms"
        else clean[name].to_numpy(dtype=dtype, na_value=None)
        for name, dtype in FACT_COLUMNS.items()
    }


def _validated(
    clean: pd.DataFrame,
    originals: np.ndarray[Any, np.dtype[np.object_]],
    chunk: RawChunk,
    partitions: int,
    now: datetime,
) -> list[Message]:
    """One `sales.validated` message per partition of the order ids, its sales in chunk
    order."""
    if clean.empty:
        return []
    fingerprints = _fingerprints(clean)
    sales = pc.binary_join_element_wise(
        _json_strings(clean["order_id"]),
        pa.array(fingerprints),
        _json_numbers(clean.index),
        _clean_messages(clean, fingerprints, chunk, now),
        pa.array(originals, pa.string()),
        "\t",
    ).to_numpy(zero_copy_only=False)
    order_ids = pc.cast(pa.array(clean["order_id"]), pa.binary()).to_pylist()
    owners = partitions_for(order_ids, partitions)
    facts = _facts(clean)
    messages = []
    for partition in np.unique(owners):
        mine = owners == partition
        value = validated_value(
            chunk.source,
            {name: values[mine].tolist() for name, values in facts.items()},
            sales[mine],
        )
        key = f"{chunk.source.id}:{chunk.seq}:{partition}".encode()
        messages.append(Message(key, value, int(partition)))
    return messages


def validated_value(
    source: SourceRef, facts: dict[str, list[Any]] | None, lines: Iterable[str]
) -> bytes:
    """A `sales.validated` value: a JSON header line (the source, and the facts of the
    sales column-wise), then a line of tab-separated fields per sale."""
    header = encode(
        {"source": {"kind": source.kind, "id": source.id, "name": source.name}, "facts": facts}
    )
    return "\n".join([header.decode(), *lines]).encode()


def decode_validated(value: bytes) -> ValidatedMessage:
    """A `sales.validated` message: a JSON header line, then one line per sale of
    tab-separated fields (JSON escapes every tab and newline inside them)."""
    header_line, *lines = value.split(b"\n")
    fields = [line.split(b"\t", 4) for line in lines]
    order_ids, fingerprints, numbers, clean_values, originals = (
        zip(*fields, strict=True) if fields else ((), (), (), (), ())
    )
    header = decode(header_line)
    return ValidatedMessage(
        SourceRef(**header["source"]),
        # A JSON string without escapes is its text in quotes: no need to parse most ids.
        [decode(text) if b"\\" in text else text[1:-1].decode() for text in order_ids],
        [fingerprint.decode() for fingerprint in fingerprints],
        [int(number) for number in numbers],
        list(clean_values),
        list(originals),
        header.get("facts"),
    )
