"""Master key rotation: the key store re-wrapped under a new master key.

A procedure rather than one call because, with the master key in a file
(`$LEDGER_DATA_DIR/master.key`), the store and the file change in two steps, and a crash
between them must not leave a store that no file opens. The new key is written first, to
`master.key.next` (0600, synced); the store is re-wrapped in one transaction
(`KeyStore.rotate`); then `master.key.next` replaces `master.key`. Run again after a crash
anywhere in between, it finds which key the store is under and finishes.

With `LEDGER_MASTER_KEY` the ledger does not own where the key lives: the new key comes from
`LEDGER_NEW_MASTER_KEY` (an environment variable, never an argument, which other users of the
machine could read in the process list), and the operator puts it in place of the old one for
every process. A second run finds the store already under it and says so.

The data keys, the pseudonym key, the record MAC key and the signing key do not change, so
nothing in the log, on the ledger topic or in a published checkpoint does either.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from ledger.failpoints import failpoint
from ledger.fsync import fsync_path, write_new_private
from ledger.keystore import (
    KeyStore,
    KeyStoreBusyError,
    MasterKeyMismatch,
    decode_master_key,
    load_master_key,
    master_key_id,
)
from ledger.settings import Settings, SettingsError

NEW_KEY_ENV = "LEDGER_NEW_MASTER_KEY"


@dataclass(frozen=True)
class Rotation:
    """What a run did."""

    data_keys: int  # data keys re-wrapped by this run
    already: bool  # the store was under the new key when this run began
    key_file: Path | None  # file mode: where the new key is now


def next_key_path(settings: Settings) -> Path:
    return settings.master_key_path.with_name("master.key.next")


def rotate_master_key(settings: Settings) -> Rotation:
    new_key_text = settings.new_master_key
    store = settings.keystore_path
    if not store.exists():
        raise SettingsError(f"no key store at {store}: there is nothing to rotate")
    if settings.master_key:
        if not new_key_text:
            raise SettingsError(
                f"{NEW_KEY_ENV} is not set: with LEDGER_MASTER_KEY the new master key comes "
                f"from {NEW_KEY_ENV} (base64 of 32 bytes)"
            )
        new = decode_master_key(new_key_text, NEW_KEY_ENV)
        count = _rewrap(store, load_master_key(settings), new)
        return Rotation(count or 0, count is None, None)

    pending = next_key_path(settings)
    made_here = not pending.exists()
    if made_here:
        new = decode_master_key(new_key_text, NEW_KEY_ENV) if new_key_text else os.urandom(32)
        _write_private(pending, new)
    else:
        new = decode_master_key(pending.read_text().strip(), str(pending))
        if new_key_text and decode_master_key(new_key_text, NEW_KEY_ENV) != new:
            raise SettingsError(
                f"{pending} holds the new key of a rotation that stopped half-way: run again "
                f"without {NEW_KEY_ENV} to finish it"
            )
    try:
        count = _rewrap(store, load_master_key(settings), new)
    except KeyStoreBusyError:
        # Committed: the store is under the new key; its WAL waits. The key file follows.
        _install(pending, settings.master_key_path)
        raise
    except MasterKeyMismatch:
        if made_here:  # nothing changed: leave no half-begun rotation behind
            pending.unlink()
        raise
    failpoint("rotation.before_key_file")
    _install(pending, settings.master_key_path)
    return Rotation(count or 0, count is None, settings.master_key_path)


def _install(pending: Path, key_file: Path) -> None:
    os.replace(pending, key_file)
    fsync_path(key_file.parent)


def _rewrap(store: Path, old: bytes, new: bytes) -> int | None:
    """The number of data keys re-wrapped, or None if the store was under `new` already."""
    if new == old:
        raise SettingsError("the new master key is the one the key store is under")
    if KeyStore.master_key_id_of(store) == master_key_id(new):
        # Rotated before; the run that did it may have stopped before emptying the WAL.
        keystore = KeyStore(store, new)
        try:
            keystore.shred_wal()
        finally:
            keystore.close()
        return None
    keystore = KeyStore(store, old)
    try:
        return keystore.rotate(new)
    finally:
        keystore.close()


def _write_private(path: Path, key: bytes) -> None:
    # Whole or not at all: cut short by a full disk, it would be taken for the key of a
    # rotation to finish, and every later run would fail to read it.
    write_new_private(path, (base64.b64encode(key).decode() + "\n").encode())
    fsync_path(path.parent)
