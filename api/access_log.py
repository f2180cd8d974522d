"""Who read or erased a subject's data over HTTP, and when: the access log.

A data protection officer asked "who at the company looked at this person's data?" needs
more than the request log, which on purpose names routes and never a subject. Every request
to a subject's own routes (`/v1/subjects/{sid}/...`: consents, trail, evidence, erasure,
and this log's own) by an authenticated key is recorded here as it completes: when, the
key's id and tenant, the sid, the route and the answer's status (a refused or not-found
attempt too). Nothing else: no reference, no personal data, no query values.
`consent-ledger accesses SUBJECT --tenant T` and `GET /v1/subjects/{sid}/accesses` list a
subject's.

Kept apart from the log of record (`access.db`, SQLite, WAL): an access is not a consent
fact, and a read must not wait on the ledger's writer. Written with `synchronous=NORMAL`,
so a power cut can lose the last moments of it (never a process crash); written after the
answer, so a service killed in between loses that one line. If it cannot be written, the
request log says so (`access not recorded`), and the answer already given stands.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID


def a_sid(text: Any) -> str | None:
    """The path's sid, in its one written form, if it is one; a URL may hold anything, and
    only a sid, which says nothing about the person, is ever written. Read as the routes
    read it (`api.deps.parse_sid`): a sid in capitals, with hyphens or braces is served,
    so it must be recorded too, and under the same sid."""
    if not isinstance(text, str):
        return None
    try:
        return UUID(hex=text).hex
    except ValueError:
        return None


class AccessLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS accesses (
                at TEXT NOT NULL, tenant TEXT NOT NULL, sid TEXT NOT NULL,
                key_id TEXT NOT NULL, method TEXT NOT NULL, route TEXT NOT NULL,
                status INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS accesses_by_subject ON accesses (tenant, sid, at);
            """
        )

    def close(self) -> None:
        self._db.close()

    def record(
        self, tenant: str, sid: str, key_id: str, method: str, route: str, status: int
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO accesses VALUES (?,?,?,?,?,?,?)",
                (datetime.now(UTC).isoformat(), tenant, sid, key_id, method, route, status),
            )

    def of_subject(self, tenant: str, sid: str) -> list[dict[str, Any]]:
        """A subject's accesses, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, key_id, method, route, status FROM accesses "
                "WHERE tenant=? AND sid=? ORDER BY at, rowid",
                (tenant, sid),
            ).fetchall()
        return [
            {"at": at, "key_id": key_id, "method": method, "route": route, "status": status}
            for at, key_id, method, route, status in rows
        ]
