"""The erasure journal: every erasure, remembered apart from the data directory.

A backup restores what it held. In embedded mode the log and the key store are both in it,
so a restore from before an erasure brought the erased person's data key back with the
log that no longer held the erasure: their personal data readable again, and nothing left
to say it should not be. Kafka mode has the topic, which no backup rolls back; embedded
mode has this file, kept where the backups are not (`LEDGER_ERASURE_JOURNAL`, another disk
or volume), so the deletion log is replayed after every restore as data-protection
practice asks.

One line per erasure, JSON: the `sid` (a keyed hash, no personal data), when its key was
destroyed, and an HMAC-SHA256 of both under a key derived from the key store's pseudonym
key. The pseudonym key, not the master key: a master key rotation keeps it (the journal
stays valid), every backup of the same store holds it, and another ledger's store does
not, so a journal of another ledger is refused rather than obeyed. Whoever can write the
file cannot make the ledger destroy a key by adding a line; a line that does not verify
stops the ledger (`SettingsError`), since skipping it could bring erased data back.

A line is appended, and on disk, before the key store deletes the key; an append cut
short by a crash leaves a last line without its newline, which reading ignores and the
next append removes (the erasure it held is still in the log, which finishes it again).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple
from uuid import UUID

import orjson

from ledger.fsync import fsync_path
from ledger.settings import SettingsError
from ledger.storage import StorageUnavailable

_FIELDS = {"sid", "erased_at", "mac"}


class ErasureJournalError(SettingsError):
    """The journal cannot be opened, or holds a line this ledger did not write."""


class JournalUnwritable(StorageUnavailable):
    """An erasure's line could not be written (see `KeyStore.erase_all`). Made from its
    reason alone, as every `StorageUnavailable`, to cross the writer process's pipe."""


class Read(NamedTuple):
    erased: dict[str, str]  # erased_at by sid (hex)
    end: int  # the byte after the last complete line read
    last_mac: str  # that line's MAC ("" if none was read)


class ErasureJournal:
    """Append-only lines of (sid, erased_at), each sealed with an HMAC."""

    def __init__(self, path: Path, mac_key: bytes) -> None:
        self.path = path
        self._keyed = hmac.new(mac_key, digestmod=hashlib.sha256)
        # Made (0600) as the ledger opens, so a path that cannot hold it is said at start,
        # not at the first erasure, after its fact was recorded.
        try:
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            raise ErasureJournalError(
                f"LEDGER_ERASURE_JOURNAL: {path} cannot be opened: {e.strerror}"
            ) from None
        os.close(fd)
        if created:
            fsync_path(path.parent)

    def _mac(self, sid_hex: str, erased_at: str) -> str:
        keyed = self._keyed.copy()
        keyed.update(f"{sid_hex}\n{erased_at}".encode())
        return keyed.hexdigest()

    def read(self, start: int = 0) -> Read:
        """The erasures of the complete lines from byte `start` (a line's start) on.

        The first line of a sid wins: an erasure finished again appends its instant again.
        """
        try:
            with open(self.path, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                f.seek(start)
                data = f.read()
        except OSError as error:
            raise StorageUnavailable(
                f"the erasure journal cannot be read: {error.strerror}"
            ) from error
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: nothing, or an append cut short
        erased: dict[str, str] = {}
        mac = ""
        for number, line in enumerate(lines, start=1):
            entry = self._verified(line)
            if entry is None:
                if start:  # said with its number in the whole file
                    self.read()
                raise ErasureJournalError(
                    f"LEDGER_ERASURE_JOURNAL: line {number} of {self.path} is not an erasure "
                    "this ledger's key store sealed (altered, or another ledger's journal)"
                )
            sid, at, mac = entry
            erased.setdefault(sid, at)
        return Read(erased, start + data.rfind(b"\n") + 1, mac)

    def ends_line(self, end: int, mac: str) -> bool:
        """Whether the line with this MAC ends at byte `end`: the journal read up to there
        is the one a key store remembers having applied, not another file put in its place."""
        tail = f'"mac":"{mac}"}}\n'.encode()
        if end < len(tail):
            return False
        try:
            with open(self.path, "rb") as f:
                f.seek(end - len(tail))
                return f.read(len(tail)) == tail
        except OSError:
            return False  # read whole, which says why it cannot be

    def _verified(self, line: bytes) -> tuple[str, str, str] | None:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(entry, dict) or set(entry) != _FIELDS:
            return None
        sid, at, mac = entry["sid"], entry["erased_at"], entry["mac"]
        if not all(isinstance(v, str) for v in (sid, at, mac)):
            return None
        if not hmac.compare_digest(mac, self._mac(sid, at)):
            return None
        return sid, at, mac

    def append(self, erasures: Iterable[tuple[UUID, datetime]]) -> None:
        """Add these erasures, on disk when this returns."""
        lines = b"".join(
            orjson.dumps({"sid": s, "erased_at": a, "mac": self._mac(s, a)}) + b"\n"
            for s, a in ((sid.hex, at.isoformat()) for sid, at in erasures)
        )
        if not lines:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # one appender at a time: the tail check below
                _drop_torn_tail(fd)
                view = memoryview(lines)
                while view:  # a regular file takes it whole, unless a full disk raises
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the lock
        except OSError as error:
            # Whatever the cause (a full disk, its directory gone with an unmounted volume),
            # the storage failed, not the erasure: answered "retry", never a 500.
            raise JournalUnwritable(
                f"the erasure journal cannot be written: {error.strerror}"
            ) from error


def _drop_torn_tail(fd: int) -> None:
    """Cut a last line without its newline (an append a crash cut short)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    keep, step = size, 4096
    while keep > 0:
        start = max(0, keep - step)
        chunk = os.pread(fd, keep - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        keep = start
    os.ftruncate(fd, 0)
