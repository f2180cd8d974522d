"""Transaction time: the instant the ledger records a fact (`recorded_at`), which never runs
backwards.

Every bitemporal answer ("as we knew it at K") and every replay up to an instant select facts
by `recorded_at`. Taken from the wall clock as it is, a clock stepped back (NTP correcting a
fast clock, a VM restored from a snapshot, an operator's mistake) would stamp a fact earlier
than facts recorded before it: a withdrawal could then read as known before the grant it
withdraws, which the ledger accepted only because the grant was already there. So each event
is stamped with the wall clock's time, or one microsecond past the latest instant this process
stamped or saw in the log, whichever is later. A stamp may then run ahead of the wall clock
by as much as the clock stepped back, until the clock catches up; the order of knowledge is
what the answers depend on, and it stays true.

The floor is per process and raised from the log: when a ledger opens and before each batch
is checked (`LedgerSQLiteRecorder.batch_reads`), to the `recorded_at` of the log's last fact,
so a restarted process, or a second one writing the same log, does not stamp before what the
log already holds. Two processes appending at the same moment can still interleave their
stamps by the length of that moment, as their commits interleave.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

_TICK = timedelta(microseconds=1)


def wall_clock() -> datetime:
    return datetime.now(UTC)


class TransactionClock:
    """Strictly increasing instants for event timestamps, shared by every ledger in the
    process (the library asks event classes for timestamps, not applications)."""

    def __init__(self, wall: Callable[[], datetime] = wall_clock) -> None:
        self.wall = wall
        self._last: datetime | None = None
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            instant = self.wall()
            last = self._last
            if last is not None and instant <= last:
                instant = last + _TICK
            self._last = instant
            return instant

    def not_before(self, instant: datetime) -> None:
        """Stamp nothing at or before `instant` from now on (a time found in the log)."""
        with self._lock:
            if self._last is None or instant > self._last:
                self._last = instant


TRANSACTION_CLOCK = TransactionClock()


def follow_log(recorded_at: str | None) -> None:
    """Stamp nothing at or before the `recorded_at` of the log's last fact (None: it has
    none), whatever the wall clock says."""
    if recorded_at is not None:
        TRANSACTION_CLOCK.not_before(datetime.fromisoformat(recorded_at))
