"""Master key rotation: the key store re-wrapped, nothing the log depends on changed; and
what an erasure or a rotation says when another process holds the key store open.

Against real key store files and the real `consent-ledger` process (and, parametrised, the
real broker: the records on the ledger topic must still verify after the rotation).
"""

from __future__ import annotations

import base64
import contextlib
import os
import sqlite3
import stat
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.failpoints import EXIT_STATUS
from ledger.keystore import (
    MASTER_ID,
    KeyStore,
    MasterKeyMismatch,
    derived_record_key,
    seal,
    unseal,
)
from ledger.receipt import Receipt
from ledger.settings import Settings, SettingsError
from tests.cli_support import run
from tests.facts import grant
from tests.keystore_support import reader_holding

EMAIL = "rotation.person@example.uz"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def stored_bytes(path: Path) -> bytes:
    """The key store as it lies on disk: the file and any WAL beside it."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_rotation_keeps_every_key_and_only_the_new_master_key_opens_the_store(
    tmp_path: Path,
) -> None:
    path, old, new = tmp_path / "keys.db", os.urandom(32), os.urandom(32)
    store = KeyStore(path, old)
    sids = [store.sid("demo", f"person-{i}") for i in range(25)]
    store.add_keys({sid: os.urandom(32) for sid in sids})
    sealed = {sid: seal(key, sid, {"email": EMAIL}) for sid, key in store.open_keys(sids).items()}
    signing = store.signing_key().public_key().public_bytes_raw()
    record_key = store.record_key()
    assert store.rotate(new) == 25
    store.close()

    with pytest.raises(MasterKeyMismatch):
        KeyStore(path, old)
    rotated = KeyStore(path, new)
    assert [rotated.sid("demo", f"person-{i}") for i in range(25)] == sids
    keys = rotated.open_keys(sids)
    assert {unseal(keys[sid], sid, text)["email"] for sid, text in sealed.items()} == {EMAIL}
    assert rotated.signing_key().public_key().public_bytes_raw() == signing
    assert rotated.record_key() == record_key
    with pytest.raises(SettingsError, match="the new master key is the one"):
        rotated.rotate(new)
    rotated.close()


def test_no_row_wrapped_by_the_retired_master_key_is_left_in_the_files(tmp_path: Path) -> None:
    path, old = tmp_path / "keys.db", os.urandom(32)
    store = KeyStore(path, old)
    store.add_keys({store.sid("demo", f"p{i}"): os.urandom(32) for i in range(300)})
    store.signing_key()
    store.record_key()
    with contextlib.closing(sqlite3.connect(path)) as db:
        wrapped = [row[0] for row in db.execute("SELECT wrapped FROM data_keys")]
        wrapped += [
            row[0] for row in db.execute("SELECT value FROM meta WHERE name != ?", (MASTER_ID,))
        ]
    assert len(wrapped) == 303
    assert all(w in stored_bytes(path) for w in wrapped)  # the search finds them before
    store.rotate(os.urandom(32))
    on_disk = stored_bytes(path)
    assert [w for w in wrapped if w in on_disk] == []
    store.close()


def test_a_process_on_the_retired_master_key_refuses_to_read_or_write_keys(
    tmp_path: Path,
) -> None:
    path, old, new = tmp_path / "keys.db", os.urandom(32), os.urandom(32)
    running = KeyStore(path, old)
    before = running.sid("demo", "before")
    running.add_keys({before: os.urandom(32)})
    rotating = KeyStore(path, old)
    rotating.rotate(new)
    rotating.close()

    assert not running.holds_store_master_key()
    after = running.sid("demo", "after")
    with pytest.raises(MasterKeyMismatch):
        running.add_keys({after: os.urandom(32)})
    with pytest.raises(MasterKeyMismatch):
        running.open_keys([before])
    running.close()
    fresh = KeyStore(path, new)
    assert fresh.holds_store_master_key()
    assert list(fresh.open_keys([before, after])) == [before]  # nothing written on the old key
    fresh.close()


def test_a_store_made_before_it_named_its_master_key_keeps_its_record_key(
    tmp_path: Path,
) -> None:
    """Stores made before 2026-12-02 have neither row; their ledger topics were MAC'd under
    the key derived from the master key, which the store must go on giving."""
    path, master = tmp_path / "keys.db", os.urandom(32)
    KeyStore(path, master).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # commits, then closes
        db.execute("DELETE FROM meta WHERE name IN (?, 'record_key')", (MASTER_ID,))
    assert KeyStore.master_key_id_of(path) is None
    with pytest.raises(MasterKeyMismatch):
        KeyStore(path, os.urandom(32))  # the pseudonym key shows the key is wrong
    store = KeyStore(path, master)
    assert store.record_key() == derived_record_key(master)
    assert KeyStore.master_key_id_of(path) is not None
    store.close()


@pytest.fixture
def recorded(data: Path, tmp_path: Path) -> Path:
    """A data directory (both backends) with one subject's grant, personal data included."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        orjson.dumps(grant("rot-1", personal_data={"email": EMAIL}, event_id="r1")).decode()
    )
    out = run(data, "record", str(facts))
    assert out.returncode == 0, out.stderr
    return data


def trail_emails(data: Path, **env: str) -> list[str]:
    out = run(data, "trail", "--tenant", "demo", "rot-1", "--json", **env)
    assert out.returncode == 0, out.stderr
    facts = orjson.loads(out.stdout)["facts"]
    return [row["personal_data"]["personal_data"]["email"] for row in facts]


def test_rotation_with_the_key_file(recorded: Path, tmp_path: Path) -> None:
    """On both backends: in Kafka mode the records written before the rotation and after it
    must verify under the same record MAC key."""
    old = (recorded / "master.key").read_text()
    out = run(recorded, "master-key", "rotate")
    assert out.returncode == 0, out.stderr
    assert "re-wrapped 1 data keys" in out.stdout
    key_file = recorded / "master.key"
    assert key_file.read_text() != old
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not (recorded / "master.key.next").exists()
    assert trail_emails(recorded) == [EMAIL]
    later = tmp_path / "later.jsonl"
    later.write_text(orjson.dumps(grant("rot-2", event_id="r2")).decode())
    assert run(recorded, "record", str(later)).returncode == 0
    verified = run(recorded, "verify")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    key_file.write_text(old)
    refused = run(recorded, "trail", "--tenant", "demo", "rot-1")
    assert refused.returncode == 2
    assert "the master key does not open the key store" in refused.stderr
    wrong = run(recorded, "master-key", "rotate")
    assert wrong.returncode == 2 and "does not open the key store" in wrong.stderr
    assert not (recorded / "master.key.next").exists()  # no half-begun rotation left


@pytest.mark.parametrize("backend_settings", ["embedded"], indirect=True)
def test_a_rotation_stopped_before_the_key_file_is_replaced_is_finished_by_running_again(
    recorded: Path,
) -> None:
    crashed = run(recorded, "master-key", "rotate", LEDGER_FAILPOINT="rotation.before_key_file:1")
    assert crashed.returncode == EXIT_STATUS
    assert (recorded / "master.key.next").exists()
    stuck = run(recorded, "trail", "--tenant", "demo", "rot-1")
    assert stuck.returncode == 2 and "master-key rotate` again" in stuck.stderr
    again = run(recorded, "master-key", "rotate")
    assert again.returncode == 0, again.stderr
    assert "already under the new master key" in again.stdout
    assert not (recorded / "master.key.next").exists()
    assert trail_emails(recorded) == [EMAIL]


@pytest.mark.parametrize("backend_settings", ["embedded"], indirect=True)
def test_rotation_with_the_key_in_the_environment(
    tmp_path: Path, backend_settings: Settings
) -> None:
    data = backend_settings.data_dir
    old, new = b64(os.urandom(32)), b64(os.urandom(32))
    assert run(data, "init", LEDGER_MASTER_KEY=old).returncode == 0
    facts = tmp_path / "facts.jsonl"
    facts.write_text(orjson.dumps(grant("rot-1", personal_data={"email": EMAIL})).decode())
    assert run(data, "record", str(facts), LEDGER_MASTER_KEY=old).returncode == 0

    missing = run(data, "master-key", "rotate", LEDGER_MASTER_KEY=old)
    assert missing.returncode == 2 and "LEDGER_NEW_MASTER_KEY is not set" in missing.stderr
    same = run(data, "master-key", "rotate", LEDGER_MASTER_KEY=old, LEDGER_NEW_MASTER_KEY=old)
    assert same.returncode == 2 and "the new master key is the one" in same.stderr
    out = run(data, "master-key", "rotate", LEDGER_MASTER_KEY=old, LEDGER_NEW_MASTER_KEY=new)
    assert out.returncode == 0, out.stderr
    assert "LEDGER_MASTER_KEY=LEDGER_NEW_MASTER_KEY's value" in out.stdout
    assert not (data / "master.key").exists()
    again = run(data, "master-key", "rotate", LEDGER_MASTER_KEY=old, LEDGER_NEW_MASTER_KEY=new)
    assert again.returncode == 0 and "already under the new master key" in again.stdout
    assert run(data, "trail", "--tenant", "demo", "rot-1", LEDGER_MASTER_KEY=old).returncode == 2
    assert trail_emails(data, LEDGER_MASTER_KEY=new) == [EMAIL]


def test_a_data_directory_without_a_key_store_has_nothing_to_rotate(tmp_path: Path) -> None:
    out = run(tmp_path / "empty", "master-key", "rotate")
    assert out.returncode == 2 and "there is nothing to rotate" in out.stderr
    assert not (tmp_path / "empty" / "master.key").exists()


def test_a_service_left_running_through_a_rotation_refuses_and_says_why(tmp_path: Path) -> None:
    """Its HTTP writer is a process of its own (the default): the refusal crosses the pipe."""
    old, new = os.urandom(32), os.urandom(32)
    settings = Settings(data_dir=tmp_path / "data", master_key=b64(old))
    ConsentLedger(settings).init_demo()
    api_keys = ApiKeys(keys_path(settings))
    key = api_keys.create("demo", {"admin"})[1]
    api_keys.close()
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        body = {k: v for k, v in grant("svc-1").items() if k != "tenant"}
        assert client.post("/v1/facts", json=body, headers=headers).status_code == 201
        rotating = KeyStore(settings.keystore_path, old)
        rotating.rotate(new)
        rotating.close()
        body = {k: v for k, v in grant("svc-2").items() if k != "tenant"}
        refused = client.post("/v1/facts", json=body, headers=headers)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "master_key_mismatch"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "another master key" in ready.json()["detail"]
    restarted = Settings(data_dir=tmp_path / "data", master_key=b64(new))
    with TestClient(create_app(restarted)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/facts", json=body, headers=headers).status_code == 201


def test_settings_keep_the_master_keys_out_of_their_repr(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, master_key="c2VjcmV0", new_master_key="bmV3")
    assert "c2VjcmV0" not in repr(settings) and "bmV3" not in repr(settings)


@pytest.mark.parametrize("backend_settings", ["embedded"], indirect=True)
def test_a_key_store_held_open_elsewhere_is_named_and_the_next_run_empties_its_wal(
    recorded: Path,
) -> None:
    keys = recorded / "keys.db"
    # A server's connection, idle: it keeps the WAL from being removed when the reader ends.
    idle = sqlite3.connect(keys)
    idle.execute("SELECT count(*) FROM meta").fetchone()
    with reader_holding(keys):
        erased = run(recorded, "erase", "rot-1", "--tenant", "demo", "--ground", "subject_request")
        rotated = run(recorded, "master-key", "rotate")
    assert erased.returncode == 6, erased.stderr
    assert rotated.returncode == 6, rotated.stderr
    for out in (erased, rotated):
        assert out.stderr.startswith("consent-ledger: key store busy: the key store is held open")
        assert "Traceback" not in out.stderr
    wal = recorded / "keys.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    # The rotation was committed, so its key file is in place all the same.
    assert not (recorded / "master.key.next").exists()
    assert run(recorded, "verify").returncode == 0
    again = run(recorded, "master-key", "rotate")
    assert again.returncode == 0 and "re-wrapped" in again.stdout
    assert wal.stat().st_size == 0
    idle.close()
    trail = run(recorded, "trail", "rot-1", "--tenant", "demo", "--json")
    assert orjson.loads(trail.stdout)["erased"] is True


def test_an_erasure_over_http_while_the_key_store_is_held_open_is_a_503(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    [receipt] = ledger.record([parse_fact(grant("held-1", personal_data={"email": EMAIL}))])
    ledger.close()
    assert isinstance(receipt, Receipt)
    api_keys = ApiKeys(keys_path(settings))
    headers = {"Authorization": f"Bearer {api_keys.create('demo', {'admin'})[1]}"}
    api_keys.close()
    erasure = {"ground": "subject_request", "event_id": "held-erasure"}
    with TestClient(create_app(settings)) as client:
        path = f"/v1/subjects/{receipt.sid}/erasure"
        with reader_holding(settings.keystore_path):
            held = client.post(path, json=erasure, headers=headers)
        assert held.status_code == 503, held.text
        assert held.json()["code"] == "key_store_busy"
        retried = client.post(path, json=erasure, headers=headers)
        assert retried.status_code == 200 and retried.json()["duplicate"] is True
        trail = client.get(f"/v1/subjects/{receipt.sid}/trail", headers=headers).json()
        assert trail["erased"] is True
