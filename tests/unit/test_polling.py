"""The pure rules of polling: JSON paths, `Link` headers, Retry-After, backoff, active
windows, cursors, records as rows, redaction, and the pollers' settings."""

from __future__ import annotations

import os
from datetime import UTC, datetime, time, timedelta
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.polling import (
    backoff_delay,
    flatten,
    in_window,
    json_at,
    later_cursor,
    next_link,
    records_chunk,
    redact,
    retry_after_seconds,
    same_origin,
    seconds_until_active,
)
from producers.readers import decode_exact_json
from tillstream.cli import main
from tillstream.settings import ConfigError, default_rules, load_settings

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_tillstream_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TILLSTREAM_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", {"data": {"items": [1, 2]}}),
        ("$", {"data": {"items": [1, 2]}}),
        ("data.items", [1, 2]),
        ("$.data.items", [1, 2]),
        ("data.items.1", 2),
    ],
)
def test_json_path_finds_the_value(path: str, expected: object) -> None:
    assert json_at({"data": {"items": [1, 2]}}, path) == expected


@pytest.mark.parametrize("path", ["data.nope", "data.items.2", "data.items.x", "x"])
def test_json_path_names_the_missing_step(path: str) -> None:
    with pytest.raises(KeyError):
        json_at({"data": {"items": [1, 2]}}, path)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('<https://api.test/s?page=2>; rel="next"', "https://api.test/s?page=2"),
        ("</s?page=3>; rel=next", "https://api.test/s?page=3"),
        (
            '<https://api.test/s?page=1>; rel="first", <https://api.test/s?page=4>; rel="next"',
            "https://api.test/s?page=4",
        ),
        ('<https://api.test/s?p=5>; title="a, b"; rel="prev next"', "https://api.test/s?p=5"),
        ('<https://api.test/s?page=1>; rel="prev"', None),
        ("", None),
        (None, None),
        ("garbage", None),
    ],
)
def test_the_next_link_is_found_and_resolved(header: str | None, expected: str | None) -> None:
    assert next_link(header, "https://api.test/s?page=2") == expected


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)


@given(
    st.lists(st.tuples(segment, st.sampled_from(["prev", "first", "last"])), max_size=4),
    segment,
    st.integers(min_value=0, max_value=4),
)
def test_the_next_link_is_found_among_any_others(
    others: list[tuple[str, str]], target: str, position: int
) -> None:
    links = [f'<https://api.test/{path}>; rel="{rel}"' for path, rel in others]
    links.insert(min(position, len(links)), f'<https://api.test/{target}?x=1>; rel="next"')
    assert next_link(", ".join(links), "https://api.test/") == f"https://api.test/{target}?x=1"


def test_credentials_go_only_to_the_same_origin() -> None:
    assert same_origin("https://api.test/a", "https://api.test/b?c=1")
    assert not same_origin("https://api.test/a", "https://evil.test/a")
    assert not same_origin("https://api.test/a", "http://api.test/a")
    assert not same_origin("https://api.test/a", "https://api.test:8443/a")


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("7", NOW) == 7.0
    later = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(later, NOW) == 30.0
    earlier = format_datetime(NOW - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(earlier, NOW) == 0.0
    assert retry_after_seconds(None, NOW) is None
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds("-3", NOW) is None


@given(st.text(max_size=40))
def test_retry_after_never_raises(value: str) -> None:
    seconds = retry_after_seconds(value, NOW)
    assert seconds is None or seconds >= 0


@given(
    st.integers(min_value=0, max_value=200),
    st.floats(min_value=0.001, max_value=10),
    st.floats(min_value=0.001, max_value=600),
    st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_grows_is_capped_and_jittered(
    attempt: int, base: float, cap: float, jitter: float
) -> None:
    delay = backoff_delay(attempt, base, cap, jitter)
    plain = min(cap, base * 2**attempt)
    assert 0.5 * plain <= delay <= 1.5 * plain
    assert backoff_delay(attempt, base, cap, 0.5) <= backoff_delay(attempt + 1, base, cap, 0.5)


def test_windows_hold_their_start_not_their_end_and_may_wrap_midnight() -> None:
    assert in_window(time(9), time(9), time(17))
    assert not in_window(time(17), time(9), time(17))
    assert in_window(time(23), time(22), time(6)) and in_window(time(1), time(22), time(6))
    assert not in_window(time(12), time(22), time(6))
    assert in_window(time(3), None, None)


times = st.times()


@given(times, times, times)
def test_a_wrapping_window_is_the_complement_of_its_reverse(
    moment: time, start: time, end: time
) -> None:
    if start != end:
        assert in_window(moment, start, end) != in_window(moment, end, start)


@given(
    st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
    times,
    times,
    st.sampled_from(["UTC", "Asia/Tokyo", "America/St_Johns"]),
)
def test_waiting_until_active_lands_at_the_window_opening(
    now: datetime, start: time, end: time, zone: str
) -> None:
    if start == end or zone == "America/St_Johns" and now.month in (3, 11):
        return  # DST changes are the example below
    wait = seconds_until_active(now, start, end, zone)
    local = now.astimezone(ZoneInfo(zone))
    if in_window(local.time().replace(tzinfo=None), start, end):
        assert wait == 0
    else:
        opened = (now + timedelta(seconds=wait)).astimezone(ZoneInfo(zone))
        assert 0 < wait <= 24 * 3600
        assert opened.time().replace(tzinfo=None) == start


def test_the_wait_for_a_window_counts_real_seconds_across_a_dst_change() -> None:
    before = datetime(2025, 3, 29, 23, 0, tzinfo=UTC)  # 00:00 in Berlin, on the night of
    wait = seconds_until_active(before, time(6), time(7), "Europe/Berlin")  # the clock jump
    assert wait == 5 * 3600


def test_cursors_compare_as_numbers_when_they_are_numbers() -> None:
    assert later_cursor("9", "10") == "10"
    assert later_cursor("2025-03-14T09:00:00Z", "2025-03-14T10:00:00Z") == "2025-03-14T10:00:00Z"
    assert later_cursor(None, "3") == "3"
    assert later_cursor("10", "9") == "10"


@given(st.lists(st.integers(min_value=-(10**12), max_value=10**12), min_size=1))
def test_the_numeric_cursor_is_the_greatest(values: list[int]) -> None:
    cursor = None
    for value in values:
        cursor = later_cursor(cursor, str(value))
    assert cursor == str(max(values))


def test_nested_objects_flatten_to_dotted_keys() -> None:
    assert flatten({"a": 1, "b": {"c": {"d": 2}, "e": [1]}, "f": {}}) == {
        "a": 1,
        "b.c.d": 2,
        "b.e": [1],
        "f": {},
    }


def test_records_become_rows_under_mapped_names_and_bad_elements_unparseable() -> None:
    rules = default_rules()
    rules = rules.model_copy(
        update={"column_aliases": {**rules.column_aliases, "order_id": ["ref"]}}
    )
    records = decode_exact_json(
        '[{"id": 7, "ref": "A-1", "item": {"name": "Blender"}, "price": 10.10, "qty": 2},'
        ' "oops", {"ref": "A-2", "qty": 1, "extra": null, "price": 1e2}]'
    )
    chunk = records_chunk(records, rules, first_line=5)
    assert chunk.columns == ["order_id", "unit_price", "quantity", "id", "item.name", "extra"]
    assert chunk.rows == [
        ["A-1", "10.10", "2", "7", "Blender", None],
        ["A-2", "1e2", "1", None, None, None],
    ]
    assert chunk.lines == [5, 7]
    assert chunk.unparseable == [(6, '"oops"')]


def test_an_unmapped_key_spelt_like_a_filled_column_is_left_out() -> None:
    rules = default_rules()
    rules = rules.model_copy(
        update={"column_aliases": {**rules.column_aliases, "quantity": ["units"]}}
    )
    chunk = records_chunk(decode_exact_json('[{"units": 2, "quantity": 9}]'), rules)
    assert (chunk.columns, chunk.rows) == (["quantity"], [["2"]])


def test_redaction_hides_every_secret() -> None:
    assert redact("Bearer abc failed for abc", ["abc", ""]) == "Bearer *** failed for ***"


def poller(**extra: object) -> dict[str, object]:
    return {"name": "shop", "url": "https://api.test/sales", **extra}


@pytest.mark.parametrize(
    ("poller_settings", "expected"),
    [
        (poller(url="ftp://x"), "invalid setting pollers.0.url:"),
        (poller(name="no/slash"), "invalid setting pollers.0.name:"),
        (poller(auth={"kind": "bearer"}), "needs exactly one of secret_env and secret_file"),
        (poller(auth={"kind": "basic", "secret_env": "X"}), "basic needs a username"),
        (poller(active_from="09:00"), "active_from and active_until go together"),
        (poller(active_from="09:00", active_until="09:00"), "must differ"),
        (poller(timezone="Mars/Olympus"), "unknown time zone"),
        (poller(pagination={"style": "scroll"}), "invalid setting pollers.0.pagination.style"),
        (poller(max_pages=0), "invalid setting pollers.0.max_pages"),
    ],
)
def test_a_bad_poller_is_one_line_naming_the_setting(
    poller_settings: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(pollers=[poller_settings])
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_pollers_of_one_name_are_refused() -> None:
    with pytest.raises(ConfigError, match="two pollers are named 'shop'"):
        load_settings(pollers=[poller(), poller()])


def test_secrets_are_read_at_start_and_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_TOKEN", "s3cr3t-token")
    settings = load_settings(pollers=[poller(auth={"kind": "bearer", "secret_env": "SHOP_TOKEN"})])
    auth = settings.pollers[0].auth
    assert auth.secret("pollers.shop").get_secret_value() == "s3cr3t-token"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(auth.secret("x"))

    monkeypatch.delenv("SHOP_TOKEN")
    with pytest.raises(ConfigError) as caught:
        auth.secret("pollers.shop")
    assert str(caught.value) == (
        "invalid setting pollers.shop.auth.secret_env: environment variable SHOP_TOKEN is not set"
    )
    missing = tmp_path / "nope.key"
    settings = load_settings(pollers=[poller(auth={"kind": "api_key", "secret_file": missing})])
    with pytest.raises(ConfigError, match=r"pollers.shop.auth.secret_file: cannot read .*nope.key"):
        settings.pollers[0].auth.secret("pollers.shop")


def test_a_key_that_cannot_be_sent_as_utf8_is_kept_as_its_escape() -> None:
    chunk = records_chunk(
        decode_exact_json('[{"order_id": "A", "\\ud800x": "\\ud800"}]'), default_rules()
    )
    assert chunk.columns == ["order_id", "\\ud800x"]
    assert chunk.rows == [["A", "\\ud800"]]
    "".join(chunk.columns + [cell or "" for cell in chunk.rows[0]]).encode("utf-8")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["poll", "--once", "nope"],
            "tillstream: error: invalid setting pollers: no poller is named nope",
        ),
        (
            ["poll", "--once", "shop"],
            "tillstream: error: invalid setting kafka.bootstrap_servers: `poll --once` needs a "
            "running `tillstream up` or an external Kafka",
        ),
        (
            ["poll"],
            "tillstream: error: invalid setting kafka.bootstrap_servers: required to run poll "
            "as a separate component",
        ),
    ],
)
def test_poll_without_somewhere_to_publish_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    config = tmp_path / "tillstream.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\npollers:\n  - {{name: shop, url: 'http://127.0.0.1:9'}}\n"
    )
    assert main(["--config", str(config), *argv]) == 2
    assert capsys.readouterr().err == expected + "\n"
