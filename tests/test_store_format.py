"""Each SQLite file of the ledger says which store it is and in which format
(`ledger.store_format`): a file of another store, or of a format this release does not read,
is refused with what to do, before anything is written in it."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest

from api.access_log import AccessLog
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.backup import back_up
from ledger.keystore import KeyStore, load_master_key
from ledger.settings import Settings
from ledger.store_format import (
    ACCESS_LOG,
    API_KEYS,
    FORMATS,
    KEYS,
    LOG,
    REPLICA,
    VIEWS,
    StoreFormat,
    StoreOfAnotherFormat,
    expected_columns,
)
from projections.store import ConsentViews
from tests.cli_support import run

# The embedded data directory's stores, by file.
EMBEDDED = {
    "ledger.db": LOG,
    "keys.db": KEYS,
    "views.db": VIEWS,
    "access.db": ACCESS_LOG,
    "api_keys.db": API_KEYS,
}


def open_store(settings: Settings, name: str) -> None:
    """Open (and close) one store of the data directory as the ledger's code opens it."""
    path = settings.data_dir / name
    if name in ("ledger.db", "ledger-replica.db"):
        ConsentLedger(settings).close()
    elif name == "keys.db":
        KeyStore(path, load_master_key(settings)).close()
    elif name == "views.db":
        ConsentViews.open(path).close()
    elif name == "access.db":
        AccessLog(path).close()
    else:
        ApiKeys(path).close()


def every_store(settings: Settings) -> None:
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    for name in EMBEDDED:
        open_store(settings, name)


def stamp_of(path: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return (
            db.execute("PRAGMA application_id").fetchone()[0],
            db.execute("PRAGMA user_version").fetchone()[0],
        )


def set_stamp(path: Path, application_id: int, version: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA application_id = {application_id}")
        db.execute(f"PRAGMA user_version = {version}")


def restamped(settings: Settings, name: str, application_id: int, version: int) -> Path:
    """A data directory with every store, one of them (`name`) given another stamp."""
    every_store(settings)
    path = settings.data_dir / name
    set_stamp(path, application_id, version)
    return path


def file_bytes(path: Path) -> str:
    """The file and its write-ahead log as they stand: what 'nothing written' compares."""
    wal = Path(f"{path}-wal")
    content = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    return hashlib.sha256(content).hexdigest()


def test_every_store_kind_has_its_own_number() -> None:
    assert len({f.application_id for f in FORMATS}) == len(FORMATS)
    assert len({f.name for f in FORMATS}) == len(FORMATS)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_a_new_store_is_stamped_with_its_kind_and_format(settings: Settings, name: str) -> None:
    every_store(settings)
    expected = EMBEDDED[name]
    assert stamp_of(settings.data_dir / name) == (expected.application_id, expected.version)


def test_the_kafka_replica_is_stamped_as_a_replica(kafka_bootstrap: str, tmp_path: Path) -> None:
    from tests.kafka_support import kafka_settings

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    assert settings.log_path.name == "ledger-replica.db"
    assert stamp_of(settings.log_path) == (REPLICA.application_id, REPLICA.version)
    # The same tables as a log, plus the replica's own: a log's stamp is what tells them
    # apart, and a replica is not taken for a log (or the reverse).
    set_stamp(settings.log_path, LOG.application_id, LOG.version)
    with pytest.raises(StoreOfAnotherFormat, match="this file is the ledger's log, not the rep"):
        ConsentLedger(settings)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_a_store_of_a_later_format_is_refused_and_left_as_it_was(
    settings: Settings, name: str
) -> None:
    expected = EMBEDDED[name]
    path = restamped(settings, name, expected.application_id, expected.version + 1)
    before = file_bytes(path)
    with pytest.raises(StoreOfAnotherFormat) as refused:
        open_store(settings, name)
    said = str(refused.value)
    assert said.startswith(f"{path}: {expected.name} in format {expected.version + 1}, made by")
    assert "a later release" in said
    assert expected.remedy in said
    assert file_bytes(path) == before
    assert stamp_of(path) == (expected.application_id, expected.version + 1)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_a_file_of_another_store_is_refused(settings: Settings, name: str) -> None:
    expected = EMBEDDED[name]
    other: StoreFormat = next(f for f in FORMATS if f != expected)
    path = restamped(settings, name, other.application_id, other.version)
    before = file_bytes(path)
    with pytest.raises(StoreOfAnotherFormat, match=f"this file is {other.name}, not"):
        open_store(settings, name)
    assert file_bytes(path) == before


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_an_unstamped_store_with_this_releases_tables_is_taken_and_stamped(
    settings: Settings, name: str
) -> None:
    """What a data directory made before stamps existed holds."""
    expected = EMBEDDED[name]
    path = restamped(settings, name, 0, 0)
    open_store(settings, name)
    assert stamp_of(path) == (expected.application_id, expected.version)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_an_unstamped_store_with_other_columns_is_refused(settings: Settings, name: str) -> None:
    expected = EMBEDDED[name]
    path = restamped(settings, name, 0, 0)
    with contextlib.closing(sqlite3.connect(path)) as db:
        table = next(
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        )
        db.execute(f"ALTER TABLE {table} ADD COLUMN meaning_changed TEXT")
    with pytest.raises(StoreOfAnotherFormat) as refused:
        open_store(settings, name)
    said = str(refused.value)
    assert f"{expected.name} without a format stamp, whose table {table} has" in said
    assert "meaning_changed TEXT) where this release makes" in said
    assert stamp_of(path) == (0, 0)


def test_api_keys_made_before_keys_could_expire_are_still_taken(settings: Settings) -> None:
    """An unstamped file is compared once its known migrations are done: the expiry column
    an older table lacked is added, then the file is stamped."""
    path = settings.api_keys_path
    settings.data_dir.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, "
            "tenant TEXT NOT NULL, roles TEXT NOT NULL, created_at TEXT NOT NULL, "
            "revoked_at TEXT)"
        )
    ApiKeys(path).close()
    assert stamp_of(path) == (API_KEYS.application_id, API_KEYS.version)


def test_a_backup_carries_every_stamp(settings: Settings, tmp_path: Path) -> None:
    every_store(settings)
    copied = back_up(settings, tmp_path / "backup")
    assert sorted(c.name for c in copied) == sorted([*EMBEDDED, "manifest.json"])
    for name, expected in EMBEDDED.items():
        copy = tmp_path / "backup" / name
        assert stamp_of(copy) == (expected.application_id, expected.version), name


def test_the_columns_compared_are_those_a_fresh_store_has(settings: Settings) -> None:
    """`expected_columns` (an in-memory store made by the statements) against the files
    themselves: if they parted, every unstamped store would be refused or none would."""
    every_store(settings)
    views = ConsentViews.open(settings.views_path)
    statements = tuple(views.create_table_statements)
    views.close()
    with contextlib.closing(sqlite3.connect(settings.views_path)) as db:
        for table, columns in expected_columns(statements).items():
            found = tuple(
                f"{row[1]} {row[2]}".strip() for row in db.execute(f"PRAGMA table_info({table})")
            )
            assert found == columns, table


def test_the_cli_and_the_service_refuse_views_of_a_later_format(settings: Settings) -> None:
    data = settings.data_dir
    assert run(data, "init").returncode == 0
    assert run(data, "due", "--tenant", "demo").returncode == 0
    set_stamp(settings.views_path, VIEWS.application_id, VIEWS.version + 1)
    for args in (("due", "--tenant", "demo"), ("serve", "--port", "0")):
        out = run(data, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith(f"consent-ledger: configuration: {settings.views_path}: ")
        assert "replay --into" in out.stderr
    # Moved away, as the message says, the views are built again.
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.views_path}{suffix}").unlink(missing_ok=True)
    assert run(data, "due", "--tenant", "demo").returncode == 0
    assert stamp_of(settings.views_path) == (VIEWS.application_id, VIEWS.version)
