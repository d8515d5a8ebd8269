from __future__ import annotations

import csv
from pathlib import Path

from tillstream.cli import main
from tillstream.sample_data import GroundTruth


def test_generate_writes_the_file_and_its_ground_truth_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "inbox" / "sales.csv"
    assert main(["generate", "--rows", "500", "--seed", "4", "--out", str(out)]) == 0
    truth = GroundTruth.from_json((tmp_path / "inbox" / "sales.csv.truth.json").read_text())
    with out.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    assert truth.rows == 500 == len(rows) - 1
    assert truth.valid + truth.duplicates + sum(truth.rejected.values()) == truth.rows
