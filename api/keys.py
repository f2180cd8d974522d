"""API keys: stored only as SHA-256 hashes, each bound to one tenant and a set of roles.

A key is shown once, when created. It is `cl_<key id>_<secret>`; the id lets an operator
name a key (list, revoke) without holding the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROLES = frozenset({"publisher", "compliance", "admin"})


class KeyError_(ValueError):
    """A key command was given something unusable (unknown role, unknown key id)."""


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    roles: frozenset[str]


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
    """

    def __init__(
        self,
        path: Path,
        *,
        recheck_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._recheck_s = recheck_s
        self._clock = clock
        # key id -> (hash of its secret, who it is, when its row was read)
        self._valid: dict[str, tuple[str, Principal, float]] = {}
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, secret_sha256 TEXT "
            "NOT NULL, tenant TEXT NOT NULL, roles TEXT NOT NULL, created_at TEXT NOT NULL, "
            "revoked_at TEXT)"
        )

    def close(self) -> None:
        self._db.close()

    def create(self, tenant: str, roles: set[str]) -> tuple[str, str]:
        """Returns (key id, the key itself); the key is not stored and cannot be shown again."""
        unknown = roles - ROLES
        if unknown or not roles:
            raise KeyError_(f"roles are {', '.join(sorted(ROLES))}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys VALUES (?,?,?,?,?,NULL)",
                (
                    key_id,
                    _sha256(secret),
                    tenant,
                    ",".join(sorted(roles)),
                    datetime.now(UTC).isoformat(),
                ),
            )
        return key_id, f"cl_{key_id}_{secret}"

    def revoke(self, key_id: str) -> None:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL",
                (datetime.now(UTC).isoformat(), key_id),
            )
        self._valid.pop(key_id, None)
        if cursor.rowcount == 0:
            raise KeyError_("no such active key")

    def list(self, tenant: str | None = None) -> list[dict[str, str | None]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, tenant, roles, created_at, revoked_at FROM api_keys "
                + ("WHERE tenant=? " if tenant else "")
                + "ORDER BY created_at",
                (tenant,) if tenant else (),
            ).fetchall()
        return [
            {"key_id": r[0], "tenant": r[1], "roles": r[2], "created_at": r[3], "revoked_at": r[4]}
            for r in rows
        ]

    def authenticate(self, presented: str) -> Principal | None:
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != "cl":
            return None
        _, key_id, secret = parts
        now = self._clock()
        known = self._valid.get(key_id)
        if known is None or now - known[2] >= self._recheck_s:
            with self._lock:
                row = self._db.execute(
                    "SELECT secret_sha256, tenant, roles FROM api_keys "
                    "WHERE key_id=? AND revoked_at IS NULL",
                    (key_id,),
                ).fetchone()
            if row is None:
                self._valid.pop(key_id, None)
                return None
            principal = Principal(key_id, tenant=row[1], roles=frozenset(row[2].split(",")))
            known = (row[0], principal, now)
            if self._recheck_s > 0:
                self._valid[key_id] = known
        if not hmac.compare_digest(known[0], _sha256(secret)):
            return None
        return known[1]


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
