"""The library's SQLite persistence module, with SQLite's statement cache switched on.

eventsourcing 9.5's connection pool opens every connection with `cached_statements=True`,
which Python's sqlite3 takes as a cache of one statement: each statement that follows a
different one is compiled again. A batch runs about ten (BEGIN, the event-id and version
reads, the event, index and Merkle-head writes), so every one of them was compiled on every
batch, and every question the views answer too. tests/test_sqlite_factory.py reads SQLite's
`sqlite_stmt` table to show which statements a connection keeps compiled; the gain shows in
`python -m bench ingest` (one fact per commit) and `python -m bench projections` (catch-up).

`LedgerSQLiteFactory` is the library's `SQLiteFactory` (selected, like it, with
`PERSISTENCE_MODULE`) whose datastore uses `StatementCachingPool`; the views' store uses the
same pool. Its connections also get a larger page cache (see `StatementCachingPool`).
Everything else about the connections is the library's, durability included.
"""

from __future__ import annotations

import sqlite3

from eventsourcing.persistence import InterfaceError
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteFactory,
)
from eventsourcing.utils import Environment, EnvType

from ledger.sql import PAGE_CACHE_KIB

# Python's own default; comfortably more than the distinct statements one process runs.
STATEMENT_CACHE = 128


class StatementCachingPool(SQLiteConnectionPool):
    """The library's pool, with SQLite's statement cache and a 64 MiB page cache.

    Stored events are indexed by aggregate id, and a subject's id is a keyed hash: a batch's
    appends land on index pages all over the file, which SQLite's default 2 MiB cache
    mostly did not hold, so each batch read them from the file again. The cache is per
    connection and filled only as pages are read. The WAL checkpoint interval stays SQLite's
    (1,000 pages): a longer one (16,384) made batches of 1,000 facts 4% faster but single
    facts 15% slower and groups of 4 (what HTTP publishing commits) 6% slower, in same-process
    A/B runs of 2026-12-01, so the views' pool alone checkpoints less often.
    """

    # Whether the file is put in WAL mode, as the library does. Only a store being built,
    # which nobody reads and which is deleted if the build fails, goes without
    # (projections.store.ViewsDatastore).
    write_ahead_log = True

    def _create_connection(self) -> SQLiteConnection:
        # The library's connection (eventsourcing.sqlite.SQLiteConnectionPool), but for the
        # size of the statement cache.
        try:
            c = sqlite3.connect(
                database=self.db_name,
                uri=True,
                check_same_thread=False,
                isolation_level=None,  # autocommit: the library issues BEGIN itself
                cached_statements=STATEMENT_CACHE,
                timeout=self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT,
            )
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e
        if self.write_ahead_log and not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            mode = c.execute("PRAGMA journal_mode;").fetchone()[0]
            if mode.lower() != "wal":
                c.execute("PRAGMA journal_mode=WAL;")
                self.journal_mode_was_changed_to_wal = True
            self.is_journal_mode_wal = True
        c.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")  # autocommit: outside any BEGIN
        c.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn=c, max_age=self.max_age)


class LedgerSQLiteFactory(SQLiteFactory):
    pool_class: type[StatementCachingPool] = StatementCachingPool

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        library_pool = self.datastore.pool
        self.datastore.pool = self.pool_class(
            db_name=library_pool.db_name,
            lock_timeout=library_pool.lock_timeout,
            pool_size=library_pool.pool_size,
            max_overflow=library_pool.max_overflow,
            pool_timeout=library_pool.pool_timeout,
            max_age=library_pool.max_age,
            pre_ping=library_pool.pre_ping,
        )
        library_pool.close()  # a pool opens connections when asked, so it holds none yet
