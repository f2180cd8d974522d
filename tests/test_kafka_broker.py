"""The path the Kafka log of record will take, proven on the real broker the build starts:
transactional, idempotent appends, and read_committed readers that see only committed records.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

pytestmark = pytest.mark.kafka


def _read_all(bootstrap: str, topic: str, isolation: str) -> list[tuple[int, bytes]]:
    """Every record up to the end offset (for read_committed: the last stable offset)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end:
            assert time.monotonic() < deadline, "did not reach the end offset within 30 s"
            for batch in consumer.poll(timeout_ms=500).values():
                records += [(r.offset, r.value) for r in batch]
        return records
    finally:
        consumer.close()


def test_transactions_abort_and_commit_read_committed(kafka_bootstrap: str) -> None:
    topic = f"consent.test.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()

    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=f"ledger-writer-test-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
        acks="all",
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(3):
            producer.send(topic, key=b"demo:sid-a", value=f"aborted-{i}".encode())
        producer.flush()
        producer.abort_transaction()

        producer.begin_transaction()
        for i in range(2):
            producer.send(topic, key=b"demo:sid-a", value=f"committed-{i}".encode())
        producer.commit_transaction()
    finally:
        producer.close()

    committed = _read_all(kafka_bootstrap, topic, "read_committed")
    assert [value for _, value in committed] == [b"committed-0", b"committed-1"]
    # The aborted records and the transaction markers occupy offsets: positions have gaps.
    offsets = [offset for offset, _ in committed]
    assert offsets[0] > 3

    # A read_uncommitted reader does see the aborted records: the isolation level matters.
    everything = [value for _, value in _read_all(kafka_bootstrap, topic, "read_uncommitted")]
    assert b"aborted-0" in everything
