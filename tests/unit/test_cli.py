"""The command line as a shell pipeline sees it."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tillstream.cli import MALLOC_ARENAS, _Progress


def test_a_reader_that_goes_away_leaves_no_traceback(tmp_path: Path) -> None:
    """`tillstream quarantine list | head`: the reader closes the pipe before the output
    is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "tillstream", "generate", "--rows", "10", "--out", "s.csv"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (tmp_path / "s.csv").exists()
    assert finished.stderr == ""
    assert finished.returncode == 1


def _interruptible() -> None:
    """Ctrl-C as a terminal sends it, however the tests were started: a shell runs a
    background command with SIGINT ignored, and a child inherits that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_command_with_one_line_and_no_partial_file(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tillstream", "generate", "--rows", "100000000"]
    running = subprocess.Popen(  # noqa: PLW1509 - only resets a signal
        [*command, "--out", "s.csv"],
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        partial = tmp_path / ".s.csv.partial"
        deadline = time.monotonic() + 60
        while not partial.exists() and running.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=60)
    finally:
        running.kill()
    assert stderr == "tillstream: interrupted\n"
    assert running.returncode == 130
    assert list(tmp_path.iterdir()) == []


def test_long_work_reports_how_far_it_got_every_few_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _Progress("sales.csv", every_seconds=3600)(4_000)
    assert capsys.readouterr().err == ""
    due = _Progress("sales.csv", every_seconds=0)
    due(4_000)
    due(1_000_000)
    assert (
        capsys.readouterr().err
        == "sales.csv: 4,000 rows so far\nsales.csv: 1,000,000 rows so far\n"
    )


_ARENAS_AFTER_THREADS = """
import ctypes, sys, threading
from tillstream.cli import limit_malloc_arenas
if sys.argv[1] == "limited":
    limit_malloc_arenas()
together = threading.Barrier(8)
kept = []
def allocate():
    together.wait()
    kept.append(bytes(100_000))
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.malloc_info(0, ctypes.c_void_p.in_dll(libc, "stdout"))
libc.fflush(None)
"""
"""Eight threads, all alive at once, each allocate from malloc (above pymalloc's 512 bytes,
below the 128 KiB that glibc maps on its own); then glibc lists its arenas, one
`<heap nr=...>` each."""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_info"), reason="glibc only")
def test_the_commands_keep_to_two_malloc_arenas_unless_told_otherwise() -> None:
    def arenas(mode: str, **variables: str) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        listed = subprocess.run(
            [sys.executable, "-c", _ARENAS_AFTER_THREADS, mode],
            capture_output=True,
            text=True,
            check=True,
            env=env | variables,
        ).stdout
        return listed.count("<heap nr=")

    assert arenas("default") > MALLOC_ARENAS
    assert arenas("limited") == MALLOC_ARENAS
    assert arenas("limited", MALLOC_ARENA_MAX="4") == 4
