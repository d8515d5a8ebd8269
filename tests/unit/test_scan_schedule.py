"""The sink's periodic scans: as often as their interval allows (their hurried one
when what they look for has just come), but never more than SCAN_SHARE of the time,
however long they take as the tables grow."""

from __future__ import annotations

import asyncio
import math
import time

from hypothesis import given
from hypothesis import strategies as st

from sinks.clickhouse_sink import SCAN_SHARE, ScanSchedule


def test_a_quick_scan_runs_again_after_its_interval() -> None:
    schedule = ScanSchedule(2.0)
    assert schedule.due(0.0), "the first scan runs at once"
    schedule.ran(10.0, 10.05)
    assert not schedule.due(11.9)
    assert schedule.due(12.0)


def test_a_long_scan_waits_until_it_is_its_share_of_the_time() -> None:
    schedule = ScanSchedule(2.0)
    schedule.ran(10.0, 13.0)
    assert not schedule.due(10.0 + 3.0 / SCAN_SHARE - 0.01)
    assert schedule.due(10.0 + 3.0 / SCAN_SHARE)


@given(
    interval=st.floats(0.01, 10),
    hurried_interval=st.floats(0.01, 10),
    scans=st.lists(st.tuples(st.floats(0, 60), st.booleans()), min_size=1, max_size=50),
)
def test_scans_never_take_more_than_their_share_even_when_hurried(
    interval: float, hurried_interval: float, scans: list[tuple[float, bool]]
) -> None:
    """Each scan starts as soon as it is due, and may be hurried while it runs."""
    schedule = ScanSchedule(interval, hurried_interval)
    now = busy = 0.0
    for took, hurry in scans:
        now = max(now, schedule.due_at)
        assert schedule.due(now)
        if hurry:
            schedule.hurry(now + took / 2)
        schedule.ran(now, now + took)
        busy += took
        now += took
    assert busy <= SCAN_SHARE * schedule.due_at or math.isclose(busy, SCAN_SHARE * schedule.due_at)


def test_a_hurried_scan_is_due_after_its_hurried_interval() -> None:
    schedule = ScanSchedule(10.0, hurried_interval=2.0)
    schedule.ran(10.0, 10.1)
    assert schedule.due_at == 20.0
    schedule.hurry(11.0)
    assert not schedule.due(11.9)
    assert schedule.due(12.0)


def test_hurrying_a_long_scan_still_keeps_it_to_its_share() -> None:
    schedule = ScanSchedule(10.0, hurried_interval=2.0)
    schedule.ran(10.0, 13.0)
    schedule.hurry(14.0)
    assert schedule.due_at == 10.0 + 3.0 / SCAN_SHARE


def test_a_hurry_while_a_scan_runs_hurries_the_next_one() -> None:
    """What came during a scan may have come too late for it."""
    schedule = ScanSchedule(10.0, hurried_interval=2.0)
    schedule.hurry(10.05)
    schedule.ran(10.0, 10.1)
    assert schedule.due_at == 12.0


def test_a_hurry_before_a_scan_started_does_not_hurry_the_one_after_it() -> None:
    schedule = ScanSchedule(10.0, hurried_interval=2.0)
    schedule.hurry(9.0)
    schedule.ran(10.0, 10.1)
    assert schedule.due_at == 20.0


async def test_waiting_for_a_far_scan_ends_when_it_is_hurried() -> None:
    schedule = ScanSchedule(100.0, hurried_interval=0.01)
    now = time.monotonic()
    schedule.ran(now, now)  # due in 100 s
    waiting = asyncio.create_task(schedule.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    schedule.hurry(time.monotonic())  # due 0.01 s after the last one started
    await asyncio.wait_for(waiting, timeout=5)
    assert schedule.due(time.monotonic())
