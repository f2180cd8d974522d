"""Our SQLite recorder against the library's reusable recorder tests, plus what it adds."""

from __future__ import annotations

import tempfile
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.tests import persistence as library_tests

from ledger.chain import merkle_root, stored_hash
from ledger.recorder import FactKey, LedgerSQLiteRecorder


class TestLedgerSQLiteRecorder(library_tests.ApplicationRecorderTestCase[LedgerSQLiteRecorder]):
    def setUp(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.db = str(Path(self._dir.name) / "ledger.db")

    def tearDown(self) -> None:
        self._dir.cleanup()

    def create_recorder(self) -> LedgerSQLiteRecorder:
        recorder = LedgerSQLiteRecorder(SQLiteDatastore(db_name=self.db, lock_timeout=30))
        recorder.create_table()
        return recorder


def _event(originator: object = None, version: int = 1, state: bytes = b"{}") -> StoredEvent:
    return StoredEvent(originator or uuid4(), version, "t", state)  # type: ignore[arg-type]


def test_index_and_head_are_written_with_the_events(tmp_path: Path) -> None:
    recorder = LedgerSQLiteRecorder(SQLiteDatastore(db_name=str(tmp_path / "l.db")))
    recorder.create_table()
    first, second = uuid4(), uuid4()
    events = [_event(first, 1, b'{"a":1}'), _event(second, 1, b'{"b":2}'), _event(first, 2)]
    facts = {(first, 2): FactKey("demo", "e-1", "digest", "2025-01-01T00:00:00+00:00")}
    positions = recorder.insert_events(events, facts=facts)
    assert positions is not None
    rows = recorder.index_between(0, 2**62)
    assert [r.position for r in rows] == list(positions)
    assert [r.hash for r in rows] == [stored_hash(e) for e in events]
    assert rows[2].event_id == "e-1" and rows[0].event_id is None
    size, root = recorder.head()
    assert size == 3
    assert root == merkle_root([stored_hash(e) for e in events]).hex()
    assert recorder.find_facts("demo", ["e-1", "nope"])["e-1"].originator_id == first


def test_one_aggregates_index_rows_are_found_without_reading_the_whole_index(
    tmp_path: Path,
) -> None:
    """A trail reads its subject's index rows; searched through the events table's key, not
    by scanning the index table (the whole log) for every subject asked about."""
    recorder = LedgerSQLiteRecorder(SQLiteDatastore(db_name=str(tmp_path / "l.db")))
    recorder.create_table()
    first, second = uuid4(), uuid4()
    events = [_event(first, 1), _event(second, 1), _event(first, 2), _event(second, 2)]
    positions = recorder.insert_events(events)
    assert positions is not None
    with recorder.datastore.transaction(commit=False) as c:
        connection = c.sqlite_cursor.connection  # the pool's one connection of this thread
    asked: list[str] = []
    connection.set_trace_callback(asked.append)
    rows = recorder.index_of(first)
    connection.set_trace_callback(None)
    assert [(r.position, r.originator_version) for r in rows] == [
        (positions[0], 1),
        (positions[2], 2),
    ]
    assert [r.hash for r in rows] == [stored_hash(events[0]), stored_hash(events[2])]
    [query] = [sql for sql in asked if sql.lstrip().upper().startswith("SELECT")]
    plan = " / ".join(
        str(row[3]) for row in connection.execute(f"EXPLAIN QUERY PLAN {query}").fetchall()
    )
    assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize("where", ["file", "memory"])
def test_by_aggregate_reads_each_history_in_order_as_of_one_position(
    tmp_path: Path, where: str
) -> None:
    """Replay's scan (on a memory-mapped connection of its own for a file; on the pool's
    connection for an in-memory log, which no other connection can see)."""
    name = str(tmp_path / "l.db") if where == "file" else ":memory:"
    recorder = LedgerSQLiteRecorder(SQLiteDatastore(db_name=name))
    recorder.create_table()
    a, b = sorted((uuid4(), uuid4()), key=lambda u: u.hex)
    recorder.insert_events([_event(b, 1, b"b1"), _event(a, 1, b"a1"), _event(b, 2, b"b2")])
    with recorder.by_aggregate(batch=1) as (upto, batches):
        if where == "file":  # (the library's in-memory pool lets no writer in meanwhile)
            recorder.insert_events([_event(a, 2, b"a2")])  # after the moment: left out
        read = [[(e.originator_id, e.originator_version, e.state) for e in x] for x in batches]
    assert upto == 3
    assert read == [[(a, 1, b"a1")], [(b, 1, b"b1"), (b, 2, b"b2")]]
    with recorder.by_aggregate(from_id=b.hex) as (upto, batches):
        assert [e.originator_id for x in batches for e in x] == [b, b]


def test_same_event_id_twice_is_refused_by_the_store(tmp_path: Path) -> None:
    recorder = LedgerSQLiteRecorder(SQLiteDatastore(db_name=str(tmp_path / "l.db")))
    recorder.create_table()
    a, b = uuid4(), uuid4()
    key = FactKey("demo", "same", "d", "2025-01-01T00:00:00+00:00")
    recorder.insert_events([_event(a)], facts={(a, 1): key})
    try:
        recorder.insert_events([_event(b)], facts={(b, 1): key})
    except Exception as e:  # the library wraps sqlite3's IntegrityError
        assert "UNIQUE" in str(e)
    else:
        raise AssertionError("a second fact with the same tenant and event_id was stored")
    assert recorder.head()[0] == 1


def test_two_processes_appending_to_one_file_wait_for_each_other(tmp_path: Path) -> None:
    """A CLI write while the server writes: each append waits for the other's lock.

    An append that read before it wrote would hold a snapshot the other writer outdates,
    and SQLite refuses it at once ("database is locked") instead of waiting.
    """
    import threading

    db = str(tmp_path / "shared.db")
    recorders = [LedgerSQLiteRecorder(SQLiteDatastore(db_name=db, lock_timeout=30)) for _ in "ab"]
    recorders[0].create_table()
    failures: list[BaseException] = []

    def append(recorder: LedgerSQLiteRecorder) -> None:
        try:
            for _ in range(300):
                recorder.insert_events([_event()])
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=append, args=(r,)) for r in recorders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert recorders[0].head()[0] == 600
    assert [r.position for r in recorders[1].index_between(0, 2**62)] == list(range(1, 601))
