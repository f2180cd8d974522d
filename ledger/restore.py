"""`consent-ledger restore`: a backup put back as a data directory, checked before it is.

Restoring by hand (the backup's files and the master key copied into an empty directory)
works, but says nothing until the first command opens the result: a master key that does
not open the backup's key store, a log that no longer verifies, a backup of another ledger
under the same erasure journal. This does the same copy into a hidden directory beside the
target, opens it as a ledger would (which also replays the erasure journal, so a restored
key store holds no key of anyone erased since the backup), verifies the log, and only then
gives it the target's name: a restore that fails leaves nothing that looks like a data
directory, and a data directory is never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.backup import Copied
from ledger.backup_manifest import ManifestMismatch, check_signature, read_manifest
from ledger.fsync import fsync_path, write_new_private
from ledger.keystore import decode_master_key
from ledger.settings import Settings, SettingsError
from ledger.verify import VerifyResult

if TYPE_CHECKING:
    from ledger.keystore import KeyStore

__all__ = ["BackupBroken", "ManifestMismatch", "Restored", "ViewsNotOfItsLog", "restore"]

# What `backup` writes, in either mode (the master key never).
BACKED_UP = ("views.db", "ledger.db", "api_keys.db", "access.db", "keys.db")


class BackupBroken(Exception):
    """The backup's log does not verify: restoring it would serve an altered record."""

    def __init__(self, result: VerifyResult) -> None:
        first = result.problems[0]
        super().__init__(f"the backup's log is BROKEN ({first.kind}) at position {first.position}")
        self.result = result


class ViewsNotOfItsLog(Exception):
    """The backup's views were not built from its log: refused, like a log that does not
    verify. `backup` copies the views and the log so that this cannot happen (its manifest
    would refuse a file changed since); a backup made before manifests, or put together by
    hand, can hold such views.

    Until 2026-12-07 the refusal was the one a ledger gives views beside its log: it named
    the restore's hidden directory, removed by then, and told the operator to move the views
    away and run `project` there."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"its views.db was not built from its ledger.db: {why}; restore a copy of the "
            "backup without views.db, whose views are built again from the log"
        )


@dataclass(frozen=True)
class Restored:
    copied: list[Copied]
    verified: VerifyResult | None  # None in Kafka mode: the topic is the log
    erasures_from_journal: int  # keys of people erased since the backup, destroyed again
    erasures_not_in_log: int  # their erasures, which the restored log lacks
    subjects_without_key: int
    manifest_made_at: str | None  # None: a backup made before manifests, taken as it is


def restore(settings: Settings, backup: Path, master_key_file: Path | None) -> Restored:
    """Put `backup` in place as `settings.data_dir` (missing or empty), checked first."""
    target = settings.data_dir
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SettingsError(f"{target} is not an empty directory: a restore never overwrites")
    if not (backup / "keys.db").is_file():
        raise SettingsError(f"{backup} holds no keys.db: not a backup `consent-ledger backup` made")
    if settings.backend == "kafka" and (backup / "ledger.db").exists():
        raise SettingsError(
            f"{backup} holds ledger.db, the log of an embedded ledger: restore it with "
            "LEDGER_BACKEND=embedded"
        )
    if master_key_file is None and settings.master_key is None:
        raise SettingsError(
            "a backup holds no master key: give --master-key FILE (the copy of master.key "
            "kept apart from backups) or set LEDGER_MASTER_KEY"
        )
    if master_key_file is not None and settings.master_key is not None:
        raise SettingsError("--master-key FILE and LEDGER_MASTER_KEY both name the master key")
    manifest = read_manifest(backup)  # the files as the backup wrote them, or refused
    target.parent.mkdir(parents=True, exist_ok=True)
    making = target.parent / f".{target.name}.restoring-{os.getpid()}"
    making.mkdir()
    try:
        copied = []
        for name in BACKED_UP:
            if (backup / name).is_file():
                shutil.copyfile(backup / name, making / name)
                fsync_path(making / name)
                copied.append(Copied(name, (making / name).stat().st_size))
        if master_key_file is not None:
            try:
                key = master_key_file.read_bytes()
            except OSError as e:
                raise SettingsError(f"--master-key {master_key_file}: {e.strerror}") from None
            # Checked here, so that a file that is no key is named as given, not as the
            # hidden copy the ledger would open.
            decode_master_key(
                key.decode("ascii", "replace").strip(), f"--master-key {master_key_file}"
            )
            write_new_private(making / "master.key", key)
        restored = _checked(dataclasses.replace(settings, data_dir=making), copied, manifest)
        fsync_path(making)
        if target.exists():
            target.rmdir()  # empty, checked above
        making.rename(target)
    except BaseException:
        shutil.rmtree(making, ignore_errors=True)
        raise
    fsync_path(target.parent)
    return restored


def _checked(settings: Settings, copied: list[Copied], manifest: dict[str, Any] | None) -> Restored:
    """Opened as every command opens it, its manifest's signature checked against its own
    key store, and its log verified."""
    made_at = None if manifest is None else str(manifest["made_at"])
    if settings.backend == "kafka":
        # The topic is the log, read once a ledger opens with the broker; here, the key
        # store alone: the master key opens it, and the journal's erasures are applied.
        from ledger.keystore import KeyStore, load_master_key

        keys = KeyStore(settings.keystore_path, load_master_key(settings), settings.erasure_journal)
        try:
            if manifest is not None:
                check_signature(manifest, _signers(keys))
            again = keys.replay_journal()
        finally:
            keys.close()
        return Restored(copied, None, again, 0, 0, made_at)
    from ledger.application import ConsentLedger
    from ledger.verify import key_store_gaps, verify_ledger

    ledger = ConsentLedger(settings)
    try:
        if manifest is not None:
            check_signature(manifest, _signers(ledger.keystore))
        if settings.views_path.exists():
            from projections.store import ViewsAheadOfLog, ViewsOfAnotherLog
            from projections.views import Views

            views = Views(ledger)
            try:
                views.check()  # no view ahead of the log, nor of another log
            except ViewsAheadOfLog as ahead:
                raise ViewsNotOfItsLog(
                    f"they stand at log position {ahead.position}, where the log ends at "
                    f"{ahead.end}"
                ) from None
            except ViewsOfAnotherLog as another:
                raise ViewsNotOfItsLog(another.why) from None
            finally:
                views.close()
        verified = verify_ledger(ledger.ledger_recorder)
        if not verified.ok:
            raise BackupBroken(verified)
        gaps = key_store_gaps(ledger)
        return Restored(
            copied,
            verified,
            ledger.erasures_from_journal,
            len(gaps["erasures_not_in_log"]),
            gaps["subjects_without_key"],
            made_at,
        )
    finally:
        ledger.close()


def _signers(keys: KeyStore) -> list[str]:
    """The store's signing key and every key it took over from."""
    from ledger.checkpoint import public_key_text

    key, transitions = keys.signer()
    return [public_key_text(key.public_key()), *(t["previous_key"] for t in transitions)]
