"""Who read or erased a subject's data over HTTP, and when: the access log.

A data protection officer asked "who at the company looked at this person's data?" needs
more than the request log, which on purpose names routes and never a subject. Every request
to a subject's own routes (`/v1/subjects/{sid}/...`: consents, trail, evidence, erasure,
and this log's own) by an authenticated key is recorded here as it completes: when, the
key's id and tenant, the sid, the route and the answer's status (a refused or not-found
attempt too). Nothing else: no reference, no personal data, no query values.
Routes whose answer names many subjects (the campaign check, who had consent, the due list)
and the resolution of a reference to its sid record each subject they named, once the answer
is ready, under the route's template. `consent-ledger accesses SUBJECT --tenant T` and
`GET /v1/subjects/{sid}/accesses` list a subject's.

`LEDGER_ACCESS_LOG_DAYS` bounds how long an access is kept (unset: for as long as the file
lives): older ones are deleted when the service starts and then as it records, a bounded
number at a time, at most once an hour once none are left over.

Kept apart from the log of record (`access.db`, SQLite, WAL): an access is not a consent
fact, and a read must not wait on the ledger's writer. Written with `synchronous=NORMAL`,
so a power cut can lose the last moments of it (never a process crash); written after the
answer, so a service killed in between loses that one line. If it cannot be written, the
request log says so (`access not recorded`), and the answer already given stands.

The log is the file at its path: `consent-ledger accesses` reads there, so a file moved away
or replaced under a running server would have taken every access from then on where that
command never looks. Each write and read first checks the path still names the opened file
and opens it again if not (a removed file is made anew and records from then on).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from api.sids import is_sid_spelling
from ledger.file_identity import OpenedFile, opened_again
from ledger.settings import ensure_dir
from ledger.store_format import ACCESS_LOG, refuse_other_format, stamp_format

log = logging.getLogger("consent_ledger.http")

# How many expired accesses one pruning deletes: a busy service's hour of them must not hold
# the log's lock (and the request recording behind it) for long.
PRUNE_BATCH = 5_000
PRUNE_EVERY = timedelta(hours=1)


def a_sid(text: Any) -> str | None:
    """The path's sid, in its one written form, if it is one; a URL may hold anything, and
    only a sid, which says nothing about the person, is ever written. Read as the routes
    read it (`api.deps.parse_sid`): a sid in capitals, with hyphens or braces is served,
    so it must be recorded too, and under the same sid."""
    if not isinstance(text, str) or not is_sid_spelling(text):
        return None
    return UUID(hex=text).hex


_TABLES = (
    "CREATE TABLE IF NOT EXISTS accesses (at TEXT NOT NULL, tenant TEXT NOT NULL, "
    "sid TEXT NOT NULL, key_id TEXT NOT NULL, method TEXT NOT NULL, route TEXT NOT NULL, "
    "status INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS accesses_by_subject ON accesses (tenant, sid, at)",
    "CREATE INDEX IF NOT EXISTS accesses_by_time ON accesses (at)",
)


class AccessLog:
    """`keep_days` 0 keeps every access; `clock` is the wall clock (a test's to move)."""

    def __init__(
        self,
        path: Path,
        keep_days: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        ensure_dir(path.parent)
        self._path = path
        self.keep_days = keep_days
        self._clock = clock
        self._next_prune: datetime | None = None  # None: prune at the next record
        self._lock = threading.Lock()
        self._db, self._file = self._open()

    def _open(self) -> tuple[sqlite3.Connection, OpenedFile]:
        path = self._path
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            stamped = refuse_other_format(db.cursor(), str(path), ACCESS_LOG)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _TABLES:
                db.execute(statement)
            if not stamped:
                stamp_format(db.cursor(), str(path), ACCESS_LOG, _TABLES)
        except BaseException:
            db.close()
            raise
        return db, OpenedFile(path)

    def _log(self) -> sqlite3.Connection:
        """The connection to the file at the path now (called holding the lock)."""
        if self._file.moved():
            db, self._file = opened_again(self._path, self._open)
            self._db.close()
            self._db = db
            self._next_prune = None
            log.warning("access.db was moved, replaced or removed: opened again at its path")
        return self._db

    def close(self) -> None:
        self._db.close()

    def record_many(
        self,
        tenant: str,
        sids: Sequence[str],
        key_id: str,
        method: str,
        route: str,
        status: int,
    ) -> None:
        """One access per sid, in one transaction: a 10,000-recipient check is one commit."""
        with self._lock:
            self._log()
            now = self._clock().astimezone(UTC)
            at = now.isoformat(timespec="microseconds")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO accesses VALUES (?,?,?,?,?,?,?)",
                    [(at, tenant, sid, key_id, method, route, status) for sid in sids],
                )
                if self.keep_days and (self._next_prune is None or now >= self._next_prune):
                    self._prune(now)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it
                    self._db.execute("ROLLBACK")
                raise

    def prune(self) -> int:
        """Delete the accesses older than `keep_days` (none if it is 0), all of them; how
        many. The service calls it as it starts."""
        if not self.keep_days:
            return 0
        deleted = 0
        with self._lock:
            self._log()
            while True:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    batch = self._prune(self._clock().astimezone(UTC))
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # a failed COMMIT may have ended it
                        self._db.execute("ROLLBACK")
                    raise
                deleted += batch
                if batch < PRUNE_BATCH:
                    return deleted

    def _prune(self, now: datetime) -> int:
        cutoff = (now - timedelta(days=self.keep_days)).isoformat(timespec="microseconds")
        deleted = self._db.execute(
            "DELETE FROM accesses WHERE rowid IN "
            "(SELECT rowid FROM accesses WHERE at < ? ORDER BY at LIMIT ?)",
            (cutoff, PRUNE_BATCH),
        ).rowcount
        # Some left over: the next record deletes more; else none for an hour.
        self._next_prune = None if deleted == PRUNE_BATCH else now + PRUNE_EVERY
        return deleted

    def of_subject(self, tenant: str, sid: str) -> list[dict[str, Any]]:
        """A subject's accesses, oldest first."""
        with self._lock:
            rows = (
                self._log()
                .execute(
                    "SELECT at, key_id, method, route, status FROM accesses "
                    "WHERE tenant=? AND sid=? ORDER BY at, rowid",
                    (tenant, sid),
                )
                .fetchall()
            )
        return [
            {"at": at, "key_id": key_id, "method": method, "route": route, "status": status}
            for at, key_id, method, route, status in rows
        ]


def keep(
    access: AccessLog | None,
    tenant: str,
    sids: Sequence[str],
    key_id: str,
    method: str,
    route: str,
    status: int,
) -> None:
    """Record accesses; one that cannot be written leaves the answer as given, and the
    request log says so (route and error class: no sid)."""
    if access is None or not sids:
        return
    try:
        access.record_many(tenant, sids, key_id, method, route, status)
    except Exception as error:
        log.error("access not recorded", extra={"route": route, "error": type(error).__name__})
