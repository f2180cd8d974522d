"""What the ledger answers for each fact it was given."""

from __future__ import annotations

from typing import Any, NamedTuple

from ledger.errors import FactRejected
from ledger.keystore import KeyStoreBusyError


class Receipt(NamedTuple):
    """Proof of acceptance, returned again unchanged for a retry of the same fact.

    A NamedTuple, made per fact (see ledger.envelope.Fact).
    """

    event_id: str
    sid: str | None
    position: int
    recorded_at: str
    hash: str
    duplicate: bool = False
    # Kafka mode: the log is a partitioned topic, and `position` is the offset in this partition.
    partition: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "sid": self.sid,
            "position": self.position,
            "recorded_at": self.recorded_at,
            "hash": self.hash,
            "duplicate": self.duplicate,
        }
        if self.partition is not None:
            out["partition"] = self.partition
        return out


Outcome = Receipt | FactRejected


class ErasureNotOverwritten(KeyStoreBusyError):
    """A batch is recorded and its erasures' keys deleted, but another process held the key
    store open, so the keys' old page images still wait in its WAL.

    It carries the batch's outcomes: every fact in it was recorded, and only whoever asked
    for an erasure (`erasures`, indices into the batch) is owed the warning. Raised as a
    bare KeyStoreBusyError, the HTTP service's group commit answered 503 to every request
    that shared the erasure's group, though their facts were recorded, and `record` printed
    no receipt of the batch.
    """

    def __init__(self, message: str, outcomes: list[Outcome], erasures: frozenset[int]) -> None:
        super().__init__(message)
        self.outcomes = outcomes
        self.erasures = erasures

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses the writer process's pipe whole (an exception pickles its args only).
        return (type(self), (str(self), self.outcomes, self.erasures))
