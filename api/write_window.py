"""In Kafka mode, for a few seconds after the broker did not take a write, the HTTP service
refuses writes at once (503 `ledger_unavailable`, `Retry-After`) rather than asking again.

A write the cluster cannot commit (its quorum lost, say, while its brokers still answer)
waited out the producer's answer timeout, 30 s (about 11 s since `ledger.kafka.write_watch`
asks the quorum); the group commit's requests that came meanwhile formed the next group,
which waited as long again, and so on: a publisher was
answered after up to twice the timeout, and every connection of a busy service was held for
the outage. Refused at once, the requests of that group and those of the next seconds are
told to retry after the time the answer names, as the service's views already do for a
question (`projections.views.Views`, `recheck_s`); then one group asks the broker again.
Nothing is recorded by a refused write, so a retry with the same `event_id` is safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ledger.envelope import Item
from ledger.kafka.recorder import LedgerUnavailable
from ledger.receipt import Outcome

Record = Callable[[Sequence[Item]], list[Outcome]]


class WriteWindow:
    """`record` (the writer's), refused for `seconds` after it raised `LedgerUnavailable`.
    Called by the group commit's one thread only."""

    def __init__(
        self, record: Record, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._record = record
        self._seconds = seconds
        self._clock = clock
        self._refused: tuple[float, LedgerUnavailable] | None = None  # when, and why

    def __call__(self, items: Sequence[Item]) -> list[Outcome]:
        refused = self._refused
        if refused is not None and self._clock() - refused[0] < self._seconds:
            error = refused[1]
            # The same kind (an ACL refused stays `kafka_access_refused`), saying when.
            raise type(error)(f"{error} (less than {self._seconds:g} s ago; not asked again)")
        try:
            outcomes = self._record(items)
        except LedgerUnavailable as error:
            self._refused = (self._clock(), error)
            raise
        self._refused = None
        return outcomes
