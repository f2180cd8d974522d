"""Ledger records' MAC and partition: formats fixed by what earlier versions wrote.

Readers check every record's MAC, so a change to how it is computed would make every record
already on a ledger topic look forged. No broker is needed to pin it down.
"""

from __future__ import annotations

import hmac
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from ledger.kafka.records import MAC_HEADER, decode, encode, murmur2, partition_of, record_mac
from ledger.recorder import FactKey


def as_first_written(key: bytes, value: bytes, headers: dict[str, bytes], mac_key: bytes) -> bytes:
    """The MAC as the first version of records.py computed it, kept here as the reference."""
    parts = [key, value]
    for name in sorted(headers):
        if name != MAC_HEADER:
            parts += [name.encode(), headers[name]]
    message = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    return hmac.digest(mac_key, message, "sha256").hex().encode()


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


@given(
    st.uuids(),
    st.integers(1, 10**6),
    names,
    st.binary(max_size=300),
    st.none() | st.builds(FactKey, names, names, names, names),
    names,
)
def test_an_encoded_record_carries_the_mac_of_its_headers(
    originator: UUID,
    version: int,
    topic: str,
    state: bytes,
    fact: FactKey | None,
    tenant: str,
) -> None:
    """encode() writes the MAC from headers it orders itself; readers sort them by name."""
    mac_key = b"m" * 32
    stored = StoredEvent(originator, version, topic, state)
    record = encode(stored, fact, 3, mac_key, tenant)
    headers = dict(record.headers)
    assert headers[MAC_HEADER] == record_mac(mac_key, record.key, record.value, headers)
    assert [name for name, _ in record.headers][:3] == ["aggregate", "version", "topic"]
    assert decode(record.key, record.value, headers, mac_key) == (stored, fact)
