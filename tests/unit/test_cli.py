"""The command line as a shell pipeline sees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


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


def test_ctrl_c_stops_a_command_with_one_line_and_no_partial_file(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tillstream", "generate", "--rows", "100000000"]
    running = subprocess.Popen(
        [*command, "--out", "s.csv"], stderr=subprocess.PIPE, cwd=tmp_path, text=True
    )
    partial = tmp_path / ".s.csv.partial"
    deadline = time.monotonic() + 60
    while not partial.exists() and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)
    assert stderr == "tillstream: interrupted\n"
    assert running.returncode == 130
    assert list(tmp_path.iterdir()) == []
