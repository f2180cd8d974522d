"""How a stored event travels as a Kafka record, and where it goes.

The value is the stored state itself (the same JSON bytes the SQLite log holds, personal data
sealed), so the hash chain covers exactly what is on the topic. The key is tenant and aggregate
id (the subject's `sid`), never personal data; the partition is the Java client's murmur2 of
the key, so any Kafka client would route the same key to the same partition, and one subject's
facts stay in one partition, in order.

What a reader needs without parsing the value (the aggregate and version; for a fact its
tenant, `event_id`, digest and `recorded_at`) travels in one `ledger` header, a JSON object.
Records written before commit 2411e37 (2026-12-01) carry one header per field instead
(`aggregate`, `version`, ...); readers take both. One header instead of seven: kafka-python
encodes and parses each header in Python, and seven cost about 19 us more per record to
send and 15-20 us more to read (throwaway timings against the local broker, 2026-12-01), on
the writer's and every reader's path.

Every record carries a `mac` header: HMAC-SHA256, under the key store's record key
(`KeyStore.record_key`, which outlives master key rotations), of its key, value and other
headers (`record_mac`, the same rule for both layouts). The hash chain shows a record was
changed or removed, but anyone allowed to write to the topic could compute a well-formed next
record; the MAC lets every reader (replica, projections, verify) tell the ledger's records
from such ones.

The first record of each transaction of the intake writer also carries an `intake` header:
the intake topic's id and the next offset of each intake partition the transaction read,
committed with it. Kafka deletes a group's committed offsets after `offsets.retention.minutes`
(7 days) without a commit, however long the writer runs, since it assigns its partitions
itself; without them a restarted writer read the intake again, and a fact rejected before
(a withdrawal of a purpose not yet in force) could be recorded now. The ledger's own records
say how far it read (ledger.kafka.intake).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent

from ledger.chain import stored_event
from ledger.recorder import FactKey

MAC_HEADER = "mac"
FIELDS_HEADER = "ledger"
INTAKE_HEADER = "intake"


_LENGTH = struct.Struct(">I").pack


def record_mac(mac_key: bytes, key: bytes, value: bytes, headers: Mapping[str, bytes]) -> bytes:
    """Over the key, the value and every header but the MAC, in name order, each preceded by
    its length (4 bytes, big-endian)."""
    return _mac(mac_key, key, value, sorted((n, v) for n, v in headers.items() if n != MAC_HEADER))


def _mac(
    mac_key: bytes, key: bytes, value: bytes, in_name_order: Sequence[tuple[str, bytes]]
) -> bytes:
    """`record_mac` of headers given in name order (`encode` knows the order).

    One message and one `update`: an `update` per part cost more than the hashing itself. The
    pieces are joined once (a length and its part were concatenated first, copying the
    value a second time: 11.5 -> 7.1 us per record, timeit, 2026-12-01).
    """
    pieces = [_LENGTH(len(key)), key, _LENGTH(len(value)), value]
    for name, part in in_name_order:
        pieces += (_named(name), _LENGTH(len(part)), part)
    mac = _keyed(mac_key).copy()
    mac.update(b"".join(pieces))
    return mac.hexdigest().encode()


@lru_cache(maxsize=64)
def _named(name: str) -> bytes:
    """A header name as the MAC's message holds it: its length, then its bytes."""
    encoded = name.encode()
    return _LENGTH(len(encoded)) + encoded


@lru_cache(maxsize=8)
def _keyed(mac_key: bytes) -> hmac.HMAC:
    """Keyed once per MAC key (a process has one or two): copying the keyed state is cheaper
    than keying an HMAC per record (2.0 instead of 2.9 us at 700 bytes, timeit, 2026-12-01)."""
    return hmac.new(mac_key, digestmod=hashlib.sha256)


class LedgerRecord(NamedTuple):
    """One ledger record to send, made per fact (a NamedTuple: see ledger.envelope.Fact)."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int


# What a record batch adds to its one record's key, value and headers (a batch header of 61
# bytes, the record's own lengths and attributes), rounded up.
BATCH_OVERHEAD = 128


def record_size(record: LedgerRecord) -> int:
    """The record's bytes in a batch of its own: what a topic's `max.message.bytes` and a
    producer's `max_request_size` are held against."""
    size = BATCH_OVERHEAD + len(record.key) + len(record.value)
    for name, value in record.headers:  # a loop: sum() over a generator cost more a record
        size += len(name) + len(value)
    return size


@lru_cache(maxsize=1 << 16)
def partition_of(key: bytes, partitions: int) -> int:
    """Cached: a batch's facts about one subject (and every later fact about it) share a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The Java client's murmur2 (`Utils.murmur2`), as kafka-python's `murmur2` computes it.

    Also pure Python, but reading the key four bytes at a time with `struct` and masking
    once per product: a new subject's key (`<tenant>/<sid>`, 37 bytes) took 3-4 times less
    (timeit, 2026-12-01), and most facts of an intake batch are about a new subject.
    tests/test_kafka_records.py holds it to kafka-python's for any bytes.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length & ~3
    for (k,) in _WORDS(data[:whole]):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h = ((h ^ data[whole]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


_WORDS = struct.Struct("<I").iter_unpack


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
    stored: StoredEvent,
    fact: FactKey | None,
    partitions: int,
    mac_key: bytes,
    tenant: str | None = None,
    intake: bytes | None = None,
) -> LedgerRecord:
    originator = _uuid(stored.originator_id).hex
    key = f"{tenant if tenant is not None else tenant_of(stored, fact)}/{originator}".encode()
    meta: dict[str, str | int] = {
        "aggregate": originator,
        "version": stored.originator_version,
        "topic": stored.topic,
    }
    if fact is not None:
        meta["tenant"] = fact.tenant
        meta["event_id"] = fact.event_id
        meta["digest"] = fact.digest
        meta["recorded_at"] = fact.recorded_at
    described = orjson.dumps(meta)
    if intake is None:
        mac = _mac(mac_key, key, stored.state, ((FIELDS_HEADER, described),))
        headers = [(FIELDS_HEADER, described), (MAC_HEADER, mac)]
    else:
        named = ((INTAKE_HEADER, intake), (FIELDS_HEADER, described))  # in name order
        mac = _mac(mac_key, key, stored.state, named)
        headers = [*named, (MAC_HEADER, mac)]
    return LedgerRecord(key, stored.state, headers, partition_of(key, partitions))


def intake_header(topic_id: str, next_offsets: Mapping[int, int]) -> bytes:
    """The `intake` header: which intake topic (by id) a transaction read, and the next
    offset of each of its partitions it read, as committed with it."""
    return orjson.dumps(
        {"topic_id": topic_id, "next": {str(p): o for p, o in sorted(next_offsets.items())}}
    )


def intake_read(headers: Sequence[tuple[str, bytes]]) -> tuple[str, dict[int, int]] | None:
    """The intake topic id and next offsets an `intake` header names, if the record has one
    (read only from records whose MAC was checked: `ledger_events`)."""
    for name, value in headers:
        if name == INTAKE_HEADER:
            try:
                said = orjson.loads(value)
                return str(said["topic_id"]), {int(p): int(o) for p, o in said["next"].items()}
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                return None
    return None


class NotALedgerRecord(ValueError):
    """A record on the ledger topic that the ledger did not write (no valid MAC, or no headers)."""


def decode(
    key: bytes | None, value: bytes, headers: Mapping[str, bytes], mac_key: bytes
) -> tuple[StoredEvent, FactKey | None]:
    given = headers.get(MAC_HEADER)
    if given is None or not hmac.compare_digest(
        given, record_mac(mac_key, key or b"", value, headers)
    ):
        raise NotALedgerRecord("the record's MAC is missing or wrong")
    described = headers.get(FIELDS_HEADER)
    try:
        if described is None:
            return _first_layout(value, headers)
        return _described(value, described)
    except (KeyError, ValueError, TypeError) as error:
        # Under a valid MAC only a holder of the key could have written it: a bug, or the
        # key misused. A reader names it and goes on, as with any record not the ledger's.
        raise NotALedgerRecord("the record's headers do not describe a ledger record") from error


def _described(value: bytes, described: bytes) -> tuple[StoredEvent, FactKey | None]:
    """A record whose `ledger` header, a JSON object, names what its value is."""
    meta = orjson.loads(described)
    stored = stored_event(
        UUID(meta["aggregate"]), _version(meta["version"]), _text(meta["topic"]), value
    )
    fact = None
    if "event_id" in meta:
        fact = FactKey(
            tenant=_text(meta["tenant"]),
            event_id=_text(meta["event_id"]),
            digest=_text(meta["digest"]),
            recorded_at=_text(meta["recorded_at"]),
        )
    return stored, fact


def _first_layout(value: bytes, headers: Mapping[str, bytes]) -> tuple[StoredEvent, FactKey | None]:
    """A record as written before the `ledger` header: one header per field."""
    stored = stored_event(
        UUID(headers["aggregate"].decode()),
        int(headers["version"]),
        headers["topic"].decode(),
        value,
    )
    fact = None
    if "event_id" in headers:
        fact = FactKey(
            tenant=headers["tenant"].decode(),
            event_id=headers["event_id"].decode(),
            digest=headers["digest"].decode(),
            recorded_at=headers["recorded_at"].decode(),
        )
    return stored, fact


def _text(field: object) -> str:
    if not isinstance(field, str):
        raise TypeError("a text field of the ledger header is not text")
    return field


def _version(field: object) -> int:
    if type(field) is not int:  # not a bool either
        raise TypeError("the ledger header's version is not an integer")
    return field


def _uuid(originator_id: UUID | str) -> UUID:
    return originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
