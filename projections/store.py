"""The consent views: SQLite tables kept by a tracking recorder, so every change to a view and
the log position it reflects are committed in one transaction (the `eventsourcing` idiom).

Instants are stored as fixed-width UTC ISO strings, so SQLite orders them correctly as text.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

import orjson
from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import (
    SQLiteConnection,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteTrackingRecorder,
)

from ledger.settings import SettingsError, ensure_dir
from ledger.sql import as_tuples, rows_in
from ledger.sqlite_factory import StatementCachingPool
from ledger.store_format import VIEWS, refuse_other_format, stamp_format


@lru_cache(maxsize=1 << 16)
def utc(instant: datetime) -> str:
    """The instant in UTC, always with six fractional digits, so that stored instants compare
    as text.

    Cached: the same instant is written into several rows (entry, intervals, corrections).
    Every fact's recorded_at is new, though, so a miss must be cheap too: orjson writes a UTC
    datetime as isoformat() does but for a zero fraction, which it leaves out (0.46 against
    1.52 us, timeit, 2026-12-01; `utc` was 8% of a replay's py-spy samples).
    tests/test_projections.py holds it to `astimezone(UTC).isoformat(timespec=...)`.
    """
    if instant.tzinfo is not UTC:
        instant = instant.astimezone(UTC)
    text = orjson.dumps(instant)[1:-1].decode()
    return text if instant.microsecond else f"{text[:19]}.000000{text[19:]}"


class _ViewsConnectionPool(StatementCachingPool):
    """Connections that do not fsync on every commit (WAL with `synchronous=NORMAL`).

    The views hold nothing the log does not: a commit that a power cut takes away lost the
    view changes and their log position together (WAL stays consistent), and the projection
    applies those facts again from the log. The log itself keeps SQLite's full durability.

    A page of projection writes touches index pages all over the interval indexes, far more
    than SQLite's default 2 MiB page cache holds, and every commit past 1,000 WAL pages ran a
    checkpoint: the 64 MiB cache every pool of ours has (`StatementCachingPool`) and
    checkpoints every 16,384 pages (64 MiB of WAL) cut both (`python -m bench projections`,
    replay row). The cache is per connection and the pool opens up to 15, so it stays well
    below what replay alone would take (a 256 MiB cache replayed only a little faster).

    No memory-mapped reads (6715a5b had them): a question asked of a store the OS had not
    cached read the whole file through the mapping (830 MiB for the first who-had-consent or
    campaign check in `python -m bench projections --cold`), and on a store it had cached
    plain reads were as fast.
    """

    def __init__(self, *, db_name: str, lock_timeout: int | None, building: bool) -> None:
        super().__init__(db_name=db_name, lock_timeout=lock_timeout)
        self.building = building
        self.write_ahead_log = not building

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        if self.building:
            _unjournaled(connection)
            return connection
        connection.cursor().execute("PRAGMA synchronous=NORMAL")  # autocommit: outside any BEGIN
        connection.cursor().execute("PRAGMA wal_autocheckpoint=16384")
        connection.cursor().execute("PRAGMA mmap_size=0")  # whatever the build's default
        return connection


def _unjournaled(connection: SQLiteConnection) -> None:
    """A connection to a store being built (`ConsentViews.open(..., building=True)`).

    Nobody reads such a store until it is complete, a build that fails is deleted, and a
    complete one is flushed to the disk by the build (`projections.rebuild`) before it takes
    its name. So it needs neither a write-ahead log nor a journal on the disk: with one,
    every page was written twice (to the log, then into the file when the log was moved
    in), and replay's closing of the store moved the log in, page by page, after the last
    index was made. The rollback journal is kept in memory, so a statement or a
    transaction that fails still rolls back. The processes of a replay take their turns
    by SQLite's file locks, as they did with the write-ahead log. The store takes the
    write-ahead log again when it is first opened in its place.

    Making the secondary indexes, the one step no worker shares, sorts each whole table;
    SQLite's sorter may use a helper thread per core for that (`PRAGMA threads`).

    At 991,152 entries on 2 processes (2026-12-04, throwaway timings): replay 21.7-23.1 s
    against 23.8-24.4 s with the write-ahead log; making the indexes and laying out the
    subjects 3.8 s against 6.0 s.
    """
    cursor = connection.cursor()
    # Autocommit: outside any BEGIN. The file is new, so never in WAL mode, which SQLite
    # would keep (it leaves WAL mode only when the connection is the file's only one).
    cursor.execute("PRAGMA journal_mode=MEMORY")
    (mode,) = cursor.fetchone()
    if mode.lower() != "memory":
        raise RuntimeError(f"a store being built is in journal mode {mode}")
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.execute(f"PRAGMA threads={min(os.cpu_count() or 1, 8)}")


class ViewsDatastore(SQLiteDatastore):
    def __init__(
        self, db_name: str, *, lock_timeout: int | None = None, building: bool = False
    ) -> None:
        super().__init__(db_name, lock_timeout=lock_timeout)
        self.pool = _ViewsConnectionPool(
            db_name=db_name, lock_timeout=lock_timeout, building=building
        )


def parse_utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class ViewMovedOn(Exception):
    """Another process committed this view past the position a batch was read from."""


class ViewsAheadOfLog(SettingsError):
    """The views stand past the end of the log: they were built from a longer log.

    A log restored from an older backup next to the views of the newer one (the backup
    copies them together; a hand restore may not): the views would answer who had consent
    with facts the log does not hold, while the trail said the subject did not exist.
    """

    def __init__(self, path: str = "", position: int = 0, end: int = 0) -> None:
        self.path, self.position, self.end = path, position, end
        super().__init__(
            f"the views {path} stand at log position {position}, but the log ends at {end}: "
            "they were built from a longer log than this one (a ledger.db restored without "
            "its views?); move them away and run `consent-ledger project` to build this "
            "log's"
        )

    def __reduce__(self) -> tuple[type[ViewsAheadOfLog], tuple[str, int, int]]:
        # Made again whole where it is unpickled (a process's errors cross a pipe so): by
        # its message alone it would take the message for its path and lose its place.
        return type(self), (self.path, self.position, self.end)


_SUBJECTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {name} (sid TEXT PRIMARY KEY, tenant TEXT NOT NULL,"
    " registered_at TEXT NOT NULL, erased_at TEXT, erasure_recorded_at TEXT) WITHOUT ROWID"
)


class ViewsOfAnotherLog(SettingsError):
    """The views were not built from this log, though they do not stand past its end.

    A ledger.db restored from an older backup and written to since, next to the views of
    the newer log; views of another ledger topic; views kept across a change of backend or
    topic prefix. They would count people the log does not hold, and never show facts the
    log holds at positions they have passed.
    """

    def __init__(self, path: str, why: str, guess: str = "") -> None:
        self.path, self.guess = path, guess
        self.why = why  # what was found, without the guess at how it came about
        said = f"{why} ({guess})" if guess else why
        super().__init__(
            f"the views {path} were built from another log: {said}; move them away and run "
            "`consent-ledger project` to build this log's"
        )

    def __reduce__(self) -> tuple[type[ViewsOfAnotherLog], tuple[str, str, str]]:
        # As ViewsAheadOfLog's: by its message alone it would not unpickle at all.
        return type(self), (self.path, self.why, self.guess)


class ConsentViews(SQLiteTrackingRecorder):
    """Subjects, their consent entries and corrections, and bitemporal granted intervals."""

    # Secondary indexes. A fresh store that `projections.rebuild` fills subject by subject
    # creates them only once its rows are in (`open(..., indexes=False)`, then `lay_out`).
    INDEXES = (
        "CREATE INDEX IF NOT EXISTS view_erasures_by_sid ON view_erasures (sid)",
        "CREATE INDEX IF NOT EXISTS view_requests_open ON view_requests (tenant, closed_at)",
        # The requests not closed yet, in the register's order: the due list's pages read
        # on from their cursor, and /metrics counts those overdue by ranges of receipt
        # (`open_request_counts`), from the index alone. `closed_at` (always NULL here)
        # makes it cover them: without it SQLite read each request's row from the table.
        "CREATE INDEX IF NOT EXISTS view_requests_open_in_order ON view_requests"
        " (tenant, received_at, sid, request_id, kind, due_at, closed_at)"
        " WHERE closed_at IS NULL",
        # Its predecessor of 3c5890e, by deadline first, which served /metrics alone.
        "DROP INDEX IF EXISTS view_requests_open_by_due",
        # The register's order: each page after the first reads on from where the page
        # before ended, rather than sorting the tenant's every request again.
        "CREATE INDEX IF NOT EXISTS view_requests_received ON view_requests"
        " (tenant, received_at, sid, request_id)",
        # Covering indexes: who-had-consent as known at a past instant scans one purpose
        # in sid order (so pages need no sort), and per-subject questions read one
        # subject's intervals by purpose.
        "CREATE INDEX IF NOT EXISTS view_intervals_by_purpose ON view_intervals"
        " (tenant, purpose, sid, valid_from, valid_to, known_from, known_to)",
        "CREATE INDEX IF NOT EXISTS view_intervals_by_subject ON view_intervals"
        " (sid, purpose, valid_from, valid_to, known_from, known_to, event_id, ends_by)",
        # Questions as known now (who had consent, the campaign check) read only intervals
        # never closed: a partial index of those (known_to is always NULL in it, but
        # listing it, and ends_by and event_id, lets SQLite answer from the index alone).
        # Well under half the size of the by-subject index, which also holds every
        # superseded interval, so a campaign check reads far fewer pages.
        "CREATE INDEX IF NOT EXISTS view_intervals_now ON view_intervals"
        " (tenant, purpose, sid, valid_from, valid_to, known_to, ends_by, event_id)"
        " WHERE known_to IS NULL",
        # Its narrower predecessor, in stores made before it.
        "DROP INDEX IF EXISTS view_intervals_in_force",
    )

    def __init__(self, datastore: SQLiteDatastore, *, indexes: bool = True) -> None:
        self.with_indexes = indexes
        self.path: Path | None = None  # the file, when opened by `open` (for messages)
        super().__init__(datastore)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            _SUBJECTS_TABLE.format(name="view_subjects"),
            "CREATE TABLE IF NOT EXISTS view_erasures (sid TEXT, erased_at TEXT, recorded_at TEXT)",
            "CREATE TABLE IF NOT EXISTS view_entries (sid TEXT, event_id TEXT, kind TEXT, seq INT,"
            " recorded_at TEXT, occurred_at TEXT, purposes TEXT, categories TEXT,"
            " expires_at TEXT, policy_version TEXT, third_party INT, cross_border INT,"
            " publication INT, PRIMARY KEY (sid, event_id)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS view_corrections (sid TEXT, event_id TEXT, seq INT,"
            " recorded_at TEXT, corrects TEXT, void INT, changes TEXT,"
            " PRIMARY KEY (sid, event_id)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS view_intervals (tenant TEXT, purpose TEXT, sid TEXT,"
            " valid_from TEXT, valid_to TEXT, known_from TEXT, known_to TEXT, event_id TEXT,"
            " policy_version TEXT, ends_by TEXT)",
            "CREATE TABLE IF NOT EXISTS view_requests (sid TEXT, request_id TEXT, tenant TEXT,"
            " kind TEXT, received_at TEXT, due_at TEXT, closed_at TEXT, outcome TEXT,"
            " PRIMARY KEY (sid, request_id)) WITHOUT ROWID",
            # Per tracking name, the position and hash of the last fact applied: what tells
            # this log from another of the same length or longer (`log_mark`).
            "CREATE TABLE IF NOT EXISTS view_log_marks (application_name TEXT PRIMARY KEY,"
            " notification_id INTEGER NOT NULL, fact_hash TEXT NOT NULL) WITHOUT ROWID",
            *(self.INDEXES if self.with_indexes else ()),
        ]

    def create_table(self) -> None:
        path = str(self.path or cast(Any, self.datastore).pool.db_name)
        with self.datastore.transaction(commit=False) as c:
            stamped = refuse_other_format(c, path, VIEWS)
        super().create_table()
        if not stamped:
            with self.datastore.transaction(commit=True) as c:
                stamp_format(c, path, VIEWS, self.create_table_statements)

    def lay_out(self) -> None:
        """Give each index and the subjects table a run of pages of their own, in a store
        nobody reads yet (see projections.rebuild).

        Indexes not made yet are made now, by sorting the finished tables; then the subjects
        table is copied in key order. In that order: SQLite reuses freed pages before it
        grows the file, so the pages of the table the copy replaces, freed last, are left
        unused instead of scattered through the first index made after them.
        """
        with self.datastore.transaction(commit=True) as c:
            for statement in self.INDEXES:
                c.execute(statement)
            c.execute(_SUBJECTS_TABLE.format(name="view_subjects_laid_out"))
            c.execute("INSERT INTO view_subjects_laid_out SELECT * FROM view_subjects ORDER BY sid")
            c.execute("DROP TABLE view_subjects")
            c.execute("ALTER TABLE view_subjects_laid_out RENAME TO view_subjects")

    @classmethod
    def open(cls, path: Path, *, indexes: bool = True, building: bool = False) -> ConsentViews:
        """`building`: a new store that nobody reads until it is complete, flushed to the
        disk and renamed into place, and that is deleted if not completed
        (`projections.rebuild`); written without a write-ahead log (see `_unjournaled`)."""
        ensure_dir(path.parent)
        views = cls(ViewsDatastore(str(path), lock_timeout=30, building=building), indexes=indexes)
        views.path = path
        views.create_table()
        return views

    def close(self) -> None:
        self.datastore.close()

    def apply_read(
        self,
        changes: ViewChanges,
        positions: Sequence[tuple[Tracking, int | None, tuple[int, str] | None]],
    ) -> None:
        """Write a read's changes and the log positions it read to, atomically: one
        (tracking, after, mark) per log read, several for the ledger topic's partitions, so
        that another process never finds one partition's part of a read applied and not
        another's.

        `after` is the position the read began at. Another process catching up the same
        store (the server and a CLI read on one data directory) may have committed since:
        then the read is stale, and is refused rather than applied a second time. The
        library's own check (a position only moves forward) would let a longer stale read
        through. `mark` is the position and hash of the last fact read (`log_mark`).
        """
        with self.datastore.transaction(commit=True) as c:
            # Take the write lock before reading, so the check and the write are one step.
            c.execute("UPDATE tracking SET notification_id = notification_id WHERE 0")
            for tracking, after, _ in positions:
                c.execute(
                    "SELECT notification_id FROM tracking WHERE application_name = ?",
                    (tracking.application_name,),
                )
                row = c.fetchone()
                if (row[0] if row else 0) != (after or 0):
                    raise ViewMovedOn(tracking.application_name)
            changes.write(c)
            for tracking, _, mark in positions:
                self._insert_tracking(c, tracking)
                if mark is not None:
                    self._mark(c, tracking, mark)

    def position_at(self, tracking: Tracking, mark: tuple[int, str] | None) -> None:
        """Give a store built without a position (`projections.rebuild`) its position (and
        the mark of the last fact before it, unless no fact is: a ledger partition that
        holds none of the ledger's records)."""
        with self.datastore.transaction(commit=True) as c:
            self._insert_tracking(c, tracking)
            if mark is not None:
                self._mark(c, tracking, mark)

    def log_mark(self, application_name: str) -> tuple[int, str] | None:
        """The position and hash of the last fact the views applied under this tracking name.

        A position alone does not say which log the views were built from: a ledger.db
        restored from an older backup and written to since has a fact at that position too,
        another one. In Kafka mode the position is the offset of the record in its
        partition. Stores written before marks were kept have none until their next page.
        """
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT notification_id, fact_hash FROM view_log_marks WHERE application_name = ?",
                (application_name,),
            )
            row = c.fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def tracking_names(self) -> set[str]:
        """The logs (or ledger partitions) the views have read from."""
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT application_name FROM tracking")
            names = {str(row[0]) for row in c.fetchall()}
        return names - {self.table_migration_identifier}

    @staticmethod
    def _mark(c: SQLiteCursor, tracking: Tracking, mark: tuple[int, str]) -> None:
        c.execute(
            "INSERT OR REPLACE INTO view_log_marks VALUES (?, ?, ?)",
            (tracking.application_name, *mark),
        )

    def write(self, changes: ViewChanges) -> None:
        """Rows without a log position: only for a store nobody reads until it is complete
        and positioned (`projections.rebuild`)."""
        with self.datastore.transaction(commit=True) as c:
            changes.write(c)

    # `tuples`: rows as plain tuples, read by position (`ledger.sql.as_tuples`).
    def rows(self, sql: str, params: Sequence[Any] = (), *, tuples: bool = False) -> list[Any]:
        with self.snapshot() as then:
            return then.rows(sql, params, tuples=tuples)

    def position(self, application_name: str) -> int:
        """As `ViewsSnapshot.position`."""
        with self.snapshot() as then:
            return then.position(application_name)

    @contextmanager
    def snapshot(self) -> Iterator[ViewsSnapshot]:
        """Reads that see one state of the views (`ViewsSnapshot`)."""
        with self.datastore.transaction(commit=False) as c:
            yield ViewsSnapshot(c)

    def rows_in(
        self,
        sql: str,
        keys: Sequence[str],
        params: Sequence[Any] = (),
        *,
        tuples: bool = False,
        placeholder: str = "?",
        before: Sequence[Any] = (),
    ) -> list[Any]:
        """`sql` has `before`'s parameters, one `IN ({})` placeholder, then `params`; run it
        over `keys` in chunks (`ledger.sql.rows_in`)."""
        with self.snapshot() as then:
            return then.rows_in(
                sql, keys, params, tuples=tuples, placeholder=placeholder, before=before
            )


class ViewsSnapshot:
    """Reads of the views in one read transaction, so all of them see one state.

    A question answered in several reads (the campaign check, one subject's consent, a
    page of who had consent and the position it stands at) is asked while other readers
    catch the views up: the server's requests each bring them up to date first. Each read
    in a transaction of its own could read some rows before a page of facts was applied
    and the rest after, an answer of no state the views were ever in.
    """

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def _as(self, tuples: bool) -> Any:
        if tuples:
            return as_tuples(self._cursor)
        self._cursor.sqlite_cursor.row_factory = sqlite3.Row  # the connection's, as given
        return self._cursor

    def rows(self, sql: str, params: Sequence[Any] = (), *, tuples: bool = False) -> list[Any]:
        c = self._as(tuples)
        c.execute(sql, params)
        return list(c.fetchall())

    def rows_in(
        self,
        sql: str,
        keys: Sequence[str],
        params: Sequence[Any] = (),
        *,
        tuples: bool = False,
        placeholder: str = "?",
        before: Sequence[Any] = (),
    ) -> list[Any]:
        """As `ConsentViews.rows_in`."""
        return list(
            rows_in(
                self._as(tuples), sql, keys, before=before, after=params, placeholder=placeholder
            )
        )

    @contextmanager
    def snapshot(self) -> Iterator[ViewsSnapshot]:
        """This one: a question asked within another's snapshot reads in it too."""
        yield self

    def position(self, application_name: str) -> int:
        """The log position the views stand at in this state; 0 before their first page."""
        rows = self.rows(
            "SELECT notification_id FROM tracking WHERE application_name = ?",
            (application_name,),
            tuples=True,
        )
        return int(rows[0][0]) if rows else 0


class ViewChanges:
    """Rows to write for one batch, collected in memory and written with executemany."""

    def __init__(self) -> None:
        self.subjects: list[tuple[Any, ...]] = []
        self.erasures: list[tuple[Any, ...]] = []
        self.entries: list[tuple[Any, ...]] = []
        self.corrections: list[tuple[Any, ...]] = []
        self.closed: list[tuple[Any, ...]] = []
        self.requests: list[tuple[Any, ...]] = []
        self.closed_requests: list[tuple[Any, ...]] = []
        # Intervals opened in this batch, by (sid, purpose, valid_from, valid_to, event_id): one
        # closed later in the same batch is written closed, since its row does not exist yet.
        # The same interval can open, close and open again within one batch: keep every row.
        self.opened: dict[tuple[str, str, str, str | None, str], list[list[Any]]] = {}

    def open_interval(self, row: list[Any]) -> None:
        """row: tenant, purpose, sid, valid_from, valid_to, known_from, known_to, event_id,
        policy_version, ends_by (`expiry`, `fact` or None while open-ended)"""
        self.opened.setdefault((row[2], row[1], row[3], row[4], row[7]), []).append(row)

    def close_interval(
        self,
        known_to: str,
        sid: str,
        purpose: str,
        valid_from: str,
        valid_to: str | None,
        event_id: str,
    ) -> None:
        rows = self.opened.get((sid, purpose, valid_from, valid_to, event_id), [])
        if rows and rows[-1][6] is None:
            rows[-1][6] = known_to
        else:
            self.closed.append((known_to, sid, purpose, valid_from, valid_to, event_id))

    def write(self, c: SQLiteCursor) -> None:
        c.executemany("INSERT INTO view_subjects VALUES (?,?,?,NULL,NULL)", self.subjects)
        c.executemany(
            "UPDATE view_subjects SET erased_at=?, erasure_recorded_at=? "
            "WHERE sid=? AND erasure_recorded_at IS NULL",
            self.erasures,
        )
        c.executemany(
            "INSERT INTO view_erasures VALUES (?,?,?)", [(e[2], e[0], e[1]) for e in self.erasures]
        )
        c.executemany("INSERT INTO view_entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", self.entries)
        c.executemany("INSERT INTO view_corrections VALUES (?,?,?,?,?,?,?)", self.corrections)
        c.executemany("INSERT INTO view_requests VALUES (?,?,?,?,?,?,NULL,NULL)", self.requests)
        c.executemany(
            "UPDATE view_requests SET closed_at=?, outcome=? WHERE sid=? AND request_id=?",
            self.closed_requests,
        )
        c.executemany(
            "UPDATE view_intervals SET known_to=? WHERE sid=? AND purpose=? AND valid_from=? "
            "AND valid_to IS ? AND event_id=? AND known_to IS NULL",
            self.closed,
        )
        c.executemany(
            "INSERT INTO view_intervals VALUES (?,?,?,?,?,?,?,?,?,?)",
            [row for rows in self.opened.values() for row in rows],
        )


class ViewReads(Protocol):
    """What the questions read the views through: the store, or one snapshot of it."""

    def rows(self, sql: str, params: Sequence[Any] = (), *, tuples: bool = False) -> list[Any]: ...

    def rows_in(
        self,
        sql: str,
        keys: Sequence[str],
        params: Sequence[Any] = (),
        *,
        tuples: bool = False,
        placeholder: str = "?",
        before: Sequence[Any] = (),
    ) -> list[Any]: ...

    def position(self, application_name: str) -> int: ...

    def snapshot(self) -> AbstractContextManager[ViewsSnapshot]: ...


_Asked = ParamSpec("_Asked")
_Answer = TypeVar("_Answer")


def in_one_state(
    question: Callable[Concatenate[ViewReads, _Asked], _Answer],
) -> Callable[Concatenate[ViewReads, _Asked], _Answer]:
    """A question whose reads all see one state of the views (`ViewsSnapshot`), however
    many it makes; asked within another such question, it reads in that one's state."""

    @functools.wraps(question)
    def asked(views: ViewReads, /, *args: _Asked.args, **kwargs: _Asked.kwargs) -> _Answer:
        with views.snapshot() as then:
            return question(then, *args, **kwargs)

    return asked
