"""Ledger records' MAC and partition: formats fixed by what earlier versions wrote.

Readers check every record's MAC, so a change to how it is computed would make every record
already on a ledger topic look forged. No broker is needed to pin it down.
"""

from __future__ import annotations

from uuid import UUID

import orjson
import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from ledger.kafka.records import (
    FIELDS_HEADER,
    MAC_HEADER,
    NotALedgerRecord,
    decode,
    encode,
    murmur2,
    partition_of,
    record_mac,
)
from ledger.recorder import FactKey
from tests.kafka_support import as_first_written


def test_a_known_record_keeps_its_mac() -> None:
    headers = {"version": b"1", "aggregate": b"0" * 32, MAC_HEADER: b"ignored", "topic": b"t"}
    assert record_mac(b"k" * 32, b"demo/" + b"0" * 32, b'{"a":1}', headers) == (
        b"d2dbf4bb4eff4b32f6baf58a2a1d120d3fa67f7461dfbd600a9722ecfe22b2c0"
    )


@given(
    key=st.binary(max_size=64),
    value=st.binary(max_size=4096),
    headers=st.dictionaries(st.text(max_size=12), st.binary(max_size=80), max_size=9),
    mac_key=st.binary(min_size=32, max_size=32),
)
def test_every_record_gets_the_mac_it_always_had(
    key: bytes, value: bytes, headers: dict[str, bytes], mac_key: bytes
) -> None:
    assert record_mac(mac_key, key, value, headers) == as_first_written(
        key, value, headers, mac_key
    )


@given(st.binary(max_size=200))
def test_murmur2_is_the_clients(data: bytes) -> None:
    """A subject's facts must keep going to the partition that holds its earlier facts."""
    assert murmur2(data) == kafka_python_murmur2(data)


def test_a_known_key_keeps_its_partition() -> None:
    # As kafka-python (and the Java client: toPositive(murmur2(key)) % partitions) put it.
    key = b"demo/" + b"0" * 32
    assert murmur2(key) & 0x7FFFFFFF == 1377360271
    assert [partition_of(key, n) for n in (1, 3, 12)] == [0, 1, 7]


names = st.text(min_size=1, max_size=20)
# What a ledger record holds: a stored event, and for a fact what the recorder indexes.
stored_events = st.builds(
    StoredEvent, st.uuids(), st.integers(1, 10**6), names, st.binary(max_size=300)
)
fact_keys = st.none() | st.builds(FactKey, names, names, names, names)


@given(stored_events, fact_keys, names)
def test_an_encoded_record_carries_the_mac_of_its_headers(
    stored: StoredEvent, fact: FactKey | None, tenant: str
) -> None:
    """encode() writes the MAC of its one `ledger` header by the rule readers check."""
    mac_key = b"m" * 32
    record = encode(stored, fact, 3, mac_key, tenant)
    headers = dict(record.headers)
    assert headers[MAC_HEADER] == record_mac(mac_key, record.key, record.value, headers)
    assert [name for name, _ in record.headers] == [FIELDS_HEADER, MAC_HEADER]
    assert decode(record.key, record.value, headers, mac_key) == (stored, fact)


@given(stored_events, fact_keys)
def test_a_record_of_the_first_layout_still_reads(
    stored: StoredEvent, fact: FactKey | None
) -> None:
    """Records written before the `ledger` header (one header per field) stay readable: the
    log of record is replayed for years, whatever version of the ledger wrote it."""
    mac_key = b"m" * 32
    originator = UUID(str(stored.originator_id))
    headers = {
        "aggregate": originator.hex.encode(),
        "version": str(stored.originator_version).encode(),
        "topic": stored.topic.encode(),
    }
    if fact is not None:
        headers |= {name: getattr(fact, name).encode() for name in FactKey._fields}
    key = b"demo/" + originator.hex.encode()
    headers[MAC_HEADER] = as_first_written(key, stored.state, headers, mac_key)
    assert decode(key, stored.state, headers, mac_key) == (stored, fact)


@pytest.mark.parametrize(
    "described",
    [
        b"not json",
        b"[1, 2]",
        b'{"version": 1, "topic": "t"}',
        b'{"aggregate": "zz", "version": 1, "topic": "t"}',
        b'{"aggregate": "' + b"0" * 32 + b'", "version": "1", "topic": "t"}',
        b'{"aggregate": "' + b"0" * 32 + b'", "version": true, "topic": "t"}',
        b'{"aggregate": "' + b"0" * 32 + b'", "version": 1, "topic": 7}',
        b'{"aggregate": "' + b"0" * 32 + b'", "version": 1, "topic": "t", "event_id": "e"}',
    ],
)
def test_a_ledger_header_that_does_not_describe_a_record_is_refused(described: bytes) -> None:
    """Even under a valid MAC (a bug, or the key misused), a reader skips and names the
    record rather than failing on it."""
    mac_key = b"m" * 32
    headers = {FIELDS_HEADER: described}
    headers[MAC_HEADER] = record_mac(mac_key, b"k", b"{}", headers)
    with pytest.raises(NotALedgerRecord):
        decode(b"k", b"{}", headers, mac_key)


def test_the_ledger_header_is_plain_json() -> None:
    """An operator reading the topic with Kafka's console consumer sees what each record is."""
    fact = FactKey("demo", "evt-1", "ab" * 32, "2026-12-01T10:00:00.000000+00:00")
    record = encode(StoredEvent(UUID(int=1), 3, "t", b"{}"), fact, 3, b"m" * 32, "demo")
    assert orjson.loads(dict(record.headers)[FIELDS_HEADER]) == {
        "aggregate": UUID(int=1).hex,
        "version": 3,
        "topic": "t",
        "tenant": "demo",
        "event_id": "evt-1",
        "digest": "ab" * 32,
        "recorded_at": "2026-12-01T10:00:00.000000+00:00",
    }
