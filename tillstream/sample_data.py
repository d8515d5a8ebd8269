"""Seeded generator of messy sales files whose cleaning outcome is known exactly.

Integration tests assert that ClickHouse ends up equal to the returned `GroundTruth`,
and benchmarks write 10 M rows, so every value written is one whose meaning under the
cleaning rules of design section 5 the generator knows, and rows are produced in
numpy-vectorised blocks so memory stays flat whatever the row count.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

import numpy as np

from tillstream.records import ReasonCode

__all__ = [
    "BLOCK_ROWS",
    "FileFormat",
    "GroundTruth",
    "LABELS",
    "generate_sales",
    "truth_path",
    "write_truth",
]

FileFormat = Literal["csv", "tsv", "json", "ndjson"]

BLOCK_ROWS = 50_000
"""Rows generated per vectorised block: the unit of memory use."""

_FIRST_DAY = date(2024, 1, 1)
_DAYS = (date(2025, 12, 31) - _FIRST_DAY).days + 1

_PPM = 1_000_000

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_HEADER_SPELLINGS: dict[str, tuple[str, ...]] = {
    "order_id": ("OrderID", "order_id", "ID", "Order ID"),
    "sold_at": ("Date", "sale_date", "Sale Date", "order_date"),
    "product": ("Product", "product_name", "Item"),
    "category": ("Category", "category", "product_category"),
    "region": ("Region", "region", "Area"),
    "store_id": ("Store_ID", "store_id", "Store ID", "StoreID"),
    "quantity": ("Qty", "quantity", "Units"),
    "unit_price": ("Price", "unit_price", "Unit Price"),
    "discount": ("discount_percent", "discount", "Discount"),
    "customer_email": ("customer_email", "Email", "E-mail"),
    "currency": ("currency", "Currency"),
}

# (canonical name, category, list price in cents, spellings the alias table resolves)
_PRODUCTS: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    (
        "Smartphone X",
        "Electronics",
        69_900,
        (
            "Smartphone X",
            "smartfone x",
            "smart-phone x",
            "smartphone-x",
            "SMARTPHONE X",
            "smartphone x",
        ),
    ),
    (
        "Laptop Pro",
        "Electronics",
        129_900,
        ("Laptop Pro", "labtop pro", "LAPTOP PRO", "laptop_pro"),
    ),
    (
        "Wireless Earbuds",
        "Electronics",
        12_999,
        ("Wireless Earbuds", "earbuds wireless", "wireless ear buds", "wireless  earbuds"),
    ),
    ("Tablet S", "Electronics", 44_900, ("Tablet S", "tablet s", "Tablet-S")),
    ("Coffee Maker", "Home Appliance", 8_999, ("Coffee Maker", "cofee maker", "Coffee-Maker")),
    ("Blender", "Home Appliance", 4_999, ("Blender", "blender", "BLENDER")),
    ("Running Shoes", "Sports", 11_950, ("Running Shoes", "runing shoes", "RUNNING SHOES")),
    ("Yoga Mat", "Sports", 2_500, ("Yoga Mat", "yoga mat")),
    ("Denim Jacket", "Fashion", 7_999, ("Denim Jacket", "jean jacket", "denim jacket")),
    ("Desk Lamp", "Home Office", 3_450, ("Desk Lamp", "LED desk lamp", "desk lamp")),
)

_CATEGORY_SPELLINGS: dict[str, tuple[str, ...]] = {
    "Electronics": ("Electronics", "electronics", "ELECTRONICS", "electronic"),
    "Home Appliance": ("Home Appliance", "home appliances", "appliances"),
    "Sports": ("Sports", "sports", "sport"),
    "Fashion": ("Fashion", "clothing", "apparel", "clothes"),
    "Home Office": ("Home Office", "office", "home office"),
}

_REGIONS = (
    "North", "nort", "nOrth", "NORTH", "noth",
    "South", "sout", "souht", "south",
    "East", "est", "EAST",
    "West", "wst", "west",
    "Central", "centre",
)  # fmt: skip

_STORES = (
    *(f"ST-{n:03d}" for n in range(1, 41)),
    "Zürich-01",
    "São Paulo-02",
    "Málaga-03",
    "Kraków-04",
)

_FIRST_NAMES = ("anna", "ben", "chloé", "david", "elif", "frank", "grace", "hugo", "ines", "jon")
_LAST_NAMES = ("smith", "mueller", "garcia", "nguyen", "okafor", "rossi", "dubois", "kim")
_DOMAINS = ("example.com", "mail.example.org", "shop.example.net")
_BAD_EMAILS = ("not-an-email", "anna@", "@example.com", "ben at example.com", "")
_BAD_EMAIL_SHARE = 0.05

_DISCOUNT_PERCENTS = (0, 5, 10, 15, 20, 25, 50)
_DISCOUNT_WEIGHTS = (0.4, 0.1, 0.15, 0.15, 0.1, 0.05, 0.05)

# Date spellings, by column of _DATE_POOL. The two all-numeric day/month forms are
# written only for days > 12, so no reading of them is ambiguous.
_DATE_FORM_WEIGHTS = (0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1)
_ISO_DATETIME_FORM = 1
_DAY_MONTH_FORMS = (5, 6)

_QTY_FORM_WEIGHTS = (0.8, 0.1, 0.1)
_PRICE_FORM_WEIGHTS = (0.25, 0.15, 0.1, 0.25, 0.25)
_WHOLE_DOLLAR_SHARE = 0.3

# One entry per reason a single injected value causes: (reason, column, values).
_FIELD_ERRORS: tuple[tuple[ReasonCode, str, tuple[str, ...]], ...] = (
    (ReasonCode.MISSING_ORDER_ID, "order_id", ("",)),
    (ReasonCode.MISSING_PRODUCT, "product", ("",)),
    (ReasonCode.INVALID_QUANTITY, "quantity", ("0", "-2", "two", "2.5", "-1", "ten", "0.5")),
    (ReasonCode.INVALID_PRICE, "unit_price", ("free", "-5", "0", "$abc", "-12.50", "0.00")),
    (ReasonCode.INVALID_DISCOUNT, "discount", ("150%", "-0.1", "1.5", "-5%", "200%", "2.0")),
    (
        ReasonCode.INVALID_DATE,
        "sold_at",
        ("2025/13/45", "yesterday", "31-02-2025", "2025-02-29", "2024/02/30", "32-Jan-2025"),
    ),
)

_VALID, _DUPLICATE, _FIRST_ERROR = 0, 1, 2
_CONFLICT = _FIRST_ERROR + len(_FIELD_ERRORS)

LABELS: tuple[str, ...] = (
    "valid",
    "duplicate",
    *(str(reason) for reason, _, _ in _FIELD_ERRORS),
    str(ReasonCode.CONFLICTING_DUPLICATE),
)
"""Outcome of a data row as written to the optional labels file, one per line."""


def _objects(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _pool_offsets(groups: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten spelling groups so a vectorised pick is offset[g] + r % count[g]."""
    counts = np.array([len(group) for group in groups], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return _objects([s for group in groups for s in group]), offsets, counts


_PRODUCT_POOL, _PRODUCT_OFFSETS, _PRODUCT_COUNTS = _pool_offsets([p[3] for p in _PRODUCTS])
_CATEGORY_NAMES = tuple(_CATEGORY_SPELLINGS)
_CATEGORY_POOL, _CATEGORY_OFFSETS, _CATEGORY_COUNTS = _pool_offsets(
    list(_CATEGORY_SPELLINGS.values())
)
_PRODUCT_CATEGORY = np.array([_CATEGORY_NAMES.index(p[1]) for p in _PRODUCTS])
_BASE_CENTS = np.array([p[2] for p in _PRODUCTS], dtype=np.int64)
_REGION_POOL = _objects(list(_REGIONS))
_STORE_POOL = _objects(list(_STORES))
_GOOD_EMAILS = _objects(
    [
        f"{first}.{last}{n}@{domain}"
        for first in _FIRST_NAMES
        for last in _LAST_NAMES
        for n, domain in enumerate(_DOMAINS)
    ]
)
_EMAIL_POOL = np.concatenate([_GOOD_EMAILS, _objects(list(_BAD_EMAILS))])
_PCT = np.array(_DISCOUNT_PERCENTS, dtype=np.int64)


def _discount_pool() -> np.ndarray:
    """Spellings of each allowed discount: fraction, short fraction, percent, blank."""
    fraction = [f"0.{p:02d}" if p else "0" for p in _DISCOUNT_PERCENTS]
    short = [str(Decimal(p) / 100) if p else "0" for p in _DISCOUNT_PERCENTS]
    percent = [f"{p}%" for p in _DISCOUNT_PERCENTS]
    blank = ["" if p == 0 else fraction[i] for i, p in enumerate(_DISCOUNT_PERCENTS)]
    return np.array([fraction, short, percent, blank], dtype=object)


def _date_pool() -> tuple[np.ndarray, np.ndarray]:
    """Every date of the range in every spelling, and its day of month."""
    days = [_FIRST_DAY + timedelta(days=i) for i in range(_DAYS)]
    forms: list[list[str]] = [
        [d.isoformat() for d in days],
        [d.isoformat() for d in days],
        [f"{d.year}/{d.month:02d}/{d.day:02d}" for d in days],
        [f"{d.day:02d}-{_MONTHS[d.month - 1]}-{d.year}" for d in days],
        [f"{_MONTHS[d.month - 1]} {d.day}, {d.year}" for d in days],
        [f"{d.day:02d}-{d.month:02d}-{d.year}" for d in days],
        [f"{d.month:02d}/{d.day:02d}/{d.year}" for d in days],
    ]
    return np.array(forms, dtype=object), np.array([d.day for d in days])


def _quantity_pool(json_numbers: bool) -> np.ndarray:
    """Spellings of 0..50: plain (a JSON number in JSON files), padded, `n.0`."""
    plain: list[Any] = list(range(51)) if json_numbers else [str(q) for q in range(51)]
    return np.array(
        [plain, [f" {q} " for q in range(51)], [f"{q}.0" for q in range(51)]], dtype=object
    )


_QUANTITY_POOLS = {False: _quantity_pool(False), True: _quantity_pool(True)}


_DISCOUNT_POOL = _discount_pool()
_DATE_POOL, _DAY_OF_MONTH = _date_pool()
_TIME_POOL = _objects([f"T{m // 60:02d}:{m % 60:02d}:00Z" for m in range(24 * 60)])
_ERROR_POOLS = tuple(_objects(list(values)) for _, _, values in _FIELD_ERRORS)


@dataclass(frozen=True)
class GroundTruth:
    """What the pipeline must end with after reading one generated file."""

    rows: int
    """Data rows in the file (header excluded): valid + duplicates + sum(rejected)."""
    valid: int
    """Rows that end as clean sales, one per order id."""
    duplicates: int
    """Verbatim re-deliveries of an earlier valid row, dropped downstream."""
    rejected: dict[str, int]
    """Reason code -> rows quarantined for it; only codes that occur."""
    revenue: str
    """Sum of the valid rows' revenue, each rounded half-up to the cent, 2 decimals."""
    units: int
    """Sum of the valid rows' quantity."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> GroundTruth:
        raw = json.loads(text)
        try:
            truth = cls(
                rows=int(raw["rows"]),
                valid=int(raw["valid"]),
                duplicates=int(raw["duplicates"]),
                rejected={str(k): int(v) for k, v in raw["rejected"].items()},
                revenue=str(Decimal(raw["revenue"]).quantize(Decimal("0.01"))),
                units=int(raw["units"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, InvalidOperation) as exc:
            raise ValueError(f"not a ground truth document: {exc!r}") from None
        if truth.valid + truth.duplicates + sum(truth.rejected.values()) != truth.rows:
            raise ValueError("ground truth counts do not add up to rows")
        return truth


def truth_path(path: Path) -> Path:
    """Where the truth of a generated file lives: beside it, `<name>.truth.json`."""
    return path.with_name(f"{path.name}.truth.json")


def write_truth(path: Path, truth: GroundTruth) -> Path:
    target = truth_path(path)
    target.write_text(truth.to_json(), encoding="utf-8")
    return target


@dataclass(frozen=True)
class _Layout:
    """Per-file choices: which columns, in which order, under which header spellings."""

    fields: tuple[str, ...]
    headers: tuple[str, ...]
    json_numbers: bool


def _choose_layout(rng: np.random.Generator, file_format: FileFormat) -> _Layout:
    fields = [name for name in _HEADER_SPELLINGS if name != "currency"]
    if rng.random() < 0.5:
        fields.append("currency")
    fields = [fields[i] for i in rng.permutation(len(fields))]
    headers = [_HEADER_SPELLINGS[f][rng.integers(len(_HEADER_SPELLINGS[f]))] for f in fields]
    return _Layout(tuple(fields), tuple(headers), file_format in ("json", "ndjson"))


@dataclass(frozen=True)
class _Block:
    columns: dict[str, np.ndarray]
    labels: np.ndarray
    revenue_cents: int
    units: int


def _spelled(
    rng: np.random.Generator,
    group: np.ndarray,
    offsets: np.ndarray,
    counts: np.ndarray,
    pool: np.ndarray,
) -> np.ndarray:
    pick = rng.integers(0, 1 << 30, len(group)) % counts[group]
    return pool[offsets[group] + pick]


def _price_strings(cents: np.ndarray, form: np.ndarray) -> np.ndarray:
    """`$1,200.00`, `USD 500`, `12.5 dollars`, `1200.00` or `12.5` for each price."""
    whole, frac = np.divmod(cents, 100)
    full = [f"{w}.{f:02d}" for w, f in zip(whole.tolist(), frac.tolist(), strict=True)]
    short = [s.rstrip("0").rstrip(".") for s in full]
    out = _objects(short)
    dollar = np.flatnonzero(form == 0)
    pairs = zip(whole[dollar].tolist(), frac[dollar].tolist(), strict=True)
    out[dollar] = [f"${w:,}.{f:02d}" for w, f in pairs]
    usd = np.flatnonzero(form == 1)
    out[usd] = "USD " + out[usd]
    dollars = np.flatnonzero(form == 2)
    out[dollars] = out[dollars] + " dollars"
    padded = np.flatnonzero(form == 3)
    out[padded] = _objects(full)[padded]
    return out


def _make_block(
    rng: np.random.Generator,
    layout: _Layout,
    counts: tuple[int, int, int, int],
    first_id: int,
    prefix: str,
) -> _Block:
    """One block: fresh rows, one injected error in the bad ones, then verbatim and
    conflicting copies of this block's valid rows placed after their originals."""
    n, bad, dup, conflict = counts
    fresh = n - dup - conflict
    shuffled = rng.permutation(fresh)
    bad_rows, good_rows = shuffled[:bad], shuffled[bad:]
    originals = good_rows[: dup + conflict]

    product = rng.integers(0, len(_PRODUCTS), fresh)
    qty = np.minimum(rng.geometric(0.3, fresh), 50)
    cents = (_BASE_CENTS[product] * rng.integers(85, 116, fresh) + 50) // 100
    cents = np.where(rng.random(fresh) < _WHOLE_DOLLAR_SHARE, cents // 100 * 100, cents)
    cents = np.clip(cents, 100, 250_000)
    pct = rng.choice(len(_PCT), fresh, p=_DISCOUNT_WEIGHTS)
    day = rng.integers(0, _DAYS, fresh)
    date_form = rng.choice(len(_DATE_FORM_WEIGHTS), fresh, p=_DATE_FORM_WEIGHTS)
    ambiguous = np.isin(date_form, _DAY_MONTH_FORMS) & (_DAY_OF_MONTH[day] <= 12)
    date_form = np.where(ambiguous, 0, date_form)
    sold_at = _DATE_POOL[date_form, day]
    with_time = np.flatnonzero(date_form == _ISO_DATETIME_FORM)
    sold_at[with_time] = sold_at[with_time] + _TIME_POOL[rng.integers(0, 1440, len(with_time))]
    bad_email = rng.random(fresh) < _BAD_EMAIL_SHARE
    email = np.where(
        bad_email,
        len(_GOOD_EMAILS) + rng.integers(0, len(_BAD_EMAILS), fresh),
        rng.integers(0, len(_GOOD_EMAILS), fresh),
    )
    quantities = _QUANTITY_POOLS[layout.json_numbers]

    columns = {
        "order_id": _objects([f"{prefix}ORD-{i:08d}" for i in range(first_id, first_id + fresh)]),
        "sold_at": sold_at,
        "product": _spelled(rng, product, _PRODUCT_OFFSETS, _PRODUCT_COUNTS, _PRODUCT_POOL),
        "category": _spelled(
            rng, _PRODUCT_CATEGORY[product], _CATEGORY_OFFSETS, _CATEGORY_COUNTS, _CATEGORY_POOL
        ),
        "region": _REGION_POOL[rng.integers(0, len(_REGION_POOL), fresh)],
        "store_id": _STORE_POOL[rng.integers(0, len(_STORE_POOL), fresh)],
        "quantity": quantities[rng.choice(3, fresh, p=_QTY_FORM_WEIGHTS), qty],
        "unit_price": _price_strings(cents, rng.choice(5, fresh, p=_PRICE_FORM_WEIGHTS)),
        "discount": _DISCOUNT_POOL[rng.integers(0, len(_DISCOUNT_POOL), fresh), pct],
        "customer_email": _EMAIL_POOL[email],
    }

    labels = np.zeros(fresh, dtype=np.int8)
    reasons = rng.integers(0, len(_FIELD_ERRORS), bad)
    labels[bad_rows] = _FIRST_ERROR + reasons
    for kind, (_, column, _) in enumerate(_FIELD_ERRORS):
        rows = bad_rows[reasons == kind]
        pool = _ERROR_POOLS[kind]
        columns[column][rows] = pool[rng.integers(0, len(pool), len(rows))]

    revenue = (qty[good_rows] * cents[good_rows] * (100 - _PCT[pct[good_rows]]) + 50) // 100

    other_qty = (qty[originals[dup:]] - 1 + rng.integers(1, 50, conflict)) % 50 + 1
    after = rng.integers(originals, fresh)
    order = np.argsort(np.concatenate([2 * np.arange(fresh), 2 * after + 1]), kind="stable")
    for name, values in columns.items():
        copies = values[originals]
        if name == "quantity":
            copies[dup:] = quantities[0, other_qty]
        columns[name] = np.concatenate([values, copies])[order]
    extra = np.array([_DUPLICATE] * dup + [_CONFLICT] * conflict, dtype=np.int8)
    labels = np.concatenate([labels, extra])[order]
    return _Block(columns, labels, int(revenue.sum()), int(qty[good_rows].sum()))


class _Output:
    """Writes blocks in one of the file formats; JSON arrays are streamed, not built."""

    def __init__(self, out: TextIO, file_format: FileFormat, headers: tuple[str, ...]) -> None:
        self._out = out
        self._format = file_format
        self._headers = headers
        self._json = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
        self._written = False
        if file_format in ("csv", "tsv"):
            delimiter = "," if file_format == "csv" else "\t"
            self._csv = csv.writer(out, delimiter=delimiter, lineterminator="\n")
            self._csv.writerow(headers)
        elif file_format == "json":
            out.write("[")

    def write(self, rows: Iterator[tuple[Any, ...]]) -> None:
        if self._format in ("csv", "tsv"):
            self._csv.writerows(rows)
            return
        encode = self._json.encode
        headers = self._headers
        lines = [encode(dict(zip(headers, row, strict=True))) for row in rows]
        if not lines:
            return
        if self._format == "ndjson":
            self._out.write("\n".join(lines) + "\n")
        else:
            self._out.write((",\n" if self._written else "\n") + ",\n".join(lines))
        self._written = True

    def close(self) -> None:
        if self._format == "json":
            self._out.write("\n]\n")


def _share(ppm: int, start: int, end: int) -> int:
    """This block's part of a fraction of the file; the parts sum to the file's total."""
    return end * ppm // _PPM - start * ppm // _PPM


def _block_counts(start: int, end: int, ppms: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Rows, bad, duplicate and conflicting rows of one block.

    Copies need distinct valid originals within the block, so in a block too small
    for them the copies give way.
    """
    n = end - start
    bad, dup, conflict = (_share(ppm, start, end) for ppm in ppms)
    bad = min(bad, n)
    while dup + conflict > n - dup - conflict - bad:
        if dup:
            dup -= 1
        else:
            conflict -= 1
    return n, bad, dup, conflict


def _check(rows: int, seed: int, fractions: tuple[float, float, float], fmt: str) -> None:
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if any(not 0.0 <= f <= 1.0 for f in fractions) or sum(fractions) > 1.0:
        raise ValueError(f"fractions must be in [0, 1] and sum to <= 1, got {fractions}")
    if fmt not in get_args(FileFormat):
        raise ValueError(f"file_format must be one of {get_args(FileFormat)}, got {fmt!r}")


def generate_sales(
    path: Path,
    rows: int,
    seed: int,
    *,
    bad_fraction: float = 0.15,
    duplicate_fraction: float = 0.02,
    conflict_fraction: float = 0.01,
    file_format: FileFormat = "csv",
    compress: bool = False,
    order_id_prefix: str = "",
    labels_path: Path | None = None,
) -> GroundTruth:
    """Write `rows` messy data rows to `path` and return what cleaning them must yield.

    `bad_fraction` rows carry exactly one field error; `duplicate_fraction` rows are
    verbatim copies and `conflict_fraction` rows reuse an earlier valid row's order id
    with another quantity. The same arguments give a byte-identical file. The file
    appears at `path` only once complete (written beside it, then renamed), so a
    watched folder never sees it half-written. `labels_path`, if given, receives one
    `LABELS` entry per data row, in file order.
    """
    fractions = (bad_fraction, duplicate_fraction, conflict_fraction)
    _check(rows, seed, fractions, file_format)
    ppms = (
        round(bad_fraction * _PPM),
        round(duplicate_fraction * _PPM),
        round(conflict_fraction * _PPM),
    )
    layout_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    layout = _choose_layout(layout_rng, file_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    outcomes = np.zeros(len(LABELS), dtype=np.int64)
    revenue_cents = units = next_id = 0
    try:
        with contextlib.ExitStack() as stack:
            raw: io.BufferedIOBase = stack.enter_context(partial.open("wb"))
            if compress:
                # mtime 0: the same bytes on every run; level 1: speed matters more than size.
                raw = stack.enter_context(
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1)
                )
            text = stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            labels_out = (
                stack.enter_context(labels_path.open("w", encoding="utf-8"))
                if labels_path is not None
                else None
            )
            output = _Output(text, file_format, layout.headers)
            for index, start in enumerate(range(0, rows, BLOCK_ROWS)):
                counts = _block_counts(start, min(rows, start + BLOCK_ROWS), ppms)
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))
                block = _make_block(rng, layout, counts, next_id, order_id_prefix)
                next_id += counts[0] - counts[2] - counts[3]
                size = len(block.labels)
                columns = [
                    block.columns[f].tolist() if f in block.columns else ["USD"] * size
                    for f in layout.fields
                ]
                output.write(zip(*columns, strict=True))
                outcomes += np.bincount(block.labels, minlength=len(LABELS))
                revenue_cents += block.revenue_cents
                units += block.units
                if labels_out is not None:
                    labels_out.write("".join(LABELS[k] + "\n" for k in block.labels.tolist()))
            output.close()
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return GroundTruth(
        rows=rows,
        valid=int(outcomes[_VALID]),
        duplicates=int(outcomes[_DUPLICATE]),
        rejected={
            LABELS[k]: int(outcomes[k])
            for k in sorted(range(_FIRST_ERROR, len(LABELS)), key=LABELS.__getitem__)
            if outcomes[k]
        },
        revenue=f"{revenue_cents // 100}.{revenue_cents % 100:02d}",
        units=units,
    )
