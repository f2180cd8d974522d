"""Per-subject data keys, pseudonyms, and crypto-shredding.

Personal data is sealed with the subject's own AES-256-GCM key; keys are stored wrapped by the
master key, in a SQLite file apart from the log. Erasure deletes the key row with
`secure_delete` on, so the wrapped key bytes are overwritten in the file, and records that the
`sid` was erased so no later write can quietly mint a new key for the same person.

The ledger's own secrets (the pseudonym key, the record MAC key, the signing key) are kept
the same way, so the master key only ever wraps: rotating it (`KeyStore.rotate`) re-wraps
every row and changes nothing the log or a published proof depends on. The store names the
master key that wraps it (`master_key_id`), and every write of a new key checks that name in
its own transaction, so a process still running on a retired master key refuses to write
rather than leave a key only the retired one opens. The signing key is replaced on its own
(`rotate_signing_key`), with a record of each hand-over kept beside it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ledger.erasure_journal import ErasureJournal, JournalUnwritable
from ledger.failpoints import failpoint
from ledger.fsync import fsync_path, write_new_private
from ledger.settings import Settings, SettingsError, ensure_dir
from ledger.sql import PAGE_CACHE_KIB, rows_in
from ledger.store_format import KEYS, StoreOfAnotherFormat, refuse_other_format, stamp_format

NONCE = 12
# The meta table's secrets, each wrapped by the master key with its own label as associated
# data (so one cannot be swapped for another), and the row naming the master key.
SECRETS = {"pseudonym_key": b"pk", "signing_key": b"sk", "record_key": b"rk"}
MASTER_ID = "master_key_id"
_log = logging.getLogger("consent_ledger.ledger")
# The erasure journal's MAC key, derived from the pseudonym key (`ledger.erasure_journal`).
_JOURNAL_INFO = b"consent-ledger/erasure-journal/v1"
# The meta row of how far this store applied the journal: "END:MAC" of its last line; and
# how many times an erasure's line could not be written (see `KeyStore.replay_journal`).
_JOURNAL_APPLIED = "erasure_journal_applied"
_JOURNAL_GAPS = "erasure_journal_gaps"
# Data keys re-wrapped per statement during a rotation (bounded memory at any store size).
_ROTATE_PAGE = 10_000
# How long a statement waits for another process's lock; and emptying the WAL after an
# erasure or rotation: tries for this long in all, each waiting up to _SHRED_TRY_MS for
# readers, with a short pause after a try that returned at once.
_BUSY_MS = 30_000
_SHRED_WAIT_S = 5.0
_SHRED_TRY_MS = 100
_SHRED_PAUSE_S = 0.01


class NotTheLogsKeyStore(SettingsError):
    """The log holds subjects, and the key store never held its first one's key: it is not
    theirs (a new, empty one, or another directory's)."""

    def __init__(self, path: str = "", empty: bool = True) -> None:
        held = (
            "holds no key of any subject"
            if empty
            else "holds other subjects' keys, not the first of the log (nor its erasure)"
        )
        super().__init__(
            f"the key store {path} {held}, but the log holds subjects' "
            "facts: it is not the key store they were sealed and named with (its pseudonym "
            "key would give every person a new sid and read all their data as lost); restore "
            "keys.db from the backup made with the log, or point LEDGER_DATA_DIR at the right "
            "directory"
        )


class LogMissing(SettingsError):
    """Embedded mode: no log file, and a key store that named subjects: the log was lost,
    or the directory is a Kafka-mode ledger's."""

    def __init__(self, log: str = "", path: str = "", kafka: bool = False) -> None:
        lost = (
            "this data directory served Kafka mode (its key store holds the ledger topic's "
            "record key): set LEDGER_BACKEND=kafka and KAFKA_BOOTSTRAP"
            if kafka
            else "the log they were recorded in is gone (a restore without it, or another "
            "directory's keys.db): restore ledger.db from the backup made with keys.db, or "
            "point LEDGER_DATA_DIR at the right directory"
        )
        super().__init__(
            f"the log {log} is missing, but the key store {path} holds subjects' keys; a new "
            f"empty log would verify as intact and start every person's history anew. {lost}"
        )


class KeyStoreBusyError(RuntimeError):
    """A change is committed, but the old page images (an erased key, rows wrapped by a
    retired master key) could not be removed from the WAL yet: another process holds it."""


class ErasedSubjectError(RuntimeError):
    """A key was requested for a subject whose key was destroyed."""


class MasterKeyMismatch(SettingsError):
    """The master key this process holds is not the one that wraps the key store: a wrong
    key, or the store was rotated to a new one after this process started."""

    def __init__(self, message: str = "") -> None:
        # The message as an argument only so the error pickles (the HTTP writer process).
        super().__init__(
            message
            or "the master key does not open the key store (a wrong LEDGER_MASTER_KEY, or the "
            "store was rotated to a new master key: restart with it; a rotation that stopped "
            "half-way is finished by running `consent-ledger master-key rotate` again)"
        )


def master_key_id(master_key: bytes) -> bytes:
    """A name for a master key that reveals nothing of it (HKDF, its own info string)."""
    return _derive(master_key, b"consent-ledger/master-key-id/v1", 16)


def derived_record_key(master_key: bytes) -> bytes:
    """The record MAC key as every store made before 2026-12-02 derived it from the master
    key; a store's `record_key` starts as this, so ledger topics written then still verify."""
    return _derive(master_key, b"consent-ledger/ledger-record/v1", 32)


def _derive(master_key: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master_key)


def load_master_key(settings: Settings) -> bytes:
    """The key that wraps every data key: from LEDGER_MASTER_KEY, else a 0600 file."""
    if settings.master_key:
        return decode_master_key(settings.master_key, "LEDGER_MASTER_KEY")
    path = settings.master_key_path
    if not path.exists():
        if settings.keystore_path.exists():
            # Not a first run: the store's keys are wrapped by a master key that was here
            # (or given in the environment), lost or left behind in a restore. A new one
            # opens none of them, and its file, left in place, would pass for the key.
            raise SettingsError(
                f"{path} is missing but the key store {settings.keystore_path.name} exists, "
                "its keys wrapped by the master key that was there: restore that file (a "
                "backup never holds it), or give the key in LEDGER_MASTER_KEY as before"
            )
        ensure_dir(path.parent)
        _create_master_key_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # As ssh refuses a private key others can read: whoever reads this file opens every
        # subject's personal data, so a copy made with the wrong umask must not go unnoticed.
        raise SettingsError(
            f"{path} is open to other users (mode {mode:04o}); it opens every subject's "
            "personal data: chmod 600 it, or give the key in LEDGER_MASTER_KEY"
        )
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        # Not text at all (a file of raw bytes, another file put in its place): said as
        # the base64 it must be, not as a traceback of every command.
        text = "\x00"
    return decode_master_key(text.strip(), str(path))


def _create_master_key_file(path: Path) -> None:
    """A new master key, in place only once whole and on disk.

    Data keys are wrapped with it as soon as it exists, and the key store commits them with
    an fsync: a key file cut short by a full disk, or lost with the page cache in a power
    failure, would leave them unopenable for good. So it is written and fsync'd under
    another name, linked to its own (which fails if another process got there first: its
    key is the one) and the directory fsync'd.
    """
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    staged.unlink(missing_ok=True)  # left by a process with this pid that stopped
    key_line = (base64.b64encode(os.urandom(32)).decode() + "\n").encode()
    try:
        write_new_private(staged, key_line)
        try:
            os.link(staged, path)
        except FileExistsError:
            return  # another process created it first; theirs is read
        except OSError:
            # A file system without hard links (vfat, some network shares): created in
            # place, never over another process's key, and on disk before it is used.
            try:
                write_new_private(path, key_line)
            except FileExistsError:
                return
        fsync_path(path.parent)
    finally:
        staged.unlink(missing_ok=True)


def decode_master_key(value: str, where: str) -> bytes:
    try:
        key = base64.b64decode(value, validate=True)
    except ValueError:
        raise SettingsError(f"{where} must be base64") from None
    if len(key) != 32:
        raise SettingsError(f"{where} must hold 32 bytes (base64 of a 256-bit key)")
    return key


_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS data_keys ("
    "sid TEXT PRIMARY KEY, wrapped BLOB NOT NULL, created_at TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS erased ("
    "sid TEXT PRIMARY KEY, erased_at TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS signing_key_transitions ("
    "seq INTEGER PRIMARY KEY, statement BLOB NOT NULL)",
)


class KeyStore:
    """Data keys by `sid`, the pseudonym key, and the list of erased `sid`s."""

    def __init__(self, path: Path, master_key: bytes, journal: Path | None = None) -> None:
        ensure_dir(path.parent)
        self._master = AESGCM(master_key)
        self._master_id = master_key_id(master_key)
        self._master_key = master_key
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=_BUSY_MS / 1000
        )
        try:
            stamped = refuse_other_format(self._db.cursor(), str(path), KEYS)
        except StoreOfAnotherFormat:
            self._db.close()
            raise
        # Overwrite deleted content so an erased key's bytes do not linger in free pages.
        self._db.execute("PRAGMA secure_delete=ON")
        # WAL: one fsync per new key instead of a rollback journal's several. Old page images
        # in the WAL are removed after each erasure by a truncating checkpoint (see erase).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Data keys are keyed by sid, a keyed hash: a batch's new keys land on pages all over
        # the table, which SQLite's default 2 MiB page cache mostly did not hold. A 64 MiB
        # cache took inserting a batch's keys from 11.7 to 6.7 us per key at 100,000 keys
        # (2026-12-01). A longer WAL checkpoint interval also cut the commit, but slowed
        # small commits (see ledger.sqlite_factory), so it stays SQLite's.
        self._db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        for statement in _TABLES:
            self._db.execute(statement)
        if not stamped:
            stamp_format(self._db.cursor(), str(path), KEYS, _TABLES)
        # The signing key as last read: its wrapped bytes, and the key they open to.
        self._signing: tuple[bytes, Ed25519PrivateKey] | None = None
        self._pseudonym_key = self._load_or_create_pseudonym_key()
        # Keyed once: each sid and digest copies this state instead of keying a new HMAC
        # (2.3 instead of 3.8 us for a sid, timeit, 2026-12-01; two per fact).
        self._keyed = hmac.new(self._pseudonym_key, digestmod=hashlib.sha256)
        self._journal = None
        if journal is not None:
            try:
                self._journal = ErasureJournal(
                    journal, _derive(self._pseudonym_key, _JOURNAL_INFO, 32)
                )
            except BaseException:
                self._db.close()
                raise

    def close(self) -> None:
        self._db.close()

    def _load_or_create_pseudonym_key(self) -> bytes:
        return self._load_or_create_secret("pseudonym_key")

    def record_key(self) -> bytes:
        """The MAC key of ledger records on Kafka (`ledger.kafka.records`).

        Stored, not derived on every start: a master key rotation must not change it, or
        every record already on the ledger topic would stop verifying. A store that has none
        yet starts from the derivation earlier versions used (`derived_record_key`).
        """
        return self._load_or_create_secret(
            "record_key", lambda: derived_record_key(self._master_key)
        )

    def signing_key(self) -> Ed25519PrivateKey:
        """The ledger's Ed25519 key, which signs checkpoints and evidence packages."""
        return self.signer()[0]

    def signer(self) -> tuple[Ed25519PrivateKey, list[dict[str, Any]]]:
        """The signing key and the signed hand-overs from each earlier one, read together.

        Kept like the pseudonym key, wrapped by the master key in this store (created on
        first use), so whoever can read the ledger's personal data can sign for it and no
        one else; the public half goes into every package it signs. Read again on every
        call (one small read transaction; signing is rare) rather than held: a rotation by
        another process takes effect at once, and a retired key signs nothing more.
        """
        with self._lock:
            self._db.execute("BEGIN")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE name='signing_key'").fetchone()
                transitions = [
                    orjson.loads(statement)
                    for (statement,) in self._db.execute(
                        "SELECT statement FROM signing_key_transitions ORDER BY seq"
                    )
                ]
            finally:
                self._db.execute("COMMIT")
        if row is None:
            self._load_or_create_secret("signing_key")
            return self.signer()
        return self._opened_signing_key(bytes(row[0])), transitions

    def _opened_signing_key(self, wrapped: bytes) -> Ed25519PrivateKey:
        if self._signing is None or self._signing[0] != wrapped:
            seed = self._unwrap(SECRETS["signing_key"], wrapped)
            self._signing = (wrapped, Ed25519PrivateKey.from_private_bytes(seed))
        return self._signing[1]

    def rotate_signing_key(
        self, hand_over: Callable[[Ed25519PrivateKey, Ed25519PrivateKey], dict[str, Any]]
    ) -> dict[str, Any]:
        """Replace the signing key with a new one; `hand_over(old, new)` is the statement,
        signed by both keys, that the new one follows the old, kept with the earlier ones.

        One transaction, so a store has either the old key and not the statement or both;
        the old key's bytes are then removed from the file and its WAL as an erased data
        key's are. The statements are not secret and not wrapped (a master key rotation
        leaves them be).
        """
        self.signing_key()  # a store that never signed gets its first key
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._check_master()
                (wrapped,) = self._db.execute(
                    "SELECT value FROM meta WHERE name='signing_key'"
                ).fetchone()
                old = self._opened_signing_key(bytes(wrapped))
                seed = os.urandom(32)
                statement = hand_over(old, Ed25519PrivateKey.from_private_bytes(seed))
                self._db.execute(
                    "UPDATE meta SET value=? WHERE name='signing_key'",
                    (self._wrap(SECRETS["signing_key"], seed),),
                )
                self._db.execute(
                    "INSERT INTO signing_key_transitions (statement) VALUES (?)",
                    (orjson.dumps(statement),),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it
                    self._db.execute("ROLLBACK")
                raise
            self._signing = None
            self.shred_wal()
        return statement

    def _load_or_create_secret(
        self, name: str, make: Callable[[], bytes] = lambda: os.urandom(32)
    ) -> bytes:
        """A 32-byte secret of the meta table, made once even by processes racing to."""
        label = SECRETS[name]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._check_master()
                row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
                if row is None:
                    key = make()
                    self._db.execute(
                        "INSERT INTO meta VALUES (?, ?)", (name, self._wrap(label, key))
                    )
                else:
                    key = self._unwrap(label, row[0])
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it
                    self._db.execute("ROLLBACK")
                raise
        return key

    def _check_master(self) -> None:
        """In a write transaction: refuse unless this process's master key wraps the store.

        A store made before the row existed gets it here, once its pseudonym key (if any)
        is shown to open with this master key.
        """
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (MASTER_ID,)).fetchone()
        if row is not None:
            if row[0] != self._master_id:
                raise MasterKeyMismatch()
            return
        wrapped = self._db.execute("SELECT value FROM meta WHERE name='pseudonym_key'").fetchone()
        if wrapped is not None:
            self._unwrap(SECRETS["pseudonym_key"], wrapped[0])
        self._db.execute("INSERT INTO meta VALUES (?, ?)", (MASTER_ID, self._master_id))

    def _wrap(self, label: bytes, key: bytes, master: AESGCM | None = None) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + (master or self._master).encrypt(nonce, key, label)

    def _unwrap(self, label: bytes, wrapped: bytes) -> bytes:
        try:
            return self._master.decrypt(wrapped[:NONCE], wrapped[NONCE:], label)
        except Exception:
            raise MasterKeyMismatch() from None

    def rotate(self, new_master_key: bytes) -> int:
        """Re-wrap every data key and secret under a new master key; the number of data keys.

        One transaction: the store is wholly under the old key or wholly under the new one,
        whenever the process stops. The keys themselves do not change, so nothing sealed,
        hashed, MAC'd or signed with them does. Afterwards the old rows' bytes are gone from
        the file and its WAL (`secure_delete`, then `shred_wal`), as for an erasure; a copy
        of the store taken before the rotation still opens with the old master key.
        """
        new = AESGCM(new_master_key)
        new_id = master_key_id(new_master_key)
        if new_id == self._master_id:
            raise SettingsError("the new master key is the one the key store is under")
        rewrapped = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._check_master()
                for name, value in self._db.execute("SELECT name, value FROM meta").fetchall():
                    if name in SECRETS:
                        secret = self._unwrap(SECRETS[name], value)
                        self._db.execute(
                            "UPDATE meta SET value=? WHERE name=?",
                            (self._wrap(SECRETS[name], secret, new), name),
                        )
                self._db.execute("UPDATE meta SET value=? WHERE name=?", (new_id, MASTER_ID))
                after = ""
                while True:
                    page = self._db.execute(
                        "SELECT sid, wrapped FROM data_keys WHERE sid > ? ORDER BY sid LIMIT ?",
                        (after, _ROTATE_PAGE),
                    ).fetchall()
                    if not page:
                        break
                    self._db.executemany(
                        "UPDATE data_keys SET wrapped=? WHERE sid=?",
                        [
                            (self._wrap(h.encode(), self._unwrap(h.encode(), w), new), h)
                            for h, w in page
                        ],
                    )
                    rewrapped += len(page)
                    after = page[-1][0]
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it
                    self._db.execute("ROLLBACK")
                raise
            self._master, self._master_id, self._master_key = new, new_id, new_master_key
            self.shred_wal()
        return rewrapped

    def holds_store_master_key(self) -> bool:
        """Whether this process's master key is still the one the store is under (readiness:
        after a rotation, a process on the old key can neither read nor write keys)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name=?", (MASTER_ID,)).fetchone()
        return row is None or row[0] == self._master_id

    @staticmethod
    def master_key_id_of(path: Path) -> bytes | None:
        """The name of the master key a store is under (None: no store, or one made before
        stores named it), read without opening the store with any key."""
        if not path.exists():
            return None
        db = sqlite3.connect(path, timeout=30)
        try:
            row = db.execute("SELECT value FROM meta WHERE name=?", (MASTER_ID,)).fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()
        return bytes(row[0]) if row is not None else None

    def sid(self, tenant: str, subject: str) -> UUID:
        """The subject's pseudonym: a keyed hash of tenant and reference, as a UUID.

        Keyed so that nobody without the key store can test a guessed phone number against it.
        """
        mac = self._keyed.copy()
        mac.update(tenant.encode() + b"\x00" + subject.encode())
        return UUID(bytes=mac.digest()[:16])

    def digest(self, data: bytes) -> str:
        """A keyed digest of content that may contain personal data (idempotency checks)."""
        mac = self._keyed.copy()
        mac.update(data)
        return mac.hexdigest()

    def open_keys(self, sids: Iterable[UUID]) -> dict[UUID, AESGCM]:
        """The data keys of these subjects that exist (erased subjects have none)."""
        wanted = {sid.hex: sid for sid in sids}
        found: dict[UUID, AESGCM] = {}
        with self._lock:
            rows = list(
                rows_in(
                    self._db.cursor(),
                    "SELECT sid, wrapped FROM data_keys WHERE sid IN ({})",
                    list(wanted),
                )
            )
        for sid_hex, wrapped in rows:
            found[wanted[sid_hex]] = AESGCM(self._unwrap(sid_hex.encode(), wrapped))
        return found

    def add_keys(self, keys: dict[UUID, bytes]) -> None:
        """Store new data keys before any fact sealed with them reaches the log.

        Refuses a key for an erased subject: the pseudonym stays known, so a later publish for
        the same person cannot silently start a new, readable history.
        """
        if not keys:
            return
        now = datetime.now(UTC).isoformat()
        rows = [(sid.hex, key) for sid, key in keys.items()]
        hexes = [sid_hex for sid_hex, _ in rows]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # In this transaction, so a rotation is either before it (and this refuses)
                # or after it (and re-wraps these keys too).
                self._check_master()
                if any(rows_in(self._db.cursor(), "SELECT 1 FROM erased WHERE sid IN ({})", hexes)):
                    raise ErasedSubjectError("a data key was asked for an erased subject")
                self._db.executemany(
                    "INSERT INTO data_keys VALUES (?,?,?)",
                    [(sid_hex, self._wrap(sid_hex.encode(), key), now) for sid_hex, key in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it
                    self._db.execute("ROLLBACK")
                raise

    def erase(self, sid: UUID, erased_at: datetime) -> None:
        """Destroy the subject's data key for good (idempotent)."""
        self.erase_all([(sid, erased_at)])

    def erase_all(self, erasures: Sequence[tuple[UUID, datetime]]) -> None:
        """Destroy these subjects' data keys in one transaction, then overwrite their old
        page images once (idempotent).

        One by one, the first erasure that found the key store held open by another process
        raised before the next key was deleted: a batch of erasures (`retention --erase`,
        `tenants erase-subjects`, an intake batch) left every later subject's key readable
        until something touched that subject again. All keys go first now; only the
        overwriting of their old page images can wait, and it waits once.
        """
        if not erasures:
            return
        if self._journal is not None:
            # Before the keys go: an erasure the key store holds is always in the journal.
            try:
                self._journal.append(erasures)
            except JournalUnwritable:
                # A full disk under the journal must not keep the keys readable: they go
                # all the same, and the store forgets how far it applied the journal, so the
                # next ledger to open reads it whole and adds these erasures to it. Raised
                # on, as the storage failure it is (the erasure's caller is told to retry).
                self._destroy(erasures, forget_journal_point=True)
                raise
            failpoint("erasure.journalled")
        self._destroy(erasures)

    def replay_journal(self) -> int:
        """Destroy the keys of subjects the erasure journal lists and this store does not;
        how many there were.

        A `keys.db` restored from a backup taken before an erasure holds the key again, and
        in embedded mode the restored log no longer holds the erasure that would destroy it
        (`ConsentLedger.finish_erasures`). The journal, kept apart from the backups, does.

        Runs as every ledger opens, so the store remembers how far it has applied the
        journal (a row of its own, restored with it: a restored store reads on from where
        it was backed up) and reads only what was added since. Without that row, or with a
        journal that is not the one it remembers, the whole journal is read, and the
        erasures this store holds and the journal lacks (a journal set after them, or lost)
        are added to it, so that it always holds every one.
        """
        if self._journal is None:
            return 0
        with self._lock:
            # Read before the store's erasures: a gap made after this is seen at the end.
            gaps = self._journal_gaps()
            row = self._db.execute(
                "SELECT value FROM meta WHERE name=?", (_JOURNAL_APPLIED,)
            ).fetchone()
        start = 0
        if row is not None:
            end, _, mac = bytes(row[0]).decode().partition(":")
            if self._journal.ends_line(int(end), mac):
                start = int(end)
        read = self._journal.read(start)
        if start:
            held = {s.hex for s in self.erased_among(UUID(sid) for sid in read.erased)}
        else:
            erasures = self.erasures()
            held = set(erasures)
            try:
                self._journal.append(
                    (UUID(sid), datetime.fromisoformat(at))
                    for sid, at in sorted(erasures.items())
                    if sid not in read.erased
                )
            except JournalUnwritable as error:
                # This store's keys are destroyed already; only the journal lacks them. The
                # ledger opens, and the next one to open tries again (no point remembered).
                _log.warning("%s", error.reason)
                read = read._replace(end=start)
        lost = [
            (UUID(sid), datetime.fromisoformat(at))
            for sid, at in sorted(read.erased.items())
            if sid not in held
        ]
        self._destroy(lost)
        if read.end > start:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # An erasure of another process whose line failed meanwhile is in neither
                    # what was read nor the journal: no point is remembered past it.
                    if self._journal_gaps() == gaps:
                        self._db.execute(
                            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            (_JOURNAL_APPLIED, f"{read.end}:{read.last_mac}".encode()),
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
        return len(lost)

    def _journal_gaps(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (_JOURNAL_GAPS,)).fetchone()
        return 0 if row is None else int(bytes(row[0]))

    def _destroy(
        self, erasures: Sequence[tuple[UUID, datetime]], forget_journal_point: bool = False
    ) -> None:
        if not erasures:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if forget_journal_point:
                    self._db.execute("DELETE FROM meta WHERE name=?", (_JOURNAL_APPLIED,))
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (_JOURNAL_GAPS, str(self._journal_gaps() + 1).encode()),
                    )
                self._db.executemany(
                    "DELETE FROM data_keys WHERE sid=?", [(sid.hex,) for sid, _ in erasures]
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO erased VALUES (?, ?)",
                    [(sid.hex, at.isoformat()) for sid, at in erasures],
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it
                    self._db.execute("ROLLBACK")
                raise
            self.shred_wal()

    def shred_wal(self) -> None:
        """Copy the zeroed pages into the database file and empty the WAL.

        Until this runs, the WAL still holds the page image with the deleted key. A reader in
        another process can hold the WAL open; then the erasure is retried briefly and, if
        still blocked, reported rather than claimed.

        A truncating checkpoint waits on the connection's busy handler for readers of older
        snapshots to finish, so each try is bounded by a short busy timeout: under the
        store's 30-second one, the 50 tries took 25 minutes whenever a reader held on.
        """
        self._db.execute(f"PRAGMA busy_timeout={_SHRED_TRY_MS}")
        deadline = time.monotonic() + _SHRED_WAIT_S
        try:
            while True:
                busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                if time.monotonic() >= deadline:
                    break
                # A checkpoint running in another process (the writer's automatic ones) makes
                # a try return at once, without the busy handler's wait: counted in tries,
                # fifty could pass in milliseconds under load and report a busy store that a
                # moment later was free (tests/test_writer_process.py, racing erasures).
                time.sleep(_SHRED_PAUSE_S)
        finally:
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        raise KeyStoreBusyError(
            "the key store is held open by another process: the change is made, but the old "
            "page images stay in keys.db-wal until the next erasure or rotation empties it"
        )

    def subjects_held(self) -> set[str]:
        """Every sid (hex) with a key here or erased here."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sid FROM data_keys UNION SELECT sid FROM erased"
            ).fetchall()
        return {row[0] for row in rows}

    def holds(self, sid: UUID) -> bool:
        """Whether this store ever held the subject's key (still, or erased here)."""
        with self._lock:
            row = self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM data_keys WHERE sid=?) "
                "OR EXISTS (SELECT 1 FROM erased WHERE sid=?)",
                (sid.hex, sid.hex),
            ).fetchone()
        return bool(row[0])

    def served_kafka(self) -> bool:
        """Whether a Kafka-mode ledger used this store (it keeps the record key, made by
        the first start in Kafka mode and by nothing else)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM meta WHERE name='record_key'").fetchone()
        return row is not None

    def holds_subjects(self) -> bool:
        """Whether any subject ever had a key here (one still held, or erased)."""
        with self._lock:
            row = self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM data_keys) OR EXISTS (SELECT 1 FROM erased)"
            ).fetchone()
        return bool(row[0])

    def erased_among(self, sids: Iterable[UUID]) -> set[UUID]:
        wanted = {sid.hex: sid for sid in sids}
        with self._lock:
            rows = list(
                rows_in(self._db.cursor(), "SELECT sid FROM erased WHERE sid IN ({})", list(wanted))
            )
        return {wanted[row[0]] for row in rows}

    def is_erased(self, sid: UUID) -> bool:
        return self.erased_at(sid) is not None

    def erased_at(self, sid: UUID) -> datetime | None:
        """When this subject's key was destroyed, if it was."""
        with self._lock:
            row = self._db.execute(
                "SELECT erased_at FROM erased WHERE sid=?", (sid.hex,)
            ).fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

    def erasures(self) -> dict[str, str]:
        """When each subject's key was destroyed (as written), by sid (hex).

        The key store's own record of an erasure, apart from the log's: after a `ledger.db`
        restored from a backup older than an erasure, the only one left (see
        `ConsentLedger.erasures_not_in_log`).
        """
        with self._lock:
            rows = self._db.execute("SELECT sid, erased_at FROM erased").fetchall()
        return dict(rows)


def seal(key: AESGCM, sid: UUID, value: dict[str, Any]) -> str:
    """Encrypt personal data for the log; bound to the subject so it cannot be moved."""
    nonce = os.urandom(NONCE)
    return base64.b64encode(nonce + key.encrypt(nonce, orjson.dumps(value), sid.bytes)).decode()


def unseal(key: AESGCM, sid: UUID, sealed: str) -> dict[str, Any]:
    raw = base64.b64decode(sealed)
    value = orjson.loads(key.decrypt(raw[:NONCE], raw[NONCE:], sid.bytes))
    assert isinstance(value, dict)
    return value


def unseal_if_ours(key: AESGCM, sid: UUID, sealed: str) -> dict[str, Any] | None:
    """`unseal`, or None for data sealed under another key than the store's.

    The store's key for a subject can be a later one than sealed its earlier facts: the
    key store was restored from a backup older than the log, and a later fact made the
    subject a new key. Those facts' data is unreadable, as if its key were missing (their
    bytes are under the chain's hashes: an alteration shows in `verify`, not here).
    """
    try:
        return unseal(key, sid, sealed)
    except InvalidTag:
        return None
