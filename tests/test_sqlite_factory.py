"""The ledger's and the views' SQLite connections keep their compiled statements.

The library's pool opens connections with a statement cache of one (see
ledger.sqlite_factory); SQLite's `sqlite_stmt` table lists what a connection holds compiled.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from eventsourcing.sqlite import SQLiteConnectionPool, SQLiteDatastore

from ledger.application import ConsentLedger
from ledger.settings import Settings, SettingsError
from ledger.sql import PAGE_CACHE_KIB, bound_sqlite_memory
from ledger.sqlite_factory import StatementCachingPool
from projections.store import ViewsDatastore

STATEMENTS = ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4"]


def compiled_after_running(datastore: SQLiteDatastore) -> set[str]:
    with datastore.transaction(commit=False) as c:
        for sql in STATEMENTS:
            c.execute(sql)
            c.fetchall()
        c.execute("SELECT sql FROM sqlite_stmt")
        return {row[0] for row in c.fetchall()}


def test_the_ledgers_connections_keep_compiled_statements(tmp_path: Path) -> None:
    ledger = ConsentLedger(Settings(data_dir=tmp_path))
    try:
        datastore = ledger.factory.datastore  # type: ignore[attr-defined]
        assert set(STATEMENTS) <= compiled_after_running(datastore)
    finally:
        ledger.close()


def test_the_views_connections_keep_compiled_statements(tmp_path: Path) -> None:
    datastore = ViewsDatastore(str(tmp_path / "views.db"))
    try:
        assert set(STATEMENTS) <= compiled_after_running(datastore)
    finally:
        datastore.close()


def test_the_library_pool_alone_keeps_one(tmp_path: Path) -> None:
    """What the two tests above guard against. When this fails, the library's pool caches
    statements itself and ledger.sqlite_factory can go."""
    datastore = SQLiteDatastore(str(tmp_path / "plain.db"))
    try:
        assert not set(STATEMENTS) <= compiled_after_running(datastore)
    finally:
        datastore.close()


def test_the_ledgers_pool_keeps_the_librarys_settings(tmp_path: Path) -> None:
    """Only the caches and the checkpoint interval differ from the library's pool (the lock
    timeout is the ledger's SQLITE_LOCK_TIMEOUT, the rest the library's defaults)."""
    ledger = ConsentLedger(Settings(data_dir=tmp_path))
    try:
        pool = ledger.factory.datastore.pool  # type: ignore[attr-defined]
        library = SQLiteConnectionPool(db_name=pool.db_name, lock_timeout=30)
        assert isinstance(pool, StatementCachingPool)
        for setting in ("lock_timeout", "pool_size", "max_overflow", "pool_timeout", "max_age"):
            assert getattr(pool, setting) == getattr(library, setting), setting
        library.close()
    finally:
        ledger.close()


def test_the_ledgers_connections_keep_more_pages(tmp_path: Path) -> None:
    """Read back from SQLite itself, on the log, the views and the key store. The log and
    the key store keep SQLite's checkpoint interval and full durability; only the views,
    which a replay can rebuild, checkpoint less often and sync less."""
    ledger = ConsentLedger(Settings(data_dir=tmp_path))
    views = ViewsDatastore(str(tmp_path / "views.db"))
    log = ledger.factory.datastore  # type: ignore[attr-defined]
    try:
        for datastore, checkpoint, synchronous in ((log, 1000, 2), (views, 16384, 1)):
            with datastore.transaction(commit=False) as c:
                c.execute("PRAGMA cache_size")
                assert c.fetchone()[0] == -PAGE_CACHE_KIB
                c.execute("PRAGMA wal_autocheckpoint")
                assert c.fetchone()[0] == checkpoint
                c.execute("PRAGMA synchronous")
                assert c.fetchone()[0] == synchronous
        keys = ledger.keystore._db
        assert keys.execute("PRAGMA cache_size").fetchone()[0] == -PAGE_CACHE_KIB
        assert keys.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        assert keys.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        views.close()
        ledger.close()


def soft_heap_limit() -> int:
    with contextlib.closing(sqlite3.connect(":memory:")) as c:
        return int(c.execute("PRAGMA soft_heap_limit").fetchone()[0])


def test_a_ledger_bounds_the_sqlite_memory_of_its_process(tmp_path: Path) -> None:
    """`LEDGER_SQLITE_MEMORY_MIB` is SQLite's soft heap limit, the whole process's: set as
    each ledger opens (a `serve`, its writer process, each replay worker), 0 lifting it."""
    assert Settings.from_env({}).sqlite_memory_mib == 0
    with pytest.raises(SettingsError, match="LEDGER_SQLITE_MEMORY_MIB must not be negative"):
        Settings.from_env({"LEDGER_SQLITE_MEMORY_MIB": "-1"})
    bounded = Settings.from_env(
        {"LEDGER_DATA_DIR": str(tmp_path), "LEDGER_SQLITE_MEMORY_MIB": "48"}
    )
    try:
        ConsentLedger(bounded).close()
        assert soft_heap_limit() == 48 * 1024 * 1024
        ConsentLedger(Settings(data_dir=tmp_path)).close()
        assert soft_heap_limit() == 0
    finally:
        bound_sqlite_memory(0)
