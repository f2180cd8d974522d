"""`consent-ledger restore`: a backup put back as the data directory, opened and verified
before it takes the directory's name; every refusal leaves nothing behind."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import orjson
import pytest

from tests.cli_support import run
from tests.facts import grant

NAME = "Karimov Jasur Anvarovich"
REFERENCE = "+998909998877"


def record(data: Path, *facts: dict[str, object], **env: str) -> None:
    out = run(data, "record", "-", stdin="\n".join(orjson.dumps(f).decode() for f in facts), **env)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Path, Path]:
    """A data directory with two people's grants, and a backup of it."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    record(
        data,
        grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}),
        grant("other", event_id="g2"),
    )
    backup = tmp_path / "backup"
    out = run(data, "backup", "--into", str(backup))
    assert out.returncode == 0, out.stderr
    return data, backup


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if ".restoring-" in p.name)


def test_a_backup_restores_opened_and_verified(backed_up: tuple[Path, Path]) -> None:
    data, backup = backed_up
    root = orjson.loads(run(data, "verify", "--json").stdout)["merkle_root"]
    record(data, grant("later", event_id="g3"))  # after the backup: not in the restore
    restored = data.parent / "restored"
    out = run(restored, "restore", str(backup), "--master-key", str(data / "master.key"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["ledger.db", "keys.db"]
    assert f"master.key       from {data / 'master.key'}" in lines
    assert f"verify: OK, 4 facts, merkle root {root}" in lines
    assert lines[-1] == f"restored into {restored}"
    assert (restored / "master.key").stat().st_mode & 0o777 == 0o600
    trail = orjson.loads(run(restored, "trail", REFERENCE, "--tenant", "demo", "--json").stdout)
    assert trail["facts"][0]["personal_data"] == {"personal_data": {"full_name": NAME}}
    absent = run(restored, "trail", "later", "--tenant", "demo", "--json")
    assert absent.returncode == 3, absent
    assert leftovers(data.parent) == []


def test_a_restore_replays_the_erasure_journal(backed_up: tuple[Path, Path]) -> None:
    data, backup = backed_up
    journal = data.parent / "erasures.jsonl"
    erased = run(
        data,
        *("erase", REFERENCE, "--tenant", "demo", "--ground", "subject_request"),
        LEDGER_ERASURE_JOURNAL=str(journal),
    )
    assert erased.returncode == 0, erased.stderr
    restored = data.parent / "restored"
    out = run(
        restored,
        *("restore", str(backup), "--master-key", str(data / "master.key")),
        LEDGER_ERASURE_JOURNAL=str(journal),
    )
    assert out.returncode == 0, out.stderr
    assert (
        "erasure journal: 1 keys of subjects erased after this backup destroyed again"
        in out.stdout.splitlines()
    )
    assert (
        "restore: warning: the log lacks 1 erasures the key store holds: `consent-ledger "
        "verify` names them, to record each again" in out.stderr
    )
    trail = orjson.loads(run(restored, "trail", REFERENCE, "--tenant", "demo", "--json").stdout)
    assert trail["facts"][0]["personal_data"] == {"key_erased": True}


def test_a_backup_whose_log_was_altered_is_not_restored(backed_up: tuple[Path, Path]) -> None:
    """Its log verified, whatever its manifest says: here a backup made before manifests
    (none), whose log a byte was flipped in."""
    data, backup = backed_up
    (backup / "manifest.json").unlink()
    with sqlite3.connect(backup / "ledger.db") as db:
        (position, state) = db.execute(
            "SELECT rowid, state FROM stored_events ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        i = len(state) // 2
        db.execute(
            "UPDATE stored_events SET state=? WHERE rowid=?",
            (state[:i] + bytes([state[i] ^ 0x01]) + state[i + 1 :], position),
        )
    db.close()
    restored = data.parent / "restored"
    out = run(restored, "restore", str(backup), "--master-key", str(data / "master.key"))
    assert (out.returncode, out.stderr.strip()) == (
        4,
        f"consent-ledger: restore: the backup's log is BROKEN (altered) at position {position}; "
        "nothing restored",
    )
    assert not restored.exists() and leftovers(data.parent) == []


@pytest.mark.parametrize(
    "case",
    [
        "not empty",
        "not a backup",
        "no master key",
        "both",
        "another master key",
        "no file",
        "not a key",
    ],
)
def test_a_restore_refused_leaves_nothing(backed_up: tuple[Path, Path], case: str) -> None:
    data, backup = backed_up
    restored = data.parent / "restored"
    key = str(data / "master.key")
    env: dict[str, str] = {}
    args = ["restore", str(backup), "--master-key", key]
    expected = ""
    if case == "not empty":
        restored.mkdir()
        (restored / "notes.txt").write_text("kept")
        expected = f"{restored} is not an empty directory: a restore never overwrites"
    elif case == "not a backup":
        args[1] = str(data.parent)
        expected = f"{data.parent} holds no keys.db: not a backup `consent-ledger backup` made"
    elif case == "no master key":
        args = args[:2]
        expected = (
            "a backup holds no master key: give --master-key FILE (the copy of master.key "
            "kept apart from backups) or set LEDGER_MASTER_KEY"
        )
    elif case == "both":
        env["LEDGER_MASTER_KEY"] = "A" * 43 + "="
        expected = "--master-key FILE and LEDGER_MASTER_KEY both name the master key"
    elif case == "another master key":
        other = data.parent / "other"
        assert run(other, "init").returncode == 0
        args[3] = str(other / "master.key")
        expected = "does not open"
    elif case == "not a key":
        (data.parent / "raw.key").write_bytes(b"\xe2" + bytes(31))
        args[3] = str(data.parent / "raw.key")
        expected = f"--master-key {data.parent / 'raw.key'} must be base64"
    elif case == "no file":
        args[3] = str(data.parent / "missing.key")
        expected = f"--master-key {data.parent / 'missing.key'}: No such file or directory"
    out = run(restored, *args, **env)
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("consent-ledger: configuration: ") and expected in line, line
    assert leftovers(data.parent) == []
    if case == "not empty":
        assert sorted(p.name for p in restored.iterdir()) == ["notes.txt"]
    else:
        assert not restored.exists()


def test_a_kafka_mode_restore_opens_the_key_store_alone(backed_up: tuple[Path, Path]) -> None:
    """In Kafka mode a backup is the key store, API keys and access log (the topic is the
    log): no broker is needed to put it back, and an embedded backup is refused."""
    data, backup = backed_up
    kafka = {"LEDGER_BACKEND": "kafka", "KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    key_store_only = data.parent / "kafka-backup"
    key_store_only.mkdir()
    (key_store_only / "keys.db").write_bytes((backup / "keys.db").read_bytes())
    restored = data.parent / "restored"
    key = str(data / "master.key")
    out = run(restored, "restore", str(key_store_only), "--master-key", key, **kafka)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2:] == [
        "no manifest.json (a backup made before manifests): its files are taken as they are",
        "Kafka mode: the replica and views are rebuilt from the ledger topic when a ledger "
        "next opens",
        f"restored into {restored}",
    ]
    assert sorted(p.name for p in restored.iterdir()) == ["keys.db", "master.key"]
    embedded = run(data.parent / "elsewhere", "restore", str(backup), "--master-key", key, **kafka)
    assert (embedded.returncode, embedded.stderr.strip()) == (
        2,
        f"consent-ledger: configuration: {backup} holds ledger.db, the log of an embedded "
        "ledger: restore it with LEDGER_BACKEND=embedded",
    )


def test_a_restore_says_how_many_api_keys_it_brings_back_valid(
    backed_up: tuple[Path, Path],
) -> None:
    """A revocation made after the backup is undone by restoring it: said, with how many
    keys the restored directory accepts, so that the operator revokes again."""
    data, _ = backed_up
    made = [run(data, "keys", "create", "--tenant", "demo", "--role", "publisher") for _ in "abc"]
    assert all(out.returncode == 0 for out in made), made
    listed = orjson.loads(run(data, "keys", "list", "--json").stdout)
    assert run(data, "keys", "revoke", listed[2]["key_id"]).returncode == 0  # stays revoked
    backup = data.parent / "with-keys"
    assert run(data, "backup", "--into", str(backup)).returncode == 0
    assert run(data, "keys", "revoke", listed[0]["key_id"]).returncode == 0  # undone
    restored = data.parent / "restored"
    out = run(restored, "restore", str(backup), "--master-key", str(data / "master.key"))
    assert out.returncode == 0, out.stderr
    assert (
        "API keys: 2 active as at the backup: any revoked since are valid again; "
        "`consent-ledger keys list` shows them, `keys revoke` revokes one"
    ) in out.stdout.splitlines()


def test_a_backup_is_restored_only_as_its_signed_manifest_says(
    backed_up: tuple[Path, Path],
) -> None:
    data, backup = backed_up
    manifest = orjson.loads((backup / "manifest.json").read_bytes())
    assert [f["name"] for f in manifest["files"]] == ["ledger.db", "keys.db"]
    key = str(data / "master.key")
    restored = data.parent / "restored"
    out = run(restored, "restore", str(backup), "--master-key", key)
    assert out.returncode == 0, out.stderr
    assert (
        f"manifest: every file as the backup of {manifest['made_at']} wrote it, signed"
        in out.stdout.splitlines()
    )


def _re_signed(manifest: dict[str, object]) -> dict[str, object]:
    """The manifest signed again by a key of the attacker's: files changed to match."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger.backup_manifest import _message
    from ledger.checkpoint import public_key_text

    key = Ed25519PrivateKey.generate()
    body = {k: v for k, v in manifest.items() if k != "signature"}
    body["public_key"] = public_key_text(key.public_key())
    return {**body, "signature": base64.b64encode(key.sign(_message(body))).decode()}


@pytest.mark.parametrize(
    "change", ["a key added to api_keys.db", "keys.db altered", "extra file", "re-signed", "forged"]
)
def test_a_backup_changed_since_it_was_made_is_refused(
    backed_up: tuple[Path, Path], change: str
) -> None:
    """An API key slipped into a backup would work once it is restored; a key store with a
    flipped bit makes people's data unreadable. Each is refused, exit 4, nothing left."""
    data, _ = backed_up
    assert run(data, "keys", "create", "--tenant", "demo", "--role", "admin").returncode == 0
    backup = data.parent / "signed"
    assert run(data, "backup", "--into", str(backup)).returncode == 0
    manifest_path = backup / "manifest.json"
    manifest = orjson.loads(manifest_path.read_bytes())
    said = ""
    if change == "a key added to api_keys.db":
        with sqlite3.connect(backup / "api_keys.db") as db:
            db.execute(
                "INSERT INTO api_keys SELECT 'intruder', secret_sha256, tenant, roles, "
                "created_at, NULL, expires_at FROM api_keys LIMIT 1"
            )
        db.close()
        said = "api_keys.db is not the file manifest.json lists (its SHA-256 differs)"
    elif change == "keys.db altered":
        raw = bytearray((backup / "keys.db").read_bytes())
        raw[len(raw) // 2] ^= 0x01
        (backup / "keys.db").write_bytes(bytes(raw))
        said = "keys.db is not the file manifest.json lists (its SHA-256 differs)"
    elif change == "extra file":
        (backup / "views.db").write_bytes(b"")
        said = "views.db is not listed in manifest.json"
    elif change == "re-signed":
        manifest_path.write_bytes(orjson.dumps(_re_signed(manifest)))
        said = "manifest.json is signed by a key this backup's key store never held"
    elif change == "forged":
        manifest["made_at"] = "2020-01-01T00:00:00+00:00"
        manifest_path.write_bytes(orjson.dumps(manifest))
        said = "manifest.json's signature does not verify"
    restored = data.parent / "restored"
    out = run(restored, "restore", str(backup), "--master-key", str(data / "master.key"))
    assert (out.returncode, out.stderr.strip()) == (
        4,
        f"consent-ledger: restore: the backup is not as it was made: {said}; nothing restored",
    )
    assert not restored.exists() and leftovers(data.parent) == []


@pytest.mark.parametrize(
    "manifest",
    [
        b"not json",
        b"[]",
        b'{"format": 1}',
        b'{"format": 1, "files": [{"name": 5, "sha256": "x"}],'
        b' "made_at": "t", "public_key": "k", "signature": "s"}',
        b'{"format": 1, "files": [], "public_key": "k", "signature": "s"}',
    ],
    ids=["not json", "not an object", "no files", "a name not text", "no made_at"],
)
def test_a_manifest_that_is_not_one_is_refused_in_one_line(
    backed_up: tuple[Path, Path], manifest: bytes
) -> None:
    data, backup = backed_up
    (backup / "manifest.json").write_bytes(manifest)
    restored = data.parent / "restored"
    out = run(restored, "restore", str(backup), "--master-key", str(data / "master.key"))
    assert (out.returncode, out.stderr.strip()) == (
        4,
        "consent-ledger: restore: the backup is not as it was made: manifest.json is not a "
        "manifest `consent-ledger backup` wrote; nothing restored",
    )
    assert not restored.exists() and leftovers(data.parent) == []


WHO = ("who", "--tenant", "demo", "--purpose", "marketing", "--at", "2026-01-01T00:00:00Z")


def _who(data: Path) -> object:
    out = run(data, *WHO, "--json")
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


def test_a_backup_restores_its_views_with_its_log(backed_up: tuple[Path, Path]) -> None:
    """A running service's data directory has views: they come back with the log they were
    built from, checked against it, and answer as they did."""
    data, _ = backed_up
    before = _who(data)  # builds the views
    backup = data.parent / "with-views"
    assert run(data, "backup", "--into", str(backup)).returncode == 0
    manifest = orjson.loads((backup / "manifest.json").read_bytes())
    assert [f["name"] for f in manifest["files"]] == ["views.db", "ledger.db", "keys.db"]
    restored = data.parent / "restored"
    out = run(restored, "restore", str(backup), "--master-key", str(data / "master.key"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[0] == "views.db"
    assert _who(restored) == before


@pytest.mark.parametrize("views", ["ahead of its log", "of another log"])
def test_a_backup_whose_views_are_not_of_its_log_is_refused(
    backed_up: tuple[Path, Path], views: str
) -> None:
    """A backup made before manifests (its files taken as they are), or put together by
    hand, whose views.db was built from another log than its ledger.db: refused, exit 4,
    nothing left. The refusal named the restore's hidden directory, gone by then, and told
    the operator to run `project` there."""
    data, backup = backed_up
    if views == "ahead of its log":
        source = data
        record(data, grant("later", event_id="g3"))
        said = "they stand at log position 5, where the log ends at 4"
    else:
        source = data.parent / "other"
        assert run(source, "init").returncode == 0
        record(source, grant("someone", event_id="o1"), grant("else", event_id="o2"))
        said = "the log's fact at position 4 is not the one they applied"
    _who(source)  # builds its views
    (backup / "views.db").write_bytes((source / "views.db").read_bytes())
    (backup / "manifest.json").unlink()
    restored = data.parent / "restored"
    out = run(restored, "restore", str(backup), "--master-key", str(data / "master.key"))
    assert (out.returncode, out.stderr.strip()) == (
        4,
        "consent-ledger: restore: the backup is not whole: its views.db was not built from "
        f"its ledger.db: {said}; restore a copy of the backup without views.db, whose views "
        "are built again from the log; nothing restored",
    )
    assert not restored.exists() and leftovers(data.parent) == []


def test_views_not_of_their_log_cross_a_process_pipe_whole() -> None:
    """What a restore reads of these refusals (a place, what was found) survives pickling,
    as an error sent by another process is; ViewsOfAnotherLog did not unpickle, and
    ViewsAheadOfLog took its message for its path and lost its place."""
    import pickle

    from projections.store import ViewsAheadOfLog, ViewsOfAnotherLog

    ahead = pickle.loads(pickle.dumps(ViewsAheadOfLog("views.db", 9, 4)))
    assert (str(ahead), ahead.position, ahead.end) == (
        str(ViewsAheadOfLog("views.db", 9, 4)),
        9,
        4,
    )
    another = ViewsOfAnotherLog("views.db", "the fact at 3 differs", "restored?")
    again = pickle.loads(pickle.dumps(another))
    assert type(again) is ViewsOfAnotherLog
    assert (str(again), again.why) == (str(another), "the fact at 3 differs")
