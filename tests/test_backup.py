"""`consent-ledger backup`: copies that restore to a working ledger, taken while it writes.

Real processes on real files (and, parametrised, the real broker).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from ledger import backup as backup_module
from ledger import storage
from ledger.settings import Settings
from ledger.storage import StorageUnavailable
from tests.cli_support import BACKEND_ENV, Started, run, start_with
from tests.facts import grant

EMAIL = "backup.person@example.uz"


def record(data: Path, tmp_path: Path, *facts: dict[str, object]) -> None:
    path = tmp_path / f"facts-{facts[0]['event_id']}.jsonl"
    path.write_text("\n".join(orjson.dumps(f).decode() for f in facts))
    out = run(data, "record", str(path))
    assert out.returncode == 0, out.stderr


def restore(backup: Path, data: Path, into: Path) -> Path:
    """The documented restore: the backup's files, and the master key kept apart."""
    shutil.copytree(backup, into)
    shutil.copy(data / "master.key", into / "master.key")
    if data in BACKEND_ENV:
        BACKEND_ENV[into] = BACKEND_ENV[data]
    return into


def test_a_backup_restores_to_the_ledger_as_it_was(data: Path, tmp_path: Path) -> None:
    record(data, tmp_path, grant("b-1", event_id="b1", personal_data={"email": EMAIL}))
    keys = run(data, "keys", "create", "--tenant", "demo", "--role", "compliance")
    assert keys.returncode == 0, keys.stderr
    out = run(data, "backup", "--into", str(tmp_path / "backup"))
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "backup").iterdir())
    assert "master.key" not in names and "keys.db" in names and "api_keys.db" in names
    assert not [n for n in names if n.endswith(("-wal", "-shm"))]
    # The copies stand alone: reading one grows no WAL beside it.
    with contextlib.closing(sqlite3.connect(tmp_path / "backup" / "keys.db")) as copy:
        assert copy.execute("SELECT count(*) FROM data_keys").fetchone()[0] == 1
        assert not (tmp_path / "backup" / "keys.db-wal").exists()
    record(data, tmp_path, grant("b-2", event_id="b2"))

    restored = restore(tmp_path / "backup", data, tmp_path / "restored")
    verified = run(restored, "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    trail = run(restored, "trail", "b-1", "--tenant", "demo", "--json")
    assert trail.returncode == 0, trail.stderr
    facts = orjson.loads(trail.stdout)["facts"]
    assert facts[0]["personal_data"]["personal_data"]["email"] == EMAIL
    later = run(restored, "trail", "b-2", "--tenant", "demo")
    if data in BACKEND_ENV:
        assert later.returncode == 0  # Kafka: the topic is the log, not the backup
    else:
        assert later.returncode == 3  # embedded: the backup's log is the log as it was
    listed = run(restored, "keys", "list", "--json")
    assert listed.returncode == 0 and len(orjson.loads(listed.stdout)) == 1


@pytest.mark.parametrize("backend_settings", ["kafka"], indirect=True)
def test_a_kafka_backup_restores_whichever_partition_the_replica_reads_first(
    data: Path, tmp_path: Path, backend_settings: Settings
) -> None:
    """The restored directory's replica is read afresh from the topic, partitions
    interleaved as they are polled: a subject recorded after the backup, in a partition read
    before the first subject's, came first in it, and the backup's key store was refused as
    not the log's (it does not hold that subject's key): `make coverage` met it once in
    `test_a_backup_restores_to_the_ledger_as_it_was[kafka]`. Here it is met every time."""
    from ledger.application import ConsentLedger
    from ledger.kafka.records import partition_of

    with contextlib.closing(ConsentLedger(backend_settings)) as ledger:

        def partition(reference: str) -> int:
            sid = ledger.sid("demo", reference).hex
            return partition_of(f"demo/{sid}".encode(), backend_settings.partitions)

        references = [f"p-{i}" for i in range(64)]
        first = next(r for r in references if partition(r) != 0)
        later = [r for r in references if partition(r) == 0][:3]
    record(data, tmp_path, grant(first, event_id="first"))
    out = run(data, "backup", "--into", str(tmp_path / "backup"))
    assert out.returncode == 0, out.stderr
    record(data, tmp_path, *(grant(r, event_id=r) for r in later))

    restored = restore(tmp_path / "backup", data, tmp_path / "restored")
    verified = run(restored, "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    assert orjson.loads(verified.stdout)["subjects_without_key"] == len(later)
    trail = run(restored, "trail", first, "--tenant", "demo", "--json")
    assert trail.returncode == 0, trail.stderr


@pytest.mark.parametrize("backend_settings", ["embedded"], indirect=True)
def test_a_backup_taken_while_facts_are_recorded_has_a_key_for_every_subject(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key store is copied after the log, so every subject in the copied log has its
    key in the copied key store, whatever the writer did meanwhile. The writer is a real
    process; after each file is copied the backup waits for it to commit again, so the
    writer always moves on between two copies (as it may, unluckily, in production)."""
    stream = tmp_path / "stream.jsonl"
    stream.write_text(
        "\n".join(
            orjson.dumps(
                grant(f"w-{i}", event_id=f"w{i}", personal_data={"email": f"w{i}@example.uz"})
            ).decode()
            for i in range(30_000)
        )
    )
    env = {**os.environ, "LEDGER_DATA_DIR": str(data)}
    writer = start_with(env, "record", str(stream), stdout=subprocess.DEVNULL, text=False)

    def wait_for_the_writer(past: int) -> None:
        deadline = time.monotonic() + 60
        while subjects_in(data / "ledger.db") <= past:
            assert time.monotonic() < deadline, "the writer did not commit again"
            with contextlib.suppress(subprocess.TimeoutExpired):
                writer.wait(timeout=0.02)
            assert writer.returncode is None, "the writer stopped before the backup ended"

    copy = backup_module._copy

    def copy_then_let_the_writer_commit(source: Path, target: Path) -> None:
        copy(source, target)
        wait_for_the_writer(subjects_in(data / "ledger.db"))

    monkeypatch.setattr(backup_module, "_copy", copy_then_let_the_writer_commit)
    try:
        wait_for_the_writer(1_000)  # well under way
        backup_module.back_up(Settings(data_dir=data), tmp_path / "backup")
    finally:
        _, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err

    backup = tmp_path / "backup"
    in_log = subject_ids(backup / "ledger.db")
    assert 1_000 < len(in_log) < 30_000
    with contextlib.closing(sqlite3.connect(backup / "keys.db")) as keys:
        keyed = {row[0] for row in keys.execute("SELECT sid FROM data_keys")}
    assert in_log - keyed == set()
    restored = restore(backup, data, tmp_path / "restored")
    verified = run(restored, "verify")
    assert verified.returncode == 0, verified.stderr


def subject_ids(log: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(log)) as db:
        return {
            row[0]
            for row in db.execute(
                "SELECT DISTINCT originator_id FROM stored_events "
                "WHERE topic LIKE 'ledger.subject:%'"
            )
        }


def number_in(database: Path, query: str) -> int:
    """One number read from a live database, 0 before the table exists."""
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as db:
            row = db.execute(query).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return 0
    return int(row[0] or 0)


def subjects_in(log: Path) -> int:
    return number_in(log, "SELECT count(*) FROM stored_events WHERE topic LIKE 'ledger.subject:%'")


def test_a_backup_never_overwrites_and_needs_a_ledger(tmp_path: Path) -> None:
    empty = run(tmp_path / "none", "backup", "--into", str(tmp_path / "b"))
    assert empty.returncode == 2 and "nothing to back up" in empty.stderr
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    full = run(data, "backup", "--into", str(tmp_path / "full"))
    assert full.returncode == 2 and "not an empty directory" in full.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep"
    same = run(data, "backup", "--into", str(data))
    assert same.returncode == 2


def test_a_backup_of_a_log_held_locked_gives_up_as_a_storage_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's backup stepped again every 250 ms for as long as the source was locked: a
    log another process held in exclusive mode kept `backup` waiting for ever. It gives up
    after the busy timeout every open of the ledger's files has (30 s; 0.5 s here), leaving
    nothing behind."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    monkeypatch.setattr(storage, "LOCKED_WAIT_S", 0.5)
    holder = sqlite3.connect(data / "ledger.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    into = tmp_path / "backups" / "b"
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match=r"another process holds ledger\.db locked"):
            backup_module.back_up(Settings(data_dir=data), into)
        assert time.monotonic() - started < 30
    finally:
        holder.close()
    assert list(into.parent.iterdir()) == []
    backup_module.back_up(Settings(data_dir=data), into)  # and once it is let go, it is made
    assert (into / "ledger.db").exists()


def log_end(log: Path) -> int:
    return number_in(log, "SELECT max(rowid) FROM stored_events")


def views_at(views: Path) -> int:
    return number_in(views, "SELECT max(notification_id) FROM tracking")


@pytest.mark.parametrize("backend_settings", ["embedded"], indirect=True)
def test_a_backup_taken_while_the_views_follow_the_log_has_no_view_ahead_of_it(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The views are copied before the log: a restored view may be behind its log (a
    catch-up), never ahead of it. A real writer and a real `project --follow` run; after
    each copy the backup waits until the views pass the end the log had then."""
    stream = tmp_path / "stream.jsonl"
    stream.write_text(
        "\n".join(orjson.dumps(grant(f"v-{i}", event_id=f"v{i}")).decode() for i in range(30_000))
    )
    env = {**os.environ, "LEDGER_DATA_DIR": str(data)}
    projector = start_with(
        env, "project", "--follow", "--interval", "0.05", stdout=None, text=False
    )
    writer = start_with(env, "record", str(stream), stdout=subprocess.DEVNULL, text=False)

    def wait(process: Started) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.02)

    def wait_until_the_views_reach(end: int) -> None:
        deadline = time.monotonic() + 120
        while views_at(data / "views.db") < end:
            assert time.monotonic() < deadline, "the views did not catch up"
            wait(projector)
            assert projector.returncode is None, "the projection stopped"

    copy = backup_module._copy
    writing_after_copies: list[bool] = []

    def copy_then_let_both_move_on(source: Path, target: Path) -> None:
        copy(source, target)
        end = log_end(data / "ledger.db")
        writing_after_copies.append(writer.poll() is None)
        while writer.poll() is None and log_end(data / "ledger.db") <= end:
            wait(writer)  # the writer commits again, if it still writes
        wait_until_the_views_reach(log_end(data / "ledger.db"))

    monkeypatch.setattr(backup_module, "_copy", copy_then_let_both_move_on)
    try:
        wait_until_the_views_reach(1_000)
        backup_module.back_up(Settings(data_dir=data), tmp_path / "backup")
    finally:
        _, err = writer.communicate(timeout=300)
        projector.terminate()
        projector.communicate(timeout=60)
    assert writing_after_copies[0], "the writer had finished before the first copy: no race"
    assert writer.returncode == 0, err
    backup = tmp_path / "backup"
    assert 1_000 < views_at(backup / "views.db") <= log_end(backup / "ledger.db")
