"""Hostile files a sender could drop into the watched folder, built at run time.

Nothing large or binary is committed: every case writes its entry when asked,
from a seed, so the corpus is the same on every run. Each case says how it must
end: `failed`, with the one-line reason the ingestion history and the
`<name>.error.txt` sidecar carry, or `done`, with exactly which rows are clean
and which are quarantined under which reason code.

Files that are not hostile in content but only in name (spaces, quotes,
unicode, a leading dash, a newline, bytes that are not UTF-8, a very long name)
are ordinary generated sales files whose `GroundTruth` is known.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tillstream.sample_data import GroundTruth, generate_sales

__all__ = [
    "BOMB_DECOMPRESSED_BYTES",
    "FORMULAS",
    "HUGE_LINE_BYTES",
    "HostileCase",
    "NAME_MAX",
    "build_corpus",
    "write_huge_line",
]

HUGE_LINE_BYTES = 500 * 2**20
"""The single line of `huge_line.csv`: far beyond the reader's line limit."""
BOMB_DECOMPRESSED_BYTES = 11 * 2**30
"""What `bomb.csv.gz` (about 11 MB) expands to: beyond the reader's 10 GiB limit."""
NAME_MAX = 255
"""Longest file name, in bytes, on the file systems tests run on."""

FORMULAS = ("=cmd|' /C calc'!A0", "+1+1", "@SUM(1)", "-2+3", '=HYPERLINK("http://x","y")')
"""Spreadsheet formula injection payloads: text to tillstream, never evaluated."""

HEADER = ["order_id", "sold_at", "product", "quantity", "unit_price", "store_id"]
"""Columns of the hand-written cases; every name is one the default aliases know."""


@dataclass(frozen=True)
class HostileCase:
    """One inbox entry and the outcome the pipeline owes it."""

    key: str
    """Test id; also the order id prefix of the case's rows, so they can be found."""
    name: str
    """The entry's name in the inbox; may hold any character a file name can."""
    write: Callable[[Path], None]
    """Creates the entry at the given path (a file, a link, a pipe)."""
    status: Literal["done", "failed"]
    error: str = ""
    """For `failed`: a regular expression the whole one-line reason must match."""
    valid: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    truth: GroundTruth | None = None
    """For generated files: the exact outcome, revenue and units included."""
    stored: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Clean rows whose text must be stored exactly: order_id -> (store_id, product)."""
    reader_error: str | None = None
    """The reader's own refusal, when the reader alone decides the outcome."""
    link_target: Path | None = None
    """For a link: what it points at, which must stay untouched and unread."""


def _csv(rows: list[list[str]], delimiter: str = ",") -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _sale(order_id: str, store_id: str = "S1", product: str = "Desk Lamp") -> list[str]:
    return [order_id, "2025-03-14", product, "2", "10.00", store_id]


def _writer(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


def _binary() -> bytes:
    """Random bytes whose first KiB holds no NUL, as 2 % of random files' do."""
    rng = np.random.default_rng(9)
    head = rng.integers(1, 256, 1024, dtype=np.uint8).tobytes()
    return head + rng.bytes(255 * 1024)


def _bomb(path: Path) -> None:
    """A valid multi-member gzip of one header and `1,x` rows, about 1000:1.

    Members are concatenated, which gzip allows, so 11 GiB of content costs one
    64 MiB compression.
    """
    member_bytes = 64 * 2**20
    header = b"order_id,product\n"
    body = b"1,x\n" * ((member_bytes - len(header)) // 4)
    first = gzip.compress(header + body, compresslevel=9, mtime=0)
    rest = gzip.compress(b"1,x\n" * (member_bytes // 4), compresslevel=9, mtime=0)
    with path.open("wb") as out:
        out.write(first)
        for _ in range(BOMB_DECOMPRESSED_BYTES // member_bytes - 1):
            out.write(rest)


def _zeros_bomb(path: Path) -> None:
    """The classic bomb: gzip members of nothing but NUL bytes, 11 GiB from 11 MB."""
    member_bytes = 64 * 2**20
    member = gzip.compress(bytes(member_bytes), compresslevel=9, mtime=0)
    with path.open("wb") as out:
        for _ in range(BOMB_DECOMPRESSED_BYTES // member_bytes):
            out.write(member)


def write_huge_line(path: Path, size: int = HUGE_LINE_BYTES) -> None:
    """A header, then one line of `size` bytes with no line end, streamed to disk."""
    block = b"A" * (8 * 2**20)
    with path.open("wb") as out:
        out.write(b"order_id,product\n")
        for _ in range(size // len(block)):
            out.write(block)
        out.write(block[: size % len(block)])


def _deep_json_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _wide(rows: int, columns: int) -> bytes:
    fillers = [f"extra_{index}" for index in range(columns - len(HEADER))]
    lines = [HEADER + fillers]
    lines += [_sale(f"WIDE-{n}") + [f"v{n}"] * len(fillers) for n in range(rows)]
    return _csv(lines).encode()


def _formulas() -> tuple[bytes, dict[str, tuple[str, str]], dict[str, int]]:
    """Formulas as the order id and store id of clean rows, which must be stored as
    sent, and as the quantity or price of rows quarantined with their text intact.

    Products are left alone: cleaning title-cases them, by design."""
    rows: list[list[str]] = [HEADER]
    stored: dict[str, tuple[str, str]] = {}
    for number, formula in enumerate(FORMULAS):
        rows += [_sale(formula, store_id=formula), _sale(f"FORMULA-{number}", store_id=formula)]
        stored[formula] = stored[f"FORMULA-{number}"] = (formula, "Desk Lamp")
    for number, formula in enumerate(FORMULAS):
        bad_quantity, bad_price = _sale(f"FORMULA-Q{number}"), _sale(f"FORMULA-P{number}")
        bad_quantity[3] = bad_price[4] = formula
        rows += [bad_quantity, bad_price]
    rejected = {"invalid_quantity": len(FORMULAS), "invalid_price": len(FORMULAS)}
    return _csv(rows).encode(), stored, rejected


def _link_to(target: Path) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.symlink_to(target)

    return write


def _pipe(path: Path) -> None:
    os.mkfifo(path)


def _unreadable(path: Path) -> None:
    path.write_text(_csv([HEADER, _sale("UNREADABLE-1")]), encoding="utf-8")
    path.chmod(0)


def _generated(staging: Path, rows: int, seed: int, prefix: str) -> tuple[bytes, GroundTruth]:
    source = staging / f"{prefix}.csv"
    truth = generate_sales(source, rows, seed, order_id_prefix=prefix)
    return source.read_bytes(), truth


def build_corpus(staging: Path) -> list[HostileCase]:
    """The hostile cases; `staging` (outside the inbox) holds what links point at.

    The 500 MB line is not in this list: it is a timed, memory-measured case of
    its own (`write_huge_line`).
    """
    staging.mkdir(parents=True, exist_ok=True)
    outside_data, _ = _generated(staging, 50, 901, "OUTSIDE-")
    outside = staging / "outside-the-inbox.csv"
    outside.write_bytes(outside_data)
    formulas, formulas_stored, formulas_rejected = _formulas()
    mixed = _csv([HEADER, _sale("MIXED-1"), _sale("MIXED-2")]) + (
        "MIXED-3;2025-03-14;Desk Lamp;2;10.00;S1\n"
        "MIXED-4|2025-03-14|Desk Lamp|2|10.00|S1\n"
        "MIXED-5\t2025-03-14\tDesk Lamp\t2\t10.00\tS1\n"
        "MIXED-6,2025-03-14;Desk Lamp,2|10.00,S1\n"
    )
    latin1 = (
        _csv([HEADER]).encode()
        + b"LATIN-1,2025-03-14,Caf\xe9 cr\xe8me,2,10.00,S\x80\xff\n"
        + b"LATIN-2,2025-03-14,Desk Lamp,2,10.00,\xe9t\xe9\n"
    )
    bom = b"\xef\xbb\xbf" + _csv(
        [["ID", "Date", "Product", "Qty", "Price", "Store_ID"], _sale("BOM-1"), _sale("BOM-2")]
    ).encode("utf-8")
    deep_ndjson = (
        json.dumps(dict(zip(HEADER, _sale("DEEP-1"), strict=True))).encode()
        + b"\n"
        + b'{"order_id": "DEEP-2", "product": '
        + _deep_json_array(100_000)
        + b"}\n"
        + json.dumps(dict(zip(HEADER, _sale("DEEP-3"), strict=True))).encode()
        + b"\n"
    )
    json_object = json.dumps(dict(zip(HEADER, _sale("OBJECT-1"), strict=True))).encode()
    long_stem = "long-" + "n" * (NAME_MAX - len("long-") - len(".csv"))

    cases = [
        HostileCase(
            "binary",
            "binary.csv",
            _writer(_binary()),
            "failed",
            error=r"binary content, not a text file",
            reader_error="binary content, not a text file",
        ),
        HostileCase(
            "bomb",
            "bomb.csv.gz",
            _bomb,
            "failed",
            error=r"gzip content expands more than 100 times .*\(gzip bomb\?\), stopped reading",
            reader_error="gzip bomb",
        ),
        HostileCase(
            "zeros-bomb",
            "zeros.csv.gz",
            _zeros_bomb,
            "failed",
            error=r"binary content, not a text file",
            reader_error="binary content, not a text file",
        ),
        HostileCase(
            "latin1",
            "invalid-utf8.csv",
            _writer(latin1),
            "done",
            valid=2,
            # Not UTF-8, so Windows-1252 (design section 5); 0xFF is ÿ there.
            stored={"LATIN-1": ("S€ÿ", "Café Crème"), "LATIN-2": ("été", "Desk Lamp")},
        ),
        HostileCase(
            "bom",
            "bom.csv",
            _writer(bom),
            "done",
            valid=2,
            stored={"BOM-1": ("S1", "Desk Lamp"), "BOM-2": ("S1", "Desk Lamp")},
        ),
        HostileCase(
            "mixed-delimiters",
            "mixed-delimiters.csv",
            _writer(mixed.encode()),
            "done",
            valid=2,
            rejected={"unparseable_row": 4},
        ),
        HostileCase(
            "wide",
            "wide-10000-columns.csv",
            _writer(_wide(100, 10_000)),
            "done",
            valid=100,
        ),
        HostileCase(
            "formula",
            "formula-injection.csv",
            _writer(formulas),
            "done",
            valid=len(formulas_stored),
            rejected=formulas_rejected,
            stored=formulas_stored,
        ),
        HostileCase(
            "deep-json",
            "deeply-nested.json",
            _writer(_deep_json_array(100_000)),
            "failed",
            error=r"JSON record 1 is nested too deeply",
            reader_error="JSON record 1 is nested too deeply",
        ),
        HostileCase(
            "deep-ndjson",
            "deeply-nested.ndjson",
            _writer(deep_ndjson),
            "done",
            valid=2,
            rejected={"unparseable_row": 1},
        ),
        HostileCase(
            "json-object",
            "object.json",
            _writer(json_object),
            "failed",
            error=r"JSON document is an object, expected an array of records",
            reader_error="JSON document is an object, expected an array of records",
        ),
        HostileCase(
            "symlink",
            "link-outside.csv",
            _link_to(outside),
            "failed",
            error=rf"a symbolic link \(to '{outside}'\), not a regular file: refused, "
            r"links are never followed",
            reader_error="a symbolic link",
            link_target=outside,
        ),
        HostileCase(
            "pipe",
            "named-pipe.csv",
            _pipe,
            "failed",
            error=r"a named pipe, not a regular file: refused",
            reader_error="a named pipe, not a regular file",
        ),
        HostileCase(
            "unreadable",
            "unreadable.csv",
            _unreadable,
            "failed",
            error=r"cannot read the file: permission denied \(check its owner and mode\)",
            reader_error="permission denied",
        ),
        HostileCase(
            "binary-odd-name",
            "binary\nwith newline.csv",
            _writer(_binary()[::-1]),
            "failed",
            error=r"binary content, not a text file",
            reader_error="binary content, not a text file",
        ),
        HostileCase(
            "binary-long-name",
            long_stem[: -len("-binary")] + "-binary.csv",
            _writer(_binary()[1:]),
            "failed",
            error=r"binary content, not a text file",
            reader_error="binary content, not a text file",
        ),
    ]
    odd_names = {
        "spaces-quotes": "with spaces, 'single' and \"double\" quotes.csv",
        "unicode": "ventes-été-日本-🧾.csv",
        "leading-dash": "-rf --help.csv",
        "newline": "first line\nsecond line.csv",
        "not-utf8": os.fsdecode(b"latin1-name-\xe9t\xe9.csv"),
        "long-name": long_stem + ".csv",
        "shell": "$(touch pwned) `id`; rm -rf x & | > <.csv",
    }
    for seed, (key, name) in enumerate(odd_names.items(), 100):
        data, truth = _generated(staging, 40, seed, f"{key.upper()}-")
        cases.append(HostileCase(key, name, _writer(data), "done", truth=truth))
    return cases
