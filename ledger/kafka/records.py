"""How a stored event travels as a Kafka record, and where it goes.

The value is the stored state itself (the same JSON bytes the SQLite log holds, personal data
sealed), so the hash chain covers exactly what is on the topic. The key is tenant and aggregate
id (the subject's `sid`), never personal data; the partition is the Java client's murmur2 of
the key, so any Kafka client would route the same key to the same partition, and one subject's
facts stay in one partition, in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent
from kafka.partitioner.default import murmur2

from ledger.recorder import FactKey


@dataclass(frozen=True)
class LedgerRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int


def partition_of(key: bytes, partitions: int) -> int:
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def tenant_of(stored: StoredEvent, fact: FactKey | None) -> str:
    """The tenant an event belongs to: facts carry it; other events hold it in their state."""
    if fact is not None:
        return fact.tenant
    try:
        state = orjson.loads(stored.state)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(state, dict):
        return ""
    return str(state.get("tenant") or state.get("name") or "")


def encode(
    stored: StoredEvent, fact: FactKey | None, partitions: int, tenant: str | None = None
) -> LedgerRecord:
    originator = _uuid(stored.originator_id)
    key = f"{tenant if tenant is not None else tenant_of(stored, fact)}/{originator.hex}".encode()
    headers = [
        ("aggregate", originator.hex.encode()),
        ("version", str(stored.originator_version).encode()),
        ("topic", stored.topic.encode()),
    ]
    if fact is not None:
        headers += [
            ("tenant", fact.tenant.encode()),
            ("event_id", fact.event_id.encode()),
            ("digest", fact.digest.encode()),
            ("recorded_at", fact.recorded_at.encode()),
        ]
    return LedgerRecord(key, stored.state, headers, partition_of(key, partitions))


class NotALedgerRecord(ValueError):
    """A record on the ledger topic that this writer did not write (it lacks our headers)."""


def decode(value: bytes, headers: Mapping[str, bytes]) -> tuple[StoredEvent, FactKey | None]:
    try:
        stored = StoredEvent(
            originator_id=UUID(headers["aggregate"].decode()),
            originator_version=int(headers["version"]),
            topic=headers["topic"].decode(),
            state=value,
        )
    except (KeyError, ValueError) as error:
        raise NotALedgerRecord("the record lacks the ledger's headers") from error
    fact = None
    if "event_id" in headers:
        fact = FactKey(
            tenant=headers["tenant"].decode(),
            event_id=headers["event_id"].decode(),
            digest=headers["digest"].decode(),
            recorded_at=headers["recorded_at"].decode(),
        )
    return stored, fact


def _uuid(originator_id: UUID | str) -> UUID:
    return originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
