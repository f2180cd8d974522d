"""A transaction's ledger records handed to the producer without `send`'s checks of each.

kafka-python's `KafkaProducer.send` checks every record it is given: its headers' types, its
key's and value's, the topic's partitions in the cluster metadata (twice), its estimated size
against the producer's limits, and it formats the producer's name for a debug line whether
or not that is logged. For a ledger record (863-byte value, two headers) that is about half
of `send`'s 18 us; the accumulator's append, which encodes the record into its batch, is the
other half (timeit against the local broker, 2026-12-06). The intake writer makes hundreds of
sends a batch, on a process that is busy all the time it runs (`bench kafka`'s CPU line).

The ledger's records need none of those checks: `ledger.kafka.records.encode` makes bytes
keys and values and (str, bytes) headers, to a partition of the topic whose metadata the
recorder made sure of first (`_know_partitions`), and the recorder held each one's size to
the topic's `max.message.bytes` before sending. So, once the producer's metadata knows the
topic's partitions (else `send` is used, which waits for them), each partition is added to the
transaction once and each record appended to the producer's accumulator directly, which is
what `send` does once its checks pass. Where the topic takes records larger than the
producer's own `max_request_size`, each record's size is looked at again, and one over it
goes through `send`, which refuses it as before.

This reaches into kafka-python 3.0's producer (`_accumulator`, `_transaction_manager`,
`_sender`), as `ledger.kafka.transaction_calls` does; where another version keeps them
otherwise, every record goes through `send` (tests/test_kafka_record_sends.py says which this
version is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer, TopicPartition

from ledger.kafka.records import LedgerRecord, record_size


def direct(producer: KafkaProducer) -> bool:
    """Whether this kafka-python's producer has the parts a direct append needs."""
    accumulator = getattr(producer, "_accumulator", None)
    manager = getattr(producer, "_transaction_manager", None)
    return (
        callable(getattr(accumulator, "append", None))
        and callable(getattr(manager, "maybe_add_partition_to_transaction", None))
        and callable(getattr(getattr(producer, "_sender", None), "wakeup", None))
        and callable(getattr(getattr(producer, "_metadata", None), "partitions_for_topic", None))
        and isinstance(getattr(producer, "config", None), dict)
    )


def send_records(
    producer: KafkaProducer, topic: str, records: Sequence[LedgerRecord], held_to: int
) -> list[Any]:
    """Each record's future (kafka-python's FutureRecordMetadata), in order, the records
    added to the producer's open transaction. The caller held each record's `record_size`
    to `held_to` (the topic's `max.message.bytes`); only where that is more than the
    producer takes is each record's size looked at again."""
    if not records:
        return []
    if not direct(producer) or getattr(producer, "_closed", False):
        return [_sent(producer, topic, r) for r in records]
    # The sender ships a partition's batch once the producer's metadata knows its leader, and
    # it asks only about topics a send has named: a record appended for a topic it does not
    # know waited, never sent, until its transaction timed out. `send` waits for them to be
    # known (the recorder made sure of them first); so does this batch if they are not.
    known = producer._metadata.partitions_for_topic(topic)
    if known is None or any(r.partition not in known for r in records):
        return [_sent(producer, topic, r) for r in records]
    largest = producer.config["max_request_size"]
    sizes_checked = held_to <= largest
    manager, accumulator = producer._transaction_manager, producer._accumulator
    partitions: dict[int, TopicPartition] = {}
    futures: list[Any] = []
    wake = False
    for record in records:
        if not sizes_checked and record_size(record) > largest:
            futures.append(_sent(producer, topic, record))  # refused there, as it was
            continue
        tp = partitions.get(record.partition)
        if tp is None:
            # Raises what the transaction's state raises (fenced, aborting), as `send` would.
            tp = partitions[record.partition] = TopicPartition(topic, record.partition)
            manager.maybe_add_partition_to_transaction(tp)
        future, full, new_batch, _ = accumulator.append(
            tp, None, record.key, record.value, record.headers
        )
        futures.append(future)
        wake = wake or full or new_batch
    if wake:
        # What `send` does for each record that fills or begins a batch, once for them all:
        # the sender ships full batches now and the others at the commit.
        producer._sender.wakeup()
    return futures


def _sent(producer: KafkaProducer, topic: str, record: LedgerRecord) -> Any:
    return producer.send(
        topic,
        key=record.key,
        value=record.value,
        headers=record.headers,
        partition=record.partition,
    )
