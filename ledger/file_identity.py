"""Whether a store's file is still the one this process opened.

An open SQLite connection writes to the file it opened, wherever that file went: moved out of
the data directory, it takes the service's writes elsewhere; removed, it takes them into an
inode that is freed when the process stops. Either way every fact accepted from then on is
gone from the data directory at the next start, though each was answered with a receipt. So
the process remembers each file's identity (device and inode) as it opens it, and a write
first checks that the path still names that file: two `stat` calls a batch (7.5 us in all
on this project's machine on a slow day, 2026-12-05; a batch is up to a thousand facts, or
an HTTP group commit's requests together).

A file changed in place (overwritten by a copy, truncated) keeps its identity and is not
caught here; SQLite's own checks and `verify` find what that does to the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ledger.storage import StorageUnavailable
from ledger.store_format import StoreOfAnotherFormat

log = logging.getLogger("consent_ledger")
_Store = TypeVar("_Store")


class OpenedFile:
    """A path and the identity of the file it named when the store was opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._name = os.fspath(path)  # a str: os.stat of a Path converts it on every call
        self.identity = self._identity()

    def moved(self) -> bool:
        """Whether the path no longer names the opened file (moved, removed or replaced)."""
        return self.identity is not None and self._identity() != self.identity

    def _identity(self) -> tuple[int, int] | None:
        try:
            found = os.stat(self._name)
        except FileNotFoundError:
            return None
        return found.st_dev, found.st_ino


def files_moved(files: list[OpenedFile]) -> list[str]:
    """The names of those of `files` that are no longer where they were opened."""
    return [f.path.name for f in files if f.moved()]


def refuse_if_moved(files: list[OpenedFile]) -> None:
    """Raise StorageUnavailable, before anything is written, if a store's file was moved."""
    for opened in files:
        if opened.moved():
            raise StorageUnavailable(moved_reason(files_moved(files)))


def moved_reason(moved: list[str]) -> str:
    """What an operator is told: no retry passes until the process opens the files again."""
    were, them = ("was", "it") if len(moved) == 1 else ("were", "them")
    return (
        f"{' and '.join(moved)} {were} moved or removed from the data directory while this "
        f"process held {them} open (what it wrote is there): restore {them} and restart"
    )


def opened_again(path: Path, open_store: Callable[[], _Store]) -> _Store:
    """A side store (API keys, access log) opened again at its path, the one the operator's
    commands read and write, after the file it had was moved or replaced. A file there that
    is not such a store is refused as storage unavailable, until the operator mends it; its
    path is for the process's log only, not for an HTTP answer."""
    try:
        return open_store()
    except StoreOfAnotherFormat as error:
        log.error("%s", error, extra={"error": "StoreOfAnotherFormat"})
        raise StorageUnavailable(
            f"{path.name} was replaced by a file that is not one: see the service's log"
        ) from None
