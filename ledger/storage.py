"""When the disk, not the fact, is why a write or a read failed.

A full disk, an I/O error, a database another process holds locked past the busy timeout, a
file made read-only: none of these says anything about the facts being written, and each
passes once an operator acts. So none may be answered as a bug (a 500, a traceback), nor, in
Kafka intake, as a record that made the writer fail (rejected for good, a valid consent lost
to a full disk): each is a `StorageUnavailable`, answered "retry".

A retry is always safe. The log's transaction is all or nothing, so a batch that failed left
nothing in the log; data keys stored for it are found and reused by the retry; an erasure
whose fact was committed but whose key could not be destroyed is finished by the next write
that touches the subject, and its retry with the same `event_id` gets the first receipt.
"""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Callable
from uuid import UUID

# SQLite's primary result codes (extended codes start with these) that mean the storage, and
# what an operator is told. SQLITE_CORRUPT is not among them: a corrupt file does not pass.
_SQLITE: dict[str, str] = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "a disk I/O error",
    "SQLITE_BUSY": "another process holds the database locked",
    "SQLITE_LOCKED": "another connection holds the database locked",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_CANTOPEN": "a database file cannot be opened",
}
_OS: dict[int, str] = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "a file is at its size limit",
    errno.EIO: "a disk I/O error",
    errno.EROFS: "the file system is read-only",
}


class StorageUnavailable(Exception):
    """The ledger's storage refused a read or a write; nothing about the facts involved."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[StorageUnavailable], tuple[str]]:
        # Crosses the HTTP service's pipe from its writer process, where the cause is lost.
        return (type(self), (self.reason,))


def storage_failure(error: BaseException) -> StorageUnavailable | None:
    """The storage failure behind `error`, if that is what it is.

    Looks down the chain of causes: the `eventsourcing` library wraps SQLite's errors in its
    own, and a failed COMMIT's cleanup may raise again with the real error as its context.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageUnavailable):
            return current
        if isinstance(current, sqlite3.Error):
            name = getattr(current, "sqlite_errorname", "")
            for prefix, reason in _SQLITE.items():
                if name == prefix or name.startswith(prefix + "_"):
                    return StorageUnavailable(reason)
        elif isinstance(current, OSError) and current.errno in _OS:
            return StorageUnavailable(_OS[current.errno])
        current = current.__cause__ or current.__context__
    return None


class RecordTooLarge(RuntimeError):
    """A fact's record is larger than the log of record takes (Kafka mode: the ledger
    topic's `max.message.bytes`; raised by ledger.kafka.recorder).

    Found before anything is sent: sent, the broker refused the whole transaction, which
    was taken for the broker being unavailable; `record` answered "retry", and the intake
    writer retried the batch for ever, its partition blocked behind one record. The
    application refuses that fact (`oversize`) and records the rest of the batch.
    """

    def __init__(
        self, aggregate_id: UUID, version: int, size: int, limit: int, limited_by: str
    ) -> None:
        super().__init__(f"a record of {size} bytes; {limited_by} is {limit}")
        self.aggregate_id = aggregate_id
        self.version = version
        self.size = size
        self.limit = limit
        self.limited_by = limited_by  # the setting that says so, for the refusal


# How long a copy by SQLite's backup API waits for a database another process holds locked,
# as every other open of the ledger's files does (their busy timeout); and how long each of
# its steps waits in SQLite's busy handler, where no signal handler can run.
LOCKED_WAIT_S = 30.0
BACKUP_STEP_WAIT_S = 0.1


def given_up_when_locked(name: str) -> Callable[[int, int, int], None]:
    """A progress callback for `sqlite3.Connection.backup` that ends a wait on a locked file.

    Python's `backup` steps again every 250 ms for as long as the source or the target
    answers SQLITE_BUSY, with no time limit and no Python code run in between: a log held by
    another process in exclusive mode (`PRAGMA locking_mode=EXCLUSIVE`) kept `backup` waiting
    for ever, and a SIGTERM or Ctrl-C could not reach it (a handler waits for the
    interpreter). Called after each step (each waiting at most `BACKUP_STEP_WAIT_S` in
    SQLite's busy handler, given as the connections' timeout), this lets the signal handlers
    run, and gives up, as a storage failure naming the file `name`, once it has stayed
    locked for `LOCKED_WAIT_S`.
    """
    since: float | None = None

    def progress(status: int, remaining: int, total: int) -> None:
        nonlocal since
        if status not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            since = None
            return
        now = time.monotonic()
        if since is None:
            since = now
        elif now - since >= LOCKED_WAIT_S:
            raise StorageUnavailable(f"another process holds {name} locked")

    return progress
