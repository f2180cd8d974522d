"""What the ledger answers for each fact it was given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.errors import FactRejected


@dataclass(frozen=True)
class Receipt:
    """Proof of acceptance, returned again unchanged for a retry of the same fact."""

    event_id: str
    sid: str | None
    position: int
    recorded_at: str
    hash: str
    duplicate: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "sid": self.sid,
            "position": self.position,
            "recorded_at": self.recorded_at,
            "hash": self.hash,
            "duplicate": self.duplicate,
        }


Outcome = Receipt | FactRejected
