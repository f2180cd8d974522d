"""What the ledger knew at an instant: each subject's facts up to the first recorded after it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID


class KnownAt:
    """Keeps an event if the ledger knew it at `instant`.

    A subject's fact is recorded after the one before it, so what the ledger knew at an
    instant is a beginning of each subject's history, never a part with a gap. Transaction
    time never runs backwards now (`ledger.clock`), so `recorded_at` alone says so; a log
    written before that across a wall clock stepped back can hold a fact stamped earlier than
    the one before it. Taken alone, such a fact was known without what it follows (a replay
    up to an instant between the two stamps found a subject's later fact without the event
    that registered the subject, and failed), so once one of a subject's events is past the
    instant, so are the rest.
    """

    def __init__(self, instant: datetime) -> None:
        self.instant = instant
        self._past: set[UUID] = set()  # subjects with an event recorded after the instant

    def __call__(self, event: Any) -> bool:
        if event.originator_id in self._past:
            return False
        if event.timestamp <= self.instant:
            return True
        self._past.add(event.originator_id)
        return False
