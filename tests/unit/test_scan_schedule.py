"""The sink's periodic scans: as often as their interval allows, but never more than
SCAN_SHARE of the time, however long they take as the tables grow."""

from __future__ import annotations

import math

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
    durations=st.lists(st.floats(0, 60), min_size=1, max_size=50),
)
def test_scans_never_take_more_than_their_share(interval: float, durations: list[float]) -> None:
    schedule = ScanSchedule(interval)
    now = busy = 0.0
    for took in durations:
        now = max(now, schedule.due_at)  # each scan starts as soon as it is due
        assert schedule.due(now)
        schedule.ran(now, now + took)
        busy += took
        now += took
    assert busy <= SCAN_SHARE * schedule.due_at or math.isclose(busy, SCAN_SHARE * schedule.due_at)
