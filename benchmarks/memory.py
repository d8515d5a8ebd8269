"""Memory of issue 8: RSS of `up` (and its broker) ingesting a 1M-row file vs a big one.

The design promises backpressure instead of unbounded memory: RSS must stay
under 500 MB and not grow with the file. Each size runs in a fresh `up`; RSS of
the process tree is sampled every 0.5 s while idle (5 s) and while ingesting.
Each process's kernel-kept peak (VmHWM) is reported too, since a spike shorter
than the sampling interval would slip between samples.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import (  # noqa: E402
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

TARGET_BYTES = 500 * 2**20
IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class Footprint:
    rows: int
    seconds: float
    idle: int
    steady: int
    """Median RSS over the second half of the ingestion."""
    peak: int
    high_water: dict[int, tuple[str, int]]


def _footprint(path: Path, root: Path, interval: float, timeout: float) -> Footprint:
    truth = read_truth(path)
    with UpRun(root) as up:
        staged = up.stage(path)
        sampler = RssSampler(up.pid, interval).start()
        try:
            time.sleep(IDLE_SECONDS)
            progress(f"dropping {path.name}")
            dropped = up.drop(staged)
            done = up.wait_done(staged.name, timeout)
        finally:
            sampler.stop()
        check_history(staged.name, done.row, truth)
        check_clickhouse(up.pipeline, done.row["source_id"], truth)
    idle = sampler.between(dropped - IDLE_SECONDS, dropped)
    busy = sampler.between(dropped, done.done_at)
    second_half = sampler.between((dropped + done.done_at) / 2, done.done_at)
    progress(f"  {truth.rows:,} rows: peak {fmt_mb(max(busy, default=0))}")
    return Footprint(
        rows=truth.rows,
        seconds=done.done_at - dropped,
        idle=int(statistics.median(idle)),
        steady=int(statistics.median(second_half or busy)),
        peak=sampler.peak,
        high_water=sampler.high_water,
    )


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__ or "", timeout=7200)
    arguments.add_argument("--rows", type=int, default=1_000_000, help="rows of the small file")
    arguments.add_argument("--big", type=int, default=10_000_000, help="rows of the big file")
    arguments.add_argument("--seed", type=int, default=8, help="generator seed")
    arguments.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    args = start(arguments, argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    footprints = []
    for rows in (args.rows, args.big):
        path = sample_file(rows, args.seed, work_dir=args.work_dir)
        root = args.work_dir / "runs" / f"memory-{stamp}-{rows}"
        footprints.append(_footprint(path, root, args.interval, args.timeout))

    headers = ["rows", "seconds", "idle RSS", "steady RSS", "peak RSS", "peak per process (VmHWM)"]
    rows = [
        [
            fmt_int(f.rows),
            f"{f.seconds:.0f}",
            fmt_mb(f.idle),
            fmt_mb(f.steady),
            fmt_mb(f.peak),
            ", ".join(f"{name} {fmt_mb(peak)}" for name, peak in f.high_water.values()),
        ]
        for f in footprints
    ]
    small, big = footprints
    growth = big.peak / small.peak
    verdict = [
        f"Target peak RSS < {fmt_mb(TARGET_BYTES)}: "
        f"{'met' if big.peak < TARGET_BYTES else 'NOT MET'} "
        f"({fmt_mb(big.peak)} at {fmt_int(big.rows)} rows; sum of up + broker).",
        f"Growth with file size ({big.rows // small.rows}x the rows): peak x{growth:.2f}, "
        f"steady x{big.steady / small.steady:.2f} "
        f"({'flat' if growth < 1.2 else 'GROWS'}, within 20% counted as flat).",
    ]
    notes = [
        f"RSS of `up` and its broker child summed (shared pages count twice), "
        f"sampled every {args.interval} s; idle is the median of the {IDLE_SECONDS:.0f} s "
        "before the drop; steady the median over the second half of the ingestion.",
        "Counts in the history and in ClickHouse equal the ground truth for both files.",
    ]
    report(
        f"Memory, {fmt_int(small.rows)} vs {fmt_int(big.rows)} rows",
        headers,
        rows,
        verdict,
        notes,
        recorded=args.record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
