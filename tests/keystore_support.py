"""Another process holding the key store open, as a backup or a reader does."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def reader_holding(path: Path) -> Iterator[None]:
    """Another process's read transaction on the key store: its WAL cannot be emptied."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.execute("SELECT count(*) FROM meta").fetchone()
    try:
        yield
    finally:
        db.execute("COMMIT")
        db.close()
