"""Helpers for tests against the real broker: fresh topic prefixes, publishing, reading back."""

from __future__ import annotations

import base64
import contextlib
import hmac
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from ledger.kafka.publish import intake_key
from ledger.settings import Settings
from tests.cli_support import run_with
from tests.facts import grant, policy, withdraw


def kafka_settings(data_dir: Path, bootstrap: str, **overrides: Any) -> Settings:
    """Settings of a ledger on its own topics (a fresh prefix), so tests never share a log."""
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "backend": "kafka",
        "kafka_bootstrap": bootstrap,
        "topic_prefix": f"t{uuid.uuid4().hex[:12]}",
        "partitions": 3,
    }
    fields.update(overrides)
    return Settings(**fields)


def another_writer(settings: Settings, data_dir: Path) -> Any:
    """Another writer of the same deployment (its master key and key store copied, the same
    topics), which has taken the ledger's partitions: the writer of `settings` is fenced.
    A `ConsentLedger`, for the caller to close."""
    from ledger.application import ConsentLedger

    data_dir.mkdir()
    for name in ("master.key", "keys.db", "keys.db-wal"):
        if (settings.data_dir / name).exists():
            shutil.copy(settings.data_dir / name, data_dir / name)
    assert settings.kafka_bootstrap is not None
    other = ConsentLedger(
        kafka_settings(data_dir, settings.kafka_bootstrap, topic_prefix=settings.topic_prefix)
    )
    other.ledger_recorder.own()  # type: ignore[attr-defined]
    return other


def kafka_env(settings: Settings) -> dict[str, str]:
    """The same settings as the environment of a CLI process."""
    assert settings.kafka_bootstrap is not None
    return {
        "LEDGER_BACKEND": "kafka",
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "LEDGER_PARTITIONS": str(settings.partitions),
        "LEDGER_DATA_DIR": str(settings.data_dir),
    }


def kafka_cli(
    settings: Settings, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`consent-ledger ARGS` in a process of its own, on these Kafka-mode settings."""
    return run_with({**os.environ, **kafka_env(settings)}, *args, timeout=timeout)


def publish(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    compression: str | None = None,
    max_request_size: int = 1024 * 1024,
) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        compression_type=compression,
        max_request_size=max_request_size,
    )
    try:
        sent = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush()
        for future in sent:
            future.get(timeout=30)  # a record the broker refused fails the test here
    finally:
        producer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends: dict[TopicPartition, int] = consumer.end_offsets(
            [TopicPartition(topic, p) for p in partitions]
        )
        return ends
    finally:
        consumer.close()


# How long `read_committed` waits for transactions still completing before it reads up to
# where a read_committed reader can read at that moment.
SETTLE_S = 10.0


def read_committed(bootstrap: str, topic: str, timeout: float = 60) -> list[Any]:
    """Every committed record of a topic, partition by partition in offset order.

    A transaction's commit returns once it is decided; its markers reach the partitions a
    moment later, and until then a read_committed reader's end (the last stable offset)
    stops short of its records. So the end is taken once it has caught up with the high
    watermark (every transaction written so far completed), or after SETTLE_S, for a topic
    with one left open on purpose.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = _settled_end(bootstrap, consumer, tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def _settled_end(
    bootstrap: str, committed: KafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    written = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + SETTLE_S
        while True:
            stable: dict[TopicPartition, int] = committed.end_offsets(tps)
            # Each round trip to the broker paces the next look; no sleep.
            ends = written.end_offsets(tps)
            if stable == ends:
                return stable
            if time.monotonic() > deadline:
                # Shown with a failing test's output: facts missing from a read that stopped
                # short (a transaction left open) are not facts the writer lost.
                short = {
                    tp.partition: (stable[tp], ends[tp]) for tp in tps if stable[tp] != ends[tp]
                }
                print(
                    f"read_committed: transactions in {tps[0].topic} still open after "
                    f"{SETTLE_S} s; read to the stable end, short of the written one, in "
                    f"partitions (stable, written) {short}",
                    file=sys.stderr,
                )
                return stable
    finally:
        written.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset of each partition of the topic (None: none committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        out = {}
        for p in consumer.partitions_for_topic(topic) or ():
            out[p] = consumer.committed(TopicPartition(topic, p))
        return out
    finally:
        consumer.close()


def as_first_written(key: bytes, value: bytes, headers: dict[str, bytes], mac_key: bytes) -> bytes:
    """The record MAC as the first version of ledger/kafka/records.py computed it, kept here
    as the reference every later version must agree with."""
    parts = [key, value]
    for name in sorted(headers):
        if name != "mac":
            parts += [name.encode(), headers[name]]
    message = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    return hmac.digest(mac_key, message, "sha256").hex().encode()


def in_first_layout(record: Any, mac_key: bytes) -> list[tuple[str, bytes]]:
    """A ledger record's headers as the ledger wrote them before its `ledger` header: one
    header per field, in the order it wrote them, and the MAC as first written."""
    fields = orjson.loads(dict(record.headers)["ledger"])
    names = ["aggregate", "version", "topic", "tenant", "event_id", "digest", "recorded_at"]
    first = {name: str(fields[name]).encode() for name in names if name in fields}
    return [*first.items(), ("mac", as_first_written(record.key, record.value, first, mac_key))]


def headers(record: Any) -> dict[str, str]:
    """A ledger record's fields, from its `ledger` header (or a header per field, as records
    were first written), as text."""
    fields = {k: v.decode() for k, v in record.headers or []}
    if "ledger" in fields:
        fields |= {k: str(v) for k, v in orjson.loads(fields.pop("ledger")).items()}
    return fields


# ---- an intake stream: valid facts in per-subject order, with poison interleaved -----------

BAD_KINDS: list[tuple[str, str]] = [
    ("not_json", "invalid_json"),
    ("array", "not_an_object"),
    ("wrong_type", "invalid_field"),
    ("oversize", "oversize"),
    ("unknown_type", "unknown_type"),
    ("unknown_tenant", "unknown_tenant"),
    ("no_value", "invalid_json"),
    ("rule", "purpose_not_in_force"),
    ("out_of_calendar", "invalid_timestamp"),
    ("named_twice", "invalid_json"),
]
OVERSIZE_LIMIT = 8192
START = datetime.fromisoformat("2025-01-01T00:00:00+05:00")


@dataclass(frozen=True)
class IntakeItem:
    key: bytes
    value: bytes | None
    expected: str  # "accepted" or the refusal code
    event_id: str | None
    subject: str | None


def intake_stream(valid: int, bad: int, subjects: int = 400, seed: int = 7) -> list[IntakeItem]:
    """`valid` facts over `subjects` subjects (grant, withdraw, grant... an hour apart, each
    valid only in that order) with `bad` poison records spread evenly between them."""
    import random

    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    secret = uuid.uuid4().bytes  # the publishing service's own, for its intake keys
    items: list[IntakeItem] = []
    count: dict[int, int] = {}
    for i in range(valid):
        s = rng.randrange(subjects)
        k = count.get(s, 0)
        count[s] = k + 1
        ref = f"{run}-subject-{s}"
        occurred = (START + timedelta(hours=k)).isoformat()
        builder = grant if k % 2 == 0 else withdraw
        body = builder(ref, event_id=f"{run}-{i}", occurred_at=occurred)
        items.append(
            IntakeItem(
                intake_key(secret, "demo", ref),
                orjson.dumps(body),
                "accepted",
                body["event_id"],
                ref,
            )
        )
    every = max(1, valid // max(1, bad))
    for j in range(bad):
        kind, code = BAD_KINDS[j % len(BAD_KINDS)]
        value = _poison(kind, f"{run}-bad-{j}")
        items.insert(
            min(len(items), (j + 1) * every + j), IntakeItem(b"poison", value, code, None, None)
        )
    return items


def _poison(kind: str, event_id: str) -> bytes | None:
    if kind == "not_json":
        return b'{"type": "consent.granted", '
    if kind == "array":
        return b'[{"type": "consent.granted"}]'
    if kind == "wrong_type":
        return orjson.dumps({**grant("p-1", event_id=event_id), "purposes": "marketing"})
    if kind == "oversize":
        return orjson.dumps({**grant("p-2", event_id=event_id), "note": "x" * OVERSIZE_LIMIT})
    if kind == "unknown_type":
        return orjson.dumps({**grant("p-3", event_id=event_id), "type": "consent.guessed"})
    if kind == "unknown_tenant":
        return orjson.dumps(grant("p-4", event_id=event_id, tenant="no-such-tenant"))
    if kind == "no_value":
        return None
    if kind == "named_twice":  # read as one purpose or the other, by which parser reads it
        return orjson.dumps(grant("p-7", event_id=event_id))[:-1] + b',"purposes":["support"]}'
    if kind == "out_of_calendar":  # before year 1 once in UTC
        return orjson.dumps(
            grant("p-6", event_id=event_id, occurred_at="0001-01-01T00:00:00+14:00")
        )
    return orjson.dumps(withdraw(f"p-5-{event_id}", event_id=event_id, purposes=("analytics",)))


def assert_no_batch_isolated(printed: str) -> None:
    """An outage or a crash is no record's fault: the writer took no batch apart to find one
    that broke it (`IntakeWriter._write_isolating`, whose log line this looks for), as it
    did for kafka-python's RuntimeError, rejecting a valid fact as `processing_failed`. The
    exactly-once check catches a fact so rejected, not an isolation that rejected none."""
    assert "isolating the record" not in printed, printed[-3000:]


def check_exactly_once(
    items: list[IntakeItem], ledger: list[Any], rejected: list[Any], said: str = ""
) -> None:
    """Every intake item exactly once in the ledger or in rejected, with its reason, in order.

    `said`: what the writer printed (the worker's output). A failure quotes its last lines:
    the facts' names alone do not say how the writer came to lose or refuse them.
    """
    try:
        _check_exactly_once(items, ledger, rejected)
    except AssertionError as failed:
        if not said:
            raise
        tail = "\n".join(said.splitlines()[-SAID_LINES:])
        raise AssertionError(f"{failed}\nthe writer's last {SAID_LINES} lines:\n{tail}") from failed


# How much of the writer's output a failed exactly-once check quotes.
SAID_LINES = 80


def _check_exactly_once(items: list[IntakeItem], ledger: list[Any], rejected: list[Any]) -> None:
    # The demo tenant's seed policy is the one fact that did not come through intake.
    facts = [
        r
        for r in ledger
        if not headers(r).get("event_id", "seed-policy-").startswith("seed-policy-")
    ]
    landed = [headers(r)["event_id"] for r in facts]
    assert len(landed) == len(set(landed)), "a fact was appended twice"
    wanted = [i.event_id or "" for i in items if i.expected == "accepted"]
    missing, extra = sorted(set(wanted) - set(landed)), sorted(set(landed) - set(wanted))
    # Which, and where the ledger's rejected records put the missing ones: a bare list
    # comparison of 3,000 facts said only that they differed.
    bodies = [orjson.loads(r.value) for r in rejected]
    rejected_as = {body.get("event_id"): body.get("code") for body in bodies}
    assert not missing and not extra, (
        f"{len(missing)} accepted facts not in the ledger: "
        f"{[(e, rejected_as.get(e)) for e in missing[:20]]}; "
        f"{len(extra)} in it that should not be: {extra[:20]}"
    )
    sources = [(b["source"]["partition"], b["source"]["offset"]) for b in bodies]
    assert len(sources) == len(set(sources)), "a rejected record was written twice"
    assert sorted(b["code"] for b in bodies) == sorted(
        i.expected for i in items if i.expected != "accepted"
    )
    for body in bodies:  # the original bytes travel with the reason
        assert body["message"] and "original" in body
    # Per-subject order: each subject's facts in the ledger in the order they were published.
    order = {i.event_id: n for n, i in enumerate(items) if i.event_id}
    by_subject: dict[str, list[int]] = {}
    for record in facts:
        by_subject.setdefault(headers(record)["aggregate"], []).append(
            order[headers(record)["event_id"]]
        )
    for positions in by_subject.values():
        assert positions == sorted(positions), "a subject's facts were reordered"


class LateBroker:
    """An address where no broker answers until `open()`, then a TCP relay to a real one.

    The port is bound from the start (so nothing else takes it) but not listening, so a
    client is refused as by a host whose broker has not started. Kafka clients bootstrap
    through it, then reach the broker at the address its metadata advertises.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = [self.listener]

    def open(self) -> None:
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def largest_policy(version: str, size: int = 1024 * 1024) -> bytes:
    """A `policy.published` fact of exactly `size` bytes (the envelope's limit by default),
    its text incompressible: its ledger record is larger than Kafka's default
    `max.message.bytes` takes."""
    fact = {**policy(version), "text": ""}
    room = size - len(orjson.dumps(fact))
    fact["text"] = base64.b64encode(os.urandom(room)).decode()[:room]
    data = orjson.dumps(fact)
    assert len(data) == size
    return data


def made_by_hand(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    """A topic an operator made before the ledger first ran (one partition, one replica)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {topic: {"num_partitions": 1, "replication_factor": 1, "configs": configs}},
            wait_for_metadata=True,
        )
    finally:
        admin.close()


class Stopping:
    """Says "stop" from its `after`th question on."""

    def __init__(self, after: int) -> None:
        self.after, self.asked = after, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked >= self.after


@contextlib.contextmanager
def no_broker() -> Iterator[str]:
    """An address whose connections are refused, as a host with no broker running refuses
    them: a port bound here, never listened on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


@contextlib.contextmanager
def silent_broker() -> Iterator[str]:
    """An address that takes connections and never answers a request: a broker too slow to
    answer, which a client cannot tell from one that will answer in a moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        yield f"127.0.0.1:{s.getsockname()[1]}"
