"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.seen import SeenEntries


@pytest.fixture
def seen(tmp_path: Path) -> Iterator[SeenEntries]:
    """An empty `seen` table of the test's own."""
    entries = SeenEntries(tmp_path / "seen")
    yield entries
    entries.close()
