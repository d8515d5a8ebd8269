"""The command line as a shell pipeline sees it."""

from __future__ import annotations

import os
import subprocess
import sys
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
