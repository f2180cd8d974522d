"""Queries over an `IN (...)` list of any length, in chunks SQLite accepts, and rows read as
plain tuples.

SQLite limits the host parameters of one statement (999 before 3.32), and a batch asks
about up to a thousand subjects, event ids or positions at once.

Also what every SQLite file of the ledger shares, whichever module opens it: the size of a
connection's page cache and the process's bound on SQLite's memory.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

CHUNK = 500

# SQLite's page cache for the ledger's own files (log, views, key store), in KiB: each is
# indexed by a keyed hash, so a batch's writes touch pages all over the file, far more than
# SQLite's default 2 MiB holds (see ledger.sqlite_factory and ledger.keystore).
PAGE_CACHE_KIB = 65536


def bound_sqlite_memory(mib: int) -> None:
    """SQLite's soft heap limit, which is the whole process's (`LEDGER_SQLITE_MEMORY_MIB`;
    0: none). Each connection's page cache may grow to PAGE_CACHE_KIB, and a `serve` keeps
    seven open, with no setting that bounded them: under `python -m bench soak` with a
    views' cache of 200,000 facts a server levelled at 1,001 MiB, and at 551 MiB with a
    bound of 64, publishing as fast (2026-12-04)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as connection:
        connection.execute(f"PRAGMA soft_heap_limit={int(mib) * 1024 * 1024}")


def rows_in(
    cursor: Any,
    sql: str,
    keys: Sequence[Any],
    before: Sequence[Any] = (),
    after: Sequence[Any] = (),
    placeholder: str = "?",
) -> Iterator[Any]:
    """Every row of `sql`, whose one `{}` is the IN list's place, over all of `keys`.

    `cursor` is a DB-API cursor (or the library's wrapper of one); `before` and `after` are
    the parameters around the list's. `placeholder` is one key's: `(?)` makes the list the
    rows of a `VALUES` clause, for a query that must also answer for keys with no row.
    """
    for i in range(0, len(keys), CHUNK):
        chunk = list(keys[i : i + CHUNK])
        cursor.execute(sql.format(",".join([placeholder] * len(chunk))), [*before, *chunk, *after])
        yield from cursor.fetchall()


def as_tuples(cursor: Any) -> Any:
    """This cursor's rows as plain tuples instead of the connection's sqlite3.Row.

    The library's connections (and the views') make every row a sqlite3.Row, which SQLite
    fills through a Python call per row. Reads that take many rows and their columns by
    position (replay, verify, who had consent, the campaign check) skip it. `cursor` is the
    library's wrapper of a sqlite3 cursor, made for one transaction, so only that transaction's
    rows change.
    """
    cursor.sqlite_cursor.row_factory = None
    return cursor
