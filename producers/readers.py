"""Read a dropped sales file as chunks of raw text rows, in flat memory.

Readers only split a file into records; they never interpret values. Every value
travels as the text received so cleaning sees what the sender wrote, and every
record that cannot be split into the header's fields is handed on as
`unparseable` with its line number, never dropped.

Memory is bounded by `chunk_rows`, `CHUNK_BYTES` and `MAX_LINE_CHARS`, whatever
the file's size or shape: text is decoded in blocks, CSV lines are cut from those
blocks before the `csv` module sees them, JSON arrays are scanned record by
record, and a chunk of wide rows holds fewer of them.

Only regular files are read: a symbolic link is never followed (it could point
anywhere on the machine) and a named pipe or device is never opened for reading
(it could block forever or never end).

Some problems can only be found part-way through a file (a gzip bomb, a truncated
gzip stream, a broken JSON array, an over-long line). Then `UnreadableFileError` is
raised after earlier chunks were yielded; callers must treat the whole file as
failed, and downstream dedupe absorbs a later retry of the good rows.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TextIO, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "CHUNK_BYTES",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_INFLATION",
    "MAX_LINE_CHARS",
    "FileFormat",
    "RowChunk",
    "UnreadableFileError",
    "decode_exact_json",
    "json_cell",
    "json_text",
    "read_chunks",
    "sha256_of",
    "sniff_format",
]

MAX_LINE_CHARS = 16 * 2**20
"""Longest physical line, CSV field or JSON record read, in characters."""
CHUNK_BYTES = 16 * 2**20
"""A chunk ends once its rows, counted as JSON objects (names repeated on every row),
reach about this size: rows of 10,000 columns make chunks of a few dozen rows, not
thousands, so memory stays flat whatever a row's width."""
MAX_INFLATION = 100
"""gzip content may grow at most this many times its compressed size (sales CSV
grows 4-5 times, a file of one row repeated about 350 times); `watch.max_inflation`."""
MAX_DECOMPRESSED_BYTES = 10 * 2**30
"""gzip content larger than this is refused; `watch.max_decompressed_bytes`."""

_BLOCK = 2**20
_SAMPLE_BYTES = 64 * 2**10
_BINARY_PROBE_BYTES = 1024
_MAX_CONTROL_SHARE = 0.1
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\b\x1b")
_DELIMITERS = (",", "\t", ";", "|")
_DELIMITED_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": ","}
_JSON_SUFFIXES = {".json"}
_NDJSON_SUFFIXES = {".ndjson", ".jsonl"}
_SUPPORTED = ".csv, .tsv, .txt, .json, .ndjson, .jsonl, each optionally .gz"
_FALLBACK_ERRORS = "tillstream.cp1252-fallback"
_JSON_SPACE = " \t\n\r"
_JSON_NON_SPACE = re.compile(r"[^ \t\n\r]")
_NDJSON_NEXT = re.compile(r"[ \t\r]*\n[ \t\n\r]*\{")
_LOOKS_LIKE_VALUE = re.compile(r"[\s$€£+-]*\d[\d\s.,:/%+-]*")
_TRUNCATION_SLACK = 8
_INFLATION_FLOOR = 16 * 2**20
"""Content below this size is never judged by its compression ratio."""
_GZIP_WBITS = 16 + zlib.MAX_WBITS
"""zlib reads one gzip member, header and trailer included."""
_GZIP_READ = 64 * 2**10
_UNLIMITED = 2**62
_CELL_BYTES = 6
"""Quotes, colon and comma around a name and its value in a JSON object."""
_NOT_REGULAR = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}

# Process-wide: the csv default (128 KiB) would reject legitimate long text fields.
csv.field_size_limit(MAX_LINE_CHARS)


class UnreadableFileError(Exception):
    """The file cannot be read as sales rows; str(exc) is a one-line reason for people."""


@dataclass(frozen=True, slots=True)
class RowChunk:
    """A slice of one file's records, ready to become a `RawChunk` on `sales.raw`."""

    columns: list[str]
    """Header names exactly as in the file; the same list for every chunk of a file."""
    rows: list[list[str | None]]
    """One value per column, as text received; None where a JSON record lacks the key."""
    lines: list[int]
    """Where each row came from: physical line (CSV, NDJSON) or 1-based record (JSON)."""
    unparseable: list[tuple[int, str]]
    """(line, raw text) of records that could not be split into the header's fields."""


@dataclass(frozen=True, slots=True)
class FileFormat:
    """How to decode a file, decided once from its name and first bytes."""

    kind: Literal["csv", "json", "ndjson"]
    encoding: str
    """`utf-8`, `utf-8-sig` or `cp1252` (bytes cp1252 leaves undefined read as latin-1)."""
    delimiter: str | None
    """Field separator for csv-like text, None for JSON."""
    compressed: bool
    """gzip, recognised by its magic bytes whatever the name says."""


def sha256_of(path: Path) -> str:
    """Content hash as stored, so a re-dropped identical file is recognised as such.

    Raises `UnreadableFileError` for anything but a readable regular file, and
    OSError (FileNotFoundError) when the file is gone.
    """
    digest = hashlib.sha256()
    with _open_regular(path) as stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading without following a link or blocking on a pipe.

    The type is checked on the opened descriptor, so swapping the file for a link
    after a check cannot redirect the read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise UnreadableFileError(
            "cannot read the file: permission denied (check its owner and mode)"
        ) from None
    except OSError as exc:
        kind = _entry_kind(path)
        if kind is None:
            raise
        raise UnreadableFileError(_refusal(path, kind)) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFileError(
                _refusal(path, _NOT_REGULAR.get(stat.S_IFMT(mode), "a special file"))
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _entry_kind(path: Path) -> str | None:
    """What a path that would not open is, when it is not a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return _NOT_REGULAR.get(stat.S_IFMT(mode), "a special file")


def _refusal(path: Path, kind: str) -> str:
    if kind != "a symbolic link":
        return f"{kind}, not a regular file: refused"
    try:
        target = repr(os.readlink(path))
    except OSError:
        target = "an unknown target"
    return f"{kind} (to {target}), not a regular file: refused, links are never followed"


def sniff_format(path: Path, max_inflation: int = MAX_INFLATION) -> FileFormat:
    """Decide kind, encoding, delimiter and compression from the name and a prefix.

    Also rejects what is plainly not a sales file (binary, empty, no header, a JSON
    object, a gzip bomb) so the caller fails fast, before any row is published.
    """
    suffix, compressed = _suffix_and_compression(path)
    sample, complete = _read_sample(path, compressed)
    if not sample.strip():
        raise UnreadableFileError("empty file")
    if sample.startswith(_UTF16_BOMS):
        raise UnreadableFileError("UTF-16/UTF-32 text is not supported, save the file as UTF-8")
    if _is_binary(sample):
        raise UnreadableFileError("binary content, not a text file")
    if compressed and not complete:
        _check_inflation(path, max_inflation)
    encoding = _detect_encoding(sample, complete)
    text = codecs.getincrementaldecoder(encoding)(_FALLBACK_ERRORS).decode(sample, complete)
    if not text.strip():
        raise UnreadableFileError("empty file")
    if suffix in _DELIMITED_SUFFIXES:
        delimiter = _sniff_delimiter(text, complete, _DELIMITED_SUFFIXES[suffix])
        header = next((r for r in csv.reader(_split_lines([text]), delimiter=delimiter) if r), [])
        _check_header(header)
        return FileFormat("csv", encoding, delimiter, compressed)
    return FileFormat(_json_kind(text, suffix), encoding, None, compressed)


def read_chunks(
    path: Path,
    chunk_rows: int,
    max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
    max_inflation: int = MAX_INFLATION,
) -> Iterator[RowChunk]:
    """Yield the file's records in chunks of at most `chunk_rows` rows plus unparseable.

    The format is sniffed now, so most unreadable files raise here rather than
    during iteration. A file with a header but no records yields no chunk. JSON
    columns are the keys of the first record; keys that only later records carry
    are ignored, and keys a record lacks read as None. A chunk also ends once its
    records reach `chunk_bytes` (see `CHUNK_BYTES`); a larger record is a chunk alone.
    gzip content is refused past `max_decompressed_bytes`, or once it has grown more
    than `max_inflation` times its compressed size (settings `watch.max_*`).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    fmt = sniff_format(path, max_inflation)
    return _iter_chunks(
        path, fmt, _Budget(chunk_rows, chunk_bytes), max_decompressed_bytes, max_inflation
    )


@dataclass(slots=True)
class _Budget:
    """When a chunk is full. `chars` counts the text read so far, block by block:
    a chunk's text is what the count grew by (to within a block) while it filled."""

    rows: int
    bytes: int
    chars: int = 0

    def blocks(self, text: TextIO) -> Iterator[str]:
        for block in iter(lambda: text.read(_BLOCK), ""):
            self.chars += len(block)
            yield block


def _iter_chunks(
    path: Path, fmt: FileFormat, budget: _Budget, max_decompressed_bytes: int, max_inflation: int
) -> Iterator[RowChunk]:
    with _open_text(path, fmt, max_decompressed_bytes, max_inflation) as text:
        blocks = budget.blocks(text)
        if fmt.kind == "csv":
            yield from _csv_chunks(blocks, fmt.delimiter or _DELIMITERS[0], budget)
        elif fmt.kind == "json":
            yield from _json_chunks(_JsonArrayScanner(blocks).records(), budget)
        else:
            yield from _json_chunks(_ndjson_records(blocks), budget)


# --- bytes: sampling, compression, encoding ------------------------------------------


def _suffix_and_compression(path: Path) -> tuple[str, bool]:
    with _open_regular(path) as stream:
        compressed = stream.read(2) == _GZIP_MAGIC
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        if not compressed:
            raise UnreadableFileError("invalid gzip: the file is named .gz but is not gzip data")
        suffixes.pop()
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in _DELIMITED_SUFFIXES and suffix not in _JSON_SUFFIXES | _NDJSON_SUFFIXES:
        shown = f"'{suffix}'" if suffix else "no extension"
        raise UnreadableFileError(f"unsupported file type ({shown}), expected {_SUPPORTED}")
    return suffix, compressed


def _read_sample(path: Path, compressed: bool) -> tuple[bytes, bool]:
    """The first bytes of content and whether they are the whole content."""
    with _open_regular(path) as raw:
        if not compressed:
            sample = raw.read(_SAMPLE_BYTES + 1)
        else:
            with _gzip_reader(raw, _UNLIMITED, MAX_INFLATION) as unzipped:
                sample = unzipped.read(_SAMPLE_BYTES + 1)
    return sample[:_SAMPLE_BYTES], len(sample) <= _SAMPLE_BYTES


def _is_binary(sample: bytes) -> bool:
    """A NUL anywhere in the sample (text never holds one), or many control bytes early.

    Random bytes have no NUL in their first KiB one time in fifty, and about as
    many control bytes as the share allows, so the probe alone is not enough.
    """
    if b"\x00" in sample:
        return True
    probe = sample[:_BINARY_PROBE_BYTES]
    controls = sum(1 for byte in probe if byte < 0x20 and byte not in _TEXT_CONTROLS)
    return controls > _MAX_CONTROL_SHARE * len(probe)


def _check_inflation(path: Path, max_inflation: int) -> None:
    """Refuse a gzip bomb before any row of it is published.

    Decompresses (and discards) a little more than `_INFLATION_FLOOR` bytes, so
    that `_GzipContent` judges the compression ratio; reading judges it again later.
    """
    seen = 0
    with _open_regular(path) as raw, _gzip_reader(raw, _UNLIMITED, max_inflation) as unzipped:
        while seen <= _INFLATION_FLOOR and (block := unzipped.read(_BLOCK)):
            seen += len(block)


def _detect_encoding(sample: bytes, complete: bool) -> str:
    """UTF-8 when the prefix is valid UTF-8, else Windows-1252.

    Later bytes that turn out not to be UTF-8 are still read, as cp1252, through
    the fallback error handler, so a late stray byte never stops a file.
    """
    if sample.startswith(_UTF8_BOM):
        return "utf-8-sig"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, complete)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def _decode_as_cp1252(exc: UnicodeError) -> tuple[str, int]:
    """Error handler: read undecodable bytes as cp1252, and latin-1 where cp1252 has a gap."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    text = "".join(_cp1252_char(byte) for byte in exc.object[exc.start : exc.end])
    return text, exc.end


def _cp1252_char(byte: int) -> str:
    try:
        return bytes((byte,)).decode("cp1252")
    except UnicodeDecodeError:
        return chr(byte)


codecs.register_error(_FALLBACK_ERRORS, _decode_as_cp1252)


class _GzipContent(io.RawIOBase):
    """The content of a gzip file, members one after another, decompressed with zlib.

    Refuses to produce more than `limit` bytes, or, once past `_INFLATION_FLOOR`,
    more than `max_inflation` times the compressed bytes consumed so far. zlib is
    used directly because the ratio needs the bytes the inflater really took:
    gzip.GzipFile reads ahead by `io.DEFAULT_BUFFER_SIZE`, which a library may
    change (clickhouse-connect sets 256 KiB), and its count drifts with it.
    zlib checks each member's CRC and length.
    """

    def __init__(self, raw: BinaryIO, limit: int, max_inflation: int) -> None:
        super().__init__()
        self._raw = raw
        self._limit = limit
        self._max_inflation = max_inflation
        self._inflater = zlib.decompressobj(_GZIP_WBITS)
        self._input = b""
        self._in_member = False
        self.consumed = 0
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._limit + 1 - self.produced)
        while True:
            if not self._input:
                self._input = self._raw.read(_GZIP_READ)
                if not self._input:
                    if self._in_member:
                        raise UnreadableFileError(
                            "invalid gzip: the compressed data ends in the middle of a member"
                        )
                    return 0
            if not self._in_member:
                # Zero bytes may pad a gzip file between and after members.
                unpadded = self._input.lstrip(b"\0")
                self.consumed += len(self._input) - len(unpadded)
                self._input = unpadded
                if not unpadded:
                    continue
                self._inflater = zlib.decompressobj(_GZIP_WBITS)
                self._in_member = True
            try:
                data = self._inflater.decompress(self._input, wanted)
            except zlib.error as exc:
                raise UnreadableFileError(f"invalid gzip: {_one_line(exc)}") from None
            if self._inflater.eof:
                rest = self._inflater.unused_data
                self._in_member = False
            else:
                rest = self._inflater.unconsumed_tail
            self.consumed += len(self._input) - len(rest)
            self._input = rest
            if data:
                return self._deliver(view, data)

    def _deliver(self, view: memoryview, data: bytes) -> int:
        self.produced += len(data)
        if self.produced > self._limit:
            raise UnreadableFileError(
                f"decompressed content exceeds {self._limit} bytes (gzip bomb?), stopped reading"
            )
        if self.produced > _INFLATION_FLOOR and self.produced > self._max_inflation * self.consumed:
            raise UnreadableFileError(
                f"gzip content expands more than {self._max_inflation} times "
                f"({self.produced // 2**20} MiB from {-(-self.consumed // 2**10)} KiB) "
                "(gzip bomb?), stopped reading"
            )
        view[: len(data)] = data
        return len(data)


def _gzip_reader(raw: BinaryIO, limit: int, max_inflation: int) -> io.BufferedReader:
    return io.BufferedReader(_GzipContent(raw, limit, max_inflation), _BLOCK)


@contextmanager
def _open_text(
    path: Path, fmt: FileFormat, max_decompressed_bytes: int, max_inflation: int
) -> Iterator[TextIO]:
    with _open_regular(path) as raw:
        binary: BinaryIO = raw
        if fmt.compressed:
            binary = _gzip_reader(raw, max_decompressed_bytes, max_inflation)
        with io.TextIOWrapper(
            binary, encoding=fmt.encoding, errors=_FALLBACK_ERRORS, newline=""
        ) as text:
            yield text


# --- delimited text ----------------------------------------------------------------


def _split_lines(blocks: Iterable[str], universal: bool = True) -> Iterator[str]:
    """Physical lines with their endings, never longer than `MAX_LINE_CHARS` (plus a block).

    Iterating a text file reads a whole line whatever its size; cutting lines from
    fixed blocks keeps a 500 MB single-line file from being held in memory.
    Universal mode ends lines at `\\n`, `\\r\\n` and `\\r`, as the csv module does.
    """
    newline = "" if universal else "\n"
    lines_before = 0
    carry = ""
    for block in blocks:
        buffer = carry + block
        cut = buffer.rfind("\n")
        if universal:
            cut = max(cut, buffer.rfind("\r", 0, len(buffer) - 1))
        complete, carry = buffer[: cut + 1], buffer[cut + 1 :]
        if complete:
            lines_before += _count_lines(complete, universal)
            yield from io.StringIO(complete, newline=newline)
        if len(carry) > MAX_LINE_CHARS:
            raise UnreadableFileError(
                f"line {lines_before + 1} is longer than {MAX_LINE_CHARS // 2**20} MiB"
            )
    if carry:
        yield carry


def _count_lines(text: str, universal: bool) -> int:
    if not universal:
        return text.count("\n")
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _sniff_delimiter(text: str, complete: bool, default: str) -> str:
    """The candidate that splits the sample's records into the most, consistent fields.

    Parsing with each candidate (rather than counting characters) respects quoting,
    so `"$1,200.00"` in a semicolon file does not make it look comma-separated.
    """
    best, best_score = default, (0.0, 1, 0)
    for delimiter in _DELIMITERS:
        records = [r for r in csv.reader(_split_lines([text]), delimiter=delimiter) if r]
        if not complete and len(records) > 1:
            records.pop()
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        consistency = sum(len(r) == width for r in records) / len(records)
        score = (consistency, width, delimiter == default)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _check_header(columns: list[str]) -> None:
    names = [c for c in columns if c.strip()]
    if not names:
        raise UnreadableFileError("no header: the first line has no column names")
    values = [c for c in names if _LOOKS_LIKE_VALUE.fullmatch(c)]
    if 2 * len(values) >= len(names):
        shown = ", ".join(repr(v) for v in values[:3])
        raise UnreadableFileError(f"no header: the first line looks like data ({shown})")


def _csv_chunks(blocks: Iterator[str], delimiter: str, budget: _Budget) -> Iterator[RowChunk]:
    reader = csv.reader(_split_lines(blocks), delimiter=delimiter)
    start = 1
    try:
        columns = next((r for r in reader if r), None)
        if columns is None:
            return
        _check_header(columns)
        width = len(columns)
        names_bytes = _names_bytes(columns)
        rows: list[list[str]] = []
        lines: list[int] = []
        unparseable: list[tuple[int, str]] = []
        start = reader.line_num + 1
        room, names, since = budget.rows, 0, budget.chars
        for fields in reader:
            if len(fields) == width:
                rows.append(fields)
                lines.append(start)
                room -= 1
                names += names_bytes
            elif fields:
                unparseable.append((start, delimiter.join(fields)))
                room -= 1
            start = reader.line_num + 1
            if not room or names + budget.chars - since >= budget.bytes:
                yield _text_chunk(columns, rows, lines, unparseable)
                rows, lines, unparseable = [], [], []
                room, names, since = budget.rows, 0, budget.chars
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise UnreadableFileError(
                f"record at line {start} has a field longer than {MAX_LINE_CHARS // 2**20} MiB"
            ) from None
        raise UnreadableFileError(f"record at line {start}: {_one_line(exc)}") from None
    if rows or unparseable:
        yield _text_chunk(columns, rows, lines, unparseable)


def _names_bytes(columns: list[str]) -> int:
    """What the names add to a row written as a JSON object (about: not escaped);
    the values are counted in the text read."""
    return sum(len(name) + _CELL_BYTES for name in columns)


def _text_chunk(
    columns: list[str], rows: list[list[str]], lines: list[int], unparseable: list[tuple[int, str]]
) -> RowChunk:
    """CSV rows never hold None, but `RowChunk.rows` is invariant in its value type."""
    return RowChunk(columns, cast("list[list[str | None]]", rows), lines, unparseable)


# --- JSON --------------------------------------------------------------------------


class _JsonNumber(str):
    """A JSON number kept as its source text, so no amount is ever rounded through float."""

    __slots__ = ()


_JSON = json.JSONDecoder(parse_float=_JsonNumber, parse_int=_JsonNumber, parse_constant=_JsonNumber)

_Record = tuple[int, dict[str, Any] | str]
"""(line or record number, a JSON object or the raw text of an unparseable record)."""


def _json_kind(text: str, suffix: str) -> Literal["json", "ndjson"]:
    """An array is `json`, objects one per line are `ndjson`, whatever the extension says."""
    stripped = text.lstrip(_JSON_SPACE)
    first = stripped[:1]
    if first == "[":
        return "json"
    if suffix in _NDJSON_SUFFIXES:
        return "ndjson"
    if first != "{":
        raise UnreadableFileError(f"not a JSON array: the document starts with {first!r}")
    try:
        _, end = _JSON.raw_decode(stripped)
    except (json.JSONDecodeError, RecursionError):
        end = len(stripped)
    if _NDJSON_NEXT.match(stripped, end):
        return "ndjson"
    raise UnreadableFileError("JSON document is an object, expected an array of records")


class _JsonArrayScanner:
    """Decodes the records of a JSON array one by one from a sliding text buffer."""

    def __init__(self, blocks: Iterator[str]) -> None:
        self._blocks = blocks
        self._buffer = ""
        self._pos = 0
        self._eof = False

    def records(self) -> Iterator[_Record]:
        if self._skip_space() != "[":
            raise UnreadableFileError("not a JSON array")
        self._pos += 1
        if self._skip_space() == "]":
            self._pos += 1
        else:
            yield from self._elements()
        if self._skip_space():
            raise UnreadableFileError("unexpected text after the end of the JSON array")

    def _elements(self) -> Iterator[_Record]:
        for number in itertools.count(1):
            self._skip_space()
            value = self._value(number)
            yield number, value if isinstance(value, dict) else json_text(value)
            separator = self._skip_space()
            self._pos += 1
            if separator == "]":
                return
            if separator != ",":
                found = repr(separator) if separator else "end of file"
                raise UnreadableFileError(
                    f"invalid JSON after record {number}: expected ',' or ']', found {found}"
                )

    def _value(self, number: int) -> Any:
        while True:
            try:
                value, end = _JSON.raw_decode(self._buffer, self._pos)
            except RecursionError:
                raise UnreadableFileError(f"JSON record {number} is nested too deeply") from None
            except json.JSONDecodeError as exc:
                truncated = exc.pos >= len(self._buffer) - _TRUNCATION_SLACK or exc.msg.startswith(
                    "Unterminated string"
                )
                if truncated and self._more(number):
                    continue
                raise UnreadableFileError(f"invalid JSON in record {number}: {exc.msg}") from None
            if end < len(self._buffer) or not self._more(number):
                self._pos = end
                return value

    def _more(self, number: int) -> bool:
        """Append a block; False at end of input. A number or a record may continue in it."""
        if self._eof:
            return False
        if len(self._buffer) - self._pos > MAX_LINE_CHARS:
            raise UnreadableFileError(
                f"JSON record {number} is larger than {MAX_LINE_CHARS // 2**20} MiB"
            )
        block = next(self._blocks, "")
        if not block:
            self._eof = True
            return False
        self._buffer = self._buffer[self._pos :] + block
        self._pos = 0
        return True

    def _skip_space(self) -> str:
        """The next significant character ('' at end of input), without consuming it."""
        while True:
            found = _JSON_NON_SPACE.search(self._buffer, self._pos)
            if found:
                self._pos = found.start()
                return self._buffer[self._pos]
            self._pos = len(self._buffer)
            if not self._more(0):
                return ""


def decode_exact_json(text: str) -> Any:
    """A JSON document with every number kept as its source text (see `_JsonNumber`)."""
    return _JSON.decode(text)


def _ndjson_records(blocks: Iterator[str]) -> Iterator[_Record]:
    for number, line in enumerate(_split_lines(blocks, universal=False), 1):
        if not line.strip():
            continue
        try:
            value = _JSON.decode(line)
        except (json.JSONDecodeError, RecursionError):
            yield number, line.rstrip("\r\n")
            continue
        yield number, value if isinstance(value, dict) else line.rstrip("\r\n")


def _json_chunks(records: Iterator[_Record], budget: _Budget) -> Iterator[RowChunk]:
    first = next(records, None)
    if first is None:
        return
    number, record = first
    if not isinstance(record, dict):
        raise UnreadableFileError(
            f"record {number} is not a JSON object; the first record must name the columns"
        )
    if not record:
        raise UnreadableFileError(f"record {number} has no fields; it must name the columns")
    columns = [_utf8(key) for key in record]
    keys = list(record)
    names_bytes = _names_bytes(columns)
    rows: list[list[str | None]] = []
    lines: list[int] = []
    unparseable: list[tuple[int, str]] = []
    since = budget.chars
    for number, record in itertools.chain([first], records):
        if isinstance(record, dict):
            rows.append([json_cell(record.get(key)) for key in keys])
            lines.append(number)
        else:
            unparseable.append((number, record))
        full = len(rows) * names_bytes + budget.chars - since >= budget.bytes
        if full or len(rows) + len(unparseable) >= budget.rows:
            yield RowChunk(columns, rows, lines, unparseable)
            rows, lines, unparseable, since = [], [], [], budget.chars
    if rows or unparseable:
        yield RowChunk(columns, rows, lines, unparseable)


def json_cell(value: Any) -> str | None:
    """A JSON value as the row text cleaning expects: null is absent, the rest is text."""
    if value is None:
        return None
    if isinstance(value, str):
        return _utf8(str(value))
    return json_text(value)


def _utf8(text: str) -> str:
    """Text that can be sent: a lone surrogate from a JSON escape (`"\\ud800"`) cannot
    be encoded as UTF-8, so it is kept as the escape the sender wrote."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class _Literal(str):
    """Punctuation queued while re-serialising, told apart from string values."""

    __slots__ = ()


_OPEN_LIST, _CLOSE_LIST, _OPEN_OBJECT, _CLOSE_OBJECT, _COMMA = map(_Literal, "[]{},")


def json_text(value: Any) -> str:
    """Compact JSON text of a decoded value, numbers exactly as they were written.

    Iterative, so any depth the decoder accepted re-serialises without recursion.
    """
    parts: list[str] = []
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, _Literal | _JsonNumber):
            parts.append(item)
        elif isinstance(item, str):
            parts.append(json.dumps(item, ensure_ascii=False))
        elif item is None:
            parts.append("null")
        elif isinstance(item, bool):
            parts.append("true" if item else "false")
        elif isinstance(item, list):
            pending.append(_CLOSE_LIST)
            for index in range(len(item) - 1, -1, -1):
                pending.append(item[index])
                if index:
                    pending.append(_COMMA)
            pending.append(_OPEN_LIST)
        else:
            pending.append(_CLOSE_OBJECT)
            for index, (key, member) in enumerate(reversed(item.items())):
                if index:
                    pending.append(_COMMA)
                pending.append(member)
                pending.append(_Literal(json.dumps(key, ensure_ascii=False) + ":"))
            pending.append(_OPEN_OBJECT)
    return _utf8("".join(parts))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
