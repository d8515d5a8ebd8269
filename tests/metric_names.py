"""Which tillstream metrics a PromQL expression names, and which of them do not exist.

"Exists" means defined in tillstream/metrics.py with those labels: a dashboard or an
alert that names a misspelt metric or label shows nothing, and says nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from tillstream import metrics

__all__ = ["defined_series", "metric_references", "unknown_metric_references"]

TARGET_LABELS = frozenset({"job", "instance"})
"""Added by Prometheus to every scraped series."""

_NAME = re.compile(r"\btillstream_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(tillstream_[a-z0-9_]+)\{([^}]*)\}")
_BY = re.compile(r"\bby\s*\(([^)]*)\)\s*\(")


def defined_series() -> dict[str, frozenset[str]]:
    """Every sample name the metrics module can export -> its label names."""
    series: dict[str, frozenset[str]] = {}
    for name in metrics.__all__:
        collector = getattr(metrics, name)
        labels = frozenset(collector._labelnames) | TARGET_LABELS
        base = collector._name
        if isinstance(collector, Counter):
            series[f"{base}_total"] = labels
        elif isinstance(collector, Histogram):
            series[f"{base}_bucket"] = labels | {"le"}
            series[f"{base}_sum"] = labels
            series[f"{base}_count"] = labels
        elif isinstance(collector, Gauge):
            series[base] = labels
    return series


def metric_references(exprs: Iterable[str]) -> set[str]:
    return {name for expr in exprs for name in _NAME.findall(expr)}


def _balanced(text: str, start: int) -> str:
    """The text inside the parenthesis that opens at `start`."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[start + 1 : index]
    return text[start + 1 :]


def unknown_metric_references(exprs: Iterable[str]) -> list[str]:
    known = defined_series()
    problems: list[str] = []
    for expr in exprs:
        for name in _NAME.findall(expr):
            if name not in known:
                problems.append(name)
        for match in _SELECTOR.finditer(expr):
            name, matchers = match[1], match[2]
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                if name in known and label not in known[name]:
                    problems.append(f"{name}{{{label}}}")
        for match in _BY.finditer(expr):
            inner = _balanced(expr, match.end() - 1)
            names = [n for n in _NAME.findall(inner) if n in known]
            if not names:
                continue
            available = frozenset().union(*(known[n] for n in names))
            for label in (part.strip() for part in match[1].split(",")):
                if label and label not in available:
                    problems.append(f"{' '.join(sorted(set(names)))} by ({label})")
    return sorted(set(problems))
