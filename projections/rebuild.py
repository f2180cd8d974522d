"""Replay: the views rebuilt from the log into a fresh store, for an inquiry or a new server.

Catching up applies the log in its order, a page per transaction, because a live store must
always stand at a log position that readers can trust. A fresh store has no readers until it
is complete, so it is built in the order that is cheapest to write: subject by subject, read
through the events table's primary key. Each subject's rows depend only on its own facts, so
its whole history folds in memory and its rows go in once, next to each other in every index,
instead of a page of facts scattering writes over all of them and rewriting intervals that a
later fact closes.

The store is built under a temporary name and takes its real name only once it is complete
and positioned at the moment of the log it reflects, so a replay that dies leaves nothing
that looks like a store. In Kafka mode the log of record is the ledger topic, read in its own
order per partition: the same temporary store is caught up from it instead.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from eventsourcing.persistence import Tracking

from ledger.application import ConsentLedger
from projections.consent_projection import ConsentProjection
from projections.runner import APPLICATION, catch_up
from projections.store import ConsentViews

# Log entries per write transaction: large enough that per-transaction costs vanish, small
# enough that a batch of decoded events stays a few tens of megabytes.
BATCH = 20_000


def rebuild(
    ledger: ConsentLedger, target: Path, *, known_at: datetime | None = None, batch: int = BATCH
) -> int:
    """Build the views of the log at `target` (which must not exist); returns entries read.

    With `known_at`, facts recorded after that instant are left out: the store is what the
    ledger knew then, positioned, like a live store, after every entry it read.
    """
    if target.exists():
        raise FileExistsError(target)
    partial = target.with_name(target.name + ".partial")
    _remove(partial)
    store = ConsentViews.open(partial)
    try:
        if ledger.settings.backend == "kafka":
            read = catch_up(ledger, ConsentProjection(view=store), known_at=known_at)
        else:
            read = _by_subject(ledger, store, known_at, batch)
    finally:
        store.close()
    # Closing the last connection moves the write-ahead log into the file and deletes it.
    if Path(f"{partial}-wal").exists():
        raise RuntimeError(f"{partial} kept a write-ahead log after closing")
    _remove(Path(f"{partial}-shm"))
    _fsync(partial)
    os.replace(partial, target)
    _fsync(target.parent)
    return read


def _by_subject(
    ledger: ConsentLedger, store: ConsentViews, known_at: datetime | None, batch: int
) -> int:
    projection = ConsentProjection(view=store)
    read = 0
    with ledger.ledger_recorder.by_aggregate(batch) as (upto, batches):
        for stored in batches:
            events: list[Any] = [ledger.mapper.to_domain_event(s) for s in stored]
            if known_at is not None:
                events = [e for e in events if e.timestamp <= known_at]
            projection.project_histories(events)
            read += len(stored)
    if upto:  # an empty log leaves no position, as catching up from it would
        store.insert_tracking(Tracking(APPLICATION, upto))
    return read


def _remove(path: Path) -> None:
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
