"""`consent-ledger backup`: a copy of a data directory that restores to a working ledger.

Copying the files with `cp` while the service runs is not a backup: each is a SQLite
database in WAL mode, and a copy of the file without its WAL, or taken mid-checkpoint, may
be missing committed transactions or not open at all. Each file is copied here with SQLite's
online backup API, a consistent snapshot of that one file, taken in an order that keeps the
files consistent with each other as well:

1. the views (`views.db`): a projection's position must never be ahead of the log it is
   restored with; behind it is only a catch-up;
2. the log (`ledger.db`, embedded mode only: in Kafka mode the topic is the log, and the
   replica and views are rebuilt from it);
3. the API keys (`api_keys.db`) and the HTTP access log (`access.db`);
4. the key store (`keys.db`) last: a key is stored before any fact sealed with it is
   recorded, so a key store copied after the log holds every key the copied log needs.
   A subject erased in between has no key in the copy and no erasure in the copied log; on
   restore the ledger treats it as the subject it was, with its personal data unreadable.

The master key is not copied: a backup that held it would open every subject's data on its
own. With the key file, keep a copy of `master.key` apart from the backups.

`manifest.json` lists each copied file with its SHA-256, signed with the ledger's Ed25519
key (`ledger.backup_manifest`): `restore` refuses a backup whose files were changed since.

The copies are made in a hidden directory beside the target and renamed to it only when all
are made and on disk: a backup stopped half-way (a full disk, a crash) never leaves a
directory that looks like a backup and lacks the key store.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ledger.backup_manifest import write_manifest
from ledger.fsync import fsync_path
from ledger.keystore import KeyStore, load_master_key
from ledger.settings import Settings, SettingsError
from ledger.storage import BACKUP_STEP_WAIT_S, given_up_when_locked


@dataclass(frozen=True)
class Copied:
    name: str
    bytes: int


def files_to_back_up(settings: Settings) -> list[Path]:
    """In the order they must be copied (see the module's docstring)."""
    log = [settings.log_path] if settings.backend == "embedded" else []
    views = [settings.views_path] if settings.backend == "embedded" else []
    extra = [settings.api_keys_path, settings.access_log_path]
    return [*views, *log, *extra, settings.keystore_path]


def back_up(settings: Settings, into: Path) -> list[Copied]:
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise SettingsError(f"{into} is not an empty directory: a backup never overwrites")
    if not settings.keystore_path.exists():
        raise SettingsError(f"no key store at {settings.keystore_path}: nothing to back up")
    # The key that signs the manifest, made now if the ledger has none yet, so that the
    # key store copied below holds it (restore checks the signature against that copy).
    keys = KeyStore(settings.keystore_path, load_master_key(settings))
    try:
        signing_key = keys.signing_key()
    finally:
        keys.close()
    into.parent.mkdir(parents=True, exist_ok=True)
    making = into.parent / f".{into.name}.incomplete-{os.getpid()}"
    making.mkdir()
    try:
        copied = []
        for source in files_to_back_up(settings):
            if source.exists():
                target = making / source.name
                _copy(source, target)
                copied.append(Copied(source.name, target.stat().st_size))
        manifest = write_manifest(making, [c.name for c in copied], signing_key)
        fsync_path(manifest)
        copied.append(Copied(manifest.name, manifest.stat().st_size))
        fsync_path(making)
        making.rename(into)  # replaces an empty directory, never a full one
    except BaseException:
        shutil.rmtree(making, ignore_errors=True)
        raise
    fsync_path(into.parent)
    return copied


def _copy(source: Path, target: Path) -> None:
    src = sqlite3.connect(source, timeout=BACKUP_STEP_WAIT_S)
    try:
        dst = sqlite3.connect(target)
        try:
            # One step: the whole file from one snapshot, whatever is written meanwhile.
            src.backup(dst, progress=given_up_when_locked(source.name))
            # A copy in WAL mode (the source's) grows -wal and -shm files beside it whenever
            # it is read; a backup is files that stand alone. The ledger sets WAL again on
            # the first open after a restore.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    fsync_path(target)
