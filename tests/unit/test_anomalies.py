"""The robust z-score and the rolling per-product baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from processors.anomalies import RevenueBaseline, robust_scores
from tillstream.settings import AnomaliesConfig


def sales(product: str, revenues: list[int], first: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order_id": [f"{product}-{first + n}" for n in range(len(revenues))],
            "product": product,
            "sold_at_ms": 0,
            "revenue_cents": revenues,
        }
    )


def test_the_score_is_0_6745_times_the_deviation_over_the_mad() -> None:
    scores, median, mad = robust_scores(np.array([30.0, 100.0]), np.array([10.0, 20, 30, 40, 50]))
    assert (median, mad) == (30.0, 10.0)
    assert scores.tolist() == [0.0, 0.6745 * 7]


def test_a_baseline_without_spread_flags_every_other_value() -> None:
    scores, _, mad = robust_scores(np.array([5.0, 6.0, 4.0]), np.array([5.0] * 10))
    assert mad == 0
    assert scores.tolist() == [0.0, np.inf, -np.inf]


@given(st.lists(st.integers(1, 10_000), min_size=5, max_size=50), st.integers(1, 10_000))
def test_the_score_does_not_depend_on_scale_or_shift(baseline: list[int], value: int) -> None:
    base = np.array(baseline, dtype=float)
    scores, _, mad = robust_scores(np.array([float(value)]), base)
    scaled, _, _ = robust_scores(np.array([value * 3.0 + 7]), base * 3 + 7)
    if mad > 0:
        assert np.isclose(scores[0], scaled[0])


def test_products_are_scored_only_against_their_own_recent_sales() -> None:
    baseline = RevenueBaseline(AnomaliesConfig(threshold=3.5, baseline_size=100, min_baseline=30))
    normal = [1000 + (n % 7) * 10 for n in range(40)]
    unscored = [*normal[:28], 90_000]
    assert baseline.score(sales("cheap", unscored)) == [], "nothing is scored before 30 sales"
    assert baseline.score(sales("cheap", normal[29:], 29)) == []
    assert baseline.score(sales("dear", [100 * r for r in normal])) == []
    found = baseline.score(
        pd.concat([sales("cheap", [1020, 90_000], 40), sales("dear", [102_000], 40)])
    )
    assert [(a.order_id, a.product) for a in found] == [("cheap-41", "cheap")]
    [anomaly] = found
    assert anomaly.baseline_size == 42 and anomaly.baseline_median_cents == 1030
    assert anomaly.score > 3.5


def test_the_first_message_is_scored_against_itself_once_it_is_large_enough() -> None:
    baseline = RevenueBaseline(AnomaliesConfig(threshold=3.5, baseline_size=500, min_baseline=30))
    revenues = [1000 + (n % 5) * 100 for n in range(200)]
    revenues[7] = revenues[150] = 40_000
    found = baseline.score(sales("lamp", revenues))
    assert sorted(a.order_id for a in found) == ["lamp-150", "lamp-7"]
