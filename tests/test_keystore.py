"""The master key, pseudonyms and data keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.keystore import ErasedSubjectError, KeyStore, load_master_key, seal, unseal
from ledger.settings import Settings, SettingsError
from tests.cli_support import file_size_limit, run
from tests.examples import examples
from tests.facts import grant


def test_master_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    key = load_master_key(settings)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(settings.master_key_path).st_mode) == 0o600
    assert load_master_key(settings) == key


def test_a_master_key_file_the_disk_could_not_take_is_not_left_cut_short(tmp_path: Path) -> None:
    """Before, a full disk left master.key with part of a key (here, 10 bytes): every later
    start failed on it, and had it been cut short after the key store was written, its data
    keys would have been lost. Now it appears whole or not at all."""
    data = tmp_path / "d"
    started = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "init"],
        env={**os.environ, "LEDGER_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=file_size_limit(10),
    )
    assert started.returncode == 6, started.stderr
    assert "storage unavailable" in started.stderr
    assert sorted(p.name for p in data.iterdir()) == []
    assert run(data, "init").returncode == 0
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(("master", "."))) == [
        "master.key"
    ]


def test_a_master_key_file_is_made_where_hard_links_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the file system refuses hard links, as vfat does."""

    def no_links(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    settings = Settings(data_dir=tmp_path / "d")
    key = load_master_key(settings)
    assert load_master_key(settings) == key
    assert stat.S_IMODE(os.stat(settings.master_key_path).st_mode) == 0o600
    assert [p.name for p in settings.data_dir.iterdir()] == ["master.key"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_master_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    data = tmp_path / "d"
    assert run(data, "init").returncode == 0
    path = Settings(data_dir=data).master_key_path
    secret = path.read_text().strip()
    path.chmod(mode)

    with pytest.raises(SettingsError, match=f"mode {mode:04o}"):
        load_master_key(Settings(data_dir=data))
    out = run(data, "verify")
    assert out.returncode == 2
    assert out.stderr.startswith("consent-ledger: configuration: ") and "chmod 600" in out.stderr
    assert secret not in out.stderr
    path.chmod(0o600)
    assert run(data, "verify").returncode == 0


@pytest.mark.parametrize(
    "content",
    # Fixed bytes, not random: xdist's workers must collect the same parameters.
    [bytes(range(200, 232)), b"\xff\xfe not text", b"short"],
    ids=["raw key bytes", "not text", "short"],
)
def test_a_master_key_file_that_is_no_key_is_said_in_one_line(
    tmp_path: Path, content: bytes
) -> None:
    """Raw bytes in master.key (the key written undecoded, another file put in its place)
    were a UnicodeDecodeError traceback from every command; they are a configuration error
    like any key that is not base64 of 32 bytes."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "master.key").write_bytes(content)
    (data / "master.key").chmod(0o600)
    out = run(data, "verify")
    assert out.returncode == 2, out
    assert out.stderr.strip() in (
        f"consent-ledger: configuration: {data / 'master.key'} must be base64",
        f"consent-ledger: configuration: {data / 'master.key'} must hold 32 bytes "
        "(base64 of a 256-bit key)",
    )


def test_master_key_from_environment(tmp_path: Path) -> None:
    raw = os.urandom(32)
    settings = Settings(data_dir=tmp_path, master_key=base64.b64encode(raw).decode())
    assert load_master_key(settings) == raw
    assert not settings.master_key_path.exists()
    with pytest.raises(SettingsError, match="32 bytes"):
        load_master_key(Settings(data_dir=tmp_path, master_key=base64.b64encode(b"short").decode()))
    with pytest.raises(SettingsError, match="base64"):
        load_master_key(Settings(data_dir=tmp_path, master_key="not base64!"))


def test_a_missing_master_key_file_is_not_made_anew_for_a_key_store_that_exists(
    tmp_path: Path,
) -> None:
    """A data directory restored without its master key (a backup never holds it), or one
    whose key came from LEDGER_MASTER_KEY, now unset: a new key file was made, which opened
    nothing and, left in place, passed for the key. Refused, naming what to restore."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    (data / "master.key").unlink()
    refused = run(data, "verify")
    assert refused.returncode == 2, refused.stderr
    assert "master.key is missing but the key store keys.db exists" in refused.stderr
    assert not (data / "master.key").exists()


def test_wrong_master_key_is_a_clear_error(tmp_path: Path) -> None:
    KeyStore(tmp_path / "keys.db", os.urandom(32)).close()
    with pytest.raises(SettingsError, match="master key does not open"):
        KeyStore(tmp_path / "keys.db", os.urandom(32))


def test_sid_is_keyed_stable_and_tenant_bound(tmp_path: Path) -> None:
    master = os.urandom(32)
    store = KeyStore(tmp_path / "keys.db", master)
    sid = store.sid("demo", "+998901234567")
    assert sid == store.sid("demo", "+998901234567")
    assert sid != store.sid("acme", "+998901234567")
    store.close()
    assert KeyStore(tmp_path / "keys.db", master).sid("demo", "+998901234567") == sid
    # Another key store (another deployment) gives another pseudonym: the hash is keyed.
    assert KeyStore(tmp_path / "other.db", master).sid("demo", "+998901234567") != sid


def test_sids_and_digests_are_the_keyed_hashes_earlier_versions_computed(tmp_path: Path) -> None:
    """Every sid and idempotency digest already in a log was computed this way; however the
    key store computes them, it must give the same values."""
    store = KeyStore(tmp_path / "keys.db", os.urandom(32))
    key = store._pseudonym_key  # the reference needs the key itself

    @settings(max_examples=examples(200))
    @given(
        tenant=st.text(max_size=20), subject=st.text(max_size=60), content=st.binary(max_size=900)
    )
    def same_as_reference(tenant: str, subject: str, content: bytes) -> None:
        message = tenant.encode() + b"\x00" + subject.encode()
        assert (
            store.sid(tenant, subject).bytes == hmac.new(key, message, hashlib.sha256).digest()[:16]
        )
        assert store.digest(content) == hmac.new(key, content, hashlib.sha256).hexdigest()

    same_as_reference()
    store.close()


def test_sealed_data_is_bound_to_its_subject(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db", os.urandom(32))
    a, b = store.sid("demo", "a"), store.sid("demo", "b")
    store.add_keys({a: os.urandom(32), b: os.urandom(32)})
    keys = store.open_keys([a, b])
    sealed = seal(keys[a], a, {"email": "a@example.uz"})
    assert unseal(keys[a], a, sealed) == {"email": "a@example.uz"}
    with pytest.raises(Exception):  # noqa: B017 (cryptography's InvalidTag)
        unseal(keys[a], b, sealed)


def test_erased_subject_never_gets_a_key_again(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db", os.urandom(32))
    sid = store.sid("demo", "gone")
    store.add_keys({sid: os.urandom(32)})
    store.erase(sid, datetime.now(UTC))
    store.erase(sid, datetime.now(UTC))  # idempotent
    assert store.open_keys([sid]) == {}
    assert store.is_erased(sid)
    with pytest.raises(ErasedSubjectError):
        store.add_keys({sid: os.urandom(32)})


def test_a_key_store_whose_log_is_missing_is_refused_by_every_process(tmp_path: Path) -> None:
    """ledger.db lost (a restore without it), keys.db kept: every command made a new empty
    log, `verify` said "OK, 0 facts", and `serve` took new facts into it, each person's
    history started anew. Refused instead (exit 2), and no log file is made."""
    from tests.server_support import free_port

    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    assert run(data, "record", stdin=orjson.dumps(grant("someone")).decode()).returncode == 0
    for leftover in data.glob("ledger.db*"):
        leftover.unlink()
    for args in (
        ["verify"],
        ["init"],
        ["trail", "someone", "--tenant", "demo"],
        ["serve", "--port", str(free_port())],
    ):
        out = run(data, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("consent-ledger: configuration: the log "), out.stderr
        assert "holds subjects' keys" in out.stderr and out.stderr.count("\n") == 1
    assert not list(data.glob("ledger.db*"))
    fresh = tmp_path / "fresh"  # a first run, by contrast: its key store holds no subject
    assert run(fresh, "init").returncode == 0 and (fresh / "ledger.db").exists()


def test_a_log_whose_key_store_is_not_its_own_is_refused_by_every_process(
    tmp_path: Path,
) -> None:
    """keys.db lost (or another directory's): a new store's pseudonym key gave every person
    a new sid, so a withdrawal of a recorded grant was refused as `purpose_not_in_force`
    and a new grant split a person's history in two, while all their data read as erased.
    Refused instead, in one line (exit 2), by the CLI and by serve; a store that erased
    every subject it had is still the log's."""
    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.keystore import NotTheLogsKeyStore
    from tests.facts import erase, grant
    from tests.server_support import free_port

    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant("only-one", event_id="g1"))])
    ledger.record([parse_fact(erase("only-one", event_id="e1"))])
    ledger.close()
    ConsentLedger(settings).close()  # every key erased: still the log's store
    for leftover in data.glob("keys.db*"):
        leftover.unlink()
    with pytest.raises(NotTheLogsKeyStore, match="holds no key of any subject"):
        ConsentLedger(settings)
    with pytest.raises(NotTheLogsKeyStore):  # refused again: nothing was written
        ConsentLedger(settings)
    for args in (
        ["verify"],
        ["trail", "only-one", "--tenant", "demo"],
        ["serve", "--port", str(free_port())],
    ):
        out = run(data, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("consent-ledger: configuration: the key store ")
        assert out.stderr.count("\n") == 1, out.stderr


def test_another_directorys_key_store_is_refused_though_it_holds_keys(tmp_path: Path) -> None:
    """Two ledgers under one LEDGER_MASTER_KEY, and one's keys.db copied over the other's:
    it held keys, so it passed the check of an empty store, and every person of the log
    read as "key missing" while a new fact of theirs got a new sid. Refused (exit 2): the
    store never held the log's first subject."""
    master = base64.b64encode(os.urandom(32)).decode()
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for data, reference in ((ours, "ours-1"), (theirs, "theirs-1")):
        assert run(data, "init", LEDGER_MASTER_KEY=master).returncode == 0
        fact = orjson.dumps(grant(reference)).decode()
        assert run(data, "record", stdin=fact, LEDGER_MASTER_KEY=master).returncode == 0
    for leftover in ours.glob("keys.db*"):
        leftover.unlink()
    (ours / "keys.db").write_bytes((theirs / "keys.db").read_bytes())  # closed: no WAL
    out = run(ours, "verify", LEDGER_MASTER_KEY=master)
    assert out.returncode == 2, out.stderr
    assert "holds other subjects' keys, not the first of the log (nor its erasure)" in out.stderr
    assert run(theirs, "verify", LEDGER_MASTER_KEY=master).returncode == 0
