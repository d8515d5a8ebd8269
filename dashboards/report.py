"""`tillstream report`: the dashboards' panels in one self-contained HTML file.

For people running the embedded default without Grafana. The panels and their
queries are read from the generated dashboard JSON and expanded as Grafana expands
them (dashboards/macros.py), so the report shows what Grafana would. ClickHouse is
read through the running `up` (its read API) or, when none runs, directly from the
data directory. Prometheus panels need a Prometheus (`--prometheus URL`); without
one they list their expressions. Charts are inline SVG: the file needs no network.
"""

from __future__ import annotations

import html
import json
import math
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from dashboards.macros import (
    TimeRange,
    expand_prometheus,
    interval_seconds,
    panel_sql,
    variable_sql,
)
from dashboards.model import Dashboard, Panel, load_dashboards
from tillstream.http_api import read_api_url
from tillstream.results import ResultReader
from tillstream.settings import Settings

__all__ = ["ORDER", "PanelResult", "Report", "build_report", "render_html"]

ORDER = (
    "tillstream-sales-overview",
    "tillstream-reports",
    "tillstream-data-quality",
    "tillstream-pipeline-health",
)
PALETTE = ("#1f78c1", "#7eb26d", "#eab839", "#e24d42", "#6ed0e0", "#ba43a9", "#ef843c", "#705da0")
MAX_TABLE_ROWS = 200
CHART_TYPES = frozenset({"timeseries", "barchart", "piechart"})


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    """(unix seconds, value)"""


@dataclass
class PanelResult:
    panel: Panel
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    error: str = ""
    skipped: str = ""

    @property
    def is_chart(self) -> bool:
        return self.panel.type in CHART_TYPES


@dataclass
class BoardResult:
    board: Dashboard
    time_range: TimeRange
    variables: dict[str, list[str]]
    panels: list[PanelResult]


@dataclass
class Report:
    boards: list[BoardResult]
    source: str
    generated: datetime

    @property
    def failures(self) -> list[str]:
        return [
            f"{b.board.title} / {p.panel.title}: {p.error}"
            for b in self.boards
            for p in b.panels
            if p.error
        ]


# ----------------------------------------------------------------------------- running them


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


async def _board(
    reader: ResultReader,
    board: Dashboard,
    time_range: TimeRange,
    selected: Mapping[str, Sequence[str]],
    prometheus: str | None,
) -> BoardResult:
    values: dict[str, list[str]] = {}
    for variable in board.variables:
        if variable.type == "constant":
            values[variable.name] = [
                reader.database_name if variable.name == "database" else variable.query
            ]
        elif variable.name in selected:
            values[variable.name] = list(selected[variable.name])
        else:
            rows = await reader.query(variable_sql(variable, values, time_range), {})
            values[variable.name] = [str(next(iter(row.values()))) for row in rows]
    panels = []
    for panel in board.panels:
        result = PanelResult(panel)
        try:
            for target in panel.targets:
                if target.datasource == "clickhouse":
                    sql = panel_sql(panel, target.text, values, time_range)
                    rows = await reader.query(sql, {})
                    result.columns = list(rows[0]) if rows else result.columns
                    result.rows = [[_plain(v) for v in row.values()] for row in rows]
                elif prometheus is None:
                    result.skipped = "a Prometheus panel: run with --prometheus URL to fill it"
                else:
                    result.series += _prometheus_series(
                        prometheus, panel, target.text, target.legend, values, time_range
                    )
        except Exception as exc:  # one broken panel must not hide the others
            result.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        panels.append(result)
    return BoardResult(board, time_range, values, panels)


def _legend(template: str, labels: Mapping[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text or ", ".join(f"{k}={v}" for k, v in labels.items()) or "value"


def _prometheus_series(
    url: str,
    panel: Panel,
    expr: str,
    legend: str,
    values: Mapping[str, Sequence[str]],
    time_range: TimeRange,
) -> list[Series]:
    step = interval_seconds(time_range, panel.min_interval, max_points=300)
    rate = f"{max(step * 4, 60)}s"
    query = urllib.parse.urlencode(
        {
            "query": expand_prometheus(expr, values, rate),
            "start": time_range.start.timestamp(),
            "end": time_range.end.timestamp(),
            "step": step,
        }
    )
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query_range?{query}", timeout=60) as r:  # noqa: S310 - the user's Prometheus
        body = json.load(r)
    series = []
    for item in body["data"]["result"]:
        labels = {k: v for k, v in item["metric"].items() if k != "__name__"}
        points = [(float(t), float(v)) for t, v in item["values"] if math.isfinite(float(v))]
        series.append(Series(_legend(legend, labels), points))
    return series


async def build_report(
    settings: Settings,
    time_from: str | None = None,
    time_to: str | None = None,
    selected: Mapping[str, Sequence[str]] | None = None,
    prometheus: str | None = None,
    dashboards_dir: Path | None = None,
) -> Report:
    boards = {board.uid: board for board in load_dashboards(dashboards_dir)}
    ordered = [boards[uid] for uid in ORDER if uid in boards] + [
        board for uid, board in boards.items() if uid not in ORDER
    ]
    now = datetime.now(UTC)
    results = []
    running = read_api_url(settings.data_dir)
    source = f"the running tillstream at {running}" if running else settings.clickhouse_url
    async with ResultReader(settings) as reader:
        for board in ordered:
            time_range = TimeRange.parse(
                time_from or board.time_from, time_to or board.time_to, now
            )
            results.append(await _board(reader, board, time_range, selected or {}, prometheus))
    return Report(results, source, now)


# --------------------------------------------------------------------------------- rendering


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def format_value(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if unit == "currencyUSD":
        return f"${value:,.2f}" if abs(value) < 1e6 else f"${value / 1e6:,.2f}M"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value:.3g} s"
    suffix = {"rowsps": " rows/s", "ops": "/s"}.get(unit, "")
    for factor, letter in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{letter}{suffix}"
    return (f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}") + suffix


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table_series(result: PanelResult) -> list[Series]:
    """Wide rows (time, value columns...) as series, as the plugin's format 0 gives."""
    if not result.rows:
        return []
    series = []
    for index, name in enumerate(result.columns[1:], start=1):
        points = []
        for row in result.rows:
            moment, value = _timestamp(row[0]), _number(row[index])
            if moment is not None and value is not None:
                points.append((moment, value))
        series.append(Series(name, points))
    return series


def _svg_timeseries(series: list[Series], unit: str) -> str:
    width, height, left, bottom, top = 800, 260, 70, 30, 10
    points = [p for s in series for p in s.points]
    if not points:
        return '<p class="empty">No data in the time range.</p>'
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def x(t: float) -> float:
        return left + (t - x0) / (x1 - x0) * (width - left - 10)

    def y(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img">']
    for fraction in (0, 0.5, 1):
        value = y0 + fraction * (y1 - y0)
        parts.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'class="grid"/>'
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" class="axis" text-anchor="end">'
            f"{_esc(format_value(value, unit))}</text>"
        )
    for moment, anchor in ((x0, "start"), (x1, "end")):
        label = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M")
        parts.append(
            f'<text x="{x(moment):.1f}" y="{height - 8}" class="axis" text-anchor="{anchor}">'
            f"{label}</text>"
        )
    for index, one in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in sorted(one.points))
        if len(one.points) == 1:
            t, v = one.points[0]
            parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="4" fill="{color}"/>')
        else:
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2.5"/>'
            )
    parts.append("</svg>")
    return "".join(parts) + _legend_html([s.name for s in series])


def _legend_html(names: Sequence[str]) -> str:
    items = "".join(
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{_esc(name)}</span>'
        for i, name in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def _svg_bars(result: PanelResult) -> str:
    columns = result.columns
    label_index = columns.index(result.panel.x_field) if result.panel.x_field in columns else 0
    measures = [i for i in range(len(columns)) if i != label_index]
    if not result.rows or not measures:
        return '<p class="empty">No data in the time range.</p>'
    bar, gap, left, width = 16, 10, 170, 800
    height = len(result.rows) * (bar * len(measures) + gap) + 10
    values = [_number(row[i]) or 0.0 for row in result.rows for i in measures]
    top = max(max(values), 0.0) or 1.0
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img">']
    y = 5
    for row in result.rows:
        parts.append(
            f'<text x="{left - 8}" y="{y + bar * len(measures) / 2 + 4}" class="axis" '
            f'text-anchor="end">{_esc(row[label_index])}</text>'
        )
        for k, i in enumerate(measures):
            value = _number(row[i]) or 0.0
            length = max(value, 0.0) / top * (width - left - 110)
            color = PALETTE[k % len(PALETTE)]
            parts.append(
                f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar - 2}" '
                f'fill="{color}"/><text x="{left + length + 6:.1f}" y="{y + bar - 5}" '
                f'class="axis">{_esc(format_value(value, result.panel.unit))}</text>'
            )
            y += bar
        y += gap
    parts.append("</svg>")
    names = [columns[i] for i in measures]
    return "".join(parts) + (_legend_html(names) if len(names) > 1 else "")


def _svg_pie(result: PanelResult) -> str:
    slices = [(str(row[0]), _number(row[1]) or 0.0) for row in result.rows if len(row) > 1]
    total = sum(max(v, 0.0) for _, v in slices)
    if not slices or total <= 0:
        return '<p class="empty">No data in the time range.</p>'
    size, radius, inner = 240, 110, 60
    center = size / 2
    parts = [f'<svg class="chart pie" viewBox="0 0 {size} {size}" role="img">']
    angle = -math.pi / 2
    for index, (_, value) in enumerate(slices):
        sweep = max(value, 0.0) / total * 2 * math.pi
        color = PALETTE[index % len(PALETTE)]
        if sweep >= 2 * math.pi - 1e-9:
            parts.append(f'<circle cx="{center}" cy="{center}" r="{radius}" fill="{color}"/>')
        else:
            end = angle + sweep
            large = 1 if sweep > math.pi else 0
            x0, y0 = center + radius * math.cos(angle), center + radius * math.sin(angle)
            x1, y1 = center + radius * math.cos(end), center + radius * math.sin(end)
            parts.append(
                f'<path d="M{center},{center} L{x0:.2f},{y0:.2f} '
                f'A{radius},{radius} 0 {large} 1 {x1:.2f},{y1:.2f} Z" fill="{color}"/>'
            )
        angle += sweep
    parts.append(f'<circle cx="{center}" cy="{center}" r="{inner}" fill="#fff"/></svg>')
    names = [
        f"{name}: {format_value(value, result.panel.unit)} ({value / total:.1%})"
        for name, value in slices
    ]
    return "".join(parts) + _legend_html(names)


def _stat(result: PanelResult) -> str:
    if result.series:
        numbers = [(s.name, s.points[-1][1]) for s in result.series if s.points]
    else:
        row = result.rows[0] if result.rows else []
        numbers = [(c, _number(v)) for c, v in zip(result.columns, row, strict=False)]
    if not numbers:
        return '<p class="empty">No data in the time range.</p>'
    shown = "".join(
        f'<div class="stat"><b>{_esc(format_value(value, result.panel.unit))}</b>'
        f"<small>{_esc(name) if len(numbers) > 1 else ''}</small></div>"
        for name, value in numbers
    )
    return f'<div class="stats">{shown}</div>'


def _table(result: PanelResult) -> str:
    if not result.rows:
        return '<p class="empty">No rows in the time range.</p>'
    head = "".join(f"<th>{_esc(c)}</th>" for c in result.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
        for row in result.rows[:MAX_TABLE_ROWS]
    )
    more = len(result.rows) - MAX_TABLE_ROWS
    note = f'<p class="note">{more} more rows not shown.</p>' if more > 0 else ""
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>{note}'


def _panel_body(result: PanelResult) -> str:
    kind = result.panel.type
    if result.error:
        return f'<p class="error">Query failed: {_esc(result.error)}</p>'
    if result.skipped:
        exprs = "".join(f"<code>{_esc(t.text)}</code>" for t in result.panel.targets)
        return f'<p class="note">{_esc(result.skipped)}</p>{exprs}'
    if kind == "timeseries":
        series = result.series or _table_series(result)
        return _svg_timeseries(series, result.panel.unit)
    if kind == "barchart":
        return _svg_bars(result)
    if kind == "piechart":
        return _svg_pie(result)
    if kind == "stat":
        return _stat(result)
    return _table(result)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f5;
color:#24292e}
header{background:#161719;color:#fff;padding:16px 24px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#ccc;font-size:13px}
section{padding:8px 24px 24px}h2{margin:16px 0 4px}
.meta{font-size:12px;color:#555;margin:0 0 10px}
.grid{display:grid;grid-template-columns:repeat(24,1fr);gap:10px}
.panel{background:#fff;border:1px solid #dde;border-radius:4px;padding:10px;min-width:0}
.panel h3{margin:0 0 2px;font-size:14px}.panel .desc{margin:0 0 8px;font-size:11px;color:#666}
svg.chart{width:100%;height:auto;display:block}svg.pie{max-width:260px;margin:auto}
.grid line.grid{stroke:#e3e3e3}line.grid{stroke:#e3e3e3}text.axis{font-size:11px;fill:#555}
.legend{font-size:11px;margin-top:4px}.legend span{margin-right:12px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.stats{display:flex;gap:16px;flex-wrap:wrap}.stat b{font-size:30px;color:#1f78c1;display:block}
.stat small{color:#666}.scroll{overflow:auto;max-height:360px}
table{border-collapse:collapse;font-size:11px;width:100%}
th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;white-space:nowrap;
max-width:320px;overflow:hidden;text-overflow:ellipsis}th{background:#f7f7f9;position:sticky;top:0}
.error{color:#b00020}.note,.empty{color:#666;font-size:12px}
code{display:block;font-size:11px;background:#f6f8fa;padding:3px;margin:2px 0;white-space:pre-wrap}
"""


def render_html(report: Report) -> str:
    sections = []
    for board in report.boards:
        chosen = "; ".join(
            f"{name} = {', '.join(values) if len(values) <= 6 else f'All ({len(values)})'}"
            for name, values in board.variables.items()
        )
        start = board.time_range.start.strftime("%Y-%m-%d %H:%M")
        end = board.time_range.end.strftime("%Y-%m-%d %H:%M")
        panels = "".join(
            f'<div class="panel" data-panel="{_esc(p.panel.title)}" data-type="{p.panel.type}" '
            f'style="grid-column:span {p.panel.width}"><h3>{_esc(p.panel.title)}</h3>'
            f'<p class="desc">{_esc(p.panel.description)}</p>{_panel_body(p)}</div>'
            for p in board.panels
        )
        sections.append(
            f"<section><h2>{_esc(board.board.title)}</h2>"
            f'<p class="meta">{_esc(board.board.description)}<br>'
            f"{start} → {end} UTC · {_esc(chosen)}</p>"
            f'<div class="grid">{panels}</div></section>'
        )
    generated = report.generated.strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>tillstream report</title><style>{STYLE}</style></head><body>"
        f"<header><h1>tillstream report</h1><p>Generated {generated} from "
        f"{_esc(report.source)}; the panels of the Grafana dashboards.</p></header>"
        + "".join(sections)
        + "</body></html>\n"
    )
