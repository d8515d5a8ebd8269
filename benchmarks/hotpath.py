"""Summarise a py-spy profile (raw collapsed stacks) into the tables docs/benchmarks.md shows.

A flamegraph answers "where does time go" for a person at a screen; a review
needs the same answer as text: which functions burn CPU themselves (self time),
which ones the time is spent under (inclusive), and how busy each thread was.
Record with `py-spy record --format raw --threads --nolineno`; `throughput.py
--profile` does.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import markdown_table, print_table  # noqa: E402

__all__ = ["Profile", "read_profile"]

_PLUMBING = (
    "(threading.py)",
    "(concurrent/futures/thread.py)",
    "(asyncio/base_events.py)",
    "(asyncio/runners.py)",
    "(asyncio/events.py)",
    "(<frozen runpy>)",
    "(tillstream/__main__.py)",
    "(tillstream/cli.py)",
    "(mode/threads.py)",
)
"""Frames that threads start with or run everything under: they would top every
inclusive table and name no thread."""


_WAITING = (
    "_worker (concurrent/futures/thread.py)",
    "Condition.wait (threading.py)",
    "EpollSelector.select (selectors.py)",
    "_PollLikeSelector.select (selectors.py)",
    "InotifyFD._check_inotify_fd (watchdog/observers/inotify_c.py)",
)
"""Leaf frames that block (queue, lock, select) yet py-spy samples as active: left out,
so shares are shares of the samples where a thread was working."""
_OURS = ("processors/", "producers/", "sinks/", "tillstream/")


@dataclass(frozen=True)
class Profile:
    stacks: Counter[tuple[str, ...]]
    """Stack (outermost first, thread id first) -> samples."""

    @property
    def total(self) -> int:
        """Samples outside the waits: what every share is a share of."""
        return sum(samples for _, samples in self.working())

    def self_time(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for stack, samples in self.stacks.items():
            if len(stack) > 1 and stack[-1] not in _WAITING:
                counts[stack[-1]] += samples
        return counts

    def working(self) -> Iterator[tuple[tuple[str, ...], int]]:
        """Stacks that were not waiting."""
        return ((s, n) for s, n in self.stacks.items() if len(s) > 1 and s[-1] not in _WAITING)

    def inclusive(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for stack, samples in self.working():
            for frame in set(stack[1:]):
                if not frame.endswith(_PLUMBING):
                    counts[frame] += samples
        return counts

    def entry_points(self) -> Counter[str]:
        """Working time per outermost frame of our own code (else of any library):
        which component of the process the CPU was working for."""
        counts: Counter[str] = Counter()
        for stack, samples in self.working():
            frames = [f for f in stack[1:] if not f.endswith(_PLUMBING)]
            ours = [f for f in frames if f.rpartition(" (")[2].startswith(_OURS)]
            counts[(ours or frames or ["?"])[0]] += samples
        return counts

    def by_package(self) -> Counter[str]:
        """Self time per top-level package or module: where the CPU goes, coarsely."""
        counts: Counter[str] = Counter()
        for frame, samples in self.self_time().items():
            where = frame.rpartition(" (")[2].rstrip(")")
            counts[where.split("/")[0].removesuffix(".py")] += samples
        return counts

    def threads(self) -> list[tuple[str, int, int]]:
        """(a name from the thread's own code, samples, samples not waiting), busiest first."""
        by_thread: dict[str, Counter[str]] = {}
        samples: Counter[str] = Counter()
        working: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            thread = stack[0]
            samples[thread] += count
            if stack[-1] not in _WAITING:
                working[thread] += count
            entry = next((f for f in stack[1:] if not f.endswith(_PLUMBING)), "idle pool thread")
            if any("run_forever (" in f for f in stack):
                entry = "asyncio event loop"
            by_thread.setdefault(thread, Counter())[entry] += count
        return [
            (f"{thread}: {by_thread[thread].most_common(1)[0][0]}", samples[thread], count)
            for thread, count in working.most_common()
        ]

    def tables(
        self, top: int, seconds: float | None, rate: float
    ) -> list[tuple[str, list[str], list[list[str]]]]:
        """(title, headers, rows) for self, inclusive, entry points, packages and threads."""
        total = self.total

        def share(count: int) -> str:
            return f"{100 * count / total:.1f}%"

        tables = [
            (
                "self time (the function itself was on the CPU)",
                ["function", "samples", "share"],
                [[f, str(c), share(c)] for f, c in self.self_time().most_common(top)],
            ),
            (
                "inclusive time, waits left out (the function or its callees were working)",
                ["function", "samples", "share"],
                [[f, str(c), share(c)] for f, c in self.inclusive().most_common(top)],
            ),
            (
                "working time by entry point (outermost frame of our code)",
                ["entry point", "samples", "share"],
                [[f, str(c), share(c)] for f, c in self.entry_points().most_common(top)],
            ),
            (
                "self time by package",
                ["package", "samples", "share"],
                [[f, str(c), share(c)] for f, c in self.by_package().most_common(top)],
            ),
        ]
        busy = ["working, of wall time"] if seconds else []
        tables.append(
            (
                "threads (working = sampled outside the waits)",
                ["thread", "samples", "working", "share", *busy],
                [
                    [name, str(count), str(work), share(work)]
                    + ([f"{100 * work / (seconds * rate):.0f}%"] if seconds else [])
                    for name, count, work in self.threads()
                ],
            )
        )
        return tables


def read_profile(path: Path) -> Profile:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return Profile(stacks)


def markdown(profile: Profile, top: int, seconds: float | None, rate: float) -> str:
    parts = []
    for title, headers, rows in profile.tables(top, seconds, rate):
        # Code spans, or `<locals>` in a frame name would read as an HTML tag.
        named = [[f"`{row[0]}`", *row[1:]] for row in rows]
        parts += [f"Profile, {title}:", "", markdown_table(headers, named), ""]
    return "\n".join(parts).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy raw output")
    parser.add_argument("--top", type=int, default=15, help="functions per table")
    parser.add_argument("--seconds", type=float, help="how long was recorded (for thread load)")
    parser.add_argument("--rate", type=float, default=100, help="py-spy samples per second")
    args = parser.parse_args(argv)
    profile = read_profile(args.profile)
    for title, headers, rows in profile.tables(args.top, args.seconds, args.rate):
        print(f"\n{title}")
        print_table(headers, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
