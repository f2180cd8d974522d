"""API keys in a running service: a key revoked by another process is refused within the
recheck interval, and never because of what a wrong secret did."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.keys import ApiKeys, ExpiredKey, KeyError_
from ledger.storage import StorageUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_revoked_elsewhere_is_refused_within_the_recheck_interval(tmp_path: Path) -> None:
    clock = Clock()
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=1.0, clock=clock)
    cli = ApiKeys(tmp_path / "api_keys.db")  # `consent-ledger keys`, another process
    key_id, key = cli.create("demo", {"publisher"})
    principal = service.authenticate(key)
    assert principal is not None and principal.tenant == "demo"
    assert principal.roles == frozenset({"publisher"})
    cli.revoke(key_id)
    clock.now += 0.5
    assert service.authenticate(key) == principal  # trusted for the interval
    clock.now += 0.5
    assert service.authenticate(key) is None  # read again: revoked
    clock.now += 5
    assert service.authenticate(key) is None
    service.close()
    cli.close()


def test_a_wrong_secret_is_refused_even_for_a_remembered_key(tmp_path: Path) -> None:
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=60.0, clock=Clock())
    _, key = service.create("demo", {"compliance"})
    assert service.authenticate(key) is not None
    forged = key[: key.rindex("_") + 1] + "x" * 43
    assert service.authenticate(forged) is None
    assert service.authenticate(key) is not None
    service.close()


def test_without_recheck_interval_revocation_is_immediate(tmp_path: Path) -> None:
    service = ApiKeys(tmp_path / "api_keys.db", clock=Clock())  # recheck_s=0
    cli = ApiKeys(tmp_path / "api_keys.db")
    key_id, key = cli.create("demo", {"admin"})
    assert service.authenticate(key) is not None
    cli.revoke(key_id)
    assert service.authenticate(key) is None
    service.close()
    cli.close()


def test_a_key_revoked_by_the_same_process_is_refused_at_once(tmp_path: Path) -> None:
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=60.0, clock=Clock())
    key_id, key = service.create("demo", {"publisher"})
    assert service.authenticate(key) is not None
    service.revoke(key_id)
    assert service.authenticate(key) is None
    service.close()


def test_unknown_key_ids_are_not_remembered(tmp_path: Path) -> None:
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=60.0, clock=Clock())
    for n in range(100):
        assert service.authenticate(f"cl_{n:012x}_secret") is None
    assert not service._valid
    service.close()


class WallClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_key_expires_on_time_even_while_remembered(tmp_path: Path) -> None:
    wall, clock = WallClock(), Clock()
    service = ApiKeys(tmp_path / "api_keys.db", recheck_s=3600.0, clock=clock, wall_clock=wall)
    _, key = service.create("demo", {"compliance"}, wall.now + timedelta(days=30))
    assert service.authenticate(key) is not None
    clock.now += 1  # remembered from here on: its row is not read again for an hour
    wall.now += timedelta(days=30, microseconds=-1)
    assert service.authenticate(key) is not None
    wall.now += timedelta(microseconds=1)
    with pytest.raises(ExpiredKey) as expired:
        service.authenticate(key)
    assert expired.value.expires_at == "2027-01-01T09:00:00+00:00"
    # Only the key's holder learns it expired: a wrong secret is just refused.
    assert service.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    [listed] = service.list("demo")
    assert listed["expires_at"] == "2027-01-01T09:00:00+00:00"
    with pytest.raises(KeyError_, match="in the future"):
        service.create("demo", {"compliance"}, wall.now)
    service.close()


def test_a_key_table_from_before_expiry_is_kept_and_extended(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, "
            "tenant TEXT NOT NULL, roles TEXT NOT NULL, created_at TEXT NOT NULL, "
            "revoked_at TEXT)"
        )
        db.execute(
            "INSERT INTO api_keys VALUES ('0123456789ab', ?, 'demo', 'admin', "
            "'2026-11-01T00:00:00+00:00', NULL)",
            (hashlib.sha256(b"old-secret").hexdigest(),),
        )
    keys = ApiKeys(path)
    principal = keys.authenticate("cl_0123456789ab_old-secret")
    assert principal is not None and principal.roles == frozenset({"admin"})
    assert keys.list()[0]["expires_at"] is None
    keys.create("demo", {"publisher"}, datetime.now(UTC) + timedelta(days=1))
    assert [k["expires_at"] is None for k in keys.list()] == [True, False]
    keys.close()


def _move_away(store: Path, away: Path) -> None:
    away.mkdir(exist_ok=True)
    for path in store.parent.glob(f"{store.name}*"):
        path.rename(away / path.name)


def test_a_key_table_replaced_under_the_service_is_read_where_the_commands_write(
    tmp_path: Path,
) -> None:
    """A restore of api_keys.db while the server runs: `consent-ledger keys revoke` writes to
    the file at the path, so the server must read there too, or a leaked key it revokes is
    served until a restart."""
    path = tmp_path / "api_keys.db"
    service = ApiKeys(path)
    with contextlib.closing(ApiKeys(path)) as cli:
        key_id, key = cli.create("demo", {"publisher"})
    with (
        contextlib.closing(sqlite3.connect(path)) as db,
        contextlib.closing(sqlite3.connect(tmp_path / "backup.db")) as copy,
    ):
        db.backup(copy)
    _move_away(path, tmp_path / "old")
    (tmp_path / "backup.db").rename(path)
    assert service.authenticate(key) is not None  # the restored file holds it
    with contextlib.closing(ApiKeys(path)) as cli:
        cli.revoke(key_id)
    assert service.authenticate(key) is None

    # Removed: made anew, empty, as at a restart: every key refused.
    _move_away(path, tmp_path / "gone")
    assert service.authenticate(key) is None and path.exists()
    with contextlib.closing(ApiKeys(path)) as cli:
        _, new_key = cli.create("demo", {"compliance"})
    assert service.authenticate(new_key) is not None

    # A file of another kind put there: refused as storage unavailable until it is mended,
    # named by its file name only (the answer is an HTTP one; the path goes to the log).
    _move_away(path, tmp_path / "wrong")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA application_id = 1")
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(StorageUnavailable) as refused:
        service.authenticate(new_key)
    assert str(refused.value) == (
        "api_keys.db was replaced by a file that is not one: see the service's log"
    )
    path.unlink()
    _move_away(tmp_path / "wrong" / "api_keys.db", tmp_path)
    assert service.authenticate(new_key) is not None
    service.close()
