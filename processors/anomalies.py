"""Anomalies: sales whose revenue is an outlier for their product.

The score is the robust z-score, 0.6745 * (x - median) / MAD, against a rolling
window of the product's most recent sales in this partition: medians are not
dragged by the outliers they are meant to find, as means and standard
deviations are. Each partition sees a hash-chosen share of every product's
sales, which is a fair sample for a baseline. The baseline lives in memory: after
a restart it fills again (from the first message on) before anything is scored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from processors.chunks import decimal_text, isoformat, isoformat_ms
from producers.publisher import Message
from tillstream.records import SCHEMA_VERSION, SourceRef, encode
from tillstream.settings import AnomaliesConfig

__all__ = ["Anomaly", "RevenueBaseline", "anomaly_message", "robust_scores"]

_CONSISTENCY = 0.6745
"""Makes the MAD of normally distributed data comparable to a standard deviation."""


def robust_scores(values: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Scores of `values` against `baseline`, with the baseline's median and MAD.

    A baseline with no spread (MAD 0) scores every differing value as infinite
    and equal ones as 0.
    """
    median = float(np.median(baseline))
    mad = float(np.median(np.abs(baseline - median)))
    deviation = values - median
    if mad == 0:
        scores = np.where(deviation == 0, 0.0, np.copysign(np.inf, deviation))
    else:
        scores = _CONSISTENCY * deviation / mad
    return scores, median, mad


@dataclass(frozen=True, slots=True)
class Anomaly:
    order_id: str
    product: str
    sold_at_ms: int
    revenue_cents: int
    score: float
    baseline_median_cents: float
    baseline_mad_cents: float
    baseline_size: int


class RevenueBaseline:
    """The most recent revenues per product, and the scoring of new sales against them."""

    def __init__(self, config: AnomaliesConfig) -> None:
        self._config = config
        self._windows: dict[str, deque[int]] = {}

    def score(self, facts: pd.DataFrame) -> list[Anomaly]:
        """Add these sales to their products' baselines, then score them against those.

        A message carries hundreds of sales per partition, so the first message after
        a start would go unscored if judged only against what came before it; medians
        are robust, so a sale among its own baseline barely moves it.
        """
        found = []
        # Grouped with numpy, each product's rows in their order: pandas' groupby built
        # a frame per product, which cost more than the scoring.
        codes, products = pd.factorize(facts["product"].to_numpy())
        by_product = np.argsort(codes, kind="stable")
        groups = np.split(by_product, np.flatnonzero(np.diff(codes[by_product])) + 1)
        order_ids = facts["order_id"].to_numpy()
        sold_at_ms = facts["sold_at_ms"].to_numpy()
        revenue_cents = facts["revenue_cents"].to_numpy()
        for product, rows in zip(products, groups if len(facts) else [], strict=True):
            window = self._windows.setdefault(
                str(product), deque(maxlen=self._config.baseline_size)
            )
            revenue = revenue_cents[rows]
            window.extend(revenue.tolist())
            if len(window) < self._config.min_baseline:
                continue
            scores, median, mad = robust_scores(revenue.astype(float), np.array(window))
            for position in np.flatnonzero(np.abs(scores) > self._config.threshold):
                row = rows[position]
                found.append(
                    Anomaly(
                        order_id=str(order_ids[row]),
                        product=str(product),
                        sold_at_ms=int(sold_at_ms[row]),
                        revenue_cents=int(revenue[position]),
                        score=float(scores[position]),
                        baseline_median_cents=median,
                        baseline_mad_cents=mad,
                        baseline_size=len(window),
                    )
                )
        return found


def anomaly_message(anomaly: Anomaly, source: SourceRef, now: datetime) -> Message:
    """A `sales.anomalies` value; the contract is docs/topics.md."""
    score = anomaly.score if np.isfinite(anomaly.score) else None
    value = {
        "schema_version": SCHEMA_VERSION,
        "order_id": anomaly.order_id,
        "product": anomaly.product,
        "sold_at": isoformat_ms(anomaly.sold_at_ms),
        "revenue": decimal_text(anomaly.revenue_cents, 2),
        "score": score,
        "baseline_median": round(anomaly.baseline_median_cents / 100, 2),
        "baseline_mad": round(anomaly.baseline_mad_cents / 100, 2),
        "baseline_size": anomaly.baseline_size,
        "source": source.name,
        "source_id": source.id,
        "detected_at": isoformat(now),
    }
    return Message(anomaly.order_id.encode(), encode(value))
