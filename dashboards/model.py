"""The generated dashboard JSON, read back as the few typed things that matter here.

Tests and `tillstream report` read the same files Grafana loads, so what they run
is what Grafana runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CLICKHOUSE",
    "PROMETHEUS",
    "Dashboard",
    "Panel",
    "Target",
    "Variable",
    "load_dashboard",
    "load_dashboards",
]

CLICKHOUSE = "grafana-clickhouse-datasource"
PROMETHEUS = "prometheus"

DatasourceKind = Literal["clickhouse", "prometheus"]


@dataclass(frozen=True)
class Target:
    ref_id: str
    datasource: DatasourceKind
    text: str
    """ClickHouse SQL (`rawSql`) or a PromQL expression (`expr`), unexpanded."""
    time_series: bool
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    id: int
    title: str
    type: str
    description: str
    unit: str
    width: int
    targets: tuple[Target, ...]
    min_interval: str | None = None
    x_field: str | None = None


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    query: str
    """The SQL of a query variable, the value of a constant."""
    multi: bool
    include_all: bool


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    time_from: str
    time_to: str
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...]


def _target(raw: dict[str, Any]) -> Target:
    source = raw.get("datasource", {}).get("type")
    if source == CLICKHOUSE:
        return Target(
            ref_id=raw["refId"],
            datasource="clickhouse",
            text=raw["rawSql"],
            time_series=raw.get("format") == 0,
        )
    if source == PROMETHEUS:
        return Target(
            ref_id=raw["refId"],
            datasource="prometheus",
            text=raw["expr"],
            time_series=not raw.get("instant", False),
            legend=raw.get("legendFormat", ""),
        )
    raise ValueError(f"target {raw.get('refId')} has an unknown datasource {source!r}")


def _variable(raw: dict[str, Any]) -> Variable:
    query = raw.get("query", "")
    if isinstance(query, dict):
        query = query["rawSql"]
    return Variable(
        name=raw["name"],
        type=raw["type"],
        query=str(query),
        multi=bool(raw.get("multi", False)),
        include_all=bool(raw.get("includeAll", False)),
    )


def _panel(raw: dict[str, Any]) -> Panel:
    defaults = raw.get("fieldConfig", {}).get("defaults", {})
    return Panel(
        id=int(raw["id"]),
        title=raw.get("title", ""),
        type=raw["type"],
        description=raw.get("description", ""),
        unit=defaults.get("unit", ""),
        width=int(raw.get("gridPos", {}).get("w", 24)),
        targets=tuple(_target(target) for target in raw.get("targets", [])),
        min_interval=raw.get("interval"),
        x_field=raw.get("options", {}).get("xField"),
    )


def load_dashboard(path: Path) -> Dashboard:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Dashboard(
        uid=raw["uid"],
        title=raw["title"],
        description=raw.get("description", ""),
        time_from=raw["time"]["from"],
        time_to=raw["time"]["to"],
        variables=tuple(_variable(v) for v in raw.get("templating", {}).get("list", [])),
        panels=tuple(_panel(p) for p in raw.get("panels", []) if p.get("type") != "row"),
    )


def json_dir() -> Path:
    return Path(str(resources.files("dashboards") / "json"))


def load_dashboards(directory: Path | None = None) -> list[Dashboard]:
    """Every dashboard, in a stable order."""
    folder = directory or json_dir()
    return [load_dashboard(path) for path in sorted(folder.glob("*.json"))]
