"""The command line as a shell pipeline sees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tillstream.cli import _Progress


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
