"""What Grafana does to a panel's query before the datasource runs it.

Template variables are replaced first (as Grafana's frontend does), then the
ClickHouse plugin's macros (as its backend does, pkg/macros/macros.go of
grafana/clickhouse-datasource v4): `$__timeFilter(col)` becomes
`col >= toDateTime(<from>) AND col <= toDateTime(<to>)` and so on. Anything this
module does not know is an error rather than text left in the SQL, so a query
that would break in Grafana breaks in the tests too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboards.model import Dashboard, Panel, Variable

__all__ = [
    "ExpansionError",
    "TimeRange",
    "expand_clickhouse",
    "expand_prometheus",
    "expand_variables",
    "interval_seconds",
    "panel_sql",
    "parse_duration",
    "resolve_variables",
    "variable_sql",
]


class ExpansionError(ValueError):
    """A query uses a variable, format or macro that cannot be expanded."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds of a Grafana/Prometheus duration such as `30s`, `5m`, `1d`."""
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if match is None:
        raise ExpansionError(f"unsupported duration {text!r}")
    return int(match[1]) * _UNITS[match[2]]


def _shift_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = moment.day
    while True:
        try:
            return moment.replace(year=year, month=month + 1, day=day)
        except ValueError:
            day -= 1


def _parse_time(text: str, now: datetime) -> datetime:
    text = text.strip()
    if text == "now":
        return now
    relative = re.fullmatch(r"now-(\d+)([smhdwMy])", text)
    if relative is not None:
        amount, unit = int(relative[1]), relative[2]
        if unit == "M":
            return _shift_months(now, -amount)
        if unit == "y":
            return _shift_months(now, -12 * amount)
        return now - timedelta(seconds=amount * _UNITS[unit])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExpansionError(f"unsupported time {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @classmethod
    def parse(cls, start: str, end: str, now: datetime | None = None) -> TimeRange:
        """`now`, `now-7d`, `now-3y` or an ISO date/time (UTC unless it says otherwise)."""
        now = now or datetime.now(UTC)
        return cls(_parse_time(start, now), _parse_time(end, now))

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def interval_seconds(
    time_range: TimeRange, min_interval: str | None = None, max_points: int = 1000
) -> int:
    """Grafana's `$__interval` for a panel: the range over its data points, at least
    the panel's minimum interval and one second."""
    interval = math.ceil(time_range.seconds / max_points)
    if min_interval:
        interval = max(interval, parse_duration(min_interval))
    return max(interval, 1)


# ${name}, ${name:format}, $name and [[name]], as Grafana's template service matches them.
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::(?P<format>[^}]+))?\}|\[\[(?P<bracket>\w+)\]\]|\$(?P<plain>\w+)"
)


def _quote(value: str, escape_with: str) -> str:
    return "'" + value.replace("'", escape_with + "'") + "'"


def _format(name: str, values: Sequence[str], fmt: str | None) -> str:
    if fmt is None or fmt == "raw":
        if len(values) != 1 and fmt is None:
            raise ExpansionError(
                f"${{{name}}} has {len(values)} values; say how to join them (${{{name}:fmt}})"
            )
        return ",".join(values)
    if fmt == "singlequote":
        return ",".join(_quote(value, "\\") for value in values)
    if fmt == "sqlstring":
        return ",".join(_quote(value, "'") for value in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "regex":
        return "(" + "|".join(re.escape(value) for value in values) + ")"
    raise ExpansionError(f"unsupported variable format ${{{name}:{fmt}}}")


def expand_variables(text: str, values: Mapping[str, Sequence[str]]) -> str:
    """Replace template variables; `$__name` is left for the datasource's macros unless
    `values` has it (Grafana's own `$__interval`, `$__rate_interval`)."""

    def replace(match: re.Match[str]) -> str:
        name = match["braced"] or match["bracket"] or match["plain"]
        if name not in values:
            if name.startswith("__"):
                return match[0]
            raise ExpansionError(f"unknown template variable ${name}")
        return _format(name, values[name], match["format"])

    return _VARIABLE.sub(replace, text)


_MACRO = re.compile(r"\$__(?P<name>\w+)(?:\((?P<args>[^()]*)\))?")


def _date_time(moment: datetime) -> str:
    return f"toDateTime({int(moment.timestamp())})"


def _date_time_ms(moment: datetime) -> str:
    return f"fromUnixTimestamp64Milli({int(moment.timestamp() * 1000)})"


def _date(moment: datetime) -> str:
    return f"toDate('{moment.astimezone(UTC):%Y-%m-%d}')"


def expand_clickhouse(sql: str, time_range: TimeRange, interval_s: int) -> str:
    """The plugin's macros; the SQL must already have its variables replaced."""
    start, end = time_range.start, time_range.end

    def one_arg(name: str, args: list[str]) -> str:
        if len(args) != 1 or not args[0]:
            raise ExpansionError(f"$__{name} takes one argument, got {args}")
        return args[0]

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        args = [a.strip() for a in match["args"].split(",")] if match["args"] is not None else []
        if name == "timeFilter":
            col = one_arg(name, args)
            return f"{col} >= {_date_time(start)} AND {col} <= {_date_time(end)}"
        if name == "timeFilter_ms":
            col = one_arg(name, args)
            return f"{col} >= {_date_time_ms(start)} AND {col} <= {_date_time_ms(end)}"
        if name == "dateFilter":
            col = one_arg(name, args)
            return f"{col} >= {_date(start)} AND {col} <= {_date(end)}"
        if name == "fromTime":
            return _date_time(start)
        if name == "toTime":
            return _date_time(end)
        if name == "fromTime_ms":
            return _date_time_ms(start)
        if name == "toTime_ms":
            return _date_time_ms(end)
        if name == "interval_s":
            return str(interval_s)
        if name == "timeInterval":
            col = one_arg(name, args)
            return f"toStartOfInterval(toDateTime({col}), INTERVAL {interval_s} second)"
        raise ExpansionError(f"unknown ClickHouse macro $__{name}")

    expanded = _MACRO.sub(replace, sql)
    leftover = re.search(r"\$(?:__\w+|\{[^}]*\}|\[\[)", expanded)
    if leftover is not None:
        raise ExpansionError(f"unexpanded {leftover[0]} in:\n{expanded}")
    return expanded


def expand_prometheus(expr: str, values: Mapping[str, Sequence[str]], rate_interval: str) -> str:
    """Grafana's interval variables in a PromQL expression; `rate_interval` stands for
    `$__rate_interval` (at least four scrape intervals)."""
    builtins = {"__rate_interval": [rate_interval], "__interval": [rate_interval]}
    expanded = expand_variables(expr, {**values, **builtins})
    if "$" in expanded:
        raise ExpansionError(f"unexpanded variable in {expanded}")
    return expanded


SqlRunner = Callable[[str], Sequence[Sequence[Any]]]
Picker = Callable[[Variable, Sequence[str]], list[str]]
"""Which of a variable's options are selected; None selects All."""


def resolve_variables(
    board: Dashboard,
    run_sql: SqlRunner,
    time_range: TimeRange,
    pick: Picker | None = None,
) -> dict[str, list[str]]:
    """Each variable's values in dashboard order, as Grafana resolves them: a constant is
    its value; a query variable runs its SQL with the variables before it, and `pick`
    chooses among the options (All when there is no `pick`: Grafana expands All to every
    option when a variable has no custom all value)."""
    values: dict[str, list[str]] = {}
    for variable in board.variables:
        if variable.type == "constant":
            values[variable.name] = [variable.query]
            continue
        options = [str(row[0]) for row in run_sql(variable_sql(variable, values, time_range))]
        values[variable.name] = options if pick is None else pick(variable, options)
    return values


def variable_sql(
    variable: Variable, values: Mapping[str, Sequence[str]], time_range: TimeRange
) -> str:
    """The SQL that lists a query variable's options, given the variables before it."""
    if variable.type != "query":
        raise ExpansionError(f"variable {variable.name} has unsupported type {variable.type}")
    return expand_clickhouse(
        expand_variables(variable.query, values), time_range, interval_seconds(time_range)
    )


def panel_sql(
    panel: Panel, sql: str, values: Mapping[str, Sequence[str]], time_range: TimeRange
) -> str:
    """A ClickHouse target of `panel`, ready to run."""
    interval = interval_seconds(time_range, panel.min_interval)
    return expand_clickhouse(expand_variables(sql, values), time_range, interval)
