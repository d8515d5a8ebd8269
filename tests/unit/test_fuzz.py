"""Fuzzing (issue 9, item 3): readers and cleaning never raise on data, always classify.

Bounded so CI stays fast (a few seconds per test): `FUZZ` sets the examples per
test; raise it locally with `TILLSTREAM_FUZZ_EXAMPLES=5000` for a longer hunt.

- Readers: any bytes under any supported name, gzip-compressed or not, either
  raise `UnreadableFileError` (a one-line reason) or yield chunks whose rows
  all have one value per column, whose line numbers never repeat (a dead
  letter's id is made from its line), and which can be sent as they are.
- Cleaning, through `clean_chunk`, with any headers (duplicates, alias
  spellings, the names `_unique_columns` makes up) and any text: never raises,
  every row ends clean or in a dead letter exactly once, and a dead letter
  carries every value of the row as received. tests/unit/test_cleaning.py
  already fuzzes `clean_rows` cell values under the canonical headers.
"""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from processors.chunks import clean_chunk, decode_validated
from producers.readers import MAX_LINE_CHARS, UnreadableFileError, read_chunks
from tillstream.records import RawChunk, SourceRef
from tillstream.settings import default_rules

FUZZ = settings(
    max_examples=int(os.environ.get("TILLSTREAM_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""The file is rewritten in place for every example, so one tmp_path is enough."""

SUFFIXES = [".csv", ".tsv", ".txt", ".json", ".ndjson", ".jsonl"]
SOURCE = SourceRef("file", "f" * 64, "inbox/fuzz")
RULES = default_rules()
NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)

# --- inputs ------------------------------------------------------------------------------

_STRUCTURE = [b",", b";", b"|", b"\t", b"\n", b"\r", b"\r\n", b'"', b"'", b" ", b"\\"]
_JSON = [b"{", b"}", b"[", b"]", b":", b'"a"', b"null", b"1e999", b"-0", b'"\\ud800"', b'"\\u0000"']
_ODD = [
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xe9",
    b"\x80",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b"\x1f\x8b",
]
_WORDS = [b"order_id", b"ID", b"Qty", b"Price", b"Date", b"Product", b"2025-01-02", b"$1,200.00"]
_HEADERS = [
    b"order_id,product,quantity\n",
    b"ID;Date;Qty;Price\n",
    b'[{"order_id": "1", "b": ',
    b"{",
]

_COMMON = _STRUCTURE + _JSON + _WORDS + [b"x", b"7", b"-", b"."]
tokens = st.sampled_from(_COMMON * 8 + _ODD) | st.integers(1, 255).map(lambda byte: bytes([byte]))
"""Mostly text and structure, sometimes the bytes that make files hostile."""
noise = st.lists(tokens, max_size=8).map(b"".join)
json_values = st.sampled_from([b'"x"', b"1.50", b"null", b"[1, {}]", b'"\\ud800"']) | noise
csv_like = st.builds(
    lambda header, lines: header + b"\n" + b"\n".join(lines),
    st.sampled_from([b"order_id,product,quantity", b"ID;Date;Qty;Price", b"a\tb", b"id|name"]),
    st.lists(noise, max_size=12),
)
json_records = st.lists(
    st.builds(lambda a, b: b'{"order_id": ' + a + b', "b": ' + b + b"}", json_values, json_values),
    min_size=1,
    max_size=8,
)
json_like = json_records.map(lambda records: b"[" + b",".join(records) + b"]")
ndjson_like = st.builds(
    lambda records, separator: separator.join(records), json_records, st.sampled_from(_STRUCTURE)
)
contents = st.one_of(
    csv_like, json_like, ndjson_like, st.lists(tokens, max_size=60).map(b"".join), st.binary()
)
FORMS = ["plain"] * 6 + ["gzip"] * 2 + ["gzip-cut", "gzip-flipped", "gz-name-only"]


@st.composite
def files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A name and the bytes stored under it: plain, gzip, or damaged gzip."""
    suffix = draw(st.sampled_from(SUFFIXES))
    content = draw(contents)
    form = draw(st.sampled_from(FORMS))
    if form == "plain":
        return f"f{suffix}", content
    if form == "gz-name-only":
        return f"f{suffix}.gz", content
    data = gzip.compress(content, mtime=0)
    if form == "gzip-cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif form == "gzip-flipped":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return f"f{suffix}.gz", data


# --- readers -----------------------------------------------------------------------------


def _check_chunks(path: Path, chunk_rows: int) -> int:
    """Read the file through; returns the records read, checking every chunk."""
    seen_lines: set[int] = set()
    columns: list[str] | None = None
    records = 0
    for chunk in read_chunks(path, chunk_rows):
        if columns is None:
            columns = chunk.columns
            assert columns, "a chunk needs a header"
        assert chunk.columns == columns
        assert len(chunk.rows) == len(chunk.lines)
        assert 0 < len(chunk.rows) + len(chunk.unparseable) <= chunk_rows
        for row in chunk.rows:
            assert len(row) == len(columns)
            assert all(value is None or isinstance(value, str) for value in row)
        lines = chunk.lines + [line for line, _ in chunk.unparseable]
        assert all(line >= 1 for line in lines)
        assert seen_lines.isdisjoint(lines) and len(set(lines)) == len(lines)
        seen_lines.update(lines)
        assert all(len(text) <= MAX_LINE_CHARS + 2**20 for _, text in chunk.unparseable)
        raw = RawChunk(SOURCE, 0, chunk.columns, chunk.rows, chunk.lines, chunk.unparseable)
        assert RawChunk.from_json(raw.to_json()) == raw
        records += len(lines)
    return records


@FUZZ
@given(file=files(), chunk_rows=st.integers(1, 5))
def test_readers_classify_any_bytes_under_any_name(
    tmp_path: Path, file: tuple[str, bytes], chunk_rows: int
) -> None:
    name, data = file
    path = tmp_path / name
    path.write_bytes(data)
    try:
        records = _check_chunks(path, chunk_rows)
    except UnreadableFileError as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and len(reason) < 500
        event(f"refused: {reason.split(':')[0][:40]}")
    else:
        event("read, with records" if records else "read, no records")


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(SUFFIXES))
def test_readers_classify_gzip_of_any_bytes(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"f{suffix}.gz"
    path.write_bytes(gzip.compress(data, mtime=0))
    try:
        _check_chunks(path, 3)
    except UnreadableFileError as exc:
        assert "\n" not in str(exc)


any_text = st.characters() | st.characters(categories=["Cs"])
"""Lone surrogates included: a JSON escape like `\\ud800` decodes to one."""


@FUZZ
@given(
    header=st.lists(st.text(any_text, min_size=1, max_size=8), min_size=2, max_size=5),
    values=st.lists(st.text(any_text, max_size=8), max_size=30),
    suffix=st.sampled_from([".json", ".ndjson"]),
)
def test_json_of_any_text_reads_every_record(
    tmp_path: Path, header: list[str], values: list[str], suffix: str
) -> None:
    """Any keys and values, escapes included, in either JSON layout."""
    width = len(header)
    records = [
        dict(zip(header, values[start : start + width], strict=False))
        for start in range(0, len(values), width)
    ]
    records = [{**dict.fromkeys(header, "x"), **record} for record in records] or [
        dict.fromkeys(header, "x")
    ]
    ascii_only = bool(len(values) % 2)
    if suffix == ".json":
        text = json.dumps(records, ensure_ascii=ascii_only)
    else:
        text = "\n".join(json.dumps(record, ensure_ascii=ascii_only) for record in records)
    path = tmp_path / f"f{suffix}"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        assert _check_chunks(path, 4) == len(records)
    except UnreadableFileError as exc:
        # Only a first record that is not an object with fields may refuse a file.
        assert str(exc).startswith(("record 1", "no header")), exc


# --- cleaning through clean_chunk ----------------------------------------------------------

ALIASES = ["OrderID", "ID", "order_id", "Date", "Qty", "Price", "Product", "Store_ID", "Email"]
headers = st.lists(
    st.one_of(
        st.sampled_from(ALIASES),
        st.sampled_from(["a", "a.1", "a.2", "", " ", "\ufeffID", "order id", "ORDER-ID"]),
        st.text(max_size=10),
    ),
    min_size=1,
    max_size=8,
)
cells = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["A-1", "2025-01-02", "3", "$1,200.00", "15%", "Desk Lamp", " ", ""]),
)


@st.composite
def raw_chunks(draw: st.DrawFn) -> RawChunk:
    columns = draw(headers)
    rows = draw(
        st.lists(st.lists(cells, min_size=len(columns), max_size=len(columns)), max_size=15)
    )
    total = len(rows) + draw(st.integers(0, 3))
    lines = draw(st.lists(st.integers(1, 10**9), min_size=total, max_size=total, unique=True))
    unparseable = [(line, draw(st.text(max_size=20))) for line in lines[len(rows) :]]
    return RawChunk(SOURCE, 0, columns, rows, lines[: len(rows)], unparseable, NOW.timestamp())


@FUZZ
@given(chunk=raw_chunks(), partitions=st.integers(1, 8))
def test_clean_chunk_classifies_every_row_under_any_headers(
    chunk: RawChunk, partitions: int
) -> None:
    cleaned = clean_chunk(RawChunk.from_json(chunk.to_json()), RULES, partitions, NOW)

    letters = [json.loads(message.value or b"") for message in cleaned.dead_letters]
    validated = [decode_validated(message.value) for message in cleaned.validated]
    sales = [
        (order_id, line, value)
        for message in validated
        for order_id, line, value in zip(
            message.order_ids, message.lines, message.clean_values, strict=True
        )
    ]
    every_line = chunk.lines + [line for line, _ in chunk.unparseable]
    assert sorted([letter["line"] for letter in letters] + [line for _, line, _ in sales]) == (
        sorted(every_line)
    )
    assert cleaned.valid_rows == len(sales)
    assert len({letter["id"] for letter in letters}) == len(letters)
    assert all(letter["reasons"] for letter in letters)
    assert sum(cleaned.rejects_by_reason.values()) >= len(letters)
    for order_id, _, value in sales:
        clean = json.loads(value)
        assert clean["order_id"] == order_id != ""
        assert int(clean["quantity"]) >= 1


def _kept_every_value(chunk: RawChunk, partitions: int) -> None:
    cleaned = clean_chunk(chunk, RULES, partitions, NOW)
    by_line = dict(zip(chunk.lines, chunk.rows, strict=True))
    originals = [
        (letter["line"], letter["original"])
        for letter in (json.loads(message.value or b"") for message in cleaned.dead_letters)
        if letter["line"] in by_line
    ]
    for message in cleaned.validated:
        validated = decode_validated(message.value)
        originals += zip(validated.lines, map(json.loads, validated.originals), strict=True)
    for line, original in originals:
        assert len(original) == len(chunk.columns), (chunk.columns, original)
        assert sorted(original.values(), key=str) == sorted(by_line[line], key=str)


REPEATED = RawChunk(SOURCE, 0, ["a", "a", "a.1"], [["x", "y", "z"]], [2], [], NOW.timestamp())


@FUZZ
@example(chunk=REPEATED, partitions=1)
@given(chunk=raw_chunks(), partitions=st.integers(1, 8))
def test_clean_chunk_keeps_every_value_of_the_row_as_received(
    chunk: RawChunk, partitions: int
) -> None:
    _kept_every_value(chunk, partitions)
