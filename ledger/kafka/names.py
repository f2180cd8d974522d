"""The names Kafka mode gives its topics, its consumer group and its transactional ids.

Kept apart from the clients that use them, so that what needs only the names (the ACLs an
operator grants, `ledger.kafka.acls`) imports nothing of kafka-python.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    intake: str
    ledger: str
    rejected: str

    @classmethod
    def of(cls, prefix: str) -> Topics:
        return cls(f"{prefix}.intake", f"{prefix}.ledger", f"{prefix}.rejected")


def intake_group(topics: Topics) -> str:
    """The intake writer's consumer group, whose offsets commit in the ledger's transaction."""
    return f"{topics.ledger}-writer"


def transactional_id_prefix(topics: Topics) -> str:
    """What every transactional id of the ledger's writers begins with."""
    return f"{topics.ledger}-writer-p"


def transactional_id(topics: Topics, partitions: int) -> str:
    """One id per set of owned partitions: a second writer for them fences the first."""
    owned = "-".join(str(p) for p in range(partitions))
    return f"{transactional_id_prefix(topics)}{owned}"
