"""The generator's truth must be what the design's cleaning rules make of its file.

The file is re-read and re-judged here with a small parser written independently of
the generator, from the rules of design section 5 and the rule tables in settings.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import time
import tracemalloc
from collections import Counter
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from tillstream import sample_data
from tillstream.records import ReasonCode
from tillstream.sample_data import LABELS, GroundTruth, generate_sales, truth_path, write_truth
from tillstream.settings import default_rules

RULES = default_rules()
CENT = Decimal("0.01")
NUMERIC_DATE_FORMATS = ("%Y/%m/%d", "%d-%b-%Y", "%b %d, %Y", "%d-%m-%Y", "%m/%d/%Y")
REASONS = {str(code) for code in ReasonCode}
NOT_GENERATED = {"unparseable_row", "message_too_large"}
"""Reasons the generator does not produce: the reader and the broker's limit give them."""


def _key(text: str) -> str:
    return " ".join(text.lower().split())


HEADER_FIELDS = {
    _key(alias): name for name, aliases in RULES.column_aliases.items() for alias in aliases
}


def read_file(path: Path, file_format: str, compress: bool) -> tuple[list[str], list[dict]]:
    """Header and rows as a reader would see them, keyed by the file's own header."""
    opener: Any = gzip.open if compress else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        if file_format in ("csv", "tsv"):
            reader = csv.reader(handle, delimiter="," if file_format == "csv" else "\t")
            header = next(reader)
            return header, [dict(zip(header, row, strict=True)) for row in reader]
        if file_format == "json":
            records = json.load(handle)
        else:
            records = [json.loads(line) for line in handle.read().splitlines()]
    header = list(records[0]) if records else []
    assert all(list(record) == header for record in records)
    return header, records


def canonical(record: dict) -> dict[str, str]:
    return {HEADER_FIELDS[_key(k)]: "" if v is None else str(v) for k, v in record.items()}


def parse_quantity(text: str) -> int | None:
    match = re.fullmatch(r"\s*(\d+)(?:\.0+)?\s*", text)
    quantity = int(match[1]) if match else 0
    return quantity if quantity > 0 else None


def parse_price(text: str) -> Decimal | None:
    value = text.strip().lower()
    for token in ("usd", "dollars", "$", ","):
        value = value.replace(token, "")
    value = value.strip()
    if not re.fullmatch(r"-?\d+(\.\d{1,2})?", value):
        return None
    price = Decimal(value)
    return price if price > 0 else None


def parse_discount(text: str) -> Decimal | None:
    value = text.strip()
    if not value:
        return Decimal(0)
    percent = value.endswith("%")
    value = value.removesuffix("%")
    if not re.fullmatch(r"-?\d+(\.\d+)?", value):
        return None
    discount = Decimal(value) / (100 if percent else 1)
    return discount if 0 <= discount <= 1 else None


def parse_date(text: str) -> date | None:
    try:
        return datetime.fromisoformat(text).date()
    except ValueError:
        pass
    for form in NUMERIC_DATE_FORMATS:
        try:
            return datetime.strptime(text, form).date()
        except ValueError:
            continue
    return None


def field_errors(record: dict[str, str]) -> list[str]:
    checks = [
        ("missing_order_id", bool(record["order_id"].strip())),
        ("missing_product", bool(record["product"].strip())),
        ("invalid_quantity", parse_quantity(record["quantity"]) is not None),
        ("invalid_price", parse_price(record["unit_price"]) is not None),
        ("invalid_discount", parse_discount(record["discount"]) is not None),
        ("invalid_date", parse_date(record["sold_at"]) is not None),
    ]
    return [reason for reason, ok in checks if not ok]


def judge(records: list[dict[str, str]]) -> tuple[list[str], Decimal, int]:
    """Outcome of every row, revenue and units, by the rules of design section 5."""
    seen: dict[str, dict[str, str]] = {}
    outcomes: list[str] = []
    revenue, units = Decimal(0), 0
    for record in records:
        errors = field_errors(record)
        assert len(errors) <= 1, (errors, record)
        order_id = record["order_id"]
        if errors:
            outcomes.append(errors[0])
        elif order_id in seen:
            original = seen[order_id]
            if original == record:
                outcomes.append("duplicate")
            else:
                assert {k for k in record if record[k] != original[k]} == {"quantity"}
                assert parse_quantity(record["quantity"]) != parse_quantity(original["quantity"])
                outcomes.append(str(ReasonCode.CONFLICTING_DUPLICATE))
        else:
            seen[order_id] = record
            quantity = parse_quantity(record["quantity"])
            price = parse_price(record["unit_price"])
            discount = parse_discount(record["discount"])
            assert quantity is not None and price is not None and discount is not None
            row_revenue = Decimal(quantity) * price * (1 - discount)
            revenue += row_revenue.quantize(CENT, rounding=ROUND_HALF_UP)
            units += quantity
            outcomes.append("valid")
    return outcomes, revenue, units


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several blocks, and a short last one, in a file small enough to judge quickly."""
    monkeypatch.setattr(sample_data, "BLOCK_ROWS", 700)


FORMATS = [
    ("csv", False),
    ("csv", True),
    ("tsv", False),
    ("tsv", True),
    ("json", False),
    ("json", True),
    ("ndjson", False),
    ("ndjson", True),
]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize(("file_format", "compress"), FORMATS)
def test_truth_is_what_the_rules_make_of_the_file(
    tmp_path: Path, file_format: str, compress: bool
) -> None:
    path = tmp_path / f"sales.{file_format}"
    labels_path = tmp_path / "labels.txt"
    truth = generate_sales(
        path,
        3_000,
        seed=11,
        file_format=file_format,  # type: ignore[arg-type]
        compress=compress,
        labels_path=labels_path,
    )
    header, raw = read_file(path, file_format, compress)
    records = [canonical(record) for record in raw]
    outcomes, revenue, units = judge(records)
    counts = Counter(outcomes)

    assert len(records) == truth.rows == 3_000
    assert truth.valid + truth.duplicates + sum(truth.rejected.values()) == truth.rows
    assert outcomes == labels_path.read_text(encoding="utf-8").splitlines()
    assert counts.pop("valid") == truth.valid
    assert counts.pop("duplicate", 0) == truth.duplicates
    assert dict(counts) == truth.rejected
    assert set(truth.rejected) <= REASONS
    assert revenue == Decimal(truth.revenue)
    assert units == truth.units
    assert len(header) == len({HEADER_FIELDS[_key(h)] for h in header})


def test_headers_are_configured_aliases_of_every_field(tmp_path: Path) -> None:
    spellings: set[str] = set()
    for seed in range(40):
        path = tmp_path / f"h{seed}.csv"
        generate_sales(path, 0, seed)
        header, _ = read_file(path, "csv", False)
        fields = [HEADER_FIELDS[_key(name)] for name in header]
        assert len(fields) == len(set(fields))
        assert set(fields) - {"currency"} == set(RULES.column_aliases) - {"currency"}
        spellings |= set(header)
    assert {"OrderID", "order_id", "ID", "Qty", "Price", "Store_ID", "currency"} <= spellings


@pytest.mark.usefixtures("small_blocks")
def test_values_are_known_spellings_within_bounds(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv"
    labels_path = tmp_path / "labels.txt"
    generate_sales(path, 4_000, seed=5, labels_path=labels_path)
    _, raw = read_file(path, "csv", False)
    labels = labels_path.read_text(encoding="utf-8").splitlines()
    for record, label in zip(map(canonical, raw), labels, strict=True):
        product = re.sub(r"[-_\s]+", " ", record["product"].lower()).strip()
        assert record["product"] == "" or product in RULES.product_aliases, record
        assert _key(record["region"]) in RULES.region_aliases
        assert _key(record["category"]) in RULES.category_aliases
        assert record.get("currency", "USD") == "USD"
        if label == "invalid_date":
            continue
        sold = parse_date(record["sold_at"])
        assert sold is not None and date(2024, 1, 1) <= sold <= date(2025, 12, 31)
        if match := re.fullmatch(r"(\d\d)-(\d\d)-\d{4}", record["sold_at"]):
            assert int(match[1]) > 12, record["sold_at"]
        if match := re.fullmatch(r"(\d\d)/(\d\d)/\d{4}", record["sold_at"]):
            assert int(match[2]) > 12, record["sold_at"]
        if label != "invalid_quantity":
            assert 1 <= (parse_quantity(record["quantity"]) or 0) <= 50
        if label != "invalid_price":
            assert Decimal("1.00") <= (parse_price(record["unit_price"]) or 0) <= 2500
        if label != "invalid_discount":
            discount = parse_discount(record["discount"])
            assert discount is not None and discount * 100 in {0, 5, 10, 15, 20, 25, 50}


def test_injected_ids_are_fresh_and_copies_reuse_valid_ids(tmp_path: Path) -> None:
    path = tmp_path / "sales.ndjson"
    labels_path = tmp_path / "labels.txt"
    generate_sales(
        path, 5_000, seed=3, file_format="ndjson", order_id_prefix="t1-", labels_path=labels_path
    )
    _, raw = read_file(path, "ndjson", False)
    ids = [canonical(record)["order_id"] for record in raw]
    labels = labels_path.read_text(encoding="utf-8").splitlines()
    uses = Counter(ids)
    valid_ids = {i for i, label in zip(ids, labels, strict=True) if label == "valid"}
    for order_id, label in zip(ids, labels, strict=True):
        if label == "missing_order_id":
            assert order_id == ""
            continue
        assert order_id.startswith("t1-")
        if label in ("duplicate", "conflicting_duplicate"):
            assert order_id in valid_ids
        elif label != "valid":
            assert uses[order_id] == 1


def test_every_documented_messy_and_bad_value_occurs(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv"
    labels_path = tmp_path / "labels.txt"
    truth = generate_sales(path, 30_000, seed=8, labels_path=labels_path)
    _, raw = read_file(path, "csv", False)
    records = [canonical(record) for record in raw]
    labels = labels_path.read_text(encoding="utf-8").splitlines()
    valid = [r for r, label in zip(records, labels, strict=True) if label == "valid"]
    values = {name: {r[name] for r in valid} for name in records[0]}
    text = path.read_text(encoding="utf-8")

    assert set(truth.rejected) == REASONS - NOT_GENERATED
    assert truth.duplicates > 0
    assert {"smartfone x", "smart-phone x", "smartphone-x", "SMARTPHONE X"} <= values["product"]
    assert {"nort", "nOrth", "sout"} <= values["region"]
    assert {"clothing", "home appliances"} <= values["category"]
    assert {" 3 ", "3.0", "3"} <= values["quantity"]
    assert {"", "0", "0.15", "15%"} <= values["discount"]
    assert "not-an-email" in values["customer_email"]
    price_forms = [
        r"\$\d{1,3}(,\d{3})*\.\d\d",
        r"USD \d+(\.\d+)?",
        r"\d+(\.\d+)? dollars",
        r"\d+",
        r"\d+\.\d",
        r"\d+\.\d\d",
    ]
    for form in price_forms:
        assert any(re.fullmatch(form, p) for p in values["unit_price"]), form
    assert any(re.fullmatch(r"\$\d,\d{3}\.\d\d", p) for p in values["unit_price"])
    date_forms = [
        r"\d{4}-\d\d-\d\d",
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
        r"\d{4}/\d\d/\d\d",
        r"\d\d-[A-Z][a-z]{2}-\d{4}",
        r"[A-Z][a-z]{2} \d{1,2}, \d{4}",
        r"\d\d-\d\d-\d{4}",
        r"\d\d/\d\d/\d{4}",
    ]
    for form in date_forms:
        assert any(re.fullmatch(form, d) for d in values["sold_at"]), form
    for bad in ("two", "-2", "free", "$abc", "150%", "-0.1", "yesterday", "31-02-2025"):
        assert bad in text, bad
    assert "Zürich-01" in text
    text.encode("cp1252")


def test_same_seed_gives_same_bytes_and_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def make(name: str, seed: int) -> tuple[bytes, GroundTruth]:
        path = tmp_path / name
        truth = generate_sales(path, 2_000, seed, file_format="json", compress=True)
        return path.read_bytes(), truth

    first = make("a.json.gz", 9)
    monkeypatch.setattr(time, "time", lambda: 1_000_000_000.0)
    second, other = make("b.json.gz", 9), make("c.json.gz", 10)
    assert first == second
    assert other[0] != first[0]
    assert other[1] != first[1]


@pytest.mark.parametrize("file_format", ["csv", "tsv", "json", "ndjson"])
def test_empty_file_is_still_well_formed(tmp_path: Path, file_format: str) -> None:
    path = tmp_path / f"empty.{file_format}"
    truth = generate_sales(path, 0, seed=1, file_format=file_format)  # type: ignore[arg-type]
    header, records = read_file(path, file_format, False)
    assert records == []
    assert (bool(header), truth) == (
        file_format in ("csv", "tsv"),
        GroundTruth(rows=0, valid=0, duplicates=0, rejected={}, revenue="0.00", units=0),
    )


def test_fractions_are_honoured_exactly(tmp_path: Path) -> None:
    truth = generate_sales(
        tmp_path / "s.csv",
        20_000,
        2,
        bad_fraction=0.2,
        duplicate_fraction=0.05,
        conflict_fraction=0.03,
    )
    conflicts = truth.rejected["conflicting_duplicate"]
    assert (truth.duplicates, conflicts) == (1_000, 600)
    assert sum(truth.rejected.values()) - conflicts == 4_000


def test_memory_is_flat_in_the_row_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sample_data, "BLOCK_ROWS", 2_000)

    def peak(rows: int) -> int:
        tracemalloc.start()
        try:
            generate_sales(tmp_path / f"m{rows}.csv", rows, seed=4)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    generate_sales(tmp_path / "warm-up.csv", 2_000, seed=4)
    small, large = peak(8_000), peak(48_000)
    assert large < small * 1.3, (small, large)


def test_a_failed_run_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sample_data, "BLOCK_ROWS", 100)
    real = sample_data._make_block
    calls = Counter[str]()

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["block"] += 1
        if calls["block"] == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_data, "_make_block", failing)
    with pytest.raises(RuntimeError):
        generate_sales(tmp_path / "s.csv", 1_000, seed=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": -1},
        {"seed": -3},
        {"bad_fraction": 1.5},
        {"duplicate_fraction": -0.1},
        {"bad_fraction": 0.6, "duplicate_fraction": 0.3, "conflict_fraction": 0.2},
        {"file_format": "xml"},
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"path": tmp_path / "s.csv", "rows": 10, "seed": 1} | kwargs
    with pytest.raises(ValueError):
        generate_sales(**arguments)
    assert not (tmp_path / "s.csv").exists()


def test_truth_round_trips_through_json_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv.gz"
    truth = generate_sales(path, 500, seed=6, compress=True)
    written = write_truth(path, truth)
    assert written == tmp_path / "sales.csv.gz.truth.json" == truth_path(path)
    assert GroundTruth.from_json(written.read_text(encoding="utf-8")) == truth
    broken = json.loads(truth.to_json()) | {"valid": truth.valid + 1}
    with pytest.raises(ValueError):
        GroundTruth.from_json(json.dumps(broken))
    with pytest.raises(ValueError):
        GroundTruth.from_json(json.dumps({"rows": 1}))


def test_labels_name_every_outcome() -> None:
    assert set(LABELS) == {"valid", "duplicate"} | (REASONS - NOT_GENERATED)
