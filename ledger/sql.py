"""Queries over an `IN (...)` list of any length, in chunks SQLite accepts.

SQLite limits the host parameters of one statement (999 before 3.32), and a batch asks
about up to a thousand subjects, event ids or positions at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

CHUNK = 500


def rows_in(
    cursor: Any,
    sql: str,
    keys: Sequence[Any],
    before: Sequence[Any] = (),
    after: Sequence[Any] = (),
) -> Iterator[Any]:
    """Every row of `sql`, whose one `{}` is the IN list's place, over all of `keys`.

    `cursor` is a DB-API cursor (or the library's wrapper of one); `before` and `after` are
    the parameters around the list's.
    """
    for i in range(0, len(keys), CHUNK):
        chunk = list(keys[i : i + CHUNK])
        cursor.execute(sql.format(",".join("?" * len(chunk))), [*before, *chunk, *after])
        yield from cursor.fetchall()
