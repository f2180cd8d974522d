"""The ledger's application recorder for the SQLite log (embedded mode).

It is the library's SQLite application recorder plus, in the same transaction as the events:
a fact index (position, hash, and for facts the tenant's `event_id` and content digest, which
makes idempotency a unique constraint instead of a read-then-write race) and the Merkle
frontier of the log. Selected through the library's `APPLICATION_RECORDER_TOPIC`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, cast
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteApplicationRecorder,
    SQLiteCursor,
    SQLiteDatastore,
)

from ledger.chain import (
    MAPPER,
    frontier_append,
    frontier_root,
    leaf_hash,
    pack_frontier,
    stored_event,
    unpack_frontier,
)
from ledger.sql import as_tuples, rows_in
from ledger.store_format import LOG, StoreFormat, refuse_other_format, stamp_format

# How much of the log `by_aggregate` maps into memory: all of it, up to SQLite's own cap
# (SQLITE_MAX_MMAP_SIZE, 2 GiB in common builds); past that, pages are read as usual.
SCAN_MMAP_BYTES = 1 << 40


# How many facts back `recorded_at_through` looks for the latest stamp.
_BATCH_WINDOW = 1000


class FactKey(NamedTuple):
    """What the recorder indexes for one fact: who published it under which id, and its digest.

    NamedTuples here, made per fact written or read (see ledger.envelope.Fact).
    """

    tenant: str
    event_id: str
    digest: str
    recorded_at: str


class IndexedFact(NamedTuple):
    position: int
    originator_id: UUID
    originator_version: int
    hash: str
    tenant: str | None
    event_id: str | None
    digest: str | None
    recorded_at: str | None


class LogEvidence(NamedTuple):
    """One moment of the log, as `LedgerSQLiteRecorder.evidence_of` reads it."""

    log_leaves: bytes  # every fact's Merkle leaf hash in log order: what the head covers
    head: tuple[int, str]  # the recorded (size, root hex)
    # The Merkle trees that proofs are given in, by partition, as leaf hashes in the
    # partition's own order. Embedded: one tree, the log. Kafka: one per ledger partition,
    # in offset order, the same for every replica (their log orders interleave partitions
    # as their reads happened to).
    trees: dict[int, bytes]
    events: dict[UUID, list[StoredEvent]]  # the named aggregates' events, by version
    # (aggregate, version) -> (partition, leaf index in its tree, position, recorded hash)
    leaves: dict[tuple[UUID, int], tuple[int, int, int, str]]


# The index table's columns in their stored order, read by position (see `as_tuples`).
_INDEX_COLUMNS = (
    "position, originator_id, originator_version, hash, tenant, event_id, digest, recorded_at"
)


# The topics of the two erasure events (`Subject.SubjectErased`, and `FirstSubjectErased` for
# a subject the ledger had not seen); tests/test_erasure.py holds these to the classes.
ERASURE_TOPICS = (
    "ledger.subject:Subject.SubjectErased",
    "ledger.subject:Subject.FirstSubjectErased",
)


# Every event of a subject aggregate (`ledger.subject.Subject`) has a topic of this form.
SUBJECT_TOPICS = "ledger.subject:Subject.%"


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    # Which store its file is, in which format (`ledger.store_format`).
    store_format: StoreFormat = LOG

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        self.index_table = f"{events_table_name}_index"
        self.head_table = f"{events_table_name}_head"
        self.erasures_table = f"{events_table_name}_erasures"
        super().__init__(datastore, events_table_name)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {self.index_table} ("
            "position INTEGER PRIMARY KEY, originator_id TEXT NOT NULL, "
            "originator_version INTEGER NOT NULL, hash TEXT NOT NULL, "
            "tenant TEXT, event_id TEXT, digest TEXT, recorded_at TEXT, UNIQUE (tenant, event_id))",
            f"CREATE TABLE IF NOT EXISTS {self.head_table} ("
            "id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, "
            "frontier BLOB NOT NULL, root TEXT NOT NULL)",
            # The subjects the log says were erased, so that keys a key store still holds
            # for them (restored from a backup, or a crash between the erasure's commit and
            # the key's deletion) are found without reading the log (`erased_subjects`).
            f"CREATE TABLE IF NOT EXISTS {self.erasures_table} "
            "(sid TEXT PRIMARY KEY) WITHOUT ROWID",
        ]

    def create_table(self) -> None:
        """A log written before the erasures table existed gets it filled from its events,
        once. The check reads in a transaction of its own and the fill begins with its write:
        a transaction that read first could not take the write lock if another process
        (a server and its writer process, starting together) wrote in between. Two processes
        that both fill it insert the same rows."""
        path = str(cast(Any, self.datastore).pool.db_name)
        with self.datastore.transaction(commit=False) as c:
            stamped = refuse_other_format(c, path, self.store_format)
            c.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                (self.erasures_table,),
            )
            had_erasures = c.fetchone() is not None
        super().create_table()
        if not had_erasures:
            with self.datastore.transaction(commit=True) as c:
                c.execute(
                    f"INSERT OR IGNORE INTO {self.erasures_table} SELECT DISTINCT originator_id "
                    f"FROM {self.events_table_name} WHERE topic IN (?, ?)",
                    ERASURE_TOPICS,
                )
        if not stamped:
            with self.datastore.transaction(commit=True) as c:
                stamp_format(c, path, self.store_format, self.create_table_statements)

    def subjects(self, tenant: str | None = None) -> set[str]:
        """Every subject's sid (hex) in the log; with `tenant`, that tenant's only.

        The index names each fact's tenant (from the `FactKey` every subject fact is
        recorded with, in both backends); the tenants' and policies' events are not
        subjects, which the join to their topics leaves out.
        """
        with self.datastore.transaction(commit=False) as c:
            if tenant is None:
                c.execute(
                    f"SELECT DISTINCT originator_id FROM {self.events_table_name} "
                    "WHERE topic LIKE ?",
                    (SUBJECT_TOPICS,),
                )
            else:
                c.execute(
                    f"SELECT DISTINCT i.originator_id FROM {self.index_table} i "
                    f"JOIN {self.events_table_name} e ON e.rowid = i.position "
                    "WHERE i.tenant = ? AND e.topic LIKE ?",
                    (tenant, SUBJECT_TOPICS),
                )
            return {UUID(str(row[0])).hex for row in c.fetchall()}

    def first_subjects(self) -> list[UUID]:
        """The subject of the log's first subject fact, if any (stops at the first it finds:
        the tenants' and policies' facts come before it). Every key store of this log holds
        it: its key was stored before anything else of any subject was recorded."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT originator_id FROM {self.events_table_name} WHERE topic LIKE ? "
                "ORDER BY rowid LIMIT 1",
                (SUBJECT_TOPICS,),
            )
            row = c.fetchone()
            return [] if row is None else [UUID(str(row[0]))]

    def erased_subjects(self) -> list[UUID]:
        """Every subject the log holds an erasure of."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT sid FROM {self.erasures_table}")
            return [UUID(row[0]) for row in c.fetchall()]

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        facts: Mapping[tuple[UUID, int], FactKey] | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        self.take_write_lock(c)
        hexes = [_hex(s.originator_id) for s in stored_events]
        positions = self._insert_rows(c, stored_events, hexes)
        c.execute(f"SELECT size, frontier FROM {self.head_table} WHERE id = 1")
        row = c.fetchone()
        size, frontier = (row[0], unpack_frontier(row[1])) if row else (0, [])
        rows = []
        for position, stored, originator_hex in zip(positions, stored_events, hexes, strict=True):
            digest = MAPPER.hash_of_stored(
                stored.originator_id, stored.originator_version, stored.topic, stored.state
            )
            frontier = frontier_append(frontier, size, leaf_hash(digest))
            size += 1
            key = (
                facts.get((_uuid(stored.originator_id), stored.originator_version))
                if facts
                else None
            )
            rows.append(
                (
                    position,
                    originator_hex,
                    stored.originator_version,
                    digest,
                    key.tenant if key else None,
                    key.event_id if key else None,
                    key.digest if key else None,
                    key.recorded_at if key else None,
                )
            )
        c.executemany(f"INSERT INTO {self.index_table} VALUES (?,?,?,?,?,?,?,?)", rows)
        erased = [
            (h,) for h, e in zip(hexes, stored_events, strict=True) if e.topic in ERASURE_TOPICS
        ]
        if erased:
            c.executemany(f"INSERT OR IGNORE INTO {self.erasures_table} VALUES (?)", erased)
        c.execute(
            f"INSERT OR REPLACE INTO {self.head_table} VALUES (1, ?, ?, ?)",
            (size, pack_frontier(frontier), frontier_root(frontier).hex()),
        )
        return positions

    # True when this SQLite file is a replica and the log of record lives elsewhere (Kafka).
    log_is_elsewhere = False

    def log_coordinates(self, positions: Sequence[int]) -> dict[int, tuple[int, int]]:
        """Where these events are in the log of record, when that is not this table (Kafka)."""
        return {}

    def commit_extra(self, extra: object) -> None:
        """Embedded mode has nothing to commit besides facts (see ConsentLedger.record)."""
        raise TypeError("the embedded log commits no extra records")

    def take_write_lock(self, c: SQLiteCursor) -> None:
        """Make the open transaction a writer before it reads anything.

        The library begins a deferred transaction. One that reads first holds a snapshot;
        if another process (the server and a CLI command on one data directory) commits in
        between, SQLite refuses the upgrade at once ("database is locked") rather than
        waiting. A write that changes nothing takes the lock, waiting up to the lock timeout.
        """
        c.execute(f"UPDATE {self.head_table} SET size = size WHERE 0")

    def _insert_rows(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], hexes: Sequence[str]
    ) -> list[int]:
        """One executemany instead of a statement per event.

        Inside the write transaction SQLite gives each new row the largest rowid plus one, so
        the positions are known without asking per row; the final check proves it.
        """
        c.execute(self.select_max_notification_id_statement)
        start = c.fetchone()[0] or 0
        c.executemany(
            self.insert_events_statement,
            [
                (h, s.originator_version, s.topic, s.state)
                for h, s in zip(hexes, stored_events, strict=True)
            ],
        )
        c.execute(self.select_max_notification_id_statement)
        end = c.fetchone()[0] or 0
        if end - start != len(stored_events):
            raise RuntimeError("rowids of the inserted events are not contiguous")
        return list(range(start + 1, end + 1))

    def select_events_of(self, originator_ids: Sequence[UUID]) -> dict[UUID, list[StoredEvent]]:
        """All events of these aggregates in one query, by aggregate, in version order."""
        found: dict[UUID, list[StoredEvent]] = {}
        if not originator_ids:
            return found
        with self.datastore.transaction(commit=False) as c:
            for row in rows_in(
                as_tuples(c),
                f"SELECT originator_id, originator_version, topic, state "
                f"FROM {self.events_table_name} WHERE originator_id IN ({{}}) "
                "ORDER BY originator_id, originator_version",
                [o.hex for o in originator_ids],
            ):
                originator = UUID(row[0])
                found.setdefault(originator, []).append(
                    stored_event(originator, row[1], row[2], row[3])
                )
        return found

    @contextmanager
    def by_aggregate(
        self,
        batch: int = 20_000,
        *,
        upto: int | None = None,
        from_id: str = "",
        to_id: str | None = None,
    ) -> Iterator[tuple[int, Iterator[list[StoredEvent]]]]:
        """The whole log as of one moment, aggregate by aggregate, each in version order.

        Yields the last position of that moment and the events in lists of about `batch`,
        never splitting an aggregate's history, read through the primary key in one statement
        (appends after the position are left out).

        `upto` fixes the moment (a position read earlier), so that several readers, one per
        range of aggregate ids (`from_id` inclusive to `to_id` exclusive, as stored: lower-case
        hex), see the same log between them: rows at or before a position never change.
        """
        bounds = "originator_id >= ?" + ("" if to_id is None else " AND originator_id < ?")
        select = (
            "SELECT originator_id, originator_version, topic, state "
            f"FROM {self.events_table_name} WHERE {bounds} AND rowid <= ? "
            "ORDER BY originator_id, originator_version"
        )
        with self._scanning() as c:
            if upto is None:
                upto = self._max_notification_id(c) or 0
            c.execute(select, (from_id, upto) if to_id is None else (from_id, to_id, upto))
            yield upto, self._aggregate_batches(c, batch)

    @contextmanager
    def _scanning(self) -> Iterator[SQLiteCursor]:
        """A cursor for `by_aggregate`'s scan, on a connection of its own whose reads of the
        log go through a memory mapping.

        In primary-key order the rows lie all over the file, and each page SQLite does not
        hold is a read() call; through a mapping it is a memory read. The scan of 198,195
        entries took a median 1.19 against 1.41 s, replay as a whole 13.18 against 13.49 s
        (four interleaved runs each, a throwaway A/B of 2026-12-01). The pool's connections
        keep the library's settings (no mapping): a mapping of the log is for this one scan.
        An in-memory log has no file to map and only the pool's connections see it.
        """
        pool = cast(Any, self.datastore).pool
        if pool.is_sqlite_memory_mode:
            with self.datastore.transaction(commit=False) as c:
                yield as_tuples(c)
            return
        db = sqlite3.connect(
            pool.db_name, uri=True, timeout=pool.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT
        )
        try:
            db.execute(f"PRAGMA mmap_size={SCAN_MMAP_BYTES}")
            yield SQLiteCursor(db.cursor())  # rows as plain tuples: no row factory here
        finally:
            db.close()

    @staticmethod
    def _aggregate_batches(c: SQLiteCursor, batch: int) -> Iterator[list[StoredEvent]]:
        events: list[StoredEvent] = []
        last = ""
        while rows := c.sqlite_cursor.fetchmany(1000):
            for originator, version, topic, state in rows:
                if originator != last:
                    if len(events) >= batch:
                        yield events
                        events = []
                    last, originator_id = originator, UUID(originator)
                events.append(stored_event(originator_id, version, topic, state))
        if events:
            yield events

    def versions_of(self, originator_ids: Sequence[UUID]) -> dict[UUID, int]:
        """The current version of each of these aggregates that exists."""
        with self.datastore.transaction(commit=False) as c:
            return self._versions_of(c, originator_ids)

    def _versions_of(self, c: SQLiteCursor, originator_ids: Sequence[UUID]) -> dict[UUID, int]:
        rows = rows_in(
            c,
            f"SELECT originator_id, MAX(originator_version) FROM {self.events_table_name} "
            "WHERE originator_id IN ({}) GROUP BY originator_id",
            [o.hex for o in originator_ids],
        )
        return {UUID(row[0]): row[1] for row in rows}

    def find_facts(self, tenant: str, event_ids: Sequence[str]) -> dict[str, IndexedFact]:
        """The already-recorded facts of a tenant among these event ids."""
        with self.datastore.transaction(commit=False) as c:
            return self._find_facts(c, tenant, event_ids)

    def _find_facts(
        self, c: SQLiteCursor, tenant: str, event_ids: Sequence[str]
    ) -> dict[str, IndexedFact]:
        rows = rows_in(
            c,
            f"SELECT {_INDEX_COLUMNS} FROM {self.index_table} "
            "WHERE tenant = ? AND event_id IN ({})",
            event_ids,
            before=[tenant],
        )
        return {row[5]: _indexed(row) for row in rows}

    def batch_reads(
        self, event_ids: Mapping[str, Sequence[str]], originator_ids: Sequence[UUID]
    ) -> tuple[dict[tuple[str, str], IndexedFact], dict[UUID, int], str | None]:
        """What a batch must know before its checks, read in one transaction: the facts
        already recorded among its event ids (by tenant), the current versions of the
        aggregates it names, and the `recorded_at` of the log's last fact (the floor of
        transaction time, `ledger.clock`). One snapshot instead of a read transaction per
        question, which is most of a small batch's fixed cost."""
        found: dict[tuple[str, str], IndexedFact] = {}
        with self.datastore.transaction(commit=False) as c:
            as_tuples(c)
            for tenant, ids in event_ids.items():
                for event_id, indexed in self._find_facts(c, tenant, ids).items():
                    found[(tenant, event_id)] = indexed
            versions = self._versions_of(c, originator_ids)
            last_recorded = self._last_recorded_at(c)
        return found, versions, last_recorded

    def last_recorded_at(self) -> str | None:
        """The `recorded_at` of the log's last fact, if it has one."""
        with self.datastore.transaction(commit=False) as c:
            return self._last_recorded_at(c)

    def _last_recorded_at(self, c: SQLiteCursor) -> str | None:
        # Backwards by position (the rowid) to the first row of a fact: a tenant's
        # registration is the only event without a fact, so this is the last row or next to it.
        c.execute(
            f"SELECT recorded_at FROM {self.index_table} "
            "WHERE recorded_at IS NOT NULL ORDER BY position DESC LIMIT 1"
        )
        row = c.fetchone()
        return None if row is None else str(row[0])

    def recorded_at_through(self, position: int) -> str | None:
        """The latest `recorded_at` of the facts up to this position of the log.

        A batch writes its facts in the order they were stamped (ledger.batch), so that is
        the `recorded_at` of the last fact up to it. Batches written before (2026-12-04)
        went aggregate by aggregate, so the latest of the last `_BATCH_WINDOW` facts is
        taken: the same for the log of today, the right one for a last batch of earlier
        releases that was no longer (HTTP batches are at most 1,000 facts).
        """
        # As text: every stamp is a UTC instant written by `isoformat` (ledger.clock), and
        # those sort as their instants do ("+00:00" sorts before a fraction of a second,
        # as a time without microseconds comes before one with). 0.18 ms at a million
        # facts, against 0.52 parsing each in Python (timeit, 2026-12-04).
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT MAX(recorded_at) FROM (SELECT recorded_at FROM {self.index_table} "
                "WHERE position <= ? AND recorded_at IS NOT NULL ORDER BY position DESC LIMIT ?)",
                (position, _BATCH_WINDOW),
            )
            row = c.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def index_of(self, originator_id: UUID) -> list[IndexedFact]:
        """One aggregate's index rows, in log order.

        Found through the events table's unique (originator_id, originator_version) index,
        whose rowid is the index row's position: the index table has no index by aggregate
        (one would cost every append), and asking it by aggregate read all of it, the whole
        log, for every trail (1.6 ms a subject at 10,000 subjects, growing with the log).
        """
        columns = ", ".join(f"i.{name.strip()}" for name in _INDEX_COLUMNS.split(","))
        with self.datastore.transaction(commit=False) as c:
            as_tuples(c).execute(
                f"SELECT {columns} FROM {self.events_table_name} e "
                f"JOIN {self.index_table} i ON i.position = e.rowid "
                "WHERE e.originator_id = ? ORDER BY e.originator_version",
                (originator_id.hex,),
            )
            return [_indexed(row) for row in c.fetchall()]

    def verify_bounds(self) -> tuple[tuple[int, str], int, int]:
        """The Merkle head, the log's last position and the index's, read in one transaction.

        What `verify` compares must be one moment of the log: facts appended while it walks
        lie after these positions and are left for the next verification. The rows up to
        them are never rewritten (the log only grows), so the walk reads them a page at a
        time (`index_between`) instead of holding the index: 1,075 MiB at a million facts.
        """
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT size, root FROM {self.head_table} WHERE id = 1")
            row = c.fetchone()
            head = (int(row[0]), str(row[1])) if row else (0, frontier_root([]).hex())
            last = self._max_notification_id(c) or 0
            c.execute(f"SELECT MAX(position) FROM {self.index_table}")
            last_indexed = c.fetchone()[0] or 0
        return head, last, int(last_indexed)

    def index_between(self, after: int, upto: int, limit: int = -1) -> list[IndexedFact]:
        """The index rows at positions in (after, upto], in log order, the first `limit`
        of them (all if negative)."""
        with self.datastore.transaction(commit=False) as c:
            as_tuples(c).execute(
                f"SELECT {_INDEX_COLUMNS} FROM {self.index_table} "
                "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
                (after, upto, limit),
            )
            return [_indexed(row) for row in c.fetchall()]

    def evidence_of(self, originator_ids: Sequence[UUID]) -> LogEvidence:
        """What signed proofs about these aggregates' events are made from, read in one
        moment: every fact's leaf hash in log order and in its tree's, the recorded head,
        and the named aggregates' stored events. One read transaction, so events appended
        meanwhile are in none of them. Rows are read a page at a time into leaf hashes:
        32 bytes a fact, never the index as Python objects."""
        wanted = {o.hex: o for o in originator_ids}
        events: dict[UUID, list[StoredEvent]] = {o: [] for o in originator_ids}
        leaves: dict[tuple[UUID, int], tuple[int, int, int, str]] = {}
        own_order = self._tree_order_sql()
        with self.datastore.transaction(commit=False) as c:
            as_tuples(c).execute(
                f"SELECT originator_id, originator_version, hash, position "
                f"FROM {self.index_table} ORDER BY position"
            )
            log_leaves = bytearray()
            for originator, version, digest, position in _paged(c):
                if own_order is None and originator in wanted:
                    leaves[(wanted[originator], version)] = (
                        0,
                        len(log_leaves) // 32,
                        position,
                        digest,
                    )
                log_leaves += leaf_hash(digest)
            in_log_order = bytes(log_leaves)
            trees: dict[int, bytes] = {0: in_log_order}  # the one tree, unless own_order
            if own_order is not None:
                grown: dict[int, bytearray] = {p: bytearray() for p in self.tree_partitions()}
                c.execute(own_order)
                for originator, version, digest, position, partition in _paged(c):
                    tree = grown.setdefault(partition, bytearray())
                    if originator in wanted:
                        leaves[(wanted[originator], version)] = (
                            partition,
                            len(tree) // 32,
                            position,
                            digest,
                        )
                    tree += leaf_hash(digest)
                trees = {p: bytes(tree) for p, tree in grown.items()}
            c.execute(f"SELECT size, root FROM {self.head_table} WHERE id = 1")
            row = c.fetchone()
            head = (int(row[0]), str(row[1])) if row else (0, frontier_root([]).hex())
            for originator, version, topic, state in rows_in(
                c,
                f"SELECT originator_id, originator_version, topic, state "
                f"FROM {self.events_table_name} WHERE originator_id IN ({{}}) "
                "ORDER BY originator_id, originator_version",
                list(wanted),
            ):
                o = wanted[originator]
                events[o].append(stored_event(o, version, topic, state))
        return LogEvidence(in_log_order, head, trees, events, leaves)

    def tree_partitions(self) -> range:
        """The partitions the log's Merkle trees are kept by: embedded, the one log."""
        return range(1)

    def _tree_order_sql(self) -> str | None:
        """Every fact as (aggregate, version, hash, position, partition), each partition's
        in its tree's order; None where the log in its own order is the one tree."""
        return None

    def hash_at(self, position: int) -> str | None:
        """The hash of the fact at this position of the log, if it holds one."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT hash FROM {self.index_table} WHERE position = ?", (position,))
            row = c.fetchone()
        return None if row is None else str(row[0])

    def head(self) -> tuple[int, str]:
        """(number of events, Merkle root hex) as of the last commit."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT size, root FROM {self.head_table} WHERE id = 1")
            row = c.fetchone()
        if row is None:
            return 0, frontier_root([]).hex()
        return int(row[0]), str(row[1])


def _paged(c: SQLiteCursor, page: int = 10_000) -> Iterator[Any]:
    """The rows of the cursor's query, fetched a page at a time (the library's cursor has
    no fetchmany; its sqlite3 cursor does)."""
    while rows := c.sqlite_cursor.fetchmany(page):
        yield from rows


def _uuid(originator_id: UUID | str) -> UUID:
    return originator_id if isinstance(originator_id, UUID) else UUID(originator_id)


def _hex(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


def _indexed(row: Any) -> IndexedFact:
    """An index row read as `_INDEX_COLUMNS`, by position."""
    return IndexedFact(row[0], UUID(row[1]), row[2], row[3], row[4], row[5], row[6], row[7])
