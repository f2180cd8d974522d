"""Which store a SQLite file of the ledger is, and in which format, stamped in its header.

Each file a release opens (the log, its Kafka replica, the key store, the views, the access
log, the API keys, the HTTP service's index of refusals in Kafka mode) is stamped with
SQLite's `application_id` (which store) and `user_version` (its format) when first opened.
A later release that changes a file's tables or what their rows mean gives it a new format
number, and a release meets a stamp it does not know with `StoreOfAnotherFormat`
(configuration, exit 2), which says what to do with that store, before it writes anything
in the file. Unstamped, a release from before a change read the file as if nothing had
changed: a views store whose rows meant something else answered wrongly without a word
(views built before f6471fb, README), and one whose columns differed failed every write
with a SQLite error that named neither the file nor the remedy.

A file made before stamps existed is taken as format 1 if each of its tables has the
columns this release makes; then it is stamped. One whose tables differ is refused, naming
the first table that differs.

The stamp is four bytes each in the file's first page: `consent-ledger backup` and any copy
of the file carry it, and stamping needs the write lock for a moment, once per file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from ledger.settings import SettingsError

# The high bytes of every store's application_id: "CL" (consent ledger); the low, the store.
_APPLICATION = 0x434C0000


class StoreFormat(NamedTuple):
    """One kind of store: what it is, its number, the format this release reads and writes,
    and what to do with a file of another format (said in the refusal)."""

    name: str
    number: int
    version: int
    remedy: str

    @property
    def application_id(self) -> int:
        return _APPLICATION | self.number


_BY_ANOTHER_RELEASE = "run the release of consent-ledger that wrote it"

LOG = StoreFormat(
    "the ledger's log",
    1,
    1,
    f"{_BY_ANOTHER_RELEASE}: the log of record is never rewritten by a release that does not "
    "know its format",
)
REPLICA = StoreFormat(
    "the replica of the ledger topic",
    2,
    1,
    "it is a copy of the ledger topic: move it away (with its -wal and -shm files) and it is "
    "read again from the topic",
)
KEYS = StoreFormat(
    "the key store",
    3,
    1,
    f"{_BY_ANOTHER_RELEASE}: the key store holds the only copies of the data keys",
)
VIEWS = StoreFormat(
    "the consent views",
    4,
    1,
    "they are a cache of the log: move them away (with their -wal and -shm files) and the "
    "next command or service that reads them builds them again from the log "
    "(`consent-ledger replay --into` the data directory builds them faster)",
)
ACCESS_LOG = StoreFormat(
    "the access log",
    5,
    1,
    f"{_BY_ANOTHER_RELEASE}: the access log is evidence of who read which subject",
)
API_KEYS = StoreFormat(
    "the API keys", 6, 1, f"{_BY_ANOTHER_RELEASE}, or move it away and create new keys"
)

REFUSALS = StoreFormat(
    "the intake writer's refusals",
    7,
    1,
    "it is a cache of the rejected topic: move it away (with its -wal and -shm files) and "
    "the HTTP service reads the topic again",
)
FORMATS = (LOG, REPLICA, KEYS, VIEWS, ACCESS_LOG, API_KEYS, REFUSALS)


class StoreOfAnotherFormat(SettingsError):
    """A file that is not a store of the kind expected, or of a format this release does
    not read."""

    def __init__(self, path: str, expected: StoreFormat, why: str) -> None:
        self.path = path
        super().__init__(f"{path}: {why}; {expected.remedy}")


def refuse_other_format(cursor: Any, path: str, expected: StoreFormat) -> bool:
    """Refuse a file stamped as another store or with another format; True if it is
    stamped as `expected` already (nothing more to do), False if unstamped.

    Only reads: asked before the store's tables are made, so a file this release must not
    write is left as it was."""
    application_id, version = _stamp(cursor)
    if application_id == 0 and version == 0:
        return False
    if application_id != expected.application_id:
        raise StoreOfAnotherFormat(
            path, expected, f"this file is {_named(application_id)}, not {expected.name}"
        )
    if version != expected.version:
        later = "a later" if version > expected.version else "an earlier"
        raise StoreOfAnotherFormat(
            path,
            expected,
            f"{expected.name} in format {version}, made by {later} release (this release "
            f"reads format {expected.version})",
        )
    return True


def stamp_format(cursor: Any, path: str, expected: StoreFormat, statements: Sequence[str]) -> None:
    """Stamp an unstamped file as `expected` if each of its tables has the columns that
    `statements` (the store's CREATE statements, already run on it) make; else refuse it.

    Run after the store's tables are made and any migration of an unstamped file (a column
    added) is done: what is compared is what the release is about to use."""
    if refuse_other_format(cursor, path, expected):
        return
    wanted = expected_columns(tuple(statements))
    for table, columns in wanted.items():
        found = _columns(cursor, table)
        if found != columns:
            raise StoreOfAnotherFormat(
                path,
                expected,
                f"{expected.name} without a format stamp, whose table {table} has the "
                f"columns ({', '.join(found)}) where this release makes ({', '.join(columns)})",
            )
    # Formatted in: a PRAGMA takes no parameters (both are ints). Another process stamping
    # the same file at the same moment writes the same two values.
    cursor.execute(f"PRAGMA application_id = {expected.application_id:d}")
    cursor.execute(f"PRAGMA user_version = {expected.version:d}")


def _stamp(cursor: Any) -> tuple[int, int]:
    cursor.execute("PRAGMA application_id")
    application_id = int(cursor.fetchone()[0])
    cursor.execute("PRAGMA user_version")
    return application_id, int(cursor.fetchone()[0])


def _named(application_id: int) -> str:
    for store in FORMATS:
        if store.application_id == application_id:
            return store.name
    return f"not a file of the ledger (application_id {application_id})"


def _columns(cursor: Any, table: str) -> tuple[str, ...]:
    cursor.execute(f'PRAGMA table_info("{table}")')
    return tuple(f"{row[1]} {row[2]}".strip() for row in cursor.fetchall())


@lru_cache(maxsize=16)
def expected_columns(statements: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Each table the statements make, with its columns (name and declared type), as
    SQLite reports them for a file freshly made by them."""
    made = sqlite3.connect(":memory:")
    try:
        for statement in statements:
            made.execute(statement)
        tables = [
            row[0]
            for row in made.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        cursor = made.cursor()
        return {table: _columns(cursor, table) for table in tables}
    finally:
        made.close()
