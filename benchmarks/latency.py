"""Latency of issue 8: a steady trickle of small files, each timed from written to done.

Users dropping a file expect to see it in ClickHouse within seconds, and a
pipeline tuned only for throughput (big batches, long lingers) fails them. This
drops a 1,000-row file every half second into a running `tillstream up` and
times each one from the rename that completes it in the inbox to its history
row being `done` (every row accounted for in ClickHouse). With `--preload`, a big
file is ingested first, so that the trickle meets tables, a dedupe table and
late-sales reconciliations of that size, as it would after a backfill.

Two clocks: `observed` is when the file appeared in the archive, where `up`
moves it once done (what a user sees; watched every 0.02 s); `history` is the
history row's own `finished_at`. Both include the watcher's `stable_seconds`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import (  # noqa: E402
    BenchmarkError,
    UpRun,
    check_history,
    parser,
    percentile,
    progress,
    read_truth,
    report,
    sample_file,
    start,
)

TARGETS = {50: 2.0, 99: 5.0}
"""Percentile -> seconds, from issue 8."""
PRELOAD_SEED = 8
"""The throughput benchmark's seed: its file is then generated once for both."""


@dataclass
class _Watch:
    """Notes when each file reaches the archive, where `up` moves it once done.

    Watching the folder costs `up` nothing; polling its history this often would
    put a ClickHouse query every 0.1 s into the process being measured.
    """

    archive: Path
    done: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            names = os.listdir(self.archive) if self.archive.exists() else []
            for name in names:
                self.done.setdefault(name, now)
            self.stop.wait(0.02)

    def count(self, staged: list[Path]) -> int:
        """How many of these files are done: the archive may hold a preloaded file too."""
        return sum(path.name in self.done for path in staged)


def _latencies(
    up: UpRun, files: list[Path], interval: float, timeout: float
) -> list[tuple[str, float, float]]:
    """(name, observed seconds, history seconds) per file, in drop order."""
    staged = [up.stage(path) for path in files]
    watch = _Watch(up.pipeline.archive)
    poller = threading.Thread(target=watch.run, name="archive-watch", daemon=True)
    poller.start()
    dropped: dict[str, tuple[float, float]] = {}
    try:
        start = time.monotonic()
        for index, path in enumerate(staged):
            time.sleep(max(0.0, start + index * interval - time.monotonic()))
            wall = time.time()
            dropped[path.name] = (up.drop(path), wall)
            if (index + 1) % 10 == 0:
                progress(f"dropped {index + 1}/{len(staged)}; {watch.count(staged)} done")
        deadline = time.monotonic() + timeout
        while (done := watch.count(staged)) < len(staged):
            if time.monotonic() > deadline:
                raise BenchmarkError(f"only {done}/{len(staged)} files done after {timeout:.0f}s")
            time.sleep(0.2)
    finally:
        watch.stop.set()
        poller.join()
    history = {Path(row["source_name"]).name: row for row in up.pipeline.status()}
    results = []
    for path, source in zip(staged, files, strict=True):
        row = history[path.name]
        check_history(path.name, row, read_truth(source))
        moment, wall = dropped[path.name]
        finished = datetime.fromisoformat(row["finished_at"]).timestamp()
        results.append((path.name, watch.done[path.name] - moment, finished - wall))
    return results


def _preload(up: UpRun, rows: int, timeout: float, work_dir: Path) -> None:
    """Ingest a file of `rows` rows and wait until it is done."""
    path = sample_file(rows, PRELOAD_SEED, work_dir=work_dir)
    staged = up.stage(path)
    progress(f"preloading {rows:,} rows")
    up.drop(staged)
    check_history(staged.name, up.wait_done(staged.name, timeout).row, read_truth(path))


def main(argv: list[str] | None = None) -> int:
    arguments = parser(__doc__ or "", timeout=300)
    arguments.add_argument("--files", type=int, default=40, help="files to drop")
    arguments.add_argument("--rows", type=int, default=1_000, help="rows per file")
    arguments.add_argument("--interval", type=float, default=0.5, help="seconds between drops")
    arguments.add_argument("--seed", type=int, default=1_000, help="seed of the first file")
    arguments.add_argument(
        "--preload", type=int, default=0, help="rows of a file ingested before the trickle"
    )
    args = start(arguments, argv)
    files = [
        sample_file(args.rows, args.seed + i, prefix=f"L{i:04d}", work_dir=args.work_dir)
        for i in range(args.files)
    ]
    root = args.work_dir / "runs" / f"latency-{time.strftime('%Y%m%d-%H%M%S')}"
    with UpRun(root) as up:
        if args.preload:
            _preload(up, args.preload, args.timeout, args.work_dir)
        results = _latencies(up, files, args.interval, args.timeout)
    after = f", after a {args.preload:,}-row file" if args.preload else ""

    headers = ["clock", "files", "p50 s", "p90 s", "p99 s", "max s", "targets"]
    rows = []
    for label, column in (("observed (in the archive)", 1), ("history finished_at", 2)):
        values = [result[column] for result in results]
        rows.append(
            [
                label,
                str(len(values)),
                *(f"{percentile(values, q):.2f}" for q in (50, 90, 99)),
                f"{max(values):.2f}",
                "p50 <= 2 s, p99 <= 5 s",
            ]
        )
    observed = [result[1] for result in results]
    verdict = [
        f"Target p{q} <= {limit:.0f} s: "
        f"{'met' if percentile(observed, q) <= limit else 'NOT MET'} "
        f"({percentile(observed, q):.2f} s observed)."
        for q, limit in TARGETS.items()
    ]
    notes = [
        f"{args.files} files of {args.rows:,} rows, one every {args.interval} s, each with "
        "its own order ids; every file's history equals its ground truth.",
        *(
            [
                f"Before them, a {args.preload:,}-row file (seed {PRELOAD_SEED}) was ingested "
                "into the same `up` and checked against its ground truth."
            ]
            if args.preload
            else []
        ),
        f"With {args.files} files, p99 is interpolated between the two slowest.",
        "Per file, observed (s): " + ", ".join(f"{value:.2f}" for value in observed) + ".",
    ]
    report(
        f"Latency, {args.files} files of {args.rows:,} rows{after}",
        headers,
        rows,
        verdict,
        notes,
        recorded=args.record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
