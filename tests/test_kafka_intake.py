"""The intake writer on the real broker: poison never stops it, and every record lands once."""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.producer.transaction_manager import EndTxnHandler

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.kafka import intake as intake_module
from ledger.kafka import recorder as recorder_module
from ledger.kafka.intake import IntakeWriter, wait_until_consumed
from ledger.kafka.names import Topics
from ledger.kafka.reading import ReadTimedOut
from ledger.kafka.recorder import LedgerUnavailable
from ledger.kafka.topics import TopicRefused, ensure_topics
from ledger.receipt import Receipt
from ledger.settings import Settings
from tests.facts import grant, withdraw
from tests.kafka_support import (
    OVERSIZE_LIMIT,
    check_exactly_once,
    committed_offsets,
    end_offsets,
    headers,
    intake_stream,
    kafka_settings,
    largest_policy,
    made_by_hand,
    publish,
    read_committed,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def kafka_ledger(tmp_path: Path, kafka_bootstrap: str) -> Iterator[ConsentLedger]:
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, intake_max_bytes=OVERSIZE_LIMIT)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    yield ledger
    ledger.close()


def _drain(ledger: ConsentLedger, settings: Settings) -> IntakeWriter:
    topics = Topics.of(settings.topic_prefix)
    assert settings.kafka_bootstrap
    writer = IntakeWriter(ledger)
    writer.start()
    try:
        wait_until_consumed(writer, end_offsets(settings.kafka_bootstrap, topics.intake), 180)
        # A running writer keeps polling: nothing it already committed may come back.
        assert writer.step(timeout_ms=300) == 0
    finally:
        writer.close()
    return writer


def test_poison_interleaved_with_valid_facts(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str
) -> None:
    """1,000 malformed or invalid records among 10,000 valid ones."""
    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    items = intake_stream(valid=10_000, bad=1_000)
    publish(kafka_bootstrap, topics.intake, [(i.key, i.value) for i in items])  # type: ignore[misc]

    writer = _drain(kafka_ledger, settings)

    ledger = read_committed(kafka_bootstrap, topics.ledger)
    rejected = read_committed(kafka_bootstrap, topics.rejected)
    check_exactly_once(items, ledger, rejected)
    assert writer.stats.accepted == 10_000
    assert sum(writer.stats.rejected.values()) == 1_000
    # The batches' time, split: the transactions are part of the writes.
    assert writer.stats.poll_s > 0
    assert 0 < writer.stats.transaction_s < writer.stats.write_s
    for record in rejected:
        body = orjson.loads(record.value)
        assert headers(record)["code"] == body["code"]
        assert body["source"]["topic"] == topics.intake
        assert (
            record.key
            == f"{topics.intake}/{body['source']['partition']}/{body['source']['offset']}".encode()
        )
    # The writer's facts are readable through the same application service.
    sample = next(i for i in items if i.expected == "accepted")
    assert sample.subject is not None
    subject = kafka_ledger.subject("demo", kafka_ledger.sid("demo", sample.subject))
    assert subject is not None


def test_batches_compressed_with_every_kafka_codec_are_read(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str
) -> None:
    """Publishers' producers compress (Java and librdkafka clients often with lz4 or zstd).
    A batch the consumer has no codec for cannot be read at all, not even to be rejected:
    the writer retried that partition for ever (seen with lz4 before the codecs were
    dependencies). Valid and poison records alike, in each codec Kafka defines."""
    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    items = intake_stream(valid=400, bad=40, subjects=50)
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    share = -(-len(items) // len(codecs))
    for n, codec in enumerate(codecs):
        part = items[n * share : (n + 1) * share]
        publish(kafka_bootstrap, topics.intake, [(i.key, i.value) for i in part], codec)  # type: ignore[misc]
    writer = _drain(kafka_ledger, settings)
    check_exactly_once(
        items,
        read_committed(kafka_bootstrap, topics.ledger),
        read_committed(kafka_bootstrap, topics.rejected),
    )
    assert writer.stats.accepted == 400 and writer.stats.retries == 0


def test_a_record_that_breaks_the_writer_is_isolated_and_rejected(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: parsing raises an unexpected error for one record of a batch."""
    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    items = intake_stream(valid=300, bad=0)
    real_parse = intake_module.parse_fact_bytes  # type: ignore[attr-defined]

    def parse(data: bytes, tenant: str | None = None) -> object:
        if b"trip-the-writer" in data:
            raise RuntimeError("a bug")
        return real_parse(data, tenant)

    monkeypatch.setattr(intake_module, "parse_fact_bytes", parse)
    values = [i.value for i in items]
    values.insert(150, b'{"trip-the-writer": true}')
    publish(kafka_bootstrap, topics.intake, [(b"k", v) for v in values])  # type: ignore[misc]

    writer = _drain(kafka_ledger, settings)

    rejected = [orjson.loads(r.value) for r in read_committed(kafka_bootstrap, topics.rejected)]
    assert [r["code"] for r in rejected] == ["processing_failed"]
    landed = [headers(r).get("event_id") for r in read_committed(kafka_bootstrap, topics.ledger)]
    assert {i.event_id for i in items} <= set(landed)
    assert writer.stats.accepted == 300


def test_a_batch_that_fails_mid_transaction_commits_nothing_of_it(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch fails after its facts and offsets went into the open transaction and
    before the commit: the transaction is aborted, the batch is written again, and every
    record lands once (the aborted copies invisible to read_committed readers)."""
    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    items = intake_stream(valid=200, bad=20)
    publish(kafka_bootstrap, topics.intake, [(i.key, i.value) for i in items])  # type: ignore[misc]
    failed: list[str] = []

    def fail_once(name: str) -> None:
        if name == "kafka-sent" and not failed:
            failed.append(name)
            raise RuntimeError("a bug between the sends and the commit")

    monkeypatch.setattr(recorder_module, "failpoint", fail_once)

    writer = _drain(kafka_ledger, settings)

    assert failed == ["kafka-sent"]
    ledger = read_committed(kafka_bootstrap, topics.ledger)
    rejected = read_committed(kafka_bootstrap, topics.rejected)
    check_exactly_once(items, ledger, rejected)
    assert writer.stats.accepted == 200
    assert not kafka_ledger.ledger_recorder.fenced  # type: ignore[attr-defined]


def test_a_transactional_call_failed_by_the_client_with_a_runtime_error_rejects_no_fact(
    kafka_ledger: ConsentLedger,
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kafka-python's sender fails a transactional call with a RuntimeError, not a
    KafkaError, when an answer comes that it did not expect ("Detected more than one
    in-flight transactional request."), and its producer is dead from then on. The writer
    took that for a record that broke it: it isolated the batch in halves, each half's
    transaction failed the same way while the fault lasted, and valid facts went to the
    rejected topic as `processing_failed` (or, once a rejection's own transaction failed
    too, the writer's step raised the RuntimeError). It is the client's failure: the batch
    is retried, as the worker retries any LedgerUnavailable, and no fact is rejected.

    Here EndTxn answers are failed so, as the sender does (up to eight: the old code's
    isolating halves sent that many and more), each after the broker committed the
    transaction, which the writer cannot know until its next `own()` settles it; so the
    fixed writer meets one, and its retry finds the batch committed. (A failed
    AddOffsetsToTxn surfaced as a KafkaError already: the producer's next send refused its
    fatal state.)"""
    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    items = intake_stream(valid=60, bad=0)
    publish(kafka_bootstrap, topics.intake, [(i.key, i.value) for i in items])  # type: ignore[misc]
    failed: list[int] = []
    real = EndTxnHandler.on_complete

    def on_complete(handler: Any, correlation_id: int, response: Any) -> None:
        if len(failed) < 8:
            failed.append(correlation_id)
            handler.fatal_error(
                RuntimeError("Detected more than one in-flight transactional request.")
            )
            return
        real(handler, correlation_id, response)

    monkeypatch.setattr(EndTxnHandler, "on_complete", on_complete)
    ends = end_offsets(kafka_bootstrap, topics.intake)
    writer = IntakeWriter(kafka_ledger)
    writer.start()
    unavailable = 0
    try:
        with caplog.at_level(logging.ERROR, logger="consent_ledger.intake"):
            while not all(writer.committed.get(tp, 0) >= end for tp, end in ends.items()):
                try:
                    if writer.consumer is None:  # as `IntakeWriter.run`, without its pauses
                        writer.start()
                    writer.step()
                except LedgerUnavailable:  # what `run` retries
                    unavailable += 1
                assert unavailable <= 8
    finally:
        writer.close()

    # Each failure a LedgerUnavailable, retried.
    assert failed and unavailable == len(failed)
    assert "isolating" not in caplog.text
    ledger = read_committed(kafka_bootstrap, topics.ledger)
    rejected = read_committed(kafka_bootstrap, topics.rejected)
    assert rejected == []
    check_exactly_once(items, ledger, rejected)


def _started_on(
    ledger: ConsentLedger, bootstrap: str, items: list[Any]
) -> tuple[Topics, dict[TopicPartition, int], IntakeWriter]:
    """The items published to the intake topic, its end offsets, and a writer started."""
    topics = Topics.of(ledger.settings.topic_prefix)
    publish(bootstrap, topics.intake, [(i.key, i.value) for i in items])
    ends = end_offsets(bootstrap, topics.intake)
    writer = IntakeWriter(ledger)
    writer.start()
    return topics, ends, writer


def test_an_abandoned_intake_transaction_commits_no_offsets(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str
) -> None:
    """`open_intake` sends a batch's offsets before the batch is checked; a batch abandoned
    before its append leaves the group's committed offsets where they were."""
    items = intake_stream(valid=30, bad=0)
    topics, ends, writer = _started_on(kafka_ledger, kafka_bootstrap, items)
    try:
        consumer = writer.consumer
        assert consumer is not None
        polled: list[Any] = []
        while len(polled) < len(items):
            polled += [r for rs in consumer.poll(timeout_ms=1000).values() for r in rs]
        offsets = intake_module._next_offsets(polled)
        assert offsets == {tp: end for tp, end in ends.items() if end}
        with kafka_ledger.lock:
            writer.recorder.open_intake(offsets, consumer.group_metadata())
            writer.recorder.abandon()
        assert {tp: consumer.committed(tp) for tp in offsets} == dict.fromkeys(offsets)
        # The same writer goes on: it reads the batch again and commits it.
        writer._rewind()
        wait_until_consumed(writer, ends, 120)
    finally:
        writer.close()
    ledger = read_committed(kafka_bootstrap, topics.ledger)
    check_exactly_once(items, ledger, read_committed(kafka_bootstrap, topics.rejected))


class _Unconfirmed:
    """A commit the broker never confirmed (as when it stops mid-commit): nothing is sent,
    and the writer gives up on it as `_settled` does past its timeout."""

    def done(self, ms: int) -> bool:
        raise ReadTimedOut("the broker did not answer")

    def result(self) -> None:
        raise AssertionError("unreachable: never done")


def test_a_writer_that_gave_up_on_a_commit_resumes_without_waiting_for_it(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit not confirmed leaves its transaction open on the broker, the batch's intake
    offsets in it. The writer went back to the committed offsets with the same consumer
    at once, and a read_committed consumer is not told them while a transaction holds
    offsets of its group: the writer waited for its own transaction until the transaction
    timeout (300 s; the broker restart test was stuck in CI). It resumes at once now: the
    run loop owns the ledger again first, which ends that transaction."""
    items = intake_stream(valid=40, bad=4)
    topics, ends, writer = _started_on(kafka_ledger, kafka_bootstrap, items)
    stop = threading.Event()
    running = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    try:
        monkeypatch.setattr(recorder_module, "begin_commit", lambda producer: _Unconfirmed())
        began = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="did not confirm the append's commit"):
            writer.step(timeout_ms=5000)
        monkeypatch.undo()
        running.start()
        while not all(writer.committed.get(tp, 0) >= end for tp, end in ends.items()):
            assert running.is_alive()
            # Well inside the 30 s a question of the old consumer waits before it is
            # given up, and the transaction's 300 s.
            assert time.monotonic() - began < 20, "the writer waits for its own transaction"
            time.sleep(0.05)  # a condition poll on the writer's committed offsets
    finally:
        stop.set()
        if running.is_alive():
            running.join(60)
        writer.close()
    committed = committed_offsets(kafka_bootstrap, writer.link.intake_group, topics.intake)
    assert {p: o or 0 for p, o in committed.items()} == {tp.partition: e for tp, e in ends.items()}
    ledger = read_committed(kafka_bootstrap, topics.ledger)
    check_exactly_once(items, ledger, read_committed(kafka_bootstrap, topics.rejected))


def test_partitions_added_to_the_intake_topic_are_read_without_a_restart(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str
) -> None:
    """The writer assigns itself the intake partitions it finds at start; records published
    to a partition added later waited, unread and unreported, until it was restarted."""
    import threading

    from kafka import KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient

    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    writer = IntakeWriter(kafka_ledger)
    writer.partitions_recheck_s = 0.5
    writer.start()  # reading the partitions there are before any is added
    assert writer.consumer is not None and len(writer.consumer.assignment()) == 3
    stop = threading.Event()
    running = threading.Thread(target=writer.run, args=(stop,))
    running.start()
    try:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_partitions({topics.intake: settings.partitions + 2})
        finally:
            admin.close()
        items = intake_stream(valid=40, bad=4, subjects=40)
        added = [TopicPartition(topics.intake, p) for p in (3, 4)]
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        try:
            for item in items:  # one person's facts in one partition, as their key keeps them
                partition = 3 + item.key[-1] % 2
                producer.send(topics.intake, key=item.key, value=item.value, partition=partition)
            producer.flush()
        finally:
            producer.close()
        ends = end_offsets(kafka_bootstrap, topics.intake)
        assert all(ends[tp] > 0 for tp in added)
        deadline = 60.0
        while not all(writer.committed.get(tp, 0) >= ends[tp] for tp in added):
            assert running.is_alive() and deadline > 0, "the added partitions were not read"
            stop.wait(0.05)  # a condition poll: the writer thread commits as it goes
            deadline -= 0.05
    finally:
        stop.set()
        running.join(timeout=60)
        writer.close()
    check_exactly_once(
        items,
        read_committed(kafka_bootstrap, topics.ledger),
        read_committed(kafka_bootstrap, topics.rejected),
    )


def test_records_keyed_by_their_reference_are_recorded_and_reported(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A publisher keying intake records by the person's reference (an email, a phone)
    puts personal data in Kafka keys, which no erasure reaches; nothing said so. The facts
    are recorded as any others (refusing them would lose consents); the writer counts them
    and names the first of each partition in the log by its place, never by the key."""
    import logging

    from ledger.kafka.publish import intake_key

    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    references = [f"Person.{n}@Example.com" for n in range(6)]
    keys = [
        references[0].encode(),  # the reference itself
        references[1].lower().encode(),  # lower-cased
        f"demo/{references[2]}".encode(),  # as one part of the key
        intake_key(b"publisher's secret", "demo", references[3]),  # as the contract asks
        b"demo",  # by tenant
        None,  # no key
    ]
    published = [
        (key, orjson.dumps(grant(reference, event_id=f"k{n}")))
        for n, (key, reference) in enumerate(zip(keys, references, strict=True))
    ]
    publish(kafka_bootstrap, topics.intake, published)
    with caplog.at_level(logging.WARNING, logger="consent_ledger.intake"):
        writer = _drain(kafka_ledger, settings)
    assert writer.stats.accepted == 6 and writer.stats.keyed_by_reference == 3
    warned = [r.getMessage() for r in caplog.records if "keyed by its subject's" in r.getMessage()]
    assert 1 <= len(warned) <= 3  # the first such record of each partition
    text = caplog.text.lower()
    assert not any(reference.lower() in text for reference in references)
    assert all("partition" in message and "offset" in message for message in warned)


def test_an_erasure_while_the_key_store_is_held_open_rejects_nothing_twice(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An erasure committed while another process (a backup, a reader) held the key store
    open: the key was deleted, but its old page images could not be overwritten yet, and
    that error came after the Kafka commit. The writer took it for a record's fault and
    wrote the committed batch again record by record: its poison record was rejected a
    second time. Now the commit stands and the wait for the key store is logged."""
    import logging

    from ledger.envelope import parse_fact
    from tests.facts import fact
    from tests.keystore_support import reader_holding

    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    kafka_ledger.record([parse_fact(grant("anna", event_id="a1"))])
    before = len(read_committed(kafka_bootstrap, topics.ledger))
    erasure = fact("subject.erased", "anna", event_id="e1", ground="subject_request")
    publish(
        kafka_bootstrap,
        topics.intake,
        [
            (b"k1", orjson.dumps(erasure)),
            (b"k1", b"not json"),
            (b"k2", orjson.dumps(grant("bert", event_id="b1"))),
        ],
    )
    with (
        reader_holding(settings.keystore_path),
        caplog.at_level(logging.WARNING, logger="consent_ledger.intake"),
    ):
        _drain(kafka_ledger, settings)
    rejected = read_committed(kafka_bootstrap, topics.rejected)
    assert [headers(r)["code"] for r in rejected] == ["invalid_json"]
    assert len(read_committed(kafka_bootstrap, topics.ledger)) == before + 2
    assert "old page images stay in the key store's WAL" in caplog.text
    assert "isolating" not in caplog.text
    anna = kafka_ledger.subject("demo", kafka_ledger.sid("demo", "anna"))
    assert anna is not None and anna.erased


def _grants(ids: range) -> list[tuple[bytes | None, bytes]]:
    return [(b"demo/expiry", orjson.dumps(grant(f"expiry-{i}", event_id=f"x{i}"))) for i in ids]


def _delete_intake_records(bootstrap: str, topic: str, before: int) -> None:
    """What the intake topic's retention does to records nobody read in time."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 0): before})
    finally:
        admin.close()


@pytest.mark.parametrize("running", [False, True])
def test_intake_records_deleted_unread_are_reported_not_skipped_in_silence(
    tmp_path: Path, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture, running: bool
) -> None:
    """Five facts published while the writer was stopped (or running behind) were deleted by
    the intake topic's retention before it read them. The consumer reset itself to the
    first record kept and nothing said five acknowledged facts were lost; now the log names
    the partition and offsets, and the stats (worker summary, /metrics) count them once."""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    topics = Topics.of(settings.topic_prefix)
    writer = IntakeWriter(ledger)
    writer.start()
    try:
        publish(kafka_bootstrap, topics.intake, _grants(range(5)))
        wait_until_consumed(writer, end_offsets(kafka_bootstrap, topics.intake), 60)
        if not running:
            writer.close()
            writer = IntakeWriter(ledger)
        publish(kafka_bootstrap, topics.intake, _grants(range(5, 10)))
        _delete_intake_records(kafka_bootstrap, topics.intake, 10)
        publish(kafka_bootstrap, topics.intake, _grants(range(10, 13)))
        with caplog.at_level(logging.WARNING, logger="consent_ledger.intake"):
            if not running:
                writer.start()
            wait_until_consumed(writer, end_offsets(kafka_bootstrap, topics.intake), 60)
            assert writer.step(timeout_ms=300) == 0
    finally:
        writer.close()
        ledger.close()
    assert writer.stats.expired_unread == 5
    assert writer.stats.accepted == (8 if running else 3)
    said = [r.getMessage() for r in caplog.records if "deleted before" in r.getMessage()]
    assert len(said) == 1 and "partition 0: offsets 5 to 9" in said[0], said
    assert not any("expiry-" in r.getMessage() for r in caplog.records)
    landed = {headers(r).get("event_id") for r in read_committed(kafka_bootstrap, topics.ledger)}
    assert {f"x{i}" for i in (*range(5), *range(10, 13))} <= landed
    assert not landed & {f"x{i}" for i in range(5, 10)}


def test_a_writer_with_no_committed_position_warns_of_records_before_the_first_kept(
    tmp_path: Path, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a committed position the writer cannot tell records deleted unread from
    records it read before its group's offsets expired: a warning, not counted as lost."""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    topics = Topics.of(settings.topic_prefix)
    publish(kafka_bootstrap, topics.intake, _grants(range(3)))
    _delete_intake_records(kafka_bootstrap, topics.intake, 3)
    publish(kafka_bootstrap, topics.intake, _grants(range(3, 5)))
    with caplog.at_level(logging.WARNING, logger="consent_ledger.intake"):
        writer = _drain(ledger, settings)
    ledger.close()
    assert writer.stats.expired_unread == 0 and writer.stats.accepted == 2
    said = [r.getMessage() for r in caplog.records if "no committed position" in r.getMessage()]
    assert len(said) == 1 and "begins at offset 3" in said[0], said


def test_records_near_the_size_limits_are_rejected_without_stopping_the_partition(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """On ledger and rejected topics made by hand with Kafka's default `max.message.bytes`
    (the intake topic's raised to take facts of the envelope's full 1 MiB): a 900 KB record that
    is not JSON made a rejected record (its bytes in base64) larger than the rejected topic
    takes, and a valid 1 MiB policy a ledger record larger than the ledger topic takes. Each
    failed its whole transaction, taken for the broker being unavailable and retried for
    ever: the grants published after them were never recorded."""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)
    topics = Topics.of(settings.topic_prefix)
    made_by_hand(kafka_bootstrap, topics.ledger, {"retention.ms": "-1"})
    made_by_hand(kafka_bootstrap, topics.rejected, {})
    # An intake topic that takes facts of the envelope's full 1 MiB.
    made_by_hand(kafka_bootstrap, topics.intake, {"max.message.bytes": str(2 * 1024 * 1024)})
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    not_json = b"not json " + bytes(range(256)) * 3600
    big_policy = largest_policy("big-intake")
    publish(
        kafka_bootstrap,
        topics.intake,
        [
            (b"demo/a", not_json),
            (b"demo/b", orjson.dumps(grant("after-1", event_id="after-1"))),
            (b"demo/c", big_policy),
            (b"demo/d", orjson.dumps(grant("after-2", event_id="after-2"))),
        ],
        compression="lz4",  # as a publisher must, for the intake topic to take them
        max_request_size=2 * 1024 * 1024,
    )
    writer = _drain(ledger, settings)
    ledger.close()
    assert writer.stats.retries == 0
    assert writer.stats.accepted == 2
    assert writer.stats.rejected == {"invalid_json": 1, "oversize": 1}
    landed = {headers(r).get("event_id") for r in read_committed(kafka_bootstrap, topics.ledger)}
    assert {"after-1", "after-2"} <= landed
    rejected = {
        orjson.loads(r.value)["code"]: orjson.loads(r.value)
        for r in read_committed(kafka_bootstrap, topics.rejected)
    }
    for code, original in (("invalid_json", not_json), ("oversize", big_policy)):
        body = rejected[code]
        assert body["original_truncated"] is True and body["original_size"] == len(original)
        assert body["original_sha256"] == hashlib.sha256(original).hexdigest()
        kept = base64.b64decode(body["original"])
        assert kept == original[: len(kept)] and 0 < len(kept) < len(original)
    assert "max.message.bytes" in rejected["oversize"]["message"]


def _forget_positions(bootstrap: str, group: str) -> None:
    """What Kafka does to a group's offsets `offsets.retention.minutes` after their last
    commit (7 days by default): the writer assigns its partitions itself, so a quiet intake
    partition loses them while the writer runs."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_groups([group])
    finally:
        admin.close()


def _started(
    tmp_path: Path, bootstrap: str
) -> tuple[Settings, Topics, ConsentLedger, IntakeWriter]:
    """A demo ledger on one intake partition and its writer, started."""
    settings = kafka_settings(tmp_path / "data", bootstrap, partitions=1)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    writer = IntakeWriter(ledger)
    writer.start()
    return settings, Topics.of(settings.topic_prefix), ledger, writer


def _consume(writer: IntakeWriter, bootstrap: str, topic: str, records: list[Any]) -> None:
    publish(bootstrap, topic, records)
    wait_until_consumed(writer, end_offsets(bootstrap, topic), 60)


@pytest.mark.parametrize("replica", ["kept", "rebuilt"])
def test_a_writer_whose_intake_offsets_expired_resumes_where_the_ledger_says(
    tmp_path: Path, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture, replica: str
) -> None:
    """A withdrawal refused (no consent in force), then a late grant that put consent in
    force before it, then a record that is not JSON; the group's committed offsets are then
    deleted, as Kafka expires them. The restarted writer read the intake from its beginning:
    the withdrawal, already in the rejected topic, was recorded in the ledger too, and the
    poison rejected twice. Now it resumes after the last record the ledger and rejected
    topics say it read, from a replica kept or rebuilt from the topic."""
    settings, topics, ledger, writer = _started(tmp_path, kafka_bootstrap)
    late = "2025-02-01T10:00:00+05:00"
    try:
        for record in (
            (b"demo/w", orjson.dumps(withdraw("expired-1", event_id="w-1"))),
            (b"demo/w", orjson.dumps(grant("expired-1", event_id="g-1", occurred_at=late))),
            (b"demo/x", b"not json"),
        ):
            _consume(writer, kafka_bootstrap, topics.intake, [record])
    finally:
        writer.close()
    assert writer.stats.rejected == {"purpose_not_in_force": 1, "invalid_json": 1}
    group = writer.link.intake_group
    _forget_positions(kafka_bootstrap, group)
    assert committed_offsets(kafka_bootstrap, group, topics.intake) == {0: None}
    # Anyone who may write to the rejected topic could claim the writer read further.
    forged = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        forged.send(
            topics.rejected,
            key=f"{topics.intake}/0/99".encode(),
            value=b"{}",
            headers=[("source_topic_id", writer.intake_id.encode()), ("mac", b"0" * 64)],
        ).get(timeout=30)
    finally:
        forged.close()
    if replica == "rebuilt":
        ledger.close()
        for built in (tmp_path / "data").glob("ledger-replica.db*"):
            built.unlink()
        ledger = ConsentLedger(settings)
    writer = IntakeWriter(ledger)
    try:
        with caplog.at_level(logging.WARNING, logger="consent_ledger.intake"):
            writer.start()
        assert writer.committed == {TopicPartition(topics.intake, 0): 3}
        # The position found is committed again at once, not an hour later.
        assert writer.step(timeout_ms=100) == 0
        assert committed_offsets(kafka_bootstrap, group, topics.intake) == {0: 3}
        _consume(writer, kafka_bootstrap, topics.intake, [(b"demo/y", orjson.dumps(grant()))])
        assert writer.step(timeout_ms=300) == 0
    finally:
        writer.close()
        ledger.close()
    assert writer.stats.accepted == 1 and writer.stats.rejected == {}
    said = [r.getMessage() for r in caplog.records if "no committed position" in r.getMessage()]
    assert len(said) == 1 and "resuming at offset 3" in said[0], said
    landed = [headers(r).get("event_id") for r in read_committed(kafka_bootstrap, topics.ledger)]
    assert "w-1" not in landed and landed.count("g-1") == 1
    assert len(read_committed(kafka_bootstrap, topics.rejected)) == 3  # with the forged one


def test_a_running_writer_commits_its_positions_again_before_kafka_expires_them(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Every partition's position is committed again (every `positions_refresh_s`), the one
    read and the one never read, so the group keeps them: for restarts, and for whoever
    watches its lag. (The same transaction keeps the writer's transactional id known.)"""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=2)
    topics = Topics.of(settings.topic_prefix)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    writer = IntakeWriter(ledger)
    writer.start()
    try:
        read = [(b"demo/a", orjson.dumps(grant(event_id=f"r{i}"))) for i in range(3)]
        _consume(writer, kafka_bootstrap, topics.intake, read)
        group = writer.link.intake_group
        committed = committed_offsets(kafka_bootstrap, group, topics.intake)
        [read_from] = [p for p, offset in committed.items() if offset == 3]
        assert committed == {read_from: 3, 1 - read_from: None}
        _forget_positions(kafka_bootstrap, group)
        assert writer.step(timeout_ms=100) == 0  # not due yet
        assert committed_offsets(kafka_bootstrap, group, topics.intake) == {0: None, 1: None}
        writer.positions_refresh_s = 0.0
        assert writer.step(timeout_ms=100) == 0
        refreshed = committed_offsets(kafka_bootstrap, group, topics.intake)
        assert refreshed == {read_from: 3, 1 - read_from: 0}
    finally:
        writer.close()
        ledger.close()


@pytest.mark.parametrize("running", [False, True])
def test_an_intake_topic_made_again_is_read_from_its_beginning(
    tmp_path: Path, kafka_bootstrap: str, running: bool
) -> None:
    """The ledger's record of how far it read names the intake topic by id: a topic deleted
    and made again under the same name starts its offsets over, and a position read from
    the old one would skip the new one's first records. A writer running through it found
    its position past the new topic's end and went back to the old topic's (its own)."""
    settings, topics, ledger, writer = _started(tmp_path, kafka_bootstrap)
    try:
        _consume(writer, kafka_bootstrap, topics.intake, _grants(range(3)))
        if not running:
            writer.close()
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics([topics.intake])
            # Made again as the ledger makes missing topics, once the broker let go of it.
            deadline = time.monotonic() + 60
            while True:
                try:
                    ensure_topics(settings)
                    break
                except TopicRefused:
                    if time.monotonic() > deadline:
                        raise
        finally:
            admin.close()
        publish(kafka_bootstrap, topics.intake, _grants(range(3, 4)))
        if running:
            # As `worker` runs it: the consumer finds the log behind its position, and the
            # writer starts again (the broker's answer is a KafkaError, waited out).
            stop = threading.Event()
            thread = threading.Thread(target=writer.run, args=(stop,))
            thread.start()
            deadline = time.monotonic() + 60
            while writer.stats.accepted < 4 and time.monotonic() < deadline:
                stop.wait(0.05)  # polling the writer's count, not standing in for it
            stop.set()
            thread.join()
        else:
            writer = IntakeWriter(ledger)
            writer.start()
            assert writer.committed == {}
            wait_until_consumed(writer, end_offsets(kafka_bootstrap, topics.intake), 60)
        assert writer.stats.accepted == (4 if running else 1)
    finally:
        writer.close()
        ledger.close()
    landed = {headers(r).get("event_id") for r in read_committed(kafka_bootstrap, topics.ledger)}
    assert "x3" in landed


def test_an_intake_topic_with_fewer_copies_or_longer_retention_is_warned_of(
    tmp_path: Path, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An intake topic made by hand stating two in-sync copies on one replica (Kafka then
    acknowledges with one), keeping records for ever while rejections expire in 7 days, and
    taking records of Kafka's default size, too small for the envelope's largest fact: the
    writer runs (the topic may be another team's), saying each once."""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)
    topics = Topics.of(settings.topic_prefix)
    made_by_hand(kafka_bootstrap, topics.intake, {"min.insync.replicas": "2", "retention.ms": "-1"})
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    writer = IntakeWriter(ledger)
    try:
        with caplog.at_level(logging.WARNING, logger="consent_ledger.intake"):
            for _ in range(2):
                writer.start()
                writer.close()
            writer.start()
            _consume(writer, kafka_bootstrap, topics.intake, [(b"demo/a", orjson.dumps(grant()))])
    finally:
        writer.close()
        ledger.close()
    assert writer.stats.accepted == 1
    said = [r.getMessage() for r in caplog.records]
    copies = [m for m in said if "min.insync.replicas=2 but 1 replica(s)" in m]
    kept = [m for m in said if "keeps records longer (retention.ms=-1)" in m]
    small = [m for m in said if "takes records of at most 1048588 bytes" in m]
    assert len(copies) == 1 and len(kept) == 1 and len(small) == 1, said
    assert topics.intake in copies[0] and topics.rejected in kept[0]
    assert topics.intake in small[0] and "max.message.bytes to 2097152" in small[0]


def test_clocks_that_run_ahead_of_the_brokers_do_not_stop_the_ledger(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Since Kafka 4.0 a broker refuses a record stamped more than an hour ahead of its own
    clock. A writer host two hours fast had every append refused, retried for ever (HTTP:
    503), and a publisher two hours fast had its facts refused by the broker. The ledger's
    topics stamp with the broker's clock."""
    ahead_ms = 2 * 3600 * 1000
    send = KafkaProducer.send

    def two_hours_fast(self: KafkaProducer, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timestamp_ms", int(time.time() * 1000) + ahead_ms)
        return send(self, *args, **kwargs)

    monkeypatch.setattr(KafkaProducer, "send", two_hours_fast)  # every producer's host clock
    _, topics, ledger, writer = _started(tmp_path, kafka_bootstrap)
    try:
        [receipt] = ledger.record([parse_fact(grant("fast-writer", event_id="fast-1"))])
        assert isinstance(receipt, Receipt) and not receipt.duplicate
        _consume(writer, kafka_bootstrap, topics.intake, [(b"demo/p", orjson.dumps(grant()))])
    finally:
        writer.close()
        ledger.close()
    assert writer.stats.accepted == 1 and writer.stats.retries == 0
    for topic in (topics.ledger, topics.intake):
        for record in read_committed(kafka_bootstrap, topic):
            assert record.timestamp < time.time() * 1000 + ahead_ms / 2  # the broker's


def test_a_writer_starting_again_while_the_broker_is_away_stops_when_asked(
    kafka_ledger: ConsentLedger,
) -> None:
    """A writer starts again after an outage broke its batch; while the broker is still away,
    it waits for it there. That wait was kafka-python's 30 s at a time, unseen by the stop
    (`serve` in Kafka mode, stopped with SIGTERM, waited it out); now it ends with the stop,
    and the stop itself is not counted as an outage."""
    import dataclasses
    import socket

    from ledger.kafka.reading import ANSWER_TIMEOUT_S

    writer = IntakeWriter(kafka_ledger)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        writer.link = dataclasses.replace(writer.link, bootstrap=f"127.0.0.1:{s.getsockname()[1]}")
    stop = threading.Event()
    asked = threading.Timer(1.0, stop.set)
    began = time.monotonic()
    asked.start()
    try:
        writer.run(stop)
    finally:
        asked.cancel()
        writer.close()
    assert time.monotonic() - began < ANSWER_TIMEOUT_S
    assert writer.stats.retries == 0
    assert writer.consumer is None


def test_the_writer_measures_how_far_behind_the_intake_topic_it_is(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str
) -> None:
    """What /metrics gives as `ledger_intake_lag`: per partition, the records published and
    not yet committed, as of the writer's last poll."""
    topics = Topics.of(kafka_ledger.settings.topic_prefix)
    key = b"demo/lag-key"  # one key: one partition
    facts = [(key, orjson.dumps(grant(f"lag-{i}", event_id=f"lag-{i}"))) for i in range(30)]
    publish(kafka_bootstrap, topics.intake, facts)
    writer = IntakeWriter(kafka_ledger, batch=10)
    writer.start()
    try:
        # The first polls may only find the partitions and their positions.
        taken = next((n for _ in range(20) if (n := writer.step(timeout_ms=5000))), 0)
        assert taken == 10
        behind = {p: n for p, n in writer.stats.lag.items() if n}
        assert list(behind.values()) == [20], writer.stats.lag
        [partition] = behind
        wait_until_consumed(writer, end_offsets(kafka_bootstrap, topics.intake), 120)
        assert writer.stats.lag[partition] == 0
        assert writer.stats.accepted == 30
    finally:
        writer.close()
