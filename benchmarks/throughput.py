"""Throughput of issue 8: tillstream end to end against a pandas script and naive streaming.

All three run in one invocation, one after the other, on the same messy CSV,
because this machine is shared: only ratios measured side by side mean much.

- tillstream: `tillstream up` with shipped defaults; the clock runs from the
  file being complete in the inbox (one rename) until its ingestion history
  row is `done`, which the product sets only when ClickHouse accounts for every
  row. The history and ClickHouse are then checked against the ground truth, and
  the run waits for the file's late sales to be in the aggregates, which the sink
  reconciles beside its writes, and says when they were.
- pandas reference: `reference.py`, with pandas.read_csv (the issue's reference)
  and with the product's reader, each in its own process; run before and after
  tillstream, and the faster run is the one compared with.
- naive streaming: `naive.py` on a sample, extrapolated as a rate.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import hotpath  # noqa: E402
from benchmarks._common import (  # noqa: E402
    BenchmarkError,
    CpuTimes,
    RssSampler,
    UpRun,
    check_clickhouse,
    check_history,
    fmt_int,
    fmt_mb,
    parser,
    progress,
    read_truth,
    report,
    sample_file,
    start,
)
from sinks.schema import LATE_PARTITION  # noqa: E402
from tillstream.sample_data import GroundTruth  # noqa: E402

TARGET_ROWS_PER_SECOND = 100_000
TARGET_SHARE_OF_PANDAS = 0.5
PROFILE_RATE = 100


@dataclass(frozen=True)
class Measured:
    name: str
    rows: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass(frozen=True)
class EndToEnd:
    result: Measured
    read_seconds: float
    """Drop until the history shows every row read and published to `sales.raw`."""
    product_seconds: float
    """The history's own started_at -> finished_at: no watcher wait, no polling."""
    late_seconds: float
    """Drop until every late sale is in the aggregates: the sink reconciles them beside
    the writes, and may still be at it when the file is done."""
    late_rows: str
    """The rows of the aggregates' late share, and the reconciliations that wrote them."""
    peak_rss: int
    high_water: dict[int, tuple[str, int]]
    cpu: str
    """What the processes and the machine's cores were busy with, drop to done."""
    agents: str
    """How much of the run each agent spent handling messages."""
    profile: Path | None


def _run_json(script: str, *args: str) -> dict[str, Any]:
    """Run a benchmark script in its own process; its last stdout line is its JSON result."""
    command = [sys.executable, str(REPO / "benchmarks" / script), *args]
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"{script} exited with {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _reference(path: Path, truth: GroundTruth, reader: str) -> dict[str, Any]:
    progress(f"pandas reference ({reader} reader) on {path.name}")
    result = _run_json("reference.py", str(path), "--reader", reader)
    want = {
        "valid": truth.valid,
        "revenue": truth.revenue,
        "units": truth.units,
        "rejected": truth.rejected,
        "duplicates": truth.duplicates,
    }
    got = result["outcome"]
    wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    if wrong or result["rows"] != truth.rows:
        raise BenchmarkError(f"reference ({reader}) differs from ground truth: {wrong}")
    progress(
        f"  {result['rows']:,} rows in {result['seconds']:.1f}s "
        f"({result['rows'] / result['seconds']:,.0f} rows/s)"
    )
    return result


def _naive(path: Path, rows: int) -> dict[str, Any]:
    progress(f"naive streaming on a sample of {rows:,} rows")
    result = _run_json("naive.py", str(path), "--rows", str(rows))
    if result["clean"] + result["rejected"] != result["rows"]:
        raise BenchmarkError(f"naive streaming lost rows: {result}")
    progress(f"  {rows:,} events in {result['seconds']:.1f}s")
    return result


def _start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        raise BenchmarkError(f"--profile needs py-spy, not found at {spy}: pip install -e '.[dev]'")
    command = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--output", str(output)]
    command += ["--rate", str(PROFILE_RATE), "--threads", "--nolineno"]
    progress(f"profiling pid {pid} into {output}")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop_profiler(spy: subprocess.Popen[bytes]) -> None:
    """py-spy writes its file on SIGINT."""
    spy.send_signal(signal.SIGINT)
    try:
        _, errors = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
        raise BenchmarkError("py-spy did not stop") from None
    if spy.returncode not in (0, -signal.SIGINT):
        raise BenchmarkError(f"py-spy failed: {errors.decode(errors='replace')}")


def _end_to_end(
    path: Path, truth: GroundTruth, root: Path, timeout: float, profile: bool
) -> EndToEnd:
    with UpRun(root) as up:
        staged = up.stage(path)
        sampler = RssSampler(up.pid).start()
        output = root / "profile.txt" if profile else None
        spy = _start_profiler(up.pid, output) if output is not None else None
        try:
            progress(f"dropping {path.name} ({path.stat().st_size / 2**20:.0f} MiB) into the inbox")
            cpu_before = CpuTimes.of(up.pid)
            agents_before = _agent_seconds(up)
            dropped = up.drop(staged)
            done = up.wait_done(staged.name, timeout)
            cpu = CpuTimes.of(up.pid).since(cpu_before)
            agents = _agent_seconds(up)
        finally:
            if spy is not None:
                _stop_profiler(spy)
            sampler.stop()
        seconds = done.done_at - dropped
        busy = ", ".join(
            f"{stage} {(agents[stage] - agents_before[stage]) / seconds:.0%}" for stage in agents
        )
        row = done.row
        progress(f"  done after {seconds:.1f}s; checking against the ground truth")
        check_history(staged.name, row, truth)
        check_clickhouse(up.pipeline, row["source_id"], truth)
        up.pipeline.wait_for(up.pipeline.late_sales_reconciled, timeout, "the late sales")
        late_seconds = time.monotonic() - dropped
        late_rows, reconciliations = up.pipeline.query(
            "SELECT count(), uniqExact(reconciliation) FROM tillstream.aggregates "
            f"WHERE partition = {LATE_PARTITION}"
        )[0]
    started = datetime.fromisoformat(row["started_at"])
    finished = datetime.fromisoformat(row["finished_at"])
    return EndToEnd(
        result=Measured("tillstream up, end to end", truth.rows, seconds),
        read_seconds=(done.read_at or done.done_at) - dropped,
        product_seconds=(finished - started).total_seconds(),
        late_seconds=late_seconds,
        late_rows=f"{fmt_int(int(late_rows))} late rows from {reconciliations} reconciliations",
        peak_rss=sampler.peak,
        high_water=sampler.high_water,
        cpu=cpu,
        agents=(
            f"Share of the run each agent spent handling messages, its waits for the cleaning "
            f"process and the broker included: {busy}; an agent busy most of the run is "
            "the stage it waits for."
        ),
        profile=output,
    )


def _agent_seconds(up: UpRun) -> dict[str, float]:
    """Seconds each agent has spent on messages so far, from `up`'s own metrics."""
    return {
        stage: up.pipeline.metric("tillstream_worker_chunk_seconds_sum", stage=stage)
        for stage in ("clean", "dedupe")
    }


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.3f}x"


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__ or "", timeout=3600)
    arguments.add_argument("--rows", type=int, default=1_000_000, help="rows of the messy CSV")
    arguments.add_argument("--seed", type=int, default=8, help="generator seed")
    arguments.add_argument(
        "--naive-rows", type=int, default=5_000, help="sample size of the naive baseline"
    )
    arguments.add_argument("--profile", action="store_true", help="py-spy the up process")
    args = start(arguments, argv)
    path = sample_file(args.rows, args.seed, work_dir=args.work_dir)
    truth = read_truth(path)
    root = args.work_dir / "runs" / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}"

    before = _reference(path, truth, "pandas")
    own_reader = _reference(path, truth, "tillstream")
    naive = _naive(path, min(args.naive_rows, args.rows))
    e2e = _end_to_end(path, truth, root, args.timeout, args.profile)
    after = _reference(path, truth, "pandas")

    pandas = min((before, after), key=lambda r: r["seconds"])
    reference = Measured(
        "pandas reference (read_csv -> clean_rows -> chDB)",
        pandas["rows"],
        pandas["seconds"],
        f"best of 2: {before['seconds']:.1f}s before, {after['seconds']:.1f}s after",
    )
    reader = Measured(
        "pandas reference with the product's reader (read_chunks)",
        own_reader["rows"],
        own_reader["seconds"],
    )
    sample = Measured(
        f"naive streaming, 1 row/message (sample of {naive['rows']:,}, extrapolated)",
        naive["rows"],
        naive["seconds"],
        f"{naive['cleaning_seconds'] / naive['seconds']:.0%} of it in the 1-row clean_rows",
    )
    headers = ["pipeline", "rows", "seconds", "rows/s", "vs pandas", "note"]
    rows = [
        [
            m.name,
            fmt_int(m.rows),
            f"{m.seconds:.1f}",
            fmt_int(m.rate),
            _ratio(m.rate, reference.rate),
            m.note,
        ]
        for m in (e2e.result, reference, reader, sample)
    ]
    meets_rate = e2e.result.rate >= TARGET_ROWS_PER_SECOND
    meets_share = e2e.result.rate >= TARGET_SHARE_OF_PANDAS * reference.rate
    verdict = [
        f"Target >= {fmt_int(TARGET_ROWS_PER_SECOND)} rows/s end to end: "
        f"{'met' if meets_rate else 'NOT MET'} ({fmt_int(e2e.result.rate)} rows/s).",
        f"Target >= {TARGET_SHARE_OF_PANDAS:.0%} of the pandas reference: "
        f"{'met' if meets_share else 'NOT MET'} ({e2e.result.rate / reference.rate:.1%}).",
        f"tillstream vs naive streaming: {e2e.result.rate / sample.rate:.1f}x.",
    ]
    details = [
        f"tillstream: all rows read and published to sales.raw after {e2e.read_seconds:.1f}s; "
        f"the history's own started -> finished: {e2e.product_seconds:.1f}s; "
        f"every late sale in the aggregates after {e2e.late_seconds:.1f}s "
        f"({e2e.late_rows}).",
        f"tillstream peak RSS (up + broker, sampled every 0.5 s): {fmt_mb(e2e.peak_rss)}; "
        "per process peak (VmHWM): "
        + ", ".join(f"{name} {fmt_mb(peak)}" for name, peak in e2e.high_water.values())
        + ".",
        e2e.cpu,
        e2e.agents,
        "pandas reference phases (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in pandas["phases"].items())
        + "; with the product's reader: "
        + ", ".join(f"{k} {v:.1f}" for k, v in own_reader["phases"].items())
        + ".",
        f"naive streaming: {naive['startup_seconds']:.1f}s from app start to the first event.",
        "Counts of tillstream and of both references equal the generator's ground truth.",
    ]
    if args.profile:
        details.append("tillstream ran under py-spy (100 samples/s), which slows it slightly.")

    appendix = ""
    if e2e.profile is not None:
        profile = hotpath.read_profile(e2e.profile)
        summary = hotpath.markdown(profile, 15, e2e.result.seconds, PROFILE_RATE)
        appendix = f"Raw profile: `{e2e.profile}`.\n\n{summary}"
    report(
        f"Throughput, {fmt_int(args.rows)} rows",
        headers,
        rows,
        verdict,
        details,
        recorded=args.record,
        appendix=appendix,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
