"""`POST /v1/facts:lookup` in Kafka mode, next to raw kafka-python reads of the rejected topic
in the same run.

A lookup that finds ids the writer's replica has not recorded reads the rejected topic on
from where the service's refusals file got to (`ledger.kafka.refusal_index`), by consumers
it keeps. Rows:
- ledger, all recorded: one id the replica answers (no read of the rejected topic);
- ledger, one not recorded: that id and one never published, so each lookup asks the
  rejected topic where it ends (nothing new to read);
- ledger, first lookup: the same, by a service started on a topic of `--refusals` refusals
  it has not read (the file filled);
- raw, a consumer per question: a read_committed kafka-python consumer made, assigned to the
  rejected topic, read to its end and closed, as each lookup did before the consumers were
  kept (and as `consent-ledger receipts` reads it);
- raw, a consumer kept: the same consumer's `end_offsets`, the least a lookup that reads on
  can ask of the broker.

Lookups go through FastAPI's test client (in process, no socket), as the HTTP service's own
route and its dependencies run them.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import orjson
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from api.app import create_app
from api.keys import ApiKeys
from bench.ingest import mixed_stream
from bench.kafka import broker, settings_for, summary
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.errors import Code, FactRejected
from ledger.kafka.names import Topics
from ledger.kafka.rejected import rejected_record
from ledger.settings import Settings


def write_refusals(settings: Settings, count: int) -> None:
    """`count` rejected records as the intake writer writes them, under the ledger's MAC."""
    ledger = ConsentLedger(settings)
    try:
        link = ledger.ledger_recorder.link  # type: ignore[attr-defined]
    finally:
        ledger.close()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    try:
        for n in range(count):
            intake = SimpleNamespace(
                topic=link.topics.intake,
                partition=n % settings.partitions,
                offset=n,
                value=orjson.dumps({"tenant": "demo", "event_id": f"refused-{n}"}),
            )
            key, value, headers = rejected_record(
                intake,  # the fields rejected_record reads (ConsumerRecord is untyped)
                FactRejected(Code.MISSING_FIELD, "subject is required", "subject"),
                None,
                "",
                link.record_key,
            )
            producer.send(link.topics.rejected, key=key, value=value, headers=headers)
        producer.flush()
    finally:
        producer.close()


def timed(question: Callable[[], object], times: int) -> list[float]:
    took = []
    for _ in range(times):
        began = time.perf_counter()
        question()
        took.append((time.perf_counter() - began) * 1000)
    return took


def raw_reader(bootstrap: str, topic: str, partitions: int) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    return consumer


def raw_read_to_end(bootstrap: str, topic: str, partitions: int) -> int:
    """A consumer made, the topic read to its end, closed; how many records."""
    consumer = raw_reader(bootstrap, topic, partitions)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        end = consumer.end_offsets(tps)
        read = 0
        while any(consumer.position(tp) < end[tp] for tp in tps):
            read += sum(len(rs) for rs in consumer.poll(timeout_ms=100).values())
        return read
    finally:
        consumer.close()


def row(name: str, took: list[float]) -> str:
    count, p50, p99, worst = summary(took)
    return f"{name:<44} {count:>6} {p50:>9.1f} {p99:>9.1f} {worst:>9.1f}"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench lookup")
    parser.add_argument("--lookups", type=int, default=200, help="timed lookups of each kind")
    parser.add_argument("--refusals", type=int, default=1000, help="on the rejected topic")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-lookup-") as tmp, broker(Path(tmp)) as boot:
        settings = settings_for(Path(tmp), boot, "lookup")
        ledger = ConsentLedger(settings)
        ledger.init_demo()
        recorded = mixed_stream(1)[0]
        ledger.record([parse_fact(recorded)])
        ledger.close()
        write_refusals(settings, args.refusals)
        keys = ApiKeys(settings.api_keys_path)
        key = keys.create("demo", {"publisher"})[1]
        keys.close()
        auth = {"Authorization": f"Bearer {key}"}
        rejected = Topics.of(settings.topic_prefix).rejected

        def lookup(client: TestClient, ids: list[str]) -> Callable[[], object]:
            def ask() -> None:
                answer = client.post("/v1/facts:lookup", json={"event_ids": ids}, headers=auth)
                assert answer.status_code == 200, answer.text

            return ask

        rows = []
        with TestClient(create_app(settings)) as client:
            first = timed(lookup(client, [recorded["event_id"], "refused-0"]), 1)
            rows.append(row("ledger, first lookup (file filled)", first))
            rows.append(
                row(
                    "ledger, all recorded",
                    timed(lookup(client, [recorded["event_id"]]), args.lookups),
                )
            )
            rows.append(
                row(
                    "ledger, one not recorded",
                    timed(lookup(client, [recorded["event_id"], "never"]), args.lookups),
                )
            )
        partitions = settings.partitions
        per_question = timed(lambda: raw_read_to_end(boot, rejected, partitions), args.lookups)
        rows.append(row("raw, a consumer per question (read to end)", per_question))
        kept = raw_reader(boot, rejected, partitions)
        tps = [TopicPartition(rejected, p) for p in range(partitions)]
        try:
            rows.append(
                row(
                    "raw, a consumer kept (end offsets)",
                    timed(lambda: kept.end_offsets(tps), args.lookups),
                )
            )
        finally:
            kept.close()
    print(
        f"receipts lookup, Kafka mode: {args.refusals} refusals on the rejected topic "
        f"({settings.partitions} partitions); Python {platform.python_version()}, broker and "
        "client on the same machine"
    )
    print(f"{'':<44} {'count':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for line in rows:
        print(line)
