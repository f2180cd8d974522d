"""Durability of files the ledger writes outside SQLite (key files, copies, replayed stores)."""

from __future__ import annotations

import os
from pathlib import Path


def write_new_private(path: Path, data: bytes) -> None:
    """A new file only its owner can read (0600), whole and on disk, or none at all.

    Never replaces a file (FileExistsError); one cut short (a full disk) is removed, so it
    is not taken for whole later nor refuses a retry as existing. The caller fsyncs the
    directory when the name itself must last.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """Flush a file's contents, or a directory's entries (a creation or rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
