"""API keys: stored only as SHA-256 hashes, each bound to one tenant and a set of roles.

A key is shown once, when created. It is `cl_<key id>_<secret>`; the id lets an operator
name a key (list, revoke) without holding the secret. A key may be made to expire (a
credential handed to a contractor, to an auditor for the weeks of an inquiry): after its
`expires_at` it is refused as a revoked one is, with its own code, so its holder knows to
ask for a new one rather than to check the key they typed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ledger.file_identity import OpenedFile, opened_again
from ledger.settings import ensure_dir
from ledger.store_format import API_KEYS, refuse_other_format, stamp_format

ROLES = frozenset({"publisher", "compliance", "admin"})

log = logging.getLogger("consent_ledger.http")


class KeyError_(ValueError):
    """A key command was given something unusable (unknown role, unknown key id)."""


class ExpiredKey(Exception):
    """The key is right, and past its expiry. Only said to whoever holds the secret."""

    def __init__(self, expires_at: str) -> None:
        super().__init__(expires_at)
        self.expires_at = expires_at


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    roles: frozenset[str]


_TABLE = (
    "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, secret_sha256 TEXT "
    "NOT NULL, tenant TEXT NOT NULL, roles TEXT NOT NULL, created_at TEXT NOT NULL, "
    "revoked_at TEXT, expires_at TEXT)"
)


class ApiKeys:
    """The key table, and which keys this process found valid lately.

    `recheck_s` is how long a key found valid is trusted before its row is read again (the
    server's LEDGER_API_KEY_RECHECK_MS): another process that revokes it (`consent-ledger
    keys revoke`) is obeyed within that long. Reading the row on every request took 0.1-0.2
    of the server's 0.6 ms of event-loop time per single publish (two alternating rounds of
    `python -m bench http`, 2026-12-01, this logic wrapped around the old lookup by a
    throwaway sitecustomize; f2886f0's message has the figures). Only keys found valid are
    remembered, by key id, with the secret's hash, never the secret: a made-up key id is read
    every time and takes no memory, and a valid key id with a wrong secret is refused from
    what is remembered.

    The table is the file at `path`, not the one first opened there: `consent-ledger keys`
    writes to the path, so a file moved away or replaced under a running server (a restore
    of `api_keys.db`) would take the operator's revocations where the server never reads
    them, and a revoked key would be served until a restart. Each read of the table first
    checks the path still names the opened file (two `stat` calls) and opens it again if not;
    a removed file is made anew, empty, so every key is refused, as at a restart.
    """

    def __init__(
        self,
        path: Path,
        *,
        recheck_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        ensure_dir(path.parent)
        self._path = path
        self._recheck_s = recheck_s
        self._clock = clock
        self._wall_clock = wall_clock
        # key id -> (hash of its secret, who it is, its expiry, when its row was read)
        self._valid: dict[str, tuple[str, Principal, datetime | None, float]] = {}
        self._lock = threading.Lock()
        self._db, self._file = self._open()

    def _open(self) -> tuple[sqlite3.Connection, OpenedFile]:
        path = self._path
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            stamped = refuse_other_format(db.cursor(), str(path), API_KEYS)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_TABLE)
            columns = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
            if "expires_at" not in columns:  # a table made before keys could expire
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                    db.execute("ALTER TABLE api_keys ADD COLUMN expires_at TEXT")
            if not stamped:
                stamp_format(db.cursor(), str(path), API_KEYS, (_TABLE,))
        except BaseException:
            db.close()
            raise
        return db, OpenedFile(path)

    def _table(self) -> sqlite3.Connection:
        """The connection to the file at the path now (called holding the lock)."""
        if self._file.moved():
            db, self._file = opened_again(self._path, self._open)
            self._db.close()
            self._db = db
            self._valid.clear()  # read again from the file the operator's commands write
            log.warning("api_keys.db was moved, replaced or removed: opened again at its path")
        return self._db

    def close(self) -> None:
        self._db.close()

    def create(
        self, tenant: str, roles: set[str], expires_at: datetime | None = None
    ) -> tuple[str, str]:
        """Returns (key id, the key itself); the key is not stored and cannot be shown again."""
        unknown = roles - ROLES
        if unknown or not roles:
            raise KeyError_(f"roles are {', '.join(sorted(ROLES))}")
        now = self._wall_clock()
        if expires_at is not None and expires_at <= now:
            raise KeyError_("a key's expiry must be in the future")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._lock:
            self._table().execute(
                "INSERT INTO api_keys (key_id, secret_sha256, tenant, roles, created_at, "
                "expires_at) VALUES (?,?,?,?,?,?)",
                (
                    key_id,
                    _sha256(secret),
                    tenant,
                    ",".join(sorted(roles)),
                    now.isoformat(),
                    expires_at.astimezone(UTC).isoformat() if expires_at else None,
                ),
            )
        return key_id, f"cl_{key_id}_{secret}"

    def revoke(self, key_id: str) -> None:
        with self._lock:
            cursor = self._table().execute(
                "UPDATE api_keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL",
                (datetime.now(UTC).isoformat(), key_id),
            )
        self._valid.pop(key_id, None)
        if cursor.rowcount == 0:
            raise KeyError_("no such active key")

    def list(self, tenant: str | None = None) -> list[dict[str, str | None]]:
        with self._lock:
            table = self._table()
            rows = table.execute(
                "SELECT key_id, tenant, roles, created_at, revoked_at, expires_at FROM api_keys "
                + ("WHERE tenant=? " if tenant else "")
                + "ORDER BY created_at",
                (tenant,) if tenant else (),
            ).fetchall()
        return [
            {
                "key_id": r[0],
                "tenant": r[1],
                "roles": r[2],
                "created_at": r[3],
                "revoked_at": r[4],
                "expires_at": r[5],
            }
            for r in rows
        ]

    def authenticate(self, presented: str) -> Principal | None:
        """Who holds this key; None for no such key, a revoked one or a wrong secret.
        Raises ExpiredKey for the right secret of a key past its expiry."""
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != "cl":
            return None
        _, key_id, secret = parts
        now = self._clock()
        known = self._valid.get(key_id)
        if known is None or now - known[3] >= self._recheck_s:
            with self._lock:
                table = self._table()
                row = table.execute(
                    "SELECT secret_sha256, tenant, roles, expires_at FROM api_keys "
                    "WHERE key_id=? AND revoked_at IS NULL",
                    (key_id,),
                ).fetchone()
            if row is None:
                self._valid.pop(key_id, None)
                return None
            principal = Principal(key_id, tenant=row[1], roles=frozenset(row[2].split(",")))
            expires = datetime.fromisoformat(row[3]) if row[3] else None
            known = (row[0], principal, expires, now)
            if self._recheck_s > 0:
                self._valid[key_id] = known
        if not hmac.compare_digest(known[0], _sha256(secret)):
            return None
        # Against the wall clock on every request: a remembered key expires on time too.
        if known[2] is not None and self._wall_clock() >= known[2]:
            raise ExpiredKey(known[2].isoformat())
        return known[1]


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
