"""Tampering with the stored log, any way and anywhere, makes `verify` fail and name the fact."""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.sqlite import SQLiteDatastore

from ledger.application import ConsentLedger
from ledger.chain import fact_hash
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from ledger.recorder import LedgerSQLiteRecorder
from ledger.settings import Settings
from ledger.verify import VerifyResult, verify_log
from tests.facts import fact, grant, withdraw


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = Settings(data_dir=tmp_path_factory.mktemp("pristine"))
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    facts = []
    for s in ("a", "b", "c"):
        facts += [
            grant(
                s,
                ("marketing", "support"),
                event_id=f"{s}-g",
                evidence={"ip": "10.0.0.1"},
                personal_data={"email": f"{s}@example.uz"},
            ),
            withdraw(s, event_id=f"{s}-w", occurred_at="2025-03-02T10:00:00+05:00"),
            fact("request.received", s, event_id=f"{s}-r", request_id="R", kind="information"),
        ]
    outcomes = ledger.record([parse_fact(f) for f in facts])
    assert all(isinstance(o, Receipt) for o in outcomes)
    ledger.close()
    return settings.data_dir


def positions(db: Path) -> list[int]:
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT rowid FROM stored_events ORDER BY rowid")]


def tampered(
    pristine: Path, tmp_path: Path, change: Callable[[sqlite3.Connection], None]
) -> VerifyResult:
    db = tmp_path / "ledger.db"
    shutil.copy(pristine / "ledger.db", db)
    with sqlite3.connect(db) as c:
        change(c)
    c.close()
    recorder = LedgerSQLiteRecorder(SQLiteDatastore(db_name=str(db)))
    try:
        whole = verify_log(recorder, page=10_000)
        # The walk reads the log and its index a page at a time: any page boundary, next
        # to a change or not, must give the same answer as one page.
        for page in (1, 2, 5):
            assert verify_log(recorder, page=page) == whole, page
        return whole
    finally:
        recorder.datastore.close()


def test_pristine_log_verifies(pristine: Path, tmp_path: Path) -> None:
    result = tampered(pristine, tmp_path, lambda c: None)
    assert result.ok and result.facts_checked == len(positions(pristine / "ledger.db"))


def test_flipping_one_byte_of_any_fact_is_named(pristine: Path, tmp_path: Path) -> None:
    for position in positions(pristine / "ledger.db"):

        def flip(c: sqlite3.Connection, p: int = position) -> None:
            (state,) = c.execute("SELECT state FROM stored_events WHERE rowid=?", (p,)).fetchone()
            i = len(state) // 2
            changed = state[:i] + bytes([state[i] ^ 0x01]) + state[i + 1 :]
            c.execute("UPDATE stored_events SET state=? WHERE rowid=?", (changed, p))

        result = tampered(pristine, tmp_path, flip)
        assert not result.ok
        assert result.problems[0].position == position
        assert result.problems[0].kind == "altered"


def test_a_fact_cut_short_and_its_hash_made_again_is_named_altered(
    pristine: Path, tmp_path: Path
) -> None:
    """Bytes that are no longer JSON at all, their hash in the index made again to match
    (the index is in the same file): named as altered, not a crash of the walk."""
    position = positions(pristine / "ledger.db")[3]

    def cut(c: sqlite3.Connection) -> None:
        row = c.execute(
            "SELECT originator_id, originator_version, topic, state FROM stored_events "
            "WHERE rowid=?",
            (position,),
        ).fetchone()
        short = row[3][: len(row[3]) // 2]
        digest = fact_hash(UUID(row[0]), row[1], row[2], short)
        c.execute("UPDATE stored_events SET state=? WHERE rowid=?", (short, position))
        c.execute("UPDATE stored_events_index SET hash=? WHERE position=?", (digest, position))

    result = tampered(pristine, tmp_path, cut)
    assert not result.ok
    assert (result.problems[0].position, result.problems[0].kind) == (position, "altered")
    assert "not the JSON that was written" in result.problems[0].message


def test_deleting_any_fact_is_named(pristine: Path, tmp_path: Path) -> None:
    for position in positions(pristine / "ledger.db"):

        def delete(c: sqlite3.Connection, p: int = position) -> None:
            c.execute("DELETE FROM stored_events WHERE rowid=?", (p,))

        result = tampered(pristine, tmp_path, delete)
        assert not result.ok
        assert result.problems[0].position == position
        assert result.problems[0].kind == "removed"


def test_swapping_two_facts_is_named(pristine: Path, tmp_path: Path) -> None:
    rows = positions(pristine / "ledger.db")
    for p, q in itertools.combinations(rows, 2):

        def swap(c: sqlite3.Connection, p: int = p, q: int = q) -> None:
            c.execute("UPDATE stored_events SET rowid=-1 WHERE rowid=?", (p,))
            c.execute("UPDATE stored_events SET rowid=? WHERE rowid=?", (p, q))
            c.execute("UPDATE stored_events SET rowid=? WHERE rowid=-1", (q,))

        result = tampered(pristine, tmp_path, swap)
        assert not result.ok
        assert result.problems[0].position == p, (p, q, result.problems[0])


def test_swapping_contents_of_two_facts_is_named(pristine: Path, tmp_path: Path) -> None:
    rows = positions(pristine / "ledger.db")
    p, q = rows[4], rows[9]

    def swap_states(c: sqlite3.Connection) -> None:
        a = c.execute("SELECT state FROM stored_events WHERE rowid=?", (p,)).fetchone()[0]
        b = c.execute("SELECT state FROM stored_events WHERE rowid=?", (q,)).fetchone()[0]
        c.execute("UPDATE stored_events SET state=? WHERE rowid=?", (b, p))
        c.execute("UPDATE stored_events SET state=? WHERE rowid=?", (a, q))

    result = tampered(pristine, tmp_path, swap_states)
    assert not result.ok and result.problems[0].position == p


def test_inserting_a_fact_is_named(pristine: Path, tmp_path: Path) -> None:
    def insert(c: sqlite3.Connection) -> None:
        row = c.execute(
            "SELECT originator_id, topic, state FROM stored_events WHERE rowid=5"
        ).fetchone()
        c.execute(
            "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
            "VALUES (?, 99, ?, ?)",
            row,
        )

    result = tampered(pristine, tmp_path, insert)
    assert not result.ok and result.problems[0].kind == "inserted"


def test_index_rows_past_the_end_of_the_log_are_named(pristine: Path, tmp_path: Path) -> None:
    """The last facts deleted from the log but not from the index: rows the walk of the
    log never reaches, read after it."""
    rows = positions(pristine / "ledger.db")

    def delete_the_last_three(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM stored_events WHERE rowid >= ?", (rows[-3],))

    result = tampered(pristine, tmp_path, delete_the_last_three)
    assert [(p.position, p.kind) for p in result.problems] == [(p, "removed") for p in rows[-3:]]


def test_removing_a_fact_together_with_its_index_row_breaks_the_merkle_head(
    pristine: Path, tmp_path: Path
) -> None:
    last = positions(pristine / "ledger.db")[-1]

    def remove_everywhere(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM stored_events WHERE rowid=?", (last,))
        c.execute("DELETE FROM stored_events_index WHERE position=?", (last,))

    result = tampered(pristine, tmp_path, remove_everywhere)
    assert not result.ok and result.problems[0].kind == "removed"


def test_verify_command_names_the_broken_fact(pristine: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(pristine, data)
    with sqlite3.connect(data / "ledger.db") as c:
        c.execute("UPDATE stored_events SET state=CAST('{}' AS BLOB) WHERE rowid=7")
    env = {**os.environ, "LEDGER_DATA_DIR": str(data)}
    run = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 4
    assert "position 7" in run.stderr and "altered" in run.stderr


def test_facts_appended_while_verifying_are_not_called_inserted(tmp_path: Path) -> None:
    """verify compares one moment of the log: a writer appending during the walk (another
    process, or the HTTP service) must not make an intact log look tampered."""
    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    ledger.record([parse_fact(grant("early", event_id="early"))])
    recorder = ledger.ledger_recorder
    walk = recorder.select_notifications
    appended = False

    def walk_while_writing(*args: Any, **kwargs: Any) -> Any:
        nonlocal appended
        if not appended:
            appended = True
            ledger.record([parse_fact(grant("late", event_id="late"))])
        return walk(*args, **kwargs)

    recorder.select_notifications = walk_while_writing  # type: ignore[method-assign]
    result = verify_log(recorder)
    recorder.select_notifications = walk  # type: ignore[method-assign]
    assert appended and result.ok, result.problems
    assert verify_log(recorder).facts_checked == result.facts_checked + 1  # the grant
    ledger.close()
