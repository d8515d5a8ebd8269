"""The cleaning rules of design section 5, one test per rule, plus properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.cleaning import (
    CLEAN_COLUMNS,
    MAX_QUANTITY,
    MAX_UNIT_PRICE_CENTS,
    PPM,
    CleaningResult,
    clean_rows,
    map_columns,
)
from tillstream.records import ReasonCode
from tillstream.settings import CleaningRules, default_rules

RULES = default_rules()
DROP = object()
"""A field value meaning: the file has no such column."""

VALID: dict[str, str | None] = {
    "order_id": "A-1",
    "sold_at": "2025-01-05",
    "product": "Laptop Pro",
    "category": "Electronics",
    "region": "North",
    "store_id": "S1",
    "quantity": "2",
    "unit_price": "10.00",
    "discount": "0",
    "currency": None,
    "customer_email": "ann@example.com",
}
FIELD_REASONS = {
    "order_id": ReasonCode.MISSING_ORDER_ID,
    "sold_at": ReasonCode.INVALID_DATE,
    "product": ReasonCode.MISSING_PRODUCT,
    "quantity": ReasonCode.INVALID_QUANTITY,
    "unit_price": ReasonCode.INVALID_PRICE,
    "discount": ReasonCode.INVALID_DISCOUNT,
}
DTYPES = {
    "order_id": "str",
    "sold_at": "datetime64[us, UTC]",
    "product": "str",
    "category": "str",
    "region": "str",
    "store_id": "str",
    "quantity": "int64",
    "unit_price_cents": "int64",
    "discount_ppm": "int64",
    "revenue_cents": "int64",
    "currency": "str",
    "customer_email": "str",
}
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rules_with(**changes: Any) -> CleaningRules:
    return RULES.model_copy(update=changes)


def make_frame(rows: list[dict[str, Any]], index: list[int] | None = None) -> pd.DataFrame:
    """Rows as a reader delivers them: object dtype, one column per key, line-number index."""
    headers = list(dict.fromkeys(key for row in rows for key in row))
    return pd.DataFrame(
        [[row.get(header) for header in headers] for row in rows],
        columns=headers,
        index=index if index is not None else range(2, 2 + len(rows)),
        dtype=object,
    )


def row(**fields: Any) -> dict[str, Any]:
    merged = {**VALID, **fields}
    return {key: value for key, value in merged.items() if value is not DROP}


def clean_one(rules: CleaningRules = RULES, **fields: Any) -> pd.Series:
    result = clean_rows(make_frame([row(**fields)]), rules)
    assert result.rejected.empty, result.rejected.to_dict("records")
    assert len(result.clean) == 1
    return result.clean.iloc[0]


def reject_one(rules: CleaningRules = RULES, **fields: Any) -> tuple[tuple[str, ...], dict]:
    result = clean_rows(make_frame([row(**fields)]), rules)
    assert result.clean.empty
    assert len(result.rejected) == 1
    rejected = result.rejected.iloc[0]
    return rejected["reasons"], rejected["messages"]


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def assert_partition(frame: pd.DataFrame, result: CleaningResult) -> None:
    clean, rejected = set(result.clean.index), set(result.rejected.index)
    assert clean.isdisjoint(rejected)
    assert clean | rejected == set(frame.index)
    assert len(result.clean) + len(result.rejected) == len(frame)
    assert list(result.clean.columns) == list(CLEAN_COLUMNS)
    assert {name: str(dtype) for name, dtype in result.clean.dtypes.items()} == DTYPES
    assert list(result.rejected.columns) == ["reasons", "messages"]
    for reasons, messages in zip(
        result.rejected["reasons"], result.rejected["messages"], strict=True
    ):
        assert isinstance(reasons, tuple) and reasons
        assert list(reasons) == sorted(reasons)
        assert all(isinstance(reason, ReasonCode) for reason in reasons)
        assert {FIELD_REASONS[field] for field in messages} == set(reasons)
        assert all(isinstance(text, str) and text for text in messages.values())


# --- column mapping -----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            ["ID", "Date", "Product", "Qty", "Price", "Store_ID"],
            {
                "order_id": "ID",
                "sold_at": "Date",
                "product": "Product",
                "quantity": "Qty",
                "unit_price": "Price",
                "store_id": "Store_ID",
            },
        ),
        (
            ["OrderID", "sale_date", "product_name", "quantity", "unit_price", "discount_percent"],
            {
                "order_id": "OrderID",
                "sold_at": "sale_date",
                "product": "product_name",
                "quantity": "quantity",
                "unit_price": "unit_price",
                "discount": "discount_percent",
            },
        ),
        (
            ["\ufeffOrder ID", "Sale-Date", "UNIT PRICE", "E-Mail", "Discount_Percent", " Region "],
            {
                "order_id": "\ufeffOrder ID",
                "sold_at": "Sale-Date",
                "unit_price": "UNIT PRICE",
                "customer_email": "E-Mail",
                "discount": "Discount_Percent",
                "region": " Region ",
            },
        ),
        (
            ["order-id", "Product Name", "QTY", "Store ID", "CCY", "Area", "cat"],
            {
                "order_id": "order-id",
                "product": "Product Name",
                "quantity": "QTY",
                "store_id": "Store ID",
                "currency": "CCY",
                "region": "Area",
                "category": "cat",
            },
        ),
        (["comment", "notes", ""], {}),
    ],
)
def test_map_columns_matches_aliases_ignoring_case_space_underscore_hyphen_bom(
    headers: list[str], expected: dict[str, str]
) -> None:
    assert map_columns(headers, RULES) == expected


@pytest.mark.parametrize(
    ("headers", "winner"), [(["Date", "sale_date"], "Date"), (["sale_date", "Date"], "sale_date")]
)
def test_map_columns_first_matching_header_wins(headers: list[str], winner: str) -> None:
    assert map_columns(headers, RULES)["sold_at"] == winner


def test_map_columns_gives_a_header_to_one_column_only() -> None:
    rules = rules_with(column_aliases={"order_id": ["id"], "store_id": ["id", "shop"]})
    assert map_columns(["ID", "Shop"], rules) == {"order_id": "ID", "store_id": "Shop"}
    assert map_columns(["ID"], rules) == {"order_id": "ID"}


def test_clean_rows_uses_the_first_of_two_identical_headers() -> None:
    frame = make_frame([row()])
    frame.insert(1, "order_id", "B-2", allow_duplicates=True)
    assert list(clean_rows(frame, RULES).clean["order_id"]) == ["A-1"]


def test_design_headers_clean_a_row() -> None:
    frame = pd.DataFrame(
        [["7", "2025/03/04", "smartfone x", "3", "$1,200.00", "ST-001", "15%"]],
        columns=["ID", "Date", "Product", "Qty", "Price", "Store_ID", "discount_percent"],
        index=[2],
        dtype=object,
    )
    [sale] = clean_rows(frame, RULES).clean.to_dict("records")
    assert sale == {
        "order_id": "7",
        "sold_at": utc("2025-03-04"),
        "product": "Smartphone X",
        "category": "Unknown",
        "region": "Unknown",
        "store_id": "ST-001",
        "quantity": 3,
        "unit_price_cents": 120_000,
        "discount_ppm": 150_000,
        "revenue_cents": 306_000,
        "currency": "USD",
        "customer_email": "anonymous",
    }


# --- shape of the result --------------------------------------------------------


def test_clean_frame_has_the_contract_columns_dtypes_and_line_index() -> None:
    frame = make_frame([row(order_id="a"), row(order_id="b", quantity="x"), row(order_id="c")])
    frame.index = [40, 3, 17]
    result = clean_rows(frame, RULES)
    assert_partition(frame, result)
    assert list(result.clean.index) == [40, 17]
    assert list(result.rejected.index) == [3]
    assert list(result.clean["order_id"]) == ["a", "c"]


def test_empty_chunk_gives_two_empty_frames_with_the_contract_columns() -> None:
    for frame in (make_frame([]), make_frame([row()]).iloc[:0]):
        result = clean_rows(frame, RULES)
        assert_partition(frame, result)
        assert result.clean.empty and result.rejected.empty


def test_text_typed_frame_cleans_like_object_typed_frame() -> None:
    rows = [row(quantity=" 4 ", currency="eur"), row(order_id=None), row(discount=None)]
    as_object = make_frame(rows)
    as_text = as_object.astype("str")
    assert as_text["order_id"].dtype == "str"
    expected, actual = clean_rows(as_object, RULES), clean_rows(as_text, RULES)
    pd.testing.assert_frame_equal(actual.clean, expected.clean)
    pd.testing.assert_frame_equal(actual.rejected, expected.rejected)


# --- order id --------------------------------------------------------------------


def test_order_id_is_stripped() -> None:
    assert clean_one(order_id="  A-1 \t")["order_id"] == "A-1"


@pytest.mark.parametrize("order_id", [None, "", "   ", "\t\n", DROP])
def test_missing_order_id_is_rejected(order_id: Any) -> None:
    reasons, messages = reject_one(order_id=order_id)
    assert reasons == (ReasonCode.MISSING_ORDER_ID,)
    assert messages == {"order_id": "missing"}


def test_without_an_order_id_column_every_row_is_rejected() -> None:
    frame = make_frame([row(order_id=DROP), row(order_id=DROP, quantity="0")])
    result = clean_rows(frame, RULES)
    assert result.clean.empty
    assert list(result.rejected["reasons"]) == [
        (ReasonCode.MISSING_ORDER_ID,),
        (ReasonCode.INVALID_QUANTITY, ReasonCode.MISSING_ORDER_ID),
    ]


# --- dates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-05", "2025-01-05"),
        ("  2025-01-05  ", "2025-01-05"),
        ("2025-1-5", "2025-01-05"),
        ("2025-01-05T10:30:00", "2025-01-05 10:30"),
        ("2025-01-05 10:30", "2025-01-05 10:30"),
        ("2025-01-05T10:30:00Z", "2025-01-05 10:30"),
        ("2025-01-05T10:30:00+02:00", "2025-01-05 08:30"),
        ("2025-01-05T23:30:00-05:00", "2025-01-06 04:30"),
        ("2025-01-05T10:30:00.123456+0100", "2025-01-05 09:30:00.123456"),
        ("2025/01/05", "2025-01-05"),
        ("2025/1/5", "2025-01-05"),
        ("05-Jan-2025", "2025-01-05"),
        ("5-jan-2025", "2025-01-05"),
        ("Jan 5, 2025", "2025-01-05"),
        ("JAN 05, 2025", "2025-01-05"),
        ("05-01-2025", "2025-01-05"),
        ("01/02/2025", "2025-01-02"),
        ("02/13/2025", "2025-02-13"),
        ("13/02/2025", "2025-02-13"),
        ("2024-02-29", "2024-02-29"),
        ("9999-12-31", "9999-12-31"),
    ],
)
def test_dates_iso_then_configured_formats_month_first(text: str, expected: str) -> None:
    assert clean_one(sold_at=text)["sold_at"] == utc(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("01/02/2025", "2025-02-01"), ("02/13/2025", "2025-02-13"), ("13/02/2025", "2025-02-13")],
)
def test_dates_day_first_when_configured(text: str, expected: str) -> None:
    assert clean_one(rules_with(day_first=True), sold_at=text)["sold_at"] == utc(expected)


@pytest.mark.parametrize(
    "text",
    [
        "2025/13/45",
        "2025-02-30",
        "2025-02-29",
        "2024/02/30",
        "31-02-2025",
        "32-Jan-2025",
        "13/13/2025",
        "2025-01-05T25:00",
        "2025",
        "2025-01",
        "yesterday",
        "05.01.2025",
        "",
        None,
        DROP,
    ],
)
def test_impossible_or_unknown_dates_are_rejected(text: Any) -> None:
    reasons, messages = reject_one(sold_at=text)
    assert reasons == (ReasonCode.INVALID_DATE,)
    blank = text is None or text is DROP or not text.strip()
    assert messages == {
        "sold_at": "missing" if blank else f"not a date in a known format: {text!r}"
    }


def test_date_formats_come_from_the_rules() -> None:
    rules = rules_with(date_formats=["%d.%m.%Y %H:%M"])
    assert clean_one(rules, sold_at="05.01.2025 14:00")["sold_at"] == utc("2025-01-05 14:00")
    assert clean_one(rules, sold_at="2025-01-05")["sold_at"] == utc("2025-01-05")
    assert reject_one(rules, sold_at="2025/01/05")[0] == (ReasonCode.INVALID_DATE,)
    spelled = rules_with(date_formats=["%d %B %Y at %H:%M"])
    assert clean_one(spelled, sold_at="5 MARCH 2025 AT 14:00")["sold_at"] == utc("2025-03-05 14:00")


# --- products, categories, regions, stores -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smartfone x", "Smartphone X"),
        ("smart-phone x", "Smartphone X"),
        ("smartphone-x", "Smartphone X"),
        ("SMARTPHONE_X", "Smartphone X"),
        ("  smart  phone \t x ", "Smartphone X"),
        ("Smart-Phone-X", "Smartphone X"),
        ("smartphonex", "Smartphone X"),
        ("smart phonex", "Smartphone X"),
        ("LaptopPro", "Laptop Pro"),
        ("yoga-mat", "Yoga Mat"),
        ("yogamat", "Yoga Mat"),
        ("labtop pro", "Laptop Pro"),
        ("LED desk lamp", "Desk Lamp"),
        ("Tablet-S", "Tablet S"),
        ("garden hose", "Garden Hose"),
        ("GARDEN_HOSE", "Garden Hose"),
        ("Café crème", "Café Crème"),
        ("4k tv", "4k Tv"),
    ],
)
def test_products_normalised_then_aliased_else_title_cased(text: str, expected: str) -> None:
    assert clean_one(product=text)["product"] == expected


@pytest.mark.parametrize("text", [None, "", "   ", "---", "_ -", DROP])
def test_missing_product_is_rejected(text: Any) -> None:
    assert reject_one(product=text) == ((ReasonCode.MISSING_PRODUCT,), {"product": "missing"})


def test_product_aliases_come_from_the_rules() -> None:
    rules = rules_with(product_aliases={"Machine à Café": "Coffee Maker"})
    assert clean_one(rules, product="machine-à-café")["product"] == "Coffee Maker"
    assert clean_one(rules, product="smartfone x")["product"] == "Smartfone X"
    assert clean_one(rules_with(product_aliases={}), product="blender")["product"] == "Blender"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clothing", "Fashion"),
        ("Clothing", "Fashion"),
        ("home appliances", "Home Appliance"),
        ("HOME   Appliances", "Home Appliance"),
        ("home_appliances", "Home Appliance"),
        ("electronic", "Electronics"),
        ("toys", "Toys"),
        ("garden tools", "Garden Tools"),
        (None, "Unknown"),
        ("  ", "Unknown"),
        (DROP, "Unknown"),
    ],
)
def test_categories_aliased_else_title_cased(text: Any, expected: str) -> None:
    assert clean_one(category=text)["category"] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nOrth", "North"),
        ("nort", "North"),
        ("NORTH", "North"),
        (" north ", "North"),
        ("sout", "South"),
        ("souht", "South"),
        ("centre", "Central"),
        ("mars", "Mars"),
        ("north east", "North East"),
        (None, "Unknown"),
        ("", "Unknown"),
        (DROP, "Unknown"),
    ],
)
def test_regions_typo_table_case_insensitive(text: Any, expected: str) -> None:
    assert clean_one(region=text)["region"] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [(" S1 ", "S1"), ("Zürich-01", "Zürich-01"), ("", "Unknown"), (None, "Unknown")],
)
def test_store_id_stripped_else_unknown(text: str | None, expected: str) -> None:
    assert clean_one(store_id=text)["store_id"] == expected


def test_unknown_label_comes_from_the_rules() -> None:
    sale = clean_one(rules_with(unknown_label="n/a"), region=None, category=DROP, store_id="")
    assert (sale["region"], sale["category"], sale["store_id"]) == ("n/a", "n/a", "n/a")


def test_latin1_text_passes_through() -> None:
    sale = clean_one(product="Café", store_id="São Paulo-02", customer_email="chloé@exemple.fr")
    assert (sale["product"], sale["store_id"]) == ("Café", "São Paulo-02")
    assert sale["customer_email"] == "chloé@exemple.fr"


# --- quantity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        (" 3 ", 3),
        ("3.0", 3),
        ("3.", 3),
        ("3.000", 3),
        ("007", 7),
        ("1", 1),
        ("1000000", MAX_QUANTITY),
    ],
)
def test_quantity_positive_integer(text: str, expected: int) -> None:
    assert clean_one(quantity=text)["quantity"] == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "not a positive integer: '0'"),
        ("0.0", "not a positive integer: '0.0'"),
        ("-1", "not a positive integer: '-1'"),
        ("two", "not a positive integer: 'two'"),
        ("2.5", "not a positive integer: '2.5'"),
        ("1e3", "not a positive integer: '1e3'"),
        ("3,000", "not a positive integer: '3,000'"),
        ("+3", "not a positive integer: '+3'"),
        ("3 4", "not a positive integer: '3 4'"),
        ("１２", "not a positive integer: '１２'"),
        ("1000001", "above the maximum of 1,000,000: '1000001'"),
        ("9" * 70, f"above the maximum of 1,000,000: '{'9' * 57}...'"),
        ("", "missing"),
        (None, "missing"),
        (DROP, "missing"),
    ],
)
def test_invalid_quantity_is_rejected(text: Any, message: str) -> None:
    assert reject_one(quantity=text) == ((ReasonCode.INVALID_QUANTITY,), {"quantity": message})


# --- unit price and currency --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cents", "currency"),
    [
        ("$1,200.00", 120_000, "USD"),
        ("USD 500", 50_000, "USD"),
        ("500 dollars", 50_000, "USD"),
        ("1 dollar", 100, "USD"),
        ("1200", 120_000, "USD"),
        ("€5", 500, "EUR"),
        ("5 EUR", 500, "EUR"),
        ("Euros 7", 700, "EUR"),
        ("£3.99", 399, "GBP"),
        ("usd500", 50_000, "USD"),
        ("$ 1,200.00 USD", 120_000, "USD"),
        ("12.5", 1_250, "USD"),
        (".5", 50, "USD"),
        ("0.005", 1, "USD"),
        ("1.005", 101, "USD"),
        ("1.00499", 100, "USD"),
        ("19.999", 2_000, "USD"),
        ("10,000,000.00", MAX_UNIT_PRICE_CENTS, "USD"),
        ("0010", 1_000, "USD"),
    ],
)
def test_price_parses_currency_text_to_cents(text: str, cents: int, currency: str) -> None:
    sale = clean_one(unit_price=text)
    assert (sale["unit_price_cents"], sale["currency"]) == (cents, currency)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "not a positive amount: '0'"),
        ("0.00", "not a positive amount: '0.00'"),
        ("0.004", "not a positive amount: '0.004'"),
        ("-5", "not a positive amount: '-5'"),
        ("$-5", "not a positive amount: '$-5'"),
        ("free", "not a positive amount: 'free'"),
        ("$abc", "not a positive amount: '$abc'"),
        ("$", "not a positive amount: '$'"),
        (".", "not a positive amount: '.'"),
        ("1,20", "not a positive amount: '1,20'"),
        ("1.2.3", "not a positive amount: '1.2.3'"),
        ("5 yen", "not a positive amount: '5 yen'"),
        ("$5 EUR", "names two currencies: '$5 EUR'"),
        ("10,000,000.01", "above the maximum of 1,000,000,000 cents: '10,000,000.01'"),
        ("99999999999999", "above the maximum of 1,000,000,000 cents: '99999999999999'"),
        ("", "missing"),
        (None, "missing"),
        (DROP, "missing"),
    ],
)
def test_invalid_price_is_rejected(text: Any, message: str) -> None:
    assert reject_one(unit_price=text) == ((ReasonCode.INVALID_PRICE,), {"unit_price": message})


@pytest.mark.parametrize(
    ("column", "price", "expected"),
    [
        ("eur", "5", "EUR"),
        (" usd ", "5", "USD"),
        ("$", "5", "USD"),
        ("Euros", "5", "EUR"),
        ("chf", "5", "CHF"),
        ("EUR", "$5", "EUR"),
        (None, "€5", "EUR"),
        ("", "£5", "GBP"),
        (DROP, "5 euros", "EUR"),
        (None, "5", "USD"),
        (DROP, "5", "USD"),
    ],
)
def test_currency_from_column_else_price_symbol_else_default(
    column: Any, price: str, expected: str
) -> None:
    assert clean_one(currency=column, unit_price=price)["currency"] == expected


def test_default_currency_and_symbols_come_from_the_rules() -> None:
    rules = rules_with(default_currency="EUR", currency_symbols={"¥": "JPY"})
    assert clean_one(rules, unit_price="5")["currency"] == "EUR"
    assert clean_one(rules, unit_price="¥500")["currency"] == "JPY"
    assert reject_one(rules, unit_price="$5")[0] == (ReasonCode.INVALID_PRICE,)
    assert reject_one(rules_with(currency_symbols={}), unit_price="$5")[0] == (
        ReasonCode.INVALID_PRICE,
    )


# --- discount ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ppm"),
    [
        ("0.15", 150_000),
        (".15", 150_000),
        ("15%", 150_000),
        ("15 %", 150_000),
        ("12.5%", 125_000),
        ("0%", 0),
        ("0", 0),
        ("1", PPM),
        ("1.0", PPM),
        ("100%", PPM),
        ("0.1234565", 123_457),
        ("0.1234564", 123_456),
        ("0.0000005", 1),
        ("0.00001%", 0),
        ("", 0),
        ("  ", 0),
        (None, 0),
        (DROP, 0),
    ],
)
def test_discount_fraction_or_percent_in_millionths(text: Any, ppm: int) -> None:
    assert clean_one(discount=text)["discount_ppm"] == ppm


@pytest.mark.parametrize(
    "text",
    ["15", "1.5", "2.0", "-0.1", "-5%", "101%", "150%", "1.0000005", "abc", "%", "0,15", "."],
)
def test_invalid_discount_is_rejected(text: str) -> None:
    assert reject_one(discount=text) == (
        (ReasonCode.INVALID_DISCOUNT,),
        {"discount": f"not a fraction in [0, 1] or a percentage: {text!r}"},
    )


# --- e-mail ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bob@Example.COM ", "bob@example.com"),
        ("first.last+tag@mail.example.co.uk", "first.last+tag@mail.example.co.uk"),
        ("chloé.smith0@example.com", "chloé.smith0@example.com"),
        ("not-an-email", "anonymous"),
        ("anna@", "anonymous"),
        ("@example.com", "anonymous"),
        ("ben at example.com", "anonymous"),
        ("a@b", "anonymous"),
        ("a..b@example.com", "anonymous"),
        ("a@-example.com", "anonymous"),
        ("a@example.c0m", "anonymous"),
        ("a@example.com.", "anonymous"),
        ("x" * 250 + "@example.com", "anonymous"),
        ("", "anonymous"),
        (None, "anonymous"),
        (DROP, "anonymous"),
    ],
)
def test_email_lower_cased_or_anonymous_never_rejected(text: Any, expected: str) -> None:
    assert clean_one(customer_email=text)["customer_email"] == expected


def test_anonymous_email_comes_from_the_rules() -> None:
    sale = clean_one(rules_with(anonymous_email="unknown@invalid"), customer_email="nope")
    assert sale["customer_email"] == "unknown@invalid"


# --- revenue -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "price", "discount", "revenue"),
    [
        ("3", "$1,200.00", "15%", 306_000),
        ("7", "19.99", "0.1", 12_594),
        ("1", "0.01", "0.5", 1),
        ("1", "0.03", "0.5", 2),
        ("1", "0.01", "0.51", 0),
        ("1", "0.01", "100%", 0),
        ("1000000", "10,000,000.00", "0", 10**15),
        ("1000000", "10,000,000.00", "0.000001", 10**15 - 10**9),
        ("999999", "9,999,999.99", "0.333333", 666_666_332_666_334),
    ],
)
def test_revenue_exact_cents_half_up(
    quantity: str, price: str, discount: str, revenue: int
) -> None:
    sale = clean_one(quantity=quantity, unit_price=price, discount=discount)
    assert sale["revenue_cents"] == revenue


# --- rejects ----------------------------------------------------------------------------


def test_every_failing_field_is_reported_once_in_sorted_order() -> None:
    reasons, messages = reject_one(
        order_id=" ",
        sold_at="2025/13/45",
        product="",
        quantity="two",
        unit_price="-5",
        discount="15",
        customer_email="bad",
    )
    assert reasons == (
        ReasonCode.INVALID_DATE,
        ReasonCode.INVALID_DISCOUNT,
        ReasonCode.INVALID_PRICE,
        ReasonCode.INVALID_QUANTITY,
        ReasonCode.MISSING_ORDER_ID,
        ReasonCode.MISSING_PRODUCT,
    )
    assert messages == {
        "order_id": "missing",
        "sold_at": "not a date in a known format: '2025/13/45'",
        "product": "missing",
        "quantity": "not a positive integer: 'two'",
        "unit_price": "not a positive amount: '-5'",
        "discount": "not a fraction in [0, 1] or a percentage: '15'",
    }


def test_a_chunk_with_only_an_order_id_column_rejects_the_required_fields() -> None:
    frame = make_frame([{"order_id": "A-1"}, {"order_id": "A-2"}])
    result = clean_rows(frame, RULES)
    assert_partition(frame, result)
    assert (
        list(result.rejected["reasons"])
        == [
            (
                ReasonCode.INVALID_DATE,
                ReasonCode.INVALID_PRICE,
                ReasonCode.INVALID_QUANTITY,
                ReasonCode.MISSING_PRODUCT,
            )
        ]
        * 2
    )


def test_values_no_reader_should_send_are_cleaned_not_raised_on() -> None:
    frame = make_frame(
        [
            row(order_id="\ud800x", quantity=3),
            row(order_id="B", unit_price=12.5, discount=float("nan")),
            row(order_id="C", product=["a", "list"]),
            row(order_id="D", sold_at="\x00" * 10_000, region="😀" * 1000),
        ]
    )
    result = clean_rows(frame, RULES)
    assert_partition(frame, result)
    clean = result.clean.set_index("order_id")
    assert clean.loc["\\ud800x", "quantity"] == 3
    assert clean.loc["B", "unit_price_cents"] == 1_250
    assert clean.loc["B", "discount_ppm"] == 0
    assert clean.loc["C", "product"] == "['a', 'list']"
    assert list(result.rejected["messages"]) == [
        {"sold_at": f"not a date in a known format: {chr(0) * 57 + '...'!r}"}
    ]


# --- properties --------------------------------------------------------------------------

SAMPLES: dict[str, list[str]] = {
    "order_id": ["A-1", " B-2 ", ""],
    "sold_at": ["2025-01-05", "01/02/2025", "05-Jan-2025", "2025/13/45", "2025-01-05T10:00Z"],
    "product": ["smartfone x", "Café", "---"],
    "category": ["clothing", "toys"],
    "region": ["nort", "Mars"],
    "store_id": ["S1"],
    "quantity": ["3", "3.0", "0", "two", "1000001"],
    "unit_price": ["$1,200.00", "USD 500", "€5", "-5", "$5 EUR", "0.004"],
    "discount": ["0.15", "15%", "15", "1.5"],
    "currency": ["eur", "$"],
    "customer_email": ["Bob@Example.com", "bad"],
}
cell = st.one_of(st.none(), st.text(max_size=12), st.just(""), st.sampled_from(["  ", "0", "%"]))
rows_strategy = st.lists(
    st.fixed_dictionaries(
        {name: st.one_of(cell, st.sampled_from(samples)) for name, samples in SAMPLES.items()}
    ),
    max_size=25,
)


@PROPERTY
@given(rows=rows_strategy, dropped=st.sets(st.sampled_from(list(SAMPLES))), data=st.data())
def test_property_every_row_ends_in_exactly_one_frame(
    rows: list[dict[str, str | None]], dropped: set[str], data: st.DataObject
) -> None:
    index = data.draw(
        st.lists(st.integers(-(2**40), 2**40), min_size=len(rows), max_size=len(rows), unique=True)
    )
    kept = [{k: v for k, v in r.items() if k not in dropped} for r in rows]
    frame = make_frame(kept, index)
    result = clean_rows(frame, RULES)
    assert_partition(frame, result)
    clean = result.clean
    assert clean["quantity"].between(1, MAX_QUANTITY).all()
    assert clean["unit_price_cents"].between(1, MAX_UNIT_PRICE_CENTS).all()
    assert clean["discount_ppm"].between(0, PPM).all()
    assert (clean["revenue_cents"] >= 0).all()
    assert clean["sold_at"].notna().all()
    assert (clean["order_id"].str.strip() == clean["order_id"]).all()
    assert (clean["order_id"].str.len() > 0).all() and (clean["product"].str.len() > 0).all()
    assert clean[["category", "region", "store_id", "currency"]].notna().all().all()


cents_strategy = st.integers(1, MAX_UNIT_PRICE_CENTS)


@PROPERTY
@given(cents=st.lists(cents_strategy, min_size=1, max_size=20))
def test_property_price_text_round_trips_to_cents(cents: list[int]) -> None:
    texts = []
    for value in cents:
        dollars, rest = divmod(value, 100)
        texts += [
            f"${dollars:,}.{rest:02d}",
            f"USD {dollars}.{rest:02d}",
            f"{dollars}.{rest:02d} dollars",
        ]
    frame = make_frame([row(order_id=str(i), unit_price=text) for i, text in enumerate(texts)])
    clean = clean_rows(frame, RULES).clean
    assert list(clean["unit_price_cents"]) == [value for value in cents for _ in range(3)]
    assert set(clean["currency"]) == {"USD"}


def day_first(fmt: str) -> bool:
    return "%m" in fmt and "%d" in fmt and fmt.index("%d") < fmt.index("%m")


@PROPERTY
@given(
    fmt=st.sampled_from(RULES.date_formats),
    days=st.lists(st.dates(date(1000, 1, 1), date(9999, 12, 31)), min_size=1, max_size=20),
)
def test_property_dates_round_trip_in_every_configured_format(fmt: str, days: list[date]) -> None:
    rules = rules_with(day_first=day_first(fmt))
    frame = make_frame(
        [row(order_id=str(i), sold_at=day.strftime(fmt)) for i, day in enumerate(days)]
    )
    result = clean_rows(frame, rules)
    assert list(result.clean["sold_at"]) == [pd.Timestamp(day, tz="UTC") for day in days]


offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@PROPERTY
@given(
    moments=st.lists(
        st.datetimes(datetime(1000, 1, 2), datetime(9999, 12, 30), timezones=st.none() | offsets),
        min_size=1,
        max_size=20,
    ),
    separator=st.sampled_from(["T", " "]),
)
def test_property_iso_datetimes_round_trip_naive_as_utc(
    moments: list[datetime], separator: str
) -> None:
    frame = make_frame(
        [row(order_id=str(i), sold_at=m.isoformat(separator)) for i, m in enumerate(moments)]
    )
    expected = [
        pd.Timestamp(m.replace(tzinfo=UTC) if m.tzinfo is None else m.astimezone(UTC))
        for m in moments
    ]
    assert list(clean_rows(frame, RULES).clean["sold_at"]) == expected


@PROPERTY
@given(
    good=st.lists(
        st.tuples(st.integers(1, MAX_QUANTITY), st.sampled_from(["{}", " {} ", "{}.0", "00{}"])),
        max_size=20,
    ),
    bad=st.lists(
        st.integers(max_value=0) | st.integers(min_value=MAX_QUANTITY + 1, max_value=10**30),
        max_size=20,
    ),
)
def test_property_quantity_accepts_positive_integers_in_range_only(
    good: list[tuple[int, str]], bad: list[int]
) -> None:
    texts = [form.format(n) for n, form in good] + [str(n) for n in bad]
    frame = make_frame([row(order_id=str(i), quantity=text) for i, text in enumerate(texts)])
    result = clean_rows(frame, RULES)
    assert list(result.clean["quantity"]) == [n for n, _ in good]
    assert list(result.rejected["reasons"]) == [(ReasonCode.INVALID_QUANTITY,)] * len(bad)


@PROPERTY
@given(
    sales=st.lists(
        st.tuples(st.integers(1, MAX_QUANTITY), cents_strategy, st.integers(0, PPM), st.booleans()),
        min_size=1,
        max_size=20,
    )
)
def test_property_revenue_equals_exact_decimal_arithmetic(
    sales: list[tuple[int, int, int, bool]],
) -> None:
    rows = []
    for i, (quantity, cents, ppm, as_percent) in enumerate(sales):
        discount = (
            f"{ppm // 10**4}.{ppm % 10**4:04d}%" if as_percent else f"{ppm // PPM}.{ppm % PPM:06d}"
        )
        price = f"{cents // 100}.{cents % 100:02d}"
        rows.append(
            row(order_id=str(i), quantity=str(quantity), unit_price=price, discount=discount)
        )
    clean = clean_rows(make_frame(rows), RULES).clean
    expected = [
        (Decimal(quantity * cents * (PPM - ppm)) / PPM).quantize(Decimal(1), ROUND_HALF_UP)
        for quantity, cents, ppm, _ in sales
    ]
    assert list(clean["discount_ppm"]) == [ppm for _, _, ppm, _ in sales]
    assert list(clean["unit_price_cents"]) == [cents for _, cents, _, _ in sales]
    assert [Decimal(int(v)) for v in clean["revenue_cents"]] == expected
    assert clean["revenue_cents"].dtype == np.int64
