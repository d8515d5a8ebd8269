"""Cleaning rules of design section 5: a chunk of raw rows in, clean sales and rejects out.

Pure functions, no I/O. Sales data repeats itself (the same products, prices,
regions and dates on thousands of rows), so a column is parsed once per
distinct value with vectorised Arrow string kernels and the results are
expanded back to the rows. Nothing here raises on data: a value that cannot
be used becomes a reason code on its row.

Money and discounts are integers (cents, millionths) computed from the
text's digits, never through floats, so revenue is exact.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tillstream.records import ReasonCode
from tillstream.settings import CleaningRules

__all__ = [
    "CLEAN_COLUMNS",
    "MAX_QUANTITY",
    "MAX_UNIT_PRICE_CENTS",
    "PPM",
    "CleaningResult",
    "clean_rows",
    "map_columns",
]

MAX_QUANTITY = 1_000_000
MAX_UNIT_PRICE_CENTS = 1_000_000_000
PPM = 1_000_000
"""Discounts are integer millionths: 0.15 is 150_000."""

CLEAN_COLUMNS: tuple[str, ...] = (
    "order_id",
    "sold_at",
    "product",
    "category",
    "region",
    "store_id",
    "quantity",
    "unit_price_cents",
    "discount_ppm",
    "revenue_cents",
    "currency",
    "customer_email",
)
"""Columns of `CleaningResult.clean`, in order."""

_REASONS: dict[str, ReasonCode] = dict(
    sorted(
        {
            "order_id": ReasonCode.MISSING_ORDER_ID,
            "sold_at": ReasonCode.INVALID_DATE,
            "product": ReasonCode.MISSING_PRODUCT,
            "quantity": ReasonCode.INVALID_QUANTITY,
            "unit_price": ReasonCode.INVALID_PRICE,
            "discount": ReasonCode.INVALID_DISCOUNT,
        }.items(),
        key=lambda item: item[1].value,
    )
)
"""The fields that can reject a row, in the order `reasons` lists their codes."""

_TEXT = pd.StringDtype("pyarrow", na_value=np.nan)
_NULL_TEXT = pa.scalar(None, pa.string())
_SPACE = r"[\s\p{Z}]"
"""RE2's `\\s` is ASCII only; `\\p{Z}` adds no-break and other Unicode spaces."""
_SEPARATORS = re.compile(r"[\s_-]+")
_ISO_DATE = r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[T ][0-9].*)?$"
"""A full calendar date first: pandas' ISO parser also takes `2025` or `2025-01`."""
_NAME = r"[^\s0-9]+"
_DIRECTIVES: dict[str, str] = {
    "Y": "[0-9]{4}",
    "G": "[0-9]{4}",
    "y": "[0-9]{2}",
    "m": "[0-9]{1,2}",
    "d": " ?[0-9]{1,2}",
    "H": "[0-9]{1,2}",
    "I": "[0-9]{1,2}",
    "M": "[0-9]{1,2}",
    "S": "[0-9]{1,2}",
    "U": "[0-9]{1,2}",
    "W": "[0-9]{1,2}",
    "V": "[0-9]{1,2}",
    "j": "[0-9]{1,3}",
    "f": "[0-9]{1,9}",
    "w": "[0-9]",
    "u": "[0-9]",
    "b": _NAME,
    "B": _NAME,
    "a": _NAME,
    "A": _NAME,
    "p": _NAME,
    "z": r"\S+",
    "Z": r"\S+",
    "%": "%",
}
"""strptime directive -> a pattern for at least what it accepts; others match anything."""
_QUANTITY = r"^[0-9]+(?:\.0*)?$"
_DISCOUNT = rf"^(?P<whole>[0-9]*)(?:\.(?P<frac>[0-9]*))?(?P<percent>{_SPACE}*%)?$"
_EMAIL_LETTER = r"a-z0-9\x{80}-\x{10FFFF}"
"""Any non-ASCII character counts as a letter (`chloé@exemple.fr`): RE2 slows
down a hundredfold on `\\p{L}` classes."""
_EMAIL_ATOM = rf"[{_EMAIL_LETTER}!#$%&'*+/=?^_`{{|}}~-]+"
_EMAIL_LABEL = rf"[{_EMAIL_LETTER}](?:[{_EMAIL_LETTER}-]*[{_EMAIL_LETTER}])?"
_EMAIL = (
    rf"^{_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*@(?:{_EMAIL_LABEL}\.)+[a-z\x{{80}}-\x{{10FFFF}}]{{2,}}$"
)
"""`local@domain.tld`, lower-cased first."""
_MAX_EMAIL_LENGTH = 254
_QUOTE_LIMIT = 60


@dataclass(frozen=True)
class CleaningResult:
    """A chunk split in two: every input row is in exactly one of the frames.

    Rejects are an output like clean rows, never an exception: `rejected` has
    `reasons` (sorted tuple of ReasonCode) and `messages` (field -> message).
    """

    clean: pd.DataFrame
    rejected: pd.DataFrame


def map_columns(headers: Sequence[str], rules: CleaningRules) -> dict[str, str]:
    """Canonical column name -> the header in the file that carries it.

    Files spell headers every way (`Order ID`, `order-id`, `\\ufeffID`), so
    matching ignores case, spaces, underscores, hyphens and a UTF-8 BOM. The
    first header (in file order) that matches wins, and a header serves one
    canonical column only (the first in `rules.column_aliases` order).
    """
    keys = [_header_key(header) for header in headers]
    mapping: dict[str, str] = {}
    taken: set[int] = set()
    aliases = tuple((name, tuple(spellings)) for name, spellings in rules.column_aliases.items())
    for canonical, wanted in _header_keys(aliases):
        for position, key in enumerate(keys):
            if key in wanted and position not in taken:
                mapping[canonical] = headers[position]
                taken.add(position)
                break
    return mapping


def clean_rows(frame: pd.DataFrame, rules: CleaningRules) -> CleaningResult:
    """Apply every cleaning rule to a chunk; never raises on data.

    `frame` holds the rows as received (original headers, `str` or None values,
    index = line numbers). A missing column counts as all-missing values.

    Discounts are a fraction in [0, 1] (`0.15`) or a percentage with a `%`
    sign (`15%`). A bare number above 1 (`15`) is rejected rather than read as
    a percentage: `1.5` might mean 1.5 % or a typo for 0.15, and guessing
    would silently change revenue. Amounts are rounded half up (prices to the
    cent, discounts to the millionth) before their range is checked.
    """
    column = _column_reader(frame, rules)
    price, price_currency = _prices(column("unit_price"), rules)
    checked = {
        "order_id": _required(_as_is(column("order_id", distinct=False))),
        "sold_at": _dates(column("sold_at"), rules),
        "product": _required(_names(column("product"), rules.product_aliases)),
        "quantity": _quantities(column("quantity")),
        "unit_price": price,
        "discount": _discounts(column("discount")),
    }
    failures = np.zeros(len(frame), dtype=np.int64)
    for bit, name in enumerate(_REASONS):
        failures |= checked[name].failing().astype(np.int64) << bit
    keep = np.flatnonzero(failures == 0)

    quantity, cents, ppm = (
        checked[name].rows(keep) for name in ("quantity", "unit_price", "discount")
    )
    currency = _currencies(column("currency"), rules).rows(keep)
    clean = pd.DataFrame(
        {
            "order_id": _text(checked["order_id"].rows(keep)),
            "sold_at": pd.array(checked["sold_at"].rows(keep)).tz_localize("UTC"),
            "product": _text(checked["product"].rows(keep)),
            "category": _text(
                _names(column("category"), rules.category_aliases).rows(keep), rules.unknown_label
            ),
            "region": _text(
                _names(column("region"), rules.region_aliases).rows(keep), rules.unknown_label
            ),
            "store_id": _text(_as_is(column("store_id")).rows(keep), rules.unknown_label),
            "quantity": quantity,
            "unit_price_cents": cents,
            "discount_ppm": ppm,
            "revenue_cents": _revenue_cents(quantity, cents, ppm),
            "currency": _text(
                pc.coalesce(currency, price_currency.rows(keep)), rules.default_currency
            ),
            "customer_email": _text(
                _emails(column("customer_email", distinct=False)).rows(keep),
                rules.anonymous_email,
            ),
        },
        index=frame.index[keep],
    )
    return CleaningResult(clean=clean, rejected=_rejected(frame.index, failures, checked))


@dataclass(frozen=True)
class _Column:
    """A column as its distinct values, so each is parsed once.

    `values` are the raw values, trimmed, blank as null, always ending with a
    null that missing rows point at; `codes` maps each row to its value.
    """

    codes: np.ndarray
    values: pa.StringArray

    @functools.cached_property
    def missing(self) -> np.ndarray:
        return _mask(pc.is_null(self.values))

    @classmethod
    def of(cls, objects: np.ndarray | None, size: int, *, distinct: bool) -> _Column:
        """`distinct=False` skips the hashing where values never repeat (order ids)."""
        if objects is None:
            return cls(np.zeros(size, dtype=np.intp), pa.nulls(1, pa.string()))
        try:
            return cls._encode(objects, distinct)
        except (TypeError, ValueError, UnicodeError, pa.ArrowException):
            return cls._encode(np.array([_as_text(v) for v in objects], dtype=object), distinct)

    @classmethod
    def _encode(cls, objects: np.ndarray, distinct: bool) -> _Column:
        if distinct:
            codes, objects = pd.factorize(objects)
            codes = np.where(codes < 0, len(objects), codes)
        else:
            codes = np.arange(len(objects))
        text = pc.utf8_trim_whitespace(pa.array(objects, type=pa.string(), from_pandas=True))
        values = pc.if_else(pc.equal(text, ""), _NULL_TEXT, text)
        return cls(codes, pa.concat_arrays([values, pa.nulls(1, pa.string())]))


@dataclass(frozen=True)
class _Field:
    """A column's result per distinct value, expanded to rows on demand."""

    column: _Column
    values: np.ndarray | pa.Array

    def rows(self, rows: np.ndarray) -> np.ndarray | pa.Array:
        codes = self.column.codes[rows]
        if isinstance(self.values, np.ndarray):
            return self.values[codes]
        return self.values.take(pa.array(codes))


@dataclass(frozen=True)
class _Checked(_Field):
    """A field that can reject rows: `problems` holds, per distinct value, None
    or a message template whose `{}` receives the quoted value."""

    problems: np.ndarray

    def failing(self) -> np.ndarray:
        return pd.notna(self.problems)[self.column.codes]

    def messages(self, rows: np.ndarray) -> list[str | None]:
        codes = self.column.codes[rows]
        failing = np.unique(codes[pd.notna(self.problems[codes])])
        texts = self.column.values.take(pa.array(failing)).to_pylist()
        by_code = {
            code: template.format(_quote(text))
            for code, template, text in zip(
                failing.tolist(), self.problems[failing], texts, strict=True
            )
        }
        return [by_code.get(code) for code in codes.tolist()]


def _column_reader(frame: pd.DataFrame, rules: CleaningRules) -> Callable[..., _Column]:
    headers = [str(header) for header in frame.columns]
    mapping = map_columns(headers, rules)
    table = frame.to_numpy(dtype=object)

    def column(name: str, *, distinct: bool = True) -> _Column:
        header = mapping.get(name)
        objects = None if header is None else table[:, headers.index(header)]
        return _Column.of(objects, len(frame), distinct=distinct)

    return column


def _rejected(
    index: pd.Index, failures: np.ndarray, checked: Mapping[str, _Checked]
) -> pd.DataFrame:
    rows = np.flatnonzero(failures)
    row_failures = failures[rows].tolist()
    reasons = {
        bits: tuple(reason for bit, reason in enumerate(_REASONS.values()) if bits >> bit & 1)
        for bits in set(row_failures)
    }
    involved = int(np.bitwise_or.reduce(failures))
    per_field = {
        name: checked[name].messages(rows)
        for bit, name in enumerate(_REASONS)
        if involved >> bit & 1
    }
    messages = (
        {name: text for name, text in zip(per_field, texts, strict=True) if text is not None}
        for texts in zip(*per_field.values(), strict=True)
    )
    return pd.DataFrame(
        {
            "reasons": np.fromiter(
                (reasons[bits] for bits in row_failures), dtype=object, count=rows.size
            ),
            "messages": np.fromiter(messages, dtype=object, count=rows.size),
        },
        index=index[rows],
    )


def _header_key(header: str) -> str:
    return _SEPARATORS.sub("", header.replace("\ufeff", "").lower())


@functools.lru_cache(maxsize=16)
def _header_keys(
    aliases: tuple[tuple[str, tuple[str, ...]], ...],
) -> tuple[tuple[str, frozenset[str]], ...]:
    """Canonical column -> the header keys that name it, the name itself included."""
    return tuple(
        (name, frozenset(_header_key(spelling) for spelling in (name, *spellings)))
        for name, spellings in aliases
    )


def _name_key(name: str) -> str:
    """Alias-table keys normalised like the data (see `_names`)."""
    return _SEPARATORS.sub(" ", name.lower()).strip()


def _as_text(value: object) -> str | None:
    """A value Arrow refused (a number, lone surrogates from a JSON escape) as text."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _quote(text: str | None) -> str:
    if text is None:
        return "missing"
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 3] + "..."
    return repr(text)


def _mask(values: pa.Array) -> np.ndarray:
    """A boolean Arrow result as numpy, null (no answer) as False."""
    if values.null_count:
        values = pc.fill_null(values, False)
    return values.to_numpy(zero_copy_only=False)


def _problems(size: int, *cases: tuple[np.ndarray, str]) -> np.ndarray:
    """Per value: the template of the first case whose mask holds, else None."""
    out = np.full(size, None, dtype=object)
    for mask, template in reversed(cases):
        out[mask] = template
    return out


def _text(values: pa.Array, default: str | None = None) -> pd.api.extensions.ExtensionArray:
    return pd.array(values if default is None else pc.fill_null(values, default), dtype=_TEXT)


def _as_is(column: _Column) -> _Field:
    return _Field(column, column.values)


def _required(field: _Field) -> _Checked:
    """Reject a row whose value is missing (blank, or no such column)."""
    values = field.values
    return _Checked(
        field.column, values, _problems(len(values), (_mask(pc.is_null(values)), "missing"))
    )


def _date_formats(rules: CleaningRules) -> list[str]:
    """The configured formats, each ambiguous day/month pair in the preferred order.

    `%m/%d/%Y` and `%d/%m/%Y` both read `01/02/2025`; whichever is tried
    first decides, so `rules.day_first` picks the order, not the list.
    """
    formats = rules.date_formats
    ordered: list[str] = []
    for fmt in formats:
        if fmt in ordered:
            continue
        twin = fmt.replace("%d", "\0").replace("%m", "%d").replace("\0", "%m")
        if "%d" in fmt and "%m" in fmt and twin in formats:
            month_first, day_first = sorted((fmt, twin), key=lambda f: f.index("%d"), reverse=True)
            ordered += [day_first, month_first] if rules.day_first else [month_first, day_first]
        else:
            ordered.append(fmt)
    return ordered


@functools.lru_cache(maxsize=64)
def _format_pattern(fmt: str) -> str:
    """A pattern for (at least) the strings strptime `fmt` can read.

    pandas' parser costs a microsecond per value that fails, and in a file of
    mixed spellings most values fail most formats; a regex pass first keeps
    the parser to the values that may be in this format.
    """
    if fmt == "ISO8601":
        return _ISO_DATE
    pattern = []
    for token in re.split(r"(%.)", fmt):
        if len(token) == 2 and token.startswith("%"):
            pattern.append(_DIRECTIVES.get(token[1], ".*"))
        else:
            pattern += [
                r"\s+" if part.isspace() else re.escape(part) for part in re.split(r"(\s+)", token)
            ]
    return "(?i)^" + "".join(pattern) + "$"


def _dates(column: _Column, rules: CleaningRules) -> _Checked:
    """UTC instants as datetime64[us]: ISO 8601 first (naive means UTC), then
    the configured formats. pandas' parser is strict where Arrow's rolls
    2025-02-30 over into March."""
    values = column.values
    texts = values.to_numpy(zero_copy_only=False)
    parsed = np.full(len(values), np.datetime64("NaT", "us"))
    pending = ~column.missing
    for fmt in ["ISO8601", *_date_formats(rules)]:
        if not pending.any():
            break
        candidates = _mask(pc.match_substring_regex(values, _format_pattern(fmt)))
        todo = np.flatnonzero(pending & candidates)
        if todo.size == 0:
            continue
        stamps = pd.to_datetime(texts[todo], format=fmt, errors="coerce", utc=True, cache=False)
        instants = stamps.as_unit("us").asi8.view("datetime64[us]")
        parsed[todo] = instants
        pending[todo] = np.isnat(instants)
    problems = _problems(
        len(values),
        (column.missing, "missing"),
        (np.isnat(parsed), "not a date in a known format: {}"),
    )
    return _Checked(column, parsed, problems)


def _names(column: _Column, aliases: Mapping[str, str]) -> _Field:
    """Canonical names: normalise case, hyphens, underscores and spacing, look
    the result up in `aliases`, then again with spaces removed (`smart phone x`
    and `smartphonex` are one product), else title-case it word by word."""
    spaced = pc.replace_substring(pc.utf8_lower(column.values), "_", " ")
    trimmed = pc.utf8_trim_whitespace(pc.replace_substring(spaced, "-", " "))
    words = pc.utf8_split_whitespace(pc.if_else(pc.equal(trimmed, ""), _NULL_TEXT, trimmed))
    normalised = pc.binary_join(words, " ")
    capitalised = pa.ListArray.from_arrays(
        words.offsets, pc.utf8_capitalize(words.flatten()), mask=pc.is_null(words)
    )
    exact, compact = _alias_tables(tuple(aliases.items()))
    names = pc.coalesce(
        _lookup(normalised, exact),
        _lookup(pc.replace_substring(normalised, " ", ""), compact),
        pc.binary_join(capitalised, " "),
    )
    return _Field(column, names)


_Table = tuple[pa.Array, pa.Array]
"""A lookup table as Arrow arrays: the keys, and the value of each key."""


def _table(pairs: Iterable[tuple[str, str]]) -> _Table:
    table: dict[str, str] = {}
    for key, value in pairs:
        table.setdefault(key, value)
    return pa.array(list(table), pa.string()), pa.array(list(table.values()), pa.string())


def _lookup(keys: pa.Array, table: _Table) -> pa.Array:
    """Vectorised dict lookup: the value for each key, null when absent."""
    return table[1].take(pc.index_in(keys, value_set=table[0]))


@functools.lru_cache(maxsize=64)
def _alias_tables(aliases: tuple[tuple[str, str], ...]) -> tuple[_Table, _Table]:
    """Lookup by normalised name, and by name without spaces; the first alias
    wins. Cached: the rules change only when the settings do."""
    keys = [(_name_key(alias), name) for alias, name in aliases]
    return _table(keys), _table((key.replace(" ", ""), name) for key, name in keys)


@functools.lru_cache(maxsize=16)
def _currency_table(symbols: tuple[tuple[str, str], ...]) -> tuple[_Table, str]:
    """Lower-cased symbol -> currency code, and the price pattern naming them."""
    table = _table((symbol.lower(), code) for symbol, code in symbols)
    alternatives = "|".join(
        re.escape(symbol) for symbol in sorted(table[0].to_pylist(), key=len, reverse=True)
    )
    symbol = f"(?:{alternatives})" if alternatives else r"[^\s\S]"
    pattern = (
        rf"^(?:(?P<before>{symbol}){_SPACE}*)?"
        r"(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]*)(?:\.(?P<frac>[0-9]*))?"
        rf"(?:{_SPACE}*(?P<after>{symbol}))?$"
    )
    return table, pattern


def _scaled(whole: pa.Array, fraction: pa.Array, scale: int, limit: int) -> np.ndarray:
    """`whole.fraction * 10**scale`, rounded half up, from digit strings.

    Integer arithmetic on the digits, so `0.145` is exactly 14.5 cents. A
    whole part too long to be within `limit` becomes `limit + 1`, which keeps
    every step inside int64 and lets the caller's range check reject it.
    """
    width = len(str(limit))
    digits = pc.utf8_ltrim(pc.fill_null(whole, ""), characters="0")
    too_long = pc.utf8_length(digits).to_numpy() > width
    usable = pc.utf8_lpad(pc.utf8_slice_codeunits(digits, 0, width), 1, "0")
    rounding = pc.utf8_slice_codeunits(
        pc.utf8_rpad(pc.fill_null(fraction, ""), scale + 1, "0"), 0, scale + 1
    )
    whole_value = pc.cast(usable, pa.int64()).to_numpy()
    rounding_value = pc.cast(rounding, pa.int64()).to_numpy()
    value = whole_value * 10**scale + rounding_value // 10 + (rounding_value % 10 >= 5)
    return np.where(too_long, limit + 1, value)


def _has_digits(parts: pa.StructArray) -> np.ndarray:
    """Whether the pattern matched with a digit: it also accepts `.` and ``."""
    whole, fraction = pc.struct_field(parts, "whole"), pc.struct_field(parts, "frac")
    return _mask(pc.or_(pc.not_equal(whole, ""), pc.not_equal(fraction, "")))


def _quantities(column: _Column) -> _Checked:
    """A positive integer count: `3.0` is 3, `2.5` is not a count."""
    values = column.values
    shaped = _mask(pc.match_substring_regex(values, _QUANTITY))
    numbers = pc.if_else(shaped, values, _NULL_TEXT)
    whole = pc.list_element(pc.split_pattern(numbers, ".", max_splits=1), 0)
    quantity = _scaled(whole, pa.nulls(len(values), pa.string()), 0, MAX_QUANTITY)
    problems = _problems(
        len(values),
        (column.missing, "missing"),
        (~shaped | (quantity < 1), "not a positive integer: {}"),
        (quantity > MAX_QUANTITY, f"above the maximum of {MAX_QUANTITY:,}: {{}}"),
    )
    return _Checked(column, quantity, problems)


def _prices(column: _Column, rules: CleaningRules) -> tuple[_Checked, _Field]:
    """Cents, and the currency the price's symbol or word names.

    Takes `$1,200.00`, `USD 500`, `500 dollars`, `€5`, `12.5`: a symbol from
    `rules.currency_symbols` before and/or after a number with optional
    thousands commas and decimals; a price naming two currencies is refused.
    """
    values = column.values
    symbols, pattern = _currency_table(tuple(rules.currency_symbols.items()))
    parts = pc.extract_regex(pc.utf8_lower(values), pattern)
    shaped = _has_digits(parts)
    whole = pc.replace_substring(pc.struct_field(parts, "whole"), ",", "")
    cents = _scaled(whole, pc.struct_field(parts, "frac"), 2, MAX_UNIT_PRICE_CENTS)
    before = _lookup(pc.struct_field(parts, "before"), symbols)
    after = _lookup(pc.struct_field(parts, "after"), symbols)
    problems = _problems(
        len(values),
        (column.missing, "missing"),
        (~shaped | (cents < 1), "not a positive amount: {}"),
        (_mask(pc.not_equal(before, after)), "names two currencies: {}"),
        (
            cents > MAX_UNIT_PRICE_CENTS,
            f"above the maximum of {MAX_UNIT_PRICE_CENTS:,} cents: {{}}",
        ),
    )
    return _Checked(column, cents, problems), _Field(column, pc.coalesce(before, after))


def _discounts(column: _Column) -> _Checked:
    """Millionths in [0, PPM]; missing is no discount (see `clean_rows`)."""
    values = column.values
    parts = pc.extract_regex(values, _DISCOUNT)
    shaped = _has_digits(parts)
    percent = _mask(pc.not_equal(pc.struct_field(parts, "percent"), ""))
    whole, fraction = pc.struct_field(parts, "whole"), pc.struct_field(parts, "frac")
    ppm = np.where(percent, _scaled(whole, fraction, 4, PPM), _scaled(whole, fraction, 6, PPM))
    missing = column.missing
    problems = _problems(
        len(values),
        (~missing & (~shaped | (ppm > PPM)), "not a fraction in [0, 1] or a percentage: {}"),
    )
    return _Checked(column, np.where(missing, 0, ppm), problems)


def _currencies(column: _Column, rules: CleaningRules) -> _Field:
    """A currency column: a known symbol or word (`$`, `euros`) as its code, else upper case."""
    symbols, _ = _currency_table(tuple(rules.currency_symbols.items()))
    codes = pc.coalesce(
        _lookup(pc.utf8_lower(column.values), symbols), pc.utf8_upper(column.values)
    )
    return _Field(column, codes)


def _emails(column: _Column) -> _Field:
    """The lower-cased address if it looks like `local@domain.tld`, else null."""
    lowered = pc.utf8_lower(column.values)
    sane = pc.and_(
        pc.match_substring_regex(lowered, _EMAIL),
        pc.less_equal(pc.utf8_length(lowered), _MAX_EMAIL_LENGTH),
    )
    return _Field(column, pc.if_else(sane, lowered, _NULL_TEXT))


def _revenue_cents(quantity: np.ndarray, cents: np.ndarray, ppm: np.ndarray) -> np.ndarray:
    """round_half_up(quantity * cents * (PPM - ppm) / PPM), exactly, in int64.

    The full product reaches 1e21 and overflows int64, so split
    `amount = quantity * cents` (<= 1e15) at PPM: `amount = high * PPM + low`
    gives `amount * keep / PPM = high * keep + low * keep / PPM` with
    `high * keep <= 1e15` and `low * keep < 1e12`, and only the second term
    needs rounding.
    """
    amount = quantity * cents
    keep = PPM - ppm
    high, low = np.divmod(amount, PPM)
    return high * keep + (low * keep + PPM // 2) // PPM
