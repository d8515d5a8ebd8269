"""Which ClickHouse errors are waited out, and which mean the data or the SQL is wrong."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from sinks.database import error_code, first_line, is_refused_data, is_retryable

STORAGE = (
    "Code: 1001. DB::Exception: std::__1::filesystem::filesystem_error: filesystem error: "
    'in create_directories: Operation not permitted ["/data/store/5ce/tmp_insert_all_2_2_1"]. '
    "(STD_EXCEPTION)"
)
PARSE = "Code: 27. DB::Exception: Cannot parse input: expected '\"' before: 'x\"}':\n(at row 1)"


@pytest.mark.parametrize(
    ("exc", "retryable", "refused"),
    [
        (DatabaseError(STORAGE), True, False),
        (
            DatabaseError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space"),
            True,
            False,
        ),
        (OperationalError("connection refused"), True, False),
        (ConnectionResetError(), True, False),
        (DatabaseError(PARSE), False, True),
        (DatabaseError("Code: 53. DB::Exception: Type mismatch"), False, True),
        (DatabaseError("Code: 62. DB::Exception: Syntax error"), False, False),
        (DatabaseError("Code: 60. DB::Exception: Unknown table"), False, False),
        (ProgrammingError("bad parameter"), False, False),
        (ValueError("no code"), False, False),
    ],
)
def test_storage_and_connection_trouble_is_retried_bad_data_is_isolated(
    exc: BaseException, retryable: bool, refused: bool
) -> None:
    assert (is_retryable(exc), is_refused_data(exc)) == (retryable, refused)


def test_an_error_is_one_line_with_its_code() -> None:
    assert error_code(DatabaseError(STORAGE)) == 1001
    assert first_line(DatabaseError(PARSE)) == PARSE.splitlines()[0]
