"""The raw consume-transform-produce loop as a process of its own, for `bench kafka`'s
end-to-end latency baseline: `python -m bench.raw_loop BOOTSTRAP SOURCE SINK`.

It is what `consent-ledger worker` is to the ledger's latency row, minus the ledger: the
intake writer's consumer settings (read_committed, `fetch_max_wait_ms=500`, up to 500 records a
poll) and producer settings (`PRODUCER_TUNING`), one transaction per poll carrying the
records copied to SINK and the consumed offsets. So the two rows differ by what the ledger
does with a batch, not by how the batch reaches it or leaves it. Prints `ready` once it
holds its partitions and its transactional producer; stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from ledger.kafka.recorder import PRODUCER_TUNING


def run(bootstrap: str, source: str, sink: str, stop: threading.Event) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"{source}-raw-loop",
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_poll_records=500,
        fetch_max_wait_ms=500,
    )
    partitions = consumer.partitions_for_topic(source) or set()
    consumer.assign([TopicPartition(source, p) for p in sorted(partitions)])
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"{sink}-raw-loop", **PRODUCER_TUNING
    )
    producer.init_transactions()
    print("ready", flush=True)
    while not stop.is_set():
        polled = consumer.poll(timeout_ms=100, max_records=500)
        copy_in_one_transaction(
            [r for batch in polled.values() for r in batch], sink, consumer, producer
        )
    producer.close()
    consumer.close()


def copy_in_one_transaction(
    records: list[Any], sink: str, consumer: KafkaConsumer, producer: KafkaProducer
) -> int:
    """Copy the records' keys and values to `sink` and commit the consumed offsets, in one
    transaction: the floor of any exactly-once intake on this client. Returns how many."""
    if not records:
        return 0
    producer.begin_transaction()
    for r in records:
        producer.send(sink, key=r.key, value=r.value)
    offsets = {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}
    producer.send_offsets_to_transaction(
        {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()},
        consumer.group_metadata(),
    )
    producer.commit_transaction()
    return len(records)


def main() -> None:
    bootstrap, source, sink = sys.argv[1:4]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run(bootstrap, source, sink, stop)


if __name__ == "__main__":
    main()
