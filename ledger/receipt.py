"""What the ledger answers for each fact it was given."""

from __future__ import annotations

from typing import Any, NamedTuple

from ledger.errors import FactRejected


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
