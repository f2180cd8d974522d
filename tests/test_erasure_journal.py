"""The erasure journal (`LEDGER_ERASURE_JOURNAL`): a backup restored from before an erasure
brings no erased person's data back, in embedded mode, where the log and the key store are
restored together and neither remembers the erasure."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import multiprocessing
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock
from uuid import UUID, uuid4

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from api.app import keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.erasure_journal import ErasureJournal, JournalUnwritable, Read
from ledger.keystore import KeyStore, load_master_key
from ledger.receipt import Receipt
from ledger.settings import Settings
from ledger.storage import StorageUnavailable
from tests.cli_support import run
from tests.examples import examples
from tests.facts import erase, grant
from tests.server_support import serve

NAME = "Yusupova Madina Rustamovna"
REFERENCE = "+998977654321"
KEPT = "+998971112233"


def record(data: Path, *facts: dict[str, object], **env: str) -> None:
    out = run(data, "record", "-", stdin="\n".join(orjson.dumps(f).decode() for f in facts), **env)
    assert out.returncode == 0, out.stderr


def wrapped_key(data: Path, sid: str) -> bytes:
    with contextlib.closing(sqlite3.connect(data / "keys.db")) as keys:
        (wrapped,) = keys.execute("SELECT wrapped FROM data_keys WHERE sid=?", (sid,)).fetchone()
    return bytes(wrapped)


def files_containing(root: Path, needle: bytes) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    )


def trail(data: Path, reference: str, **env: str) -> dict[str, object]:
    out = run(data, "trail", reference, "--tenant", "demo", "--json", **env)
    assert out.returncode == 0, out.stderr
    answer = orjson.loads(out.stdout)
    assert isinstance(answer, dict)
    return answer


def restore(backup: Path, data: Path, into: Path) -> Path:
    """The README's restore: the backup's files, and the master key kept apart."""
    shutil.copytree(backup, into)
    shutil.copy(data / "master.key", into / "master.key")
    return into


def backed_up_then_erased(tmp_path: Path, **env: str) -> tuple[Path, Path, str, bytes]:
    """A ledger of two people backed up, then one of them erased: (data, backup, sid, the
    erased person's wrapped data key as the backup holds it)."""
    data = tmp_path / "data"
    assert run(data, "init", **env).returncode == 0
    record(
        data,
        grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}),
        grant(KEPT, event_id="g2", personal_data={"full_name": "Kept Person"}),
        **env,
    )
    sid = str(trail(data, REFERENCE, **env)["sid"])
    wrapped = wrapped_key(data, sid)
    backup = tmp_path / "backup"
    assert run(data, "backup", "--into", str(backup), **env).returncode == 0
    erased = run(
        data, "erase", REFERENCE, "--tenant", "demo", "--ground", "consent_withdrawn", **env
    )
    assert erased.returncode == 0, erased.stderr
    assert files_containing(data, wrapped) == []
    assert files_containing(backup, wrapped) == ["keys.db"]
    return data, backup, sid, wrapped


def test_a_backup_restored_from_before_an_erasure_brings_no_erased_data_back(
    tmp_path: Path,
) -> None:
    """Restored with the journal kept, the erased person's key is destroyed as the ledger
    opens: their trail reads as a key erased, `verify` names the erasure the log lost, a new
    grant of theirs is refused, and `erase --sid` records it again. The other person's data
    reads as before. Restored without the journal, the name was readable again."""
    journal = tmp_path / "elsewhere" / "erasures.jsonl"
    journal.parent.mkdir()
    env = {"LEDGER_ERASURE_JOURNAL": str(journal)}
    data, backup, sid, wrapped = backed_up_then_erased(tmp_path, **env)
    assert NAME.encode() not in journal.read_bytes()
    assert REFERENCE.encode() not in journal.read_bytes()
    assert [orjson.loads(line)["sid"] for line in journal.read_bytes().splitlines()] == [sid]

    unprotected = restore(backup, data, tmp_path / "without-journal")
    before = trail(unprotected, REFERENCE)
    assert before["facts"][0]["personal_data"] == {"personal_data": {"full_name": NAME}}  # type: ignore[index]

    restored = restore(backup, data, tmp_path / "restored")
    after = trail(restored, REFERENCE, **env)
    assert (after["sid"], after["subject"], after["erased"]) == (sid, None, False)
    assert after["facts"][0]["personal_data"] == {"key_erased": True}  # type: ignore[index]
    assert files_containing(restored, wrapped) == []
    kept = trail(restored, KEPT, **env)
    assert kept["facts"][0]["personal_data"] == {"personal_data": {"full_name": "Kept Person"}}  # type: ignore[index]

    checked = run(restored, "verify", "--json", **env)
    assert checked.returncode == 0, checked.stderr
    lost = orjson.loads(checked.stdout)["erasures_not_in_log"]
    assert [(e["tenant"], e["sid"]) for e in lost] == [("demo", sid)]
    regrant = run(
        restored,
        "record",
        "-",
        stdin=orjson.dumps(
            grant(REFERENCE, event_id="g3", occurred_at="2025-03-02T10:00:00+05:00")
        ).decode(),
        **env,
    )
    assert "subject_erased" in regrant.stdout + regrant.stderr, regrant
    again = run(
        restored,
        *("erase", sid, "--sid", "--tenant", "demo", "--ground", "consent_withdrawn"),
        **env,
    )
    assert again.returncode == 0, again.stderr
    assert trail(restored, REFERENCE, **env)["erased"] is True
    assert (
        orjson.loads(run(restored, "verify", "--json", **env).stdout)["erasures_not_in_log"] == []
    )


def _granted_with_a_key(settings: Settings, role: str) -> tuple[UUID, dict[str, str]]:
    """A ledger holding one person's grant, and the headers of an API key of `role`."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}))])
    sid = ledger.sid("demo", REFERENCE)
    ledger.close()
    keys = ApiKeys(keys_path(settings))
    headers = {"Authorization": f"Bearer {keys.create('demo', {role})[1]}"}
    keys.close()
    return sid, headers


def test_an_erasure_over_http_is_journalled_by_the_services_writer(tmp_path: Path) -> None:
    """`serve` records published facts in a writer process of its own: the erasure it
    records there reaches the journal before its key goes."""
    journal = tmp_path / "erasures.jsonl"
    settings = Settings(data_dir=tmp_path / "data", erasure_journal=journal)
    sid, admin = _granted_with_a_key(settings, "admin")
    server, base = serve(settings)
    try:
        erased = httpx.post(
            f"{base}/v1/subjects/{sid.hex}/erasure",
            headers=admin,
            json={"ground": "subject_request"},
            timeout=30,
        )
        assert erased.status_code == 201, erased.text
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert [orjson.loads(line)["sid"] for line in journal.read_bytes().splitlines()] == [sid.hex]


def test_an_erasure_is_journalled_on_either_backend(data: Path, tmp_path: Path) -> None:
    """Kafka mode keeps every erasure in its topic; the journal, if set, is written there
    too (one setting for a deployment that changes backend), and opening beside it costs
    the Kafka-mode ledger nothing it did not do."""
    journal = tmp_path / "erasures.jsonl"
    record(data, grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}))
    sid = str(trail(data, REFERENCE)["sid"])
    erased = run(
        data,
        *("erase", REFERENCE, "--tenant", "demo", "--ground", "subject_request"),
        LEDGER_ERASURE_JOURNAL=str(journal),
    )
    assert erased.returncode == 0, erased.stderr
    assert [orjson.loads(line)["sid"] for line in journal.read_bytes().splitlines()] == [sid]
    after = trail(data, REFERENCE, LEDGER_ERASURE_JOURNAL=str(journal))
    assert (after["erased"], after["facts"][0]["personal_data"]) == (True, {"erased": True})  # type: ignore[index]


def test_an_erasure_over_http_whose_journal_went_away_is_answered_503(tmp_path: Path) -> None:
    """The failure crosses the writer process's pipe as what it is: 503
    `storage_unavailable` (retry), the key destroyed all the same; the retry, once the
    volume is back, gets the first receipt."""
    volume = tmp_path / "volume"
    volume.mkdir()
    settings = Settings(data_dir=tmp_path / "data", erasure_journal=volume / "erasures.jsonl")
    sid, publisher = _granted_with_a_key(settings, "publisher")
    server, base = serve(settings)
    try:
        shutil.rmtree(volume)
        body = erase(REFERENCE, event_id="x1")
        failed = httpx.post(f"{base}/v1/facts", headers=publisher, json=body, timeout=30)
        assert failed.status_code == 503, failed.text
        assert failed.headers["content-type"] == "application/problem+json"
        assert failed.json()["code"] == "storage_unavailable"
        assert "the erasure journal cannot be written" in failed.json()["detail"]
        with contextlib.closing(KeyStore(settings.keystore_path, load_master_key(settings))) as k:
            assert k.open_keys([sid]) == {}
        volume.mkdir()
        again = httpx.post(f"{base}/v1/facts", headers=publisher, json=body, timeout=30)
        assert again.status_code == 200, again.text
        assert again.json()["duplicate"] is True
    finally:
        server.terminate()
        said = server.communicate(timeout=60)[0].decode()
    assert REFERENCE not in said and NAME not in said


def test_a_journal_configured_later_takes_in_the_erasures_made_before_it(tmp_path: Path) -> None:
    """Erasures made before the journal was set are the key store's only: the first ledger
    to open with the journal writes them there, so a restore after that forgets none."""
    data, backup, sid, wrapped = backed_up_then_erased(tmp_path)
    journal = tmp_path / "erasures.jsonl"
    assert run(data, "verify", LEDGER_ERASURE_JOURNAL=str(journal)).returncode == 0
    assert [orjson.loads(line)["sid"] for line in journal.read_bytes().splitlines()] == [sid]
    restored = restore(backup, data, tmp_path / "restored")
    after = trail(restored, REFERENCE, LEDGER_ERASURE_JOURNAL=str(journal))
    assert after["facts"][0]["personal_data"] == {"key_erased": True}  # type: ignore[index]
    assert files_containing(restored, wrapped) == []


@pytest.mark.parametrize("alteration", ["erased_at", "sid", "mac", "not json", "another ledger"])
def test_a_journal_line_that_does_not_verify_stops_the_ledger(
    tmp_path: Path, alteration: str
) -> None:
    """A line the key store did not seal is neither obeyed (anyone who can write the file
    would destroy people's keys) nor skipped (an erasure it hides would bring data back):
    every command stops in one line naming it, exit 2, with no key destroyed."""
    journal = tmp_path / "erasures.jsonl"
    env = {"LEDGER_ERASURE_JOURNAL": str(journal)}
    data, backup, sid, wrapped = backed_up_then_erased(tmp_path, **env)
    (line,) = journal.read_bytes().splitlines()
    entry = orjson.loads(line)
    if alteration == "another ledger":
        other = tmp_path / "other"
        assert run(other, "init").returncode == 0
        foreign = ErasureJournal(tmp_path / "foreign.jsonl", b"\x01" * 32)
        foreign.append([(UUID(sid), datetime.now(UTC))])
        forged = (tmp_path / "foreign.jsonl").read_bytes().strip()
    elif alteration == "not json":
        forged = b"{" + line
    else:
        entry[alteration] = {
            "erased_at": "2020-01-01T00:00:00+00:00",
            "sid": uuid4().hex,
            "mac": "0" * 64,
        }[alteration]
        forged = orjson.dumps(entry)
    journal.write_bytes(line + b"\n" + forged + b"\n")
    restored = restore(backup, data, tmp_path / "restored")

    out = run(restored, "trail", REFERENCE, "--tenant", "demo", "--json", **env)
    assert out.returncode == 2, out
    assert out.stderr.strip().splitlines() == [
        f"consent-ledger: configuration: LEDGER_ERASURE_JOURNAL: line 2 of {journal} is not an "
        "erasure this ledger's key store sealed (altered, or another ledger's journal)"
    ]
    assert files_containing(restored, wrapped) == ["keys.db"]


def test_a_journal_that_cannot_be_made_stops_the_ledger_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    journal = tmp_path / "no such directory" / "erasures.jsonl"
    out = run(data, "init", LEDGER_ERASURE_JOURNAL=str(journal))
    assert out.returncode == 2, out
    assert out.stderr.strip() == (
        f"consent-ledger: configuration: LEDGER_ERASURE_JOURNAL: {journal} cannot be opened: "
        "No such file or directory"
    )


def test_an_append_cut_short_is_ignored_then_cut(tmp_path: Path) -> None:
    """A crash in the middle of an append leaves a last line without its newline: reading
    ignores it (its erasure is still in the log, which finishes it again), and the next
    append cuts it rather than glue it to its own first line."""
    path = tmp_path / "erasures.jsonl"
    journal = ErasureJournal(path, b"k" * 32)
    first, second = (uuid4(), datetime(2026, 1, 1, tzinfo=UTC)), (uuid4(), datetime.now(UTC))
    journal.append([first])
    whole = path.read_bytes()
    path.write_bytes(whole + whole[: len(whole) // 2])
    assert journal.read().erased == {first[0].hex: first[1].isoformat()}
    journal.append([second])
    assert path.read_bytes().count(b"\n") == 2
    assert journal.read().erased == {s.hex: at.isoformat() for s, at in (first, second)}
    assert path.stat().st_mode & 0o777 == 0o600


def _append_many(path: Path, sids: list[str]) -> None:
    journal = ErasureJournal(path, b"k" * 32)
    for sid in sids:
        journal.append([(UUID(sid), datetime.now(UTC))])


def test_processes_appending_at_once_lose_no_line(tmp_path: Path) -> None:
    """The service's writer process, `worker` and a CLI `erase` may erase at the same
    instant: each append is whole, between the others'."""
    path = tmp_path / "erasures.jsonl"
    batches = [[uuid4().hex for _ in range(150)] for _ in range(3)]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(path, b)) for b in batches]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert set(ErasureJournal(path, b"k" * 32).read().erased) == {s for b in batches for s in b}


def test_a_master_key_rotation_keeps_the_journal_valid(tmp_path: Path) -> None:
    """Sealed under the pseudonym key, which a rotation re-wraps and keeps: the journal
    written before a rotation still verifies after it, and still destroys the key in a
    backup from before both (restored with the master key it was made under)."""
    journal = tmp_path / "erasures.jsonl"
    env = {"LEDGER_ERASURE_JOURNAL": str(journal)}
    data, backup, _, wrapped = backed_up_then_erased(tmp_path, **env)
    old_key = (data / "master.key").read_bytes()
    rotated = run(data, "master-key", "rotate", **env)
    assert rotated.returncode == 0, rotated.stderr
    assert (data / "master.key").read_bytes() != old_key
    checked = run(data, "verify", **env)
    assert checked.returncode == 0, checked.stderr
    restored = restore(backup, data, tmp_path / "restored")
    (restored / "master.key").write_bytes(old_key)
    after = trail(restored, REFERENCE, **env)
    assert after["facts"][0]["personal_data"] == {"key_erased": True}  # type: ignore[index]
    assert files_containing(restored, wrapped) == []


def replayed(store: Path, master: bytes, journal: Path) -> int:
    """What a ledger does with its key store as it opens (`ConsentLedger.finish_erasures`)."""
    keys = KeyStore(store, master, journal)
    try:
        return keys.replay_journal()
    finally:
        keys.close()


def test_a_restored_key_store_reads_the_journal_on_from_where_it_was_backed_up(
    tmp_path: Path,
) -> None:
    """Every ledger that opens replays the journal, so the key store remembers how far it
    applied it and reads only what came after; a restored store remembers where its backup
    was, so it reads the erasures made since, which are the ones it lacks."""
    master, journal = os.urandom(32), tmp_path / "erasures.jsonl"
    store = tmp_path / "keys.db"
    keys = KeyStore(store, master, journal)
    first, second = uuid4(), uuid4()
    keys.add_keys({first: os.urandom(32), second: os.urandom(32)})
    keys.erase(first, datetime.now(UTC))
    keys.close()
    replayed(store, master, journal)  # a ledger opening: applied up to here
    with contextlib.closing(sqlite3.connect(store)) as db:
        (applied,) = db.execute(
            "SELECT value FROM meta WHERE name='erasure_journal_applied'"
        ).fetchone()
    assert int(bytes(applied).split(b":")[0]) == journal.stat().st_size
    backup = tmp_path / "backup.db"
    shutil.copy(store, backup)
    keys = KeyStore(store, master, journal)
    keys.erase(second, datetime.now(UTC))
    keys.close()

    store.unlink()
    shutil.copy(backup, store)
    with contextlib.closing(KeyStore(store, master)) as restored:
        assert restored.open_keys([second]) != {}  # the backup's key, again
    assert replayed(store, master, journal) == 1
    keys = KeyStore(store, master, journal)
    assert keys.open_keys([first, second]) == {}
    keys.close()
    assert replayed(store, master, journal) == 0


def test_a_journal_put_in_place_of_the_one_applied_is_read_whole(tmp_path: Path) -> None:
    """Where the store's journal was replaced (by another copy of the same ledger's, its
    lines in another order), the point it remembers is no longer the end of its last line:
    reading on from there would skip an erasure the new file holds before it."""
    master, journal = os.urandom(32), tmp_path / "erasures.jsonl"
    store, twin = tmp_path / "keys.db", tmp_path / "twin.db"
    keys = KeyStore(store, master, journal)
    first, second, third = uuid4(), uuid4(), uuid4()
    keys.add_keys({sid: os.urandom(32) for sid in (first, second, third)})
    keys.close()
    shutil.copy(store, twin)  # the same pseudonym key: its journal lines verify here
    keys = KeyStore(store, master, journal)
    keys.erase(first, datetime.now(UTC))
    keys.erase(second, datetime.now(UTC))
    keys.close()
    replayed(store, master, journal)  # applied up to the end of both lines
    other = tmp_path / "other.jsonl"
    keys = KeyStore(twin, master, other)
    keys.erase(third, datetime.now(UTC))
    keys.close()
    journal.write_bytes(other.read_bytes() + journal.read_bytes())

    keys = KeyStore(store, master, journal)
    assert keys.replay_journal() == 1
    assert keys.open_keys([first, second, third]) == {}
    keys.close()


def test_a_backup_says_what_its_restore_will_do_with_later_erasures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    said = {}
    for name, journal in (
        ("none", ""),
        ("inside", str(data / "erasures.jsonl")),
        ("apart", str(tmp_path / "erasures.jsonl")),
    ):
        out = run(data, "backup", "--into", str(tmp_path / name), LEDGER_ERASURE_JOURNAL=journal)
        assert out.returncode == 0, out.stderr
        said[name] = [line for line in out.stdout.splitlines() if "erasure" in line]
    assert said == {
        "none": [
            "erasures made after this backup are forgotten by a restore of it: set "
            "LEDGER_ERASURE_JOURNAL to a file on another disk to keep them"
        ],
        "inside": [
            f"the erasure journal {data / 'erasures.jsonl'} is in the data directory: a restore "
            "that replaces the directory loses it and the erasures made after this backup; "
            "keep it on another disk"
        ],
        "apart": [
            f"not copied: the erasure journal {tmp_path / 'erasures.jsonl'}; a restore of this "
            "backup reads it to destroy the keys of people erased after it"
        ],
    }


def test_an_erasure_stopped_after_its_journal_line_is_finished_from_it(tmp_path: Path) -> None:
    """The line is on disk before the key goes: a process killed between the two leaves the
    key in the key store and the erasure in the journal, and the next ledger to open
    finishes it."""
    journal = tmp_path / "erasures.jsonl"
    env = {"LEDGER_ERASURE_JOURNAL": str(journal)}
    data = tmp_path / "data"
    assert run(data, "init", **env).returncode == 0
    record(data, grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}), **env)
    sid = str(trail(data, REFERENCE, **env)["sid"])
    wrapped = wrapped_key(data, sid)
    stopped = run(
        data,
        *("erase", REFERENCE, "--tenant", "demo", "--ground", "consent_withdrawn"),
        LEDGER_FAILPOINT="erasure.journalled:1",
        **env,
    )
    assert stopped.returncode == 99, stopped
    assert [orjson.loads(line)["sid"] for line in journal.read_bytes().splitlines()] == [sid]
    assert files_containing(data, wrapped) != []
    assert trail(data, REFERENCE, **env)["erased"] is True
    assert files_containing(data, wrapped) == []


def _full_disk(times: int) -> Callable[[ErasureJournal, Iterable[object]], None]:
    """`ErasureJournal.append` with its disk full the next `times` calls (as it reports
    os.write's ENOSPC): the key store's own code runs, only the file under it fails."""
    real, left = ErasureJournal.append, [times]

    def append(journal: ErasureJournal, erasures: Iterable[object]) -> None:
        if left[0]:
            left[0] -= 1
            raise JournalUnwritable(
                f"the erasure journal cannot be written: {os.strerror(errno.ENOSPC)}"
            )
        real(journal, erasures)  # type: ignore[arg-type]

    return append


def test_a_journal_that_cannot_be_written_keeps_no_key_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the journal: the keys are destroyed all the same and the storage
    failure raised (the caller is told to retry); the store forgets how far it applied the
    journal, so the next ledger to open reads it whole and writes the missing erasure."""
    master, journal = os.urandom(32), tmp_path / "erasures.jsonl"
    store = tmp_path / "keys.db"
    first, second = uuid4(), uuid4()
    keys = KeyStore(store, master, journal)
    keys.add_keys({first: os.urandom(32), second: os.urandom(32)})
    keys.erase(first, datetime.now(UTC))
    keys.close()
    assert replayed(store, master, journal) == 0  # applied up to the first erasure

    keys = KeyStore(store, master, journal)
    monkeypatch.setattr(ErasureJournal, "append", _full_disk(1))
    with pytest.raises(JournalUnwritable) as raised:
        keys.erase(second, datetime.now(UTC))
    assert raised.value.reason == "the erasure journal cannot be written: No space left on device"
    assert keys.open_keys([second]) == {}
    keys.close()
    assert journal.read_bytes().count(b"\n") == 1  # the first erasure's line only

    monkeypatch.setattr(ErasureJournal, "append", _full_disk(1))  # full at the next open too
    assert replayed(store, master, journal) == 0  # opens all the same
    assert journal.read_bytes().count(b"\n") == 1
    monkeypatch.undo()
    assert replayed(store, master, journal) == 0
    lines = [orjson.loads(line)["sid"] for line in journal.read_bytes().splitlines()]
    assert sorted(lines) == sorted([first.hex, second.hex])


def test_a_journal_whose_directory_went_away_is_a_storage_failure_and_the_key_goes(
    settings: Settings, tmp_path: Path
) -> None:
    """The journal's volume unmounted under a running ledger: the erasure's fact is
    recorded, its key destroyed, and the caller told the storage failed (retry: the same
    event_id gets the first receipt), not an error of the ledger; the next ledger to open
    with the volume back writes the line."""
    volume = tmp_path / "volume"
    volume.mkdir()
    journal = volume / "erasures.jsonl"
    settings = dataclasses.replace(settings, erasure_journal=journal)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}))])
    sid = ledger.sid("demo", REFERENCE)
    shutil.rmtree(volume)
    erasure = parse_fact(erase(REFERENCE, event_id="x1"))
    with pytest.raises(StorageUnavailable) as raised:
        ledger.record([erasure])
    assert raised.value.reason == (
        "the erasure journal cannot be written: No such file or directory"
    )
    assert ledger.keystore.open_keys([sid]) == {}
    volume.mkdir()
    (again,) = ledger.record([erasure])
    assert isinstance(again, Receipt) and again.duplicate
    ledger.close()
    reopened = ConsentLedger(settings)
    reopened.close()
    assert _journalled(journal) == {sid.hex}


def test_an_erasure_whose_line_failed_while_another_ledger_opened_is_journalled_later(
    tmp_path: Path,
) -> None:
    """Two processes: one opens (reading the journal) while the other's erasure finds the
    journal's disk full. The opening one must not remember a point past that erasure, or
    every later open would read on from there and the erasure would never reach the
    journal."""
    master, journal = os.urandom(32), tmp_path / "erasures.jsonl"
    store = tmp_path / "keys.db"
    first, second, third = uuid4(), uuid4(), uuid4()
    keys = KeyStore(store, master, journal)
    keys.add_keys({sid: os.urandom(32) for sid in (first, second, third)})
    keys.erase(first, datetime.now(UTC))
    replayed(store, master, journal)  # applied up to the first erasure: the next reads on
    keys.erase(third, datetime.now(UTC))  # and finds this one after it
    keys.close()
    opening, other = KeyStore(store, master, journal), KeyStore(store, master, journal)
    real_read = ErasureJournal.read

    def read_while_the_other_erases(journal: ErasureJournal, start: int = 0) -> Read:
        read = real_read(journal, start)
        with (
            mock.patch.object(ErasureJournal, "append", _full_disk(1)),
            pytest.raises(JournalUnwritable),
        ):
            other.erase(second, datetime.now(UTC))
        return read

    with mock.patch.object(ErasureJournal, "read", read_while_the_other_erases):
        opening.replay_journal()
    opening.close()
    other.close()
    assert _journalled(journal) == {first.hex, third.hex}
    assert replayed(store, master, journal) == 0
    assert _journalled(journal) == {first.hex, second.hex, third.hex}


def test_the_setting_reads_a_path_or_nothing() -> None:
    assert Settings.from_env({}).erasure_journal is None
    assert Settings.from_env({"LEDGER_ERASURE_JOURNAL": ""}).erasure_journal is None
    assert Settings.from_env({"LEDGER_ERASURE_JOURNAL": "/j/e"}).erasure_journal == Path("/j/e")


# ---- a property: whatever the order of erasures, backups, restores, crashes and full disks,
# ---- no key of a subject the journal lists is readable once a ledger has opened

# (what, which subject or copy, whether the journal's disk is full, whether the command
# that does it opens a ledger first: most do, and opening replays the journal).
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "erase", "crash", "backup", "restore", "open", "tear"]),
        st.integers(0, 50),
        st.booleans(),
        st.booleans(),
    ),
    max_size=25,
)


def _journalled(journal: Path) -> set[str]:
    """The sids of the journal's complete lines, as the file holds them."""
    if not journal.exists():
        return set()
    return {orjson.loads(line)["sid"] for line in journal.read_bytes().split(b"\n")[:-1]}


@hypothesis_settings(max_examples=examples(200), deadline=None)
@given(ops=_OPS)
def test_no_journalled_subject_has_a_readable_key_after_any_history(
    ops: list[tuple[str, int, bool, bool]],
) -> None:
    """Key-store level, real files. `erase` with a full disk under the journal destroys the
    key without its line; `crash` writes the line and stops before the key goes; `restore`
    puts back any earlier copy of the key store; `tear` leaves half a line at the end. After
    every `open` (a ledger opening: the journal replayed, its own append possibly failing),
    no subject the journal lists has a key; and an erasure whose line was written is never
    lost from the journal."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        master, journal, store = os.urandom(32), root / "erasures.jsonl", root / "keys.db"
        subjects: list[UUID] = []
        copies: list[bytes] = []
        written: set[str] = set()  # erasures whose journal line was written
        KeyStore(store, master, journal).close()
        for what, which, full, opens in ops:
            keys = KeyStore(store, master, journal)
            try:
                if opens:
                    keys.replay_journal()
                    listed = _journalled(journal)
                    assert {s.hex for s in keys.open_keys(subjects)}.isdisjoint(listed)
                    assert set(keys.erasures()) <= listed
                held = sorted(keys.open_keys(subjects))
                if what == "add":
                    subjects.append(uuid4())
                    keys.add_keys({subjects[-1]: os.urandom(32)})
                elif what == "erase" and held:
                    sid = held[which % len(held)]
                    if full:
                        with (
                            mock.patch.object(ErasureJournal, "append", _full_disk(1)),
                            pytest.raises(JournalUnwritable),
                        ):
                            keys.erase(sid, datetime.now(UTC))
                    else:
                        keys.erase(sid, datetime.now(UTC))
                        written.add(sid.hex)
                elif what == "crash" and held:
                    sid = held[which % len(held)]
                    assert keys._journal is not None
                    keys._journal.append([(sid, datetime.now(UTC))])  # then the process died
                    written.add(sid.hex)
                elif what == "open":
                    if full:
                        with mock.patch.object(ErasureJournal, "append", _full_disk(1)):
                            keys.replay_journal()
                    else:
                        keys.replay_journal()
                    listed = _journalled(journal)
                    assert {s.hex for s in keys.open_keys(subjects)}.isdisjoint(listed)
                    if not full:
                        assert set(keys.erasures()) <= listed
                elif what == "tear":
                    with open(journal, "ab") as f:
                        f.write(b'{"sid":"' + uuid4().hex.encode()[:20])
            finally:
                keys.close()
            if what == "backup":
                copies.append(store.read_bytes())  # closed: no WAL beside it
            elif what == "restore" and copies:
                store.write_bytes(copies[which % len(copies)])
            assert written <= _journalled(journal)
