"""A transaction's ledger records appended to the producer directly (ledger.kafka.record_sends),
against the real broker: what lands is what `send` would have written, a record too large
for the producer is refused as `send` refuses it, and another kafka-python falls back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import MessageSizeTooLargeError

from ledger.kafka.record_sends import direct, send_records
from ledger.kafka.records import LedgerRecord
from ledger.kafka.topics import KAFKA_DEFAULT_RECORD_LIMIT
from tests.kafka_support import read_committed

pytestmark = pytest.mark.kafka

# What the recorder holds every record to before sending: a topic's `max.message.bytes`.
LIMIT = KAFKA_DEFAULT_RECORD_LIMIT


def _topic(bootstrap: str, partitions: int) -> str:
    topic = f"consent.test.sends.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": 1}},
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    return topic


def _records(count: int, partitions: int) -> list[LedgerRecord]:
    return [
        LedgerRecord(
            key=f"demo/{i:032x}".encode(),
            value=f'{{"fact":{i}}}'.encode() + b"x" * (i % 7),
            headers=[("ledger", f'{{"n":{i}}}'.encode()), ("mac", b"%064d" % i)],
            partition=(i * 7) % partitions,
        )
        for i in range(count)
    ]


def _producer(bootstrap: str, **configs: Any) -> KafkaProducer:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"sends-{uuid.uuid4().hex[:8]}",
        linger_ms=1000,
        batch_size=1024 * 1024,
        **configs,
    )
    producer.init_transactions()
    return producer


def test_this_kafka_python_takes_the_direct_appends(kafka_bootstrap: str) -> None:
    """If kafka-python moved its parts, every record would go through `send` again, right
    but slower: this says so before a release does."""
    producer = _producer(kafka_bootstrap)
    try:
        assert direct(producer)
    finally:
        producer.close()


def _committed_values(bootstrap: str, topic: str) -> list[bytes]:
    return sorted(r.value for r in read_committed(bootstrap, topic))


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a record of a topic the producer knows went through send")


def test_the_records_land_in_their_partitions_in_order_as_sent(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap, 3)
    records = _records(700, 3)
    producer = _producer(kafka_bootstrap)
    try:
        assert producer.partitions_for(topic) == {0, 1, 2}  # as the recorder makes sure first
        producer.send = _refuse  # appended directly, or the test fails
        producer.begin_transaction()
        futures = send_records(producer, topic, records, LIMIT)
        producer.commit_transaction()
        places = [(f.get(timeout=0).partition, f.get(timeout=0).offset) for f in futures]
    finally:
        producer.close()
    assert [p for p, _ in places] == [r.partition for r in records]
    read = read_committed(kafka_bootstrap, topic)
    assert len(read) == len(records)
    at = {(r.partition, r.offset): r for r in read}
    for record, place in zip(records, places, strict=True):
        landed = at[place]
        assert (landed.key, landed.value) == (record.key, record.value)
        assert [(h[0], h[1]) for h in landed.headers] == record.headers
    # Per partition, the order they were handed over in.
    for partition in range(3):
        offsets = [o for p, o in places if p == partition]
        assert offsets == sorted(offsets)


def test_records_of_a_topic_the_producer_has_not_looked_up_are_sent_and_land(
    kafka_bootstrap: str,
) -> None:
    """Appended directly, they waited for a leader the producer never asked about, until the
    transaction timed out and fenced the producer."""
    topic = _topic(kafka_bootstrap, 2)
    records = _records(20, 2)
    producer = _producer(kafka_bootstrap)
    try:
        producer.begin_transaction()
        send_records(producer, topic, records, LIMIT)
        producer.commit_transaction()
    finally:
        producer.close()
    assert _committed_values(kafka_bootstrap, topic) == sorted(r.value for r in records)


def test_an_aborted_transaction_leaves_none_of_its_records(kafka_bootstrap: str) -> None:
    topic = _topic(kafka_bootstrap, 2)
    producer = _producer(kafka_bootstrap)
    try:
        producer.partitions_for(topic)
        producer.begin_transaction()
        send_records(producer, topic, _records(50, 2), LIMIT)
        producer.abort_transaction()
        producer.begin_transaction()
        kept = _records(3, 2)
        send_records(producer, topic, kept, LIMIT)
        producer.commit_transaction()
    finally:
        producer.close()
    assert _committed_values(kafka_bootstrap, topic) == sorted(r.value for r in kept)


def test_a_record_larger_than_the_producer_takes_is_refused_as_send_refuses_it(
    kafka_bootstrap: str,
) -> None:
    topic = _topic(kafka_bootstrap, 1)
    producer = _producer(kafka_bootstrap, max_request_size=4096)
    try:
        producer.partitions_for(topic)
        producer.begin_transaction()
        small = _records(2, 1)
        large = small[0]._replace(value=b"y" * 5000)
        with pytest.raises(MessageSizeTooLargeError):
            send_records(producer, topic, [small[1], large], 8192)
        producer.abort_transaction()
    finally:
        producer.close()


class _SendOnly:
    """A producer of another kafka-python: `send` and nothing of the parts appended to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]], int]] = []

    def send(
        self, topic: str, *, key: bytes, value: bytes, headers: Any, partition: int
    ) -> tuple[str, int]:
        self.sent.append((topic, key, value, headers, partition))
        return (topic, len(self.sent))


def test_a_producer_without_the_parts_gets_every_record_through_send() -> None:
    producer = _SendOnly()
    records = _records(5, 2)
    futures = send_records(producer, "t", records, LIMIT)
    assert futures == [("t", n) for n in range(1, 6)]
    assert producer.sent == [("t", r.key, r.value, r.headers, r.partition) for r in records]
