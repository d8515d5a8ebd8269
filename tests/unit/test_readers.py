"""Reading dropped files: every format, encoding, line number and refusal.

Files are written byte for byte under tmp_path, so each test shows exactly what a
sender could drop into the watched folder.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.readers import (
    MAX_LINE_CHARS,
    FileFormat,
    RowChunk,
    UnreadableFileError,
    read_chunks,
    sha256_of,
    sniff_format,
)

HEADER = ["order_id", "sold_at", "product", "unit_price"]
ROWS = [
    ["1001", "2025-03-01", "Desk, oak", "$1,200.00"],
    ["1002", "2025-03-02", 'Say "hi" lamp', "12.5"],
    ["1003", "2025-03-03", "", " 7 "],
]
RECORDS = [
    '{"order_id": 1001, "price": 1200.5, "paid": true, "note": null, "tags": ["a", 1.50]}',
    '{"order_id": "1002", "price": 12345678901234567890.123456789, "extra": "ignored"}',
    '{"order_id": 1003, "price": 1e3, "paid": false, "tags": {"k": [1, {"z": null}]}}',
]
"""JSON text as sent: number literals must survive exactly as written."""
RECORD_ROWS = [
    ["1001", "1200.5", "true", None, '["a",1.50]'],
    ["1002", "12345678901234567890.123456789", None, None, None],
    ["1003", "1e3", "false", None, '{"k":[1,{"z":null}]}'],
]
RECORD_COLUMNS = ["order_id", "price", "paid", "note", "tags"]


def _write(path: Path, data: bytes, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _delimited(rows: list[list[str]], delimiter: str = ",") -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter).writerows(rows)
    return out.getvalue().encode()


def _json_array(records: list[str]) -> bytes:
    return ("[\n " + ",\n ".join(records) + "\n]\n").encode()


def _read_all(path: Path, chunk_rows: int = 1000) -> RowChunk:
    """All chunks of a file merged into one, checking the invariants on the way."""
    chunks = list(read_chunks(path, chunk_rows))
    columns = chunks[0].columns if chunks else []
    for chunk in chunks:
        assert chunk.columns == columns
        assert len(chunk.rows) == len(chunk.lines)
        assert all(len(row) == len(columns) for row in chunk.rows)
        assert 0 < len(chunk.rows) + len(chunk.unparseable) <= chunk_rows
    return RowChunk(
        columns,
        [row for chunk in chunks for row in chunk.rows],
        [line for chunk in chunks for line in chunk.lines],
        [bad for chunk in chunks for bad in chunk.unparseable],
    )


# --- formats ---------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(
    ("name", "delimiter"),
    [("s.csv", ","), ("s.tsv", "\t"), ("s.txt", ";"), ("s.txt", "|"), ("s.csv", ";")],
)
def test_delimited_formats(tmp_path: Path, name: str, delimiter: str, compress: bool) -> None:
    suffix = ".gz" if compress else ""
    path = _write(tmp_path / (name + suffix), _delimited([HEADER, *ROWS], delimiter), compress)

    assert sniff_format(path) == FileFormat("csv", "utf-8", delimiter, compress)
    result = _read_all(path)
    assert result.columns == HEADER
    assert result.rows == ROWS
    assert result.lines == [2, 3, 4]
    assert result.unparseable == []


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_json_array(tmp_path: Path, compress: bool) -> None:
    name = "s.json.gz" if compress else "s.json"
    path = _write(tmp_path / name, _json_array(RECORDS), compress)

    assert sniff_format(path) == FileFormat("json", "utf-8", None, compress)
    result = _read_all(path)
    assert result.columns == RECORD_COLUMNS
    assert result.rows == RECORD_ROWS
    assert result.lines == [1, 2, 3]


@pytest.mark.parametrize("name", ["s.ndjson", "s.jsonl", "s.ndjson.gz", "s.json"])
def test_ndjson(tmp_path: Path, name: str) -> None:
    data = "\n".join([RECORDS[0], "", "  ", RECORDS[1], RECORDS[2]]).encode()
    path = _write(tmp_path / name, data, name.endswith(".gz"))

    assert sniff_format(path).kind == "ndjson"
    result = _read_all(path)
    assert result.columns == RECORD_COLUMNS
    assert result.rows == RECORD_ROWS
    assert result.lines == [1, 4, 5]


def test_gzip_is_recognised_by_its_magic_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", _delimited([HEADER, *ROWS]), compress=True)

    assert sniff_format(path).compressed
    assert _read_all(path).rows == ROWS


def test_json_array_may_start_with_bom_and_space(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.json", b"\xef\xbb\xbf \n\t" + _json_array(RECORDS))

    assert sniff_format(path).encoding == "utf-8-sig"
    assert _read_all(path).rows == RECORD_ROWS


def test_json_records_that_are_not_objects_are_unparseable(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.json", b'[{"id": 1}, 5, "x", [1, 2], null, {"id": 2}]')

    result = _read_all(path)
    assert result.rows == [["1"], ["2"]]
    assert result.lines == [1, 6]
    assert result.unparseable == [(2, "5"), (3, '"x"'), (4, "[1,2]"), (5, "null")]


def test_ndjson_bad_lines_are_unparseable_with_physical_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.ndjson", b'{"id": 1}\r\n\r\nnot json\n[1]\n{"id": 2, "x": 3}\n')

    result = _read_all(path)
    assert result.rows == [["1"], ["2"]]
    assert result.lines == [1, 5]
    assert result.unparseable == [(3, "not json"), (4, "[1]")]


def test_json_array_streams_records_across_blocks(tmp_path: Path) -> None:
    records = [{"id": i, "note": "n" * (i % 97), "price": i / 8} for i in range(30_000)]
    records[12_345]["note"] = "long " * 600_000  # one value longer than a read block
    path = _write(tmp_path / "s.json", json.dumps(records).encode())

    result = _read_all(path, chunk_rows=7_000)
    assert len(result.rows) == 30_000
    assert result.rows[12_345][1] == records[12_345]["note"]
    assert result.rows[-1] == ["29999", "n" * (29_999 % 97), str(29_999 / 8)]
    assert result.lines == list(range(1, 30_001))


# --- encodings -------------------------------------------------------------------


def test_utf8_bom_is_stripped_from_the_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "\ufeffid,product\n1,Café\n".encode())

    assert sniff_format(path).encoding == "utf-8-sig"
    result = _read_all(path)
    assert result.columns == ["id", "product"]
    assert result.rows == [["1", "Café"]]


def test_windows_1252(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "id;product;price\n1;Café;€5\n".encode("cp1252"))

    assert sniff_format(path) == FileFormat("csv", "cp1252", ";", False)
    assert _read_all(path).rows == [["1", "Café", "€5"]]


def test_bytes_undefined_in_cp1252_read_as_latin1(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", b"id,name\n1,\x81\xe9\n")

    assert _read_all(path).rows == [["1", "\x81é"]]


def test_non_utf8_bytes_after_the_sample_do_not_stop_the_file(tmp_path: Path) -> None:
    ascii_rows = b"".join(b"%d,plain\n" % i for i in range(20_000))
    path = _write(tmp_path / "s.csv", b"id,name\n" + ascii_rows + "99,Café €\n".encode("cp1252"))

    assert sniff_format(path).encoding == "utf-8"
    assert _read_all(path).rows[-1] == ["99", "Café €"]


# --- lines, unparseable records, chunks ------------------------------------------


def test_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    data = b'id,note\n1,"two\nlines"\n2,plain\r\n3,"a\r\nb\rc"\n\n4,last'
    path = _write(tmp_path / "s.csv", data)

    result = _read_all(path)
    assert result.rows == [["1", "two\nlines"], ["2", "plain"], ["3", "a\r\nb\rc"], ["4", "last"]]
    assert result.lines == [2, 4, 5, 9]


def test_crlf_split_across_read_blocks_is_one_line_end(tmp_path: Path) -> None:
    block = 2**20
    data = "h\r\n" + "x" * (block - 4) + "\r\ny\r\n"
    assert data[block - 1 : block + 1] == "\r\n"
    path = _write(tmp_path / "s.csv", data.encode())

    assert _read_all(path).lines == [2, 3]


def test_wrong_field_counts_are_unparseable_with_their_lines(tmp_path: Path) -> None:
    data = b'a,b,c\n1,2,3\n1,2\n\n1,2,3,4\n"x\ny",2,3\n"p\nq",2\n7,8,9\n'
    path = _write(tmp_path / "s.csv", data)

    result = _read_all(path)
    assert result.rows == [["1", "2", "3"], ["x\ny", "2", "3"], ["7", "8", "9"]]
    assert result.lines == [2, 6, 10]
    assert result.unparseable == [(3, "1,2"), (5, "1,2,3,4"), (8, "p\nq,2")]


def test_chunks_of_three_over_ten_rows(tmp_path: Path) -> None:
    rows = [[str(i), f"p{i}"] for i in range(10)]
    path = _write(tmp_path / "s.csv", _delimited([["id", "product"], *rows]))

    chunks = list(read_chunks(path, chunk_rows=3))
    assert [len(chunk.rows) for chunk in chunks] == [3, 3, 3, 1]
    assert all(chunk.columns == ["id", "product"] for chunk in chunks)
    assert [row for chunk in chunks for row in chunk.rows] == rows
    assert [line for chunk in chunks for line in chunk.lines] == list(range(2, 12))


def test_unparseable_records_count_towards_a_chunk(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", b"a,b\n1\n2\n3\n4,5\n")

    chunks = list(read_chunks(path, chunk_rows=2))
    assert [(len(c.rows), len(c.unparseable)) for c in chunks] == [(0, 2), (1, 1)]


@pytest.mark.parametrize(("name", "data"), [("s.csv", b"a,b\r\n"), ("s.json", b"[ ]")])
def test_header_only_yields_no_chunk(tmp_path: Path, name: str, data: bytes) -> None:
    assert list(read_chunks(_write(tmp_path / name, data), 10)) == []


# --- unreadable files ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("s.csv", b"", "empty file"),
        ("s.csv", b" \r\n\n", "empty file"),
        ("s.csv", b"id,name\n\x00\x01\x02binary", "binary content, not a text file"),
        ("s.csv", bytes(range(1, 32)) * 40, "binary content, not a text file"),
        ("s.csv", "id,name\n".encode("utf-16"), "UTF-16"),
        ("s.json", b'{"rows": [{"id": 1}]}', "JSON document is an object, expected an array"),
        ("s.json", b'"text"', "not a JSON array"),
        ("s.json", b'[1, {"id": 1}]', "record 1 is not a JSON object"),
        ("s.json", b"[{}]", "record 1 has no fields"),
        ("s.ndjson", b'oops\n{"id": 1}\n', "record 1 is not a JSON object"),
        ("s.csv.gz", b"id,name\n1,x\n", "invalid gzip"),
        ("s.csv.gz", b"\x1f\x8b\x08\x00garbage-not-deflate", "invalid gzip"),
        ("s.csv.gz", gzip.compress(b"id,name\n1,x\n" * 100)[:-30], "invalid gzip"),
        ("s.xlsx", b"id,name\n1,x\n", "unsupported file type ('.xlsx')"),
        ("s", b"id,name\n1,x\n", "unsupported file type (no extension)"),
        ("s.csv", b"1001,2025-03-01,Desk,3\n1002,2025-03-02,Lamp,1\n", "no header"),
        ("s.csv", b",,\n1,2,3\n", "no header"),
    ],
)
def test_unreadable_files_raise_before_the_first_chunk(
    tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    path = _write(tmp_path / name, data)

    with pytest.raises(UnreadableFileError, match=re.escape(reason)) as caught:
        next(read_chunks(path, 10))
    assert "\n" not in str(caught.value)


def test_gzip_bomb_stops_at_the_decompressed_limit(tmp_path: Path) -> None:
    data = b"id,name\n" + b"1,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n" * 100_000
    path = _write(tmp_path / "bomb.csv.gz", data, compress=True)
    chunks = read_chunks(path, chunk_rows=1_000, max_decompressed_bytes=2**20)

    with pytest.raises(UnreadableFileError, match=r"exceeds 1048576 bytes \(gzip bomb\?\)"):
        for _ in chunks:
            pass


def test_the_inflation_limit_is_the_one_given(tmp_path: Path) -> None:
    """20 MiB of one row repeated compresses about 350 times: over the default 100."""
    data = (
        b"id,name\n" + b"1,aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n" * 320_000
    )
    path = _write(tmp_path / "repeated.csv.gz", data, compress=True)

    with pytest.raises(UnreadableFileError, match=r"expands more than 100 times"):
        read_chunks(path, 50_000)
    rows = sum(len(chunk.rows) for chunk in read_chunks(path, 50_000, max_inflation=1_000))
    assert rows == 320_000


def test_gzip_within_the_limit_reads_fully(tmp_path: Path) -> None:
    data = _delimited([HEADER, *ROWS])
    path = _write(tmp_path / "s.csv.gz", data, compress=True)

    assert len(list(read_chunks(path, 10, max_decompressed_bytes=len(data)))) == 1


def test_a_line_longer_than_the_limit_is_refused_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    with path.open("wb") as out:
        out.write(b"id,name\n1,x\n2,")
        out.write(b"a" * (MAX_LINE_CHARS + 2**20))

    with pytest.raises(UnreadableFileError, match="line 3 is longer than 16 MiB"):
        list(read_chunks(path, 10))


def test_a_quoted_field_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    with path.open("wb") as out:
        out.write(b'id,name\n1,x\n2,"')
        out.write(b"aaaaaaa\n" * (MAX_LINE_CHARS // 8 + 1))

    with pytest.raises(UnreadableFileError, match="record at line 3 has a field longer than"):
        list(read_chunks(path, 10))


def test_broken_json_array_raises(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.json", b'[{"id": 1}, {"id": 2},, {"id": 3}]')

    with pytest.raises(UnreadableFileError, match="invalid JSON in record 3"):
        list(read_chunks(path, 10))


def test_chunk_rows_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        read_chunks(_write(tmp_path / "s.csv", b"a\n1\n"), 0)


# --- hashing ---------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_sha256_of_hashes_the_stored_bytes(tmp_path: Path, compress: bool) -> None:
    path = _write(tmp_path / "s.csv.gz", b"id\n" + b"1\n" * 3_000_000, compress)

    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- properties ------------------------------------------------------------------

_DELIMITERS = [",", "\t", ";", "|"]
_PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
"""The file is rewritten in place for every example, so one tmp_path is enough."""


@st.composite
def _tables(draw: st.DrawFn) -> tuple[str, list[str], list[list[str]]]:
    """Any text, including quotes, newlines and the table's own delimiter.

    The other candidate delimiters are left out: a file holding several of them
    unquoted is ambiguous to any reader, not only to this one.
    """
    delimiter = draw(st.sampled_from(_DELIMITERS))
    special = st.sampled_from(['"', "\n", "\r", "\r\n", delimiter, "\x0c", "\x85", "\u2028", " "])
    plain = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=_DELIMITERS)
    text = st.lists(plain | special, max_size=8).map("".join)
    columns = draw(st.lists(text.map(lambda name: "c" + name), min_size=1, max_size=5))
    width = len(columns)
    rows = draw(st.lists(st.lists(text, min_size=width, max_size=width), min_size=1, max_size=15))
    return delimiter, columns, rows


@settings(_PROPERTY, max_examples=300)
@given(table=_tables(), chunk_rows=st.integers(1, 6), compress=st.booleans())
def test_any_csv_written_by_csv_writer_reads_back_unchanged(
    tmp_path: Path, table: tuple[str, list[str], list[list[str]]], chunk_rows: int, compress: bool
) -> None:
    delimiter, columns, rows = table
    records = [_delimited([row], delimiter).decode() for row in [columns, *rows]]
    path = _write(tmp_path / "p.csv", "".join(records).encode(), compress)

    result = _read_all(path, chunk_rows)
    assert result.columns == columns
    assert result.rows == rows
    assert result.unparseable == []
    physical = [len(io.StringIO(record, newline="").readlines()) for record in records]
    assert result.lines == [1 + sum(physical[:index]) for index in range(1, len(records))]


@settings(_PROPERTY, max_examples=100)
@given(
    values=st.lists(st.lists(st.text(), min_size=3, max_size=3), min_size=1, max_size=10),
    ndjson=st.booleans(),
)
def test_any_json_text_values_read_back_unchanged(
    tmp_path: Path, values: list[list[str]], ndjson: bool
) -> None:
    records = [dict(zip(["a", "b", "c"], row, strict=True)) for row in values]
    if ndjson:
        path = _write(tmp_path / "p.ndjson", "\n".join(map(json.dumps, records)).encode())
    else:
        path = _write(tmp_path / "p.json", json.dumps(records, ensure_ascii=False).encode())

    result = _read_all(path, chunk_rows=4)
    assert result.columns == ["a", "b", "c"]
    assert result.rows == values
