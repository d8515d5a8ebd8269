"""The tables' changelog messages are written as Faust's json codec writes them: Faust's
own recovery reads them back, and compaction keeps the latest message per key, which
needs a key's bytes to be the same whichever version wrote them."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from processors.state import changelog_message

ROWS = st.lists(st.one_of(st.text(), st.integers()), max_size=8)
"""What the tables hold: flat rows of text and integers (lists, or tuples when new)."""
OTHER = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(),
    st.lists(st.one_of(st.booleans(), st.floats(allow_nan=False), st.none(), ROWS)),
    st.dictionaries(st.text(), st.integers()),
)


@given(key=st.text(), value=st.one_of(ROWS, ROWS.map(tuple), OTHER), partition=st.integers(0, 7))
def test_a_changelog_message_is_what_json_dumps_writes(
    key: str, value: object, partition: int
) -> None:
    message = changelog_message(key, value, partition)
    assert message.key == json.dumps(key).encode()
    assert message.value == json.dumps(value).encode()
    assert message.partition == partition


def test_a_deleted_key_is_a_tombstone() -> None:
    assert changelog_message("o1", None, 3).value is None
