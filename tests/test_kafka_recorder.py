"""The Kafka recorder against the library's reusable recorder tests, on the real broker.

Every test of `ApplicationRecorderTestCase` applies: reads are served from the writer's
replica, which holds exactly what the writer appended to (and read back from) the ledger
topic. `test_concurrent_no_conflicts` writes 100,000 events in 1,000 Kafka transactions; it
stays, because concurrent writers in one process are what the HTTP service does.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.tests import persistence as library_tests
from kafka.admin import KafkaAdminClient

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.errors import Code, FactRejected
from ledger.kafka import recorder as recorder_module
from ledger.kafka.names import Topics
from ledger.kafka.recorder import KafkaLedgerRecorder, KafkaLink, WriterFenced
from ledger.kafka.topics import ensure_topics
from ledger.receipt import Receipt
from ledger.recorder import FactKey
from ledger.settings import Settings
from ledger.verify import verify_ledger
from tests.conftest import started_broker
from tests.facts import grant
from tests.kafka_support import (
    Stopping,
    headers,
    kafka_cli,
    kafka_settings,
    largest_policy,
    made_by_hand,
    no_broker,
    read_committed,
    silent_broker,
)

pytestmark = pytest.mark.kafka


TEST_RECORD_KEY = bytes(range(32))


def new_recorder(db: Path, bootstrap: str, prefix: str, partitions: int = 3) -> KafkaLedgerRecorder:
    recorder = KafkaLedgerRecorder(
        SQLiteDatastore(db_name=str(db), lock_timeout=30),
        link=KafkaLink(bootstrap, Topics.of(prefix), partitions, TEST_RECORD_KEY),
    )
    recorder.create_table()
    recorder.catch_up()
    return recorder


@pytest.fixture(scope="class")
def class_bootstrap(request: pytest.FixtureRequest, kafka_bootstrap: str) -> None:
    request.cls.bootstrap = kafka_bootstrap


@pytest.mark.usefixtures("class_bootstrap")
class TestKafkaLedgerRecorder(library_tests.ApplicationRecorderTestCase[KafkaLedgerRecorder]):
    bootstrap: str

    def setUp(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.settings = kafka_settings(Path(self._dir.name), self.bootstrap)
        ensure_topics(self.settings)
        self.recorders: list[KafkaLedgerRecorder] = []

    def tearDown(self) -> None:
        for recorder in self.recorders:
            recorder.close()
        self._dir.cleanup()

    def create_recorder(self) -> KafkaLedgerRecorder:
        recorder = new_recorder(
            Path(self._dir.name) / "replica.db", self.bootstrap, self.settings.topic_prefix
        )
        recorder.own()
        self.recorders.append(recorder)
        return recorder


def _event(originator: uuid.UUID, version: int, state: bytes) -> StoredEvent:
    return StoredEvent(originator, version, "ledger.subject:Subject.ConsentGranted", state)


def test_a_fresh_replica_is_rebuilt_from_the_partitions(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = kafka_settings(tmp_path, kafka_bootstrap)
    topics = ensure_topics(settings)
    first = new_recorder(tmp_path / "a.db", kafka_bootstrap, settings.topic_prefix)
    a, b = uuid.uuid4(), uuid.uuid4()
    events = [_event(a, 1, b'{"tenant":"demo"}'), _event(b, 1, b'{"tenant":"demo"}')]
    key = FactKey("demo", "e-1", "digest", "2025-01-01T00:00:00+00:00")
    first.insert_events(events, facts={(b, 1): key})
    first.insert_events([_event(a, 2, b'{"tenant":"demo","n":2}')])
    first.close()

    rebuilt = new_recorder(tmp_path / "b.db", kafka_bootstrap, settings.topic_prefix)
    try:
        assert [e.state for e in rebuilt.select_events(a)] == [
            b'{"tenant":"demo"}',
            b'{"tenant":"demo","n":2}',
        ]
        assert rebuilt.find_facts("demo", ["e-1"])["e-1"].originator_id == b
        assert rebuilt.versions_of([a, b]) == {a: 2, b: 1}
        assert rebuilt.head()[0] == 3
        assert rebuilt.catch_up() == 0  # nothing new: every position was recorded
    finally:
        rebuilt.close()
    # Keys are tenant and sid, never personal data; one subject stays in one partition.
    records = read_committed(kafka_bootstrap, topics.ledger)
    assert (
        sorted(r.key for r in records if headers(r)["aggregate"] == a.hex)
        == [f"demo/{a.hex}".encode()] * 2
    )
    assert len({r.partition for r in records if headers(r)["aggregate"] == a.hex}) == 1


@pytest.mark.parametrize("found", ["by the commit", "before the commit"])
def test_a_second_writer_fences_the_first(
    tmp_path: Path, kafka_bootstrap: str, found: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`found`: where the stale writer meets the fence. Before the commit, the producer's
    sender meets it adding the partition to the transaction, and the commit then raises a
    plain KafkaError ("in an error state: ProducerFencedError"), which was taken for the
    broker being unavailable (exit 6, not 5); a CI run met that order by chance."""
    settings = kafka_settings(tmp_path, kafka_bootstrap)
    topics = ensure_topics(settings)
    old = new_recorder(tmp_path / "old.db", kafka_bootstrap, settings.topic_prefix)
    subject = uuid.uuid4()
    old.insert_events([_event(subject, 1, b'{"tenant":"demo","by":"old"}')])

    new = new_recorder(tmp_path / "new.db", kafka_bootstrap, settings.topic_prefix)
    new.own()  # fences the old writer, then catches up with what it committed
    assert new.versions_of([subject]) == {subject: 1}

    if found == "before the commit":

        def fence_met_first(name: str) -> None:
            if name != "kafka-sent" or old._producer is None:
                return
            manager = old._producer._transaction_manager
            deadline = time.monotonic() + 30
            while not manager.has_error():  # the sender's AddPartitionsToTxn, answered
                assert time.monotonic() < deadline, "the fence was not met in 30 s"
                time.sleep(0.01)

        monkeypatch.setattr(recorder_module, "failpoint", fence_met_first)
    with pytest.raises(WriterFenced):
        old.insert_events([_event(subject, 2, b'{"tenant":"demo","by":"stale"}')])
    # The stale append wrote nothing: not to the topic, not to its own replica.
    assert old.versions_of([subject]) == {subject: 1}
    with pytest.raises(WriterFenced):
        old.insert_events([_event(uuid.uuid4(), 1, b'{"tenant":"demo","by":"stale"}')])

    new.insert_events([_event(subject, 2, b'{"tenant":"demo","by":"new"}')])
    values = [r.value for r in read_committed(kafka_bootstrap, topics.ledger)]
    assert sorted(values) == [b'{"tenant":"demo","by":"new"}', b'{"tenant":"demo","by":"old"}']
    old.close()
    new.close()


def test_a_broker_that_caps_transactions_below_the_writers_timeout_gets_kafkas_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker whose `transaction.max.timeout.ms` is below the writer's 300 s refuses its
    transactional id (InvalidTransactionTimeout): the writer registers it again with
    kafka-python's default, 60 s, says what that costs, and appends. Below 60 s too, it is
    refused, naming the setting to raise. Only brokers started so can show it (the setting
    is read-only), so this test starts two of its own."""
    with (
        started_broker(tmp_path / "capped", "transaction.max.timeout.ms=60000") as capped,
        started_broker(tmp_path / "below", "transaction.max.timeout.ms=30000") as below,
    ):
        bootstrap = (capped / "bootstrap").read_text().strip()
        settings = kafka_settings(tmp_path / "data", bootstrap)
        topics = ensure_topics(settings)
        recorder = new_recorder(tmp_path / "replica.db", bootstrap, settings.topic_prefix)
        try:
            with caplog.at_level(logging.WARNING, logger=recorder_module.log.name):
                recorder.own()
            said = [r for r in caplog.records if r.name == recorder_module.log.name]
            assert [r.getMessage() for r in said] == [
                "the brokers' transaction.max.timeout.ms is below 300000 ms: the writer's "
                "transactions time out after 60000 ms, and a writer paused longer "
                "mid-transaction will stop as if fenced"
            ]
            assert recorder._producer is not None
            assert recorder._producer.config["transaction_timeout_ms"] == 60_000
            subject = uuid.uuid4()
            recorder.insert_events([_event(subject, 1, b'{"tenant":"demo","by":"capped"}')])
            assert recorder.versions_of([subject]) == {subject: 1}
            values = [r.value for r in read_committed(bootstrap, topics.ledger)]
            assert values == [b'{"tenant":"demo","by":"capped"}']
        finally:
            recorder.close()

        bootstrap = (below / "bootstrap").read_text().strip()
        settings = kafka_settings(tmp_path / "data-below", bootstrap)
        ensure_topics(settings)
        refused = kafka_cli(settings, "init")  # its first write: the demo tenant's policy
        assert refused.returncode == 6, refused.stderr
        assert (
            "could not become the ledger writer: the brokers' transaction.max.timeout.ms is "
            "below 60000 ms, the shortest transaction timeout the writer takes; raise it on "
            "every broker (KafkaError: "
        ) in refused.stderr
        assert "Traceback" not in refused.stderr


def test_topics_are_created_with_the_ledger_settings(tmp_path: Path, kafka_bootstrap: str) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    settings = kafka_settings(tmp_path, kafka_bootstrap, partitions=4)
    topics = ensure_topics(settings)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topics.ledger)], config_filter="all"
        )["topic"][topics.ledger]
        assert configs["cleanup.policy"]["value"] == "delete"
        assert configs["retention.ms"]["value"] == "-1"
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
        assert described[topics.intake] == described[topics.ledger] == 4
        assert topics.rejected in described
    finally:
        admin.close()
    assert ensure_topics(settings) == topics  # existing, well-configured topics are accepted


@pytest.mark.parametrize(
    ("configs", "named"),
    [
        ({"cleanup.policy": "compact"}, "cleanup.policy=compact"),
        ({"cleanup.policy": "compact,delete"}, "cleanup.policy=compact,delete"),
        ({"retention.ms": "604800000"}, "retention.ms=604800000"),
        ({"retention.ms": "-1", "retention.bytes": "1073741824"}, "retention.bytes=1073741824"),
        # Kafka acknowledged with one copy while the topic said two: it caps the setting.
        ({"min.insync.replicas": "2"}, "min.insync.replicas=2 but 1 replica"),
        ({"unclean.leader.election.enable": "true"}, "unclean.leader.election.enable=true"),
    ],
)
def test_a_ledger_topic_that_loses_records_is_refused(
    tmp_path: Path, kafka_bootstrap: str, configs: dict[str, str], named: str
) -> None:
    from ledger.kafka.topics import TopicRefused

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    topics = Topics.of(settings.topic_prefix)
    made_by_hand(kafka_bootstrap, topics.ledger, configs)
    with pytest.raises(TopicRefused, match=named.replace(".", r"\.")):
        ensure_topics(settings)


def test_topics_the_broker_refuses_to_create_are_named_at_once(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Kafka takes '.' and '_' alike in a topic's metric names, so "p_x.ledger" collides
    with an existing "p.x.ledger" and is refused. The client then waited for the topics to
    appear and the command said no broker had answered (exit 6, "is the cluster up?")."""
    from ledger.kafka.topics import TopicRefused

    first = kafka_settings(tmp_path / "first", kafka_bootstrap)
    dotted = dataclasses.replace(first, topic_prefix=f"{first.topic_prefix}.x")
    ensure_topics(dotted)
    underscored = dataclasses.replace(dotted, topic_prefix=f"{first.topic_prefix}_x")
    with pytest.raises(TopicRefused, match=r"cannot create topic .*collides with existing topic"):
        ensure_topics(underscored)


def test_a_ledger_topic_with_fewer_replicas_than_the_settings_is_refused(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Topics made before LEDGER_REPLICATION was raised (or by hand) kept their one replica,
    and the ledger ran on it: every fact had one copy where the settings asked two."""
    from ledger.kafka.topics import TopicRefused

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    topics = ensure_topics(settings)  # one replica, as one broker allows
    raised = dataclasses.replace(settings, replication=2)
    with pytest.raises(TopicRefused, match=r"has 1 replica.* but LEDGER_REPLICATION is 2"):
        ensure_topics(raised)
    assert ensure_topics(settings) == topics


@pytest.mark.parametrize(
    ("configs", "named"),
    [
        ({"retention.ms": "86400000"}, "retention.ms=86400000, but LEDGER_REJECTED_RETENTION_MS"),
        ({"retention.bytes": "1048576"}, "retention.bytes=1048576"),
        ({"min.insync.replicas": "2"}, "min.insync.replicas=2 but 1 replica"),
        ({"unclean.leader.election.enable": "true"}, "unclean.leader.election.enable=true"),
        # A rejected record it could not take stopped the intake partition for good.
        ({"max.message.bytes": "100000"}, "max.message.bytes=100000"),
    ],
)
def test_a_rejected_topic_that_keeps_less_than_the_settings_is_refused(
    tmp_path: Path, kafka_bootstrap: str, configs: dict[str, str], named: str
) -> None:
    """A refused record is only on the rejected topic: one made by hand that deletes it
    sooner than LEDGER_REJECTED_RETENTION_MS, or keeps fewer copies, was never checked."""
    from ledger.kafka.topics import TopicRefused

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    topics = Topics.of(settings.topic_prefix)
    made_by_hand(kafka_bootstrap, topics.rejected, configs)
    with pytest.raises(TopicRefused, match=re.escape(f"topic {topics.rejected} has {named}")):
        ensure_topics(settings)
    # Kept longer than asked (or forever) is no loss.
    longer = dataclasses.replace(settings, rejected_retention_ms=3_600_000)
    if "retention.ms" in configs:
        assert ensure_topics(longer).rejected == topics.rejected


@pytest.mark.parametrize(
    ("configs", "replicas", "asked", "named"),
    [
        ({"min.insync.replicas": "2"}, 3, (3, 2), None),
        ({"min.insync.replicas": "3"}, 3, (3, 2), None),
        ({"min.insync.replicas": "1"}, 3, (3, 2), "min.insync.replicas=1, but LEDGER_MIN_INSYNC"),
        ({"min.insync.replicas": "2"}, 2, (3, 2), "2 replica(s) of a partition, but"),
        ({"min.insync.replicas": "4"}, 3, (3, 2), "min.insync.replicas=4 but 3 replica(s)"),
        ({}, 1, (1, 1), None),
        ({"min.insync.replicas": "2", "unclean.leader.election.enable": "true"}, 3, (3, 2), "un"),
    ],
)
def test_the_ledger_topics_copies_are_held_to_the_settings(
    configs: dict[str, str], replicas: int, asked: tuple[int, int], named: str | None
) -> None:
    """The cases one test broker cannot make: a cluster's replica counts."""
    from ledger.kafka.topics import durability_refusal

    settings = Settings(Path("unused"), "kafka", replication=asked[0], min_insync=asked[1])
    refusal = durability_refusal("c.ledger", configs, replicas, settings)
    if named is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.startswith("topic c.ledger has ")
        assert named in refusal, refusal


def test_a_fact_the_ledger_topic_cannot_hold_is_refused_and_the_rest_recorded(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A fact within the envelope's 1 MiB made a ledger record larger than Kafka's default
    `max.message.bytes`: the broker refused the whole transaction, `record` answered "the
    broker did not take the append" (exit 6, retry), and every retry failed the same way.
    On a ledger topic made by hand with the default it is refused as `oversize` and the
    rest of its batch recorded; on the topics the ledger makes, it is recorded, and read
    back by a replica built afresh."""
    from ledger.envelope import parse_fact_bytes

    small = kafka_settings(tmp_path / "small", kafka_bootstrap)
    made_by_hand(kafka_bootstrap, Topics.of(small.topic_prefix).ledger, {"retention.ms": "-1"})
    big = parse_fact_bytes(largest_policy("big-1"), None)
    ledger = ConsentLedger(small)
    ledger.init_demo()
    refused, granted = ledger.record([big, parse_fact(grant("after-big", event_id="after"))])
    ledger.close()
    assert isinstance(refused, FactRejected) and refused.code is Code.OVERSIZE, refused
    assert "max.message.bytes" in refused.message
    assert isinstance(granted, Receipt)

    roomy = kafka_settings(tmp_path / "roomy", kafka_bootstrap)
    ledger = ConsentLedger(roomy)
    ledger.init_demo()
    [recorded] = ledger.record([big])
    ledger.close()
    assert isinstance(recorded, Receipt) and recorded.sid is None
    for replica in (tmp_path / "roomy").glob("ledger-replica.db*"):
        replica.unlink()
    again = ConsentLedger(roomy)  # catches the replica up from the topic, the big record too
    try:
        tenant = again.tenant("demo")
        assert tenant is not None and "big-1" in tenant.policies
        assert verify_ledger(again.ledger_recorder).ok
    finally:
        again.close()


@pytest.mark.parametrize("policy", ["compact", "delete,compact"])
def test_an_intake_topic_that_compacts_is_refused(
    tmp_path: Path, kafka_bootstrap: str, policy: str
) -> None:
    """Compaction keeps the last record of each key, and a person's facts share one: their
    grant could be gone before the writer read it."""
    from ledger.kafka.topics import TopicRefused

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    topics = Topics.of(settings.topic_prefix)
    made_by_hand(kafka_bootstrap, topics.intake, {"cleanup.policy": policy})
    with pytest.raises(TopicRefused, match=f"{topics.intake} has cleanup.policy={policy}"):
        ensure_topics(settings)


def test_a_receipt_names_the_facts_place_in_the_ledger_topic(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.receipt import Receipt
    from tests.facts import grant

    settings = kafka_settings(tmp_path / "a", kafka_bootstrap)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    facts = [parse_fact(grant(f"r-{i}", event_id=f"r-{i}")) for i in range(20)]
    receipts = ledger.record(facts)
    ledger.close()
    placed = {
        headers(r)["event_id"]: (r.partition, r.offset)
        for r in read_committed(kafka_bootstrap, Topics.of(settings.topic_prefix).ledger)
        if "event_id" in headers(r)
    }
    for receipt in receipts:
        assert isinstance(receipt, Receipt)
        assert (receipt.partition, receipt.position) == placed[receipt.event_id]

    # The replica deleted and rebuilt from the topic: a retry gets the same receipt.
    for leftover in tmp_path.glob("a/ledger-replica.db*"):
        leftover.unlink()
    rebuilt = ConsentLedger(settings)
    try:
        again = rebuilt.record(facts[:3])
    finally:
        rebuilt.close()
    for first, retry in zip(receipts[:3], again, strict=True):
        assert isinstance(first, Receipt) and isinstance(retry, Receipt) and retry.duplicate
        assert (retry.partition, retry.position) == (first.partition, first.position)


def test_a_writer_whose_catch_up_failed_does_not_append(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appending on a replica that missed committed facts would reuse their versions."""
    from ledger.kafka.recorder import LedgerUnavailable

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    ensure_topics(settings)
    recorder = new_recorder(tmp_path / "r.db", kafka_bootstrap, settings.topic_prefix)

    def unreachable(stopping: object = None, away: object = None) -> int:
        raise LedgerUnavailable("the ledger topic could not be read")

    monkeypatch.setattr(recorder, "catch_up", unreachable)
    with pytest.raises(LedgerUnavailable):
        recorder.insert_events([_event(uuid.uuid4(), 1, b'{"tenant":"demo"}')])
    assert not recorder.is_owner
    assert read_committed(kafka_bootstrap, Topics.of(settings.topic_prefix).ledger) == []
    monkeypatch.undo()
    recorder.insert_events([_event(uuid.uuid4(), 1, b'{"tenant":"demo"}')])
    assert recorder.is_owner
    recorder.close()


def test_a_batch_whose_offsets_are_refused_before_they_leave_leaves_the_writer_appending(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Offsets refused before they are sent (group metadata kafka-python does not take)
    are raised by `open_intake` itself, and the transaction begun for them is ended: left
    open, the writer's next append could not begin its own."""
    from kafka import TopicPartition

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    ensure_topics(settings)
    topics = Topics.of(settings.topic_prefix)
    recorder = new_recorder(tmp_path / "r.db", kafka_bootstrap, settings.topic_prefix)
    try:
        recorder.own()
        with pytest.raises(TypeError, match="group_metadata"):
            recorder.open_intake({TopicPartition(topics.intake, 0): 0}, object())
        recorder.insert_events([_event(uuid.uuid4(), 1, b'{"tenant":"demo"}')])
        assert recorder.is_owner
        assert len(read_committed(kafka_bootstrap, topics.ledger)) == 1
    finally:
        recorder.close()


def test_readers_catching_up_share_a_replica_with_a_writer(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A CLI read while the worker writes: both apply the same records to one replica file."""
    import threading

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    ensure_topics(settings)
    writer = new_recorder(tmp_path / "shared.db", kafka_bootstrap, settings.topic_prefix)
    reader = new_recorder(tmp_path / "shared.db", kafka_bootstrap, settings.topic_prefix)
    subjects = [uuid.uuid4() for _ in range(5)]
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                reader.catch_up()
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for version in range(1, 41):
            writer.insert_events([_event(s, version, b'{"tenant":"demo"}') for s in subjects])
    finally:
        done.set()
        thread.join()
    assert failures == []
    reader.catch_up()
    assert reader.versions_of(subjects) == {s: 40 for s in subjects}
    assert reader.head()[0] == 200
    writer.close()
    reader.close()


@pytest.mark.parametrize(
    "forgery", ["foreign", "replayed-version", "altered-bytes", "well-formed-next"]
)
def test_verify_names_a_forged_record_on_the_ledger_topic(
    tmp_path: Path, kafka_bootstrap: str, forgery: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka cannot alter a record in place, but anyone with write access can append one."""
    from kafka import KafkaProducer

    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from tests.facts import grant, withdraw
    from tests.kafka_support import kafka_cli

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant("v-1", event_id="v1"))])
    ledger.close()
    topic = Topics.of(settings.topic_prefix).ledger
    [*_, last] = read_committed(kafka_bootstrap, topic)
    forged_headers = list(last.headers)
    value = last.value
    described = orjson.loads(dict(last.headers)["ledger"])
    if forgery == "foreign":
        forged_headers = []
    elif forgery == "altered-bytes":
        value = value.replace(b'"marketing"', b'"analytics"')
        forged_headers = [
            ("ledger", orjson.dumps({**described, "version": 3})),
            ("mac", dict(last.headers)["mac"]),
        ]
    elif forgery == "well-formed-next":
        # What the chain alone cannot catch: the next version, chained to the last record's
        # hash, a new event id, every field the ledger writes; only its MAC is not the key's.
        from ledger.chain import stored_hash

        version = described["version"]
        stored = StoredEvent(uuid.UUID(described["aggregate"]), version, described["topic"], value)
        state = orjson.loads(last.value)
        state.update(prev_hash=stored_hash(stored), event_id="forged")
        state["purposes"]["_data_"] = ["support"]
        value = orjson.dumps(state)
        described.update(version=version + 1, event_id="forged")
        forged_headers = [("ledger", orjson.dumps(described)), ("mac", b"0" * 64)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    forged = producer.send(
        topic, key=last.key, value=value, headers=forged_headers, partition=0
    ).get(30)
    producer.close()

    out = kafka_cli(settings, "verify", timeout=120)
    assert out.returncode == 4, out.stdout + out.stderr
    assert f"partition 0 offset {forged.offset}" in out.stderr
    # Changed bytes no longer carry the ledger's MAC: the ledger did not write that record.
    kind = {"replayed-version": "reordered"}.get(forgery, "inserted")
    assert f"({kind};" in out.stderr

    # The ledger keeps working: a fresh replica skips the forged record (it is out of its
    # subject's sequence, or not the ledger's), and new facts are written and verified
    # up to it.
    for leftover in (tmp_path / "data").glob("ledger-replica.db*"):
        leftover.unlink()
    with caplog.at_level(logging.WARNING, logger="consent_ledger"):
        ledger = ConsentLedger(settings)
    assert any(f"(partition 0, offset {forged.offset})" in m for m in caplog.messages)
    [after] = ledger.record(
        [parse_fact(withdraw("v-1", event_id="v2", occurred_at="2025-03-02T10:00:00+05:00"))]
    )
    assert not isinstance(after, Exception), after
    # The projections read the topic too, and leave the forged record out as well.
    from projections.views import Views

    views = Views(ledger)
    views.refresh()
    entries = views.store.rows("SELECT event_id FROM view_entries WHERE sid = ?", (after.sid,))
    assert sorted(row[0] for row in entries) == ["v1", "v2"]
    views.close()
    ledger.close()


def test_verify_names_a_record_out_of_its_chain_though_it_carries_the_ledgers_mac(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Whoever holds the record key (the key store's) can append a record the MAC takes, in
    its subject's sequence: its hash chain still shows it does not follow the record before
    it. The tests above forge records without the key; this one reaches the chain check."""
    from kafka import KafkaProducer

    from ledger.kafka.records import MAC_HEADER, record_mac
    from tests.kafka_support import kafka_cli

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant("v-1", event_id="v1"))])
    recorder = ledger.ledger_recorder
    assert isinstance(recorder, KafkaLedgerRecorder)
    key = recorder.link.record_key
    ledger.close()
    topic = Topics.of(settings.topic_prefix).ledger
    [*_, last] = read_committed(kafka_bootstrap, topic)
    described = orjson.loads(dict(last.headers)["ledger"])
    state = orjson.loads(last.value)
    state.update(prev_hash="0" * 64, event_id="forged")
    value = orjson.dumps(state)
    described.update(version=described["version"] + 1, event_id="forged")
    fields = orjson.dumps(described)
    mac = record_mac(key, last.key, value, {"ledger": fields})
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    forged = producer.send(
        topic, key=last.key, value=value, headers=[("ledger", fields), (MAC_HEADER, mac)]
    ).get(30)
    producer.close()

    # The replica takes the record (in sequence, the MAC good) and its chain shows the break:
    # named by the record's place in the topic, not by the replica's own numbering.
    out = kafka_cli(settings, "verify", timeout=120)
    assert out.returncode == 4, out.stdout + out.stderr
    assert out.stderr.startswith(
        f"consent-ledger: verify: BROKEN at partition 0 offset {forged.offset} (altered; sid "
    ), out.stderr
    assert "event_id forged): prev_hash does not match the fact before it" in out.stderr
    # The topic's own check, which verify makes once the replica holds, finds it too.
    from ledger.kafka.verify import verify_topic

    ledger = ConsentLedger(settings)
    try:
        recorder = ledger.ledger_recorder
        assert isinstance(recorder, KafkaLedgerRecorder)
        [found] = verify_topic(recorder).problems
    finally:
        ledger.close()
    assert (found.partition, found.position, found.kind, found.message) == (
        0,
        forged.offset,
        "altered",
        "prev_hash breaks the chain",
    )


def test_verify_reads_the_topic_in_chunks_and_names_a_replica_that_misplaces_facts(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """verify asks the replica about the records in hand, a chunk at a time, by their place
    in the topic: any chunk gives the one answer, and a replica that has two facts at each
    other's places (receipts and the views read those places) is named."""
    from ledger.kafka.verify import verify_topic

    ledger = ConsentLedger(kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=2))
    ledger.init_demo()
    outcomes = ledger.record([parse_fact(grant(f"c-{i}", event_id=f"c{i}")) for i in range(9)])
    assert all(isinstance(o, Receipt) for o in outcomes)
    recorder = ledger.ledger_recorder
    assert isinstance(recorder, KafkaLedgerRecorder)
    # The commit's markers reach the partitions a moment after it returns: verify waits for
    # them (it read up to the last stable offset, short of the batch, in one CI run).
    whole = verify_topic(recorder)
    assert whole.ok and whole.facts_checked >= 9, whole
    for chunk in (1, 2, 5):
        assert verify_topic(recorder, chunk=chunk) == whole, chunk

    with recorder.datastore.transaction(commit=True) as c:
        c.execute(
            f"SELECT position, offset FROM {recorder.located_table} "
            "WHERE partition = 0 ORDER BY offset DESC LIMIT 2"
        )
        (p, a), (q, b) = (tuple(row) for row in c.fetchall())
        table = recorder.located_table
        c.execute(f"UPDATE {table} SET offset = -1 WHERE position = ?", (p,))
        c.execute(f"UPDATE {table} SET offset = ? WHERE position = ?", (a, q))
        c.execute(f"UPDATE {table} SET offset = ? WHERE position = ?", (b, p))
    for chunk in (1, 5000):
        result = verify_topic(recorder, chunk=chunk)
        assert [(problem.position, problem.kind) for problem in result.problems] == [
            (b, "reordered"),
            (a, "reordered"),
        ], chunk
        assert result.problems[0].partition == 0
    ledger.close()


def test_the_replica_syncs_less_than_the_key_store(tmp_path: Path, kafka_bootstrap: str) -> None:
    """In Kafka mode the replica is a cache of the ledger topic, so its commits do not fsync
    (WAL keeps them atomic); the key store, which holds what the topic does not, still
    does. Read back from SQLite itself; embedded mode's log is in test_sqlite_factory."""
    from ledger.application import ConsentLedger
    from ledger.kafka.factory import ReplicaConnectionPool
    from ledger.sql import PAGE_CACHE_KIB

    ledger = ConsentLedger(kafka_settings(tmp_path, kafka_bootstrap))
    try:
        datastore = ledger.factory.datastore  # type: ignore[attr-defined]
        assert isinstance(datastore.pool, ReplicaConnectionPool)
        with datastore.transaction(commit=False) as c:
            c.execute("PRAGMA synchronous")
            assert c.fetchone()[0] == 1  # NORMAL
            c.execute("PRAGMA cache_size")
            assert c.fetchone()[0] == -PAGE_CACHE_KIB
        assert ledger.keystore._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        ledger.close()


def test_a_ledger_topic_given_more_partitions_is_refused(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Adding partitions to the log of record splits subjects' facts between partitions and
    gives the next writer a transactional id that does not fence the running one; every
    process refuses such a topic before reading or writing: one whose replica read the old
    number (nothing new to read), and one building its replica from the topic."""
    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.kafka.topics import TopicRefused
    from tests.facts import grant

    settings = kafka_settings(tmp_path / "a", kafka_bootstrap)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant(f"p-{i}", event_id=f"p-{i}")) for i in range(40)])
    ledger.close()
    again = ConsentLedger(settings)  # as it was: opens, and writes
    again.record([parse_fact(grant("p-40", event_id="p-40"))])
    again.close()
    ledger_topic = Topics.of(settings.topic_prefix).ledger
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_partitions({ledger_topic: settings.partitions + 3})
    finally:
        admin.close()
    with pytest.raises(TopicRefused, match="has 6 partitions, but this replica was read from 3"):
        ConsentLedger(settings)
    for leftover in tmp_path.glob("a/ledger-replica.db*"):  # rebuilt from the topic
        leftover.unlink()
    with pytest.raises(TopicRefused, match="has 6 partitions, but the record at partition"):
        ConsentLedger(settings)


def test_a_ledger_topic_that_lost_records_is_refused(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The log of record never loses a record. A ledger topic deleted and made again went on
    being written as if nothing had happened (the new facts chained to a history the log no
    longer held); one whose first records were deleted was read from where it began."""
    from kafka import TopicPartition

    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.kafka.topics import TopicRefused
    from tests.facts import grant

    def a_ledger(name: str) -> tuple[ConsentLedger, str]:
        settings = kafka_settings(tmp_path / name, kafka_bootstrap, partitions=1)
        ledger = ConsentLedger(settings)
        ledger.init_demo()
        ledger.record([parse_fact(grant(f"{name}-{i}", event_id=f"{name}-{i}")) for i in range(5)])
        return ledger, Topics.of(settings.topic_prefix).ledger

    made_again, made_again_topic = a_ledger("a")
    cut, cut_topic = a_ledger("b")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([made_again_topic])
        admin.delete_records({TopicPartition(cut_topic, 0): 3})
    finally:
        admin.close()
    for ledger in (made_again, cut):
        ledger.close()
    # The deleted topic is made again, empty, as opening the ledger creates missing topics
    # (once the broker has finished deleting it: until then, creating it is refused).
    deadline = time.monotonic() + 60
    while True:
        with pytest.raises(TopicRefused) as refused:
            ConsentLedger(made_again.settings)
        if "cannot create topic" not in str(refused.value) or time.monotonic() > deadline:
            break
    assert "partition 0 ends at offset 0, short of offset" in str(refused.value)
    for leftover in tmp_path.glob("b/ledger-replica.db*"):  # built afresh from the topic
        leftover.unlink()
    with pytest.raises(TopicRefused, match="partition 0 begins at offset 3: records were deleted"):
        ConsentLedger(cut.settings)
    # The log of record altered: `verify` says BROKEN (exit 4), as for an altered embedded log,
    # where other commands say the topic is refused (exit 6).
    checked = kafka_cli(cut.settings, "verify")
    assert checked.returncode == 4, checked.stderr
    assert checked.stderr.startswith("consent-ledger: verify: BROKEN (removed): topic ")
    as_json = kafka_cli(cut.settings, "verify", "--json")
    assert as_json.returncode == 4
    answer = orjson.loads(as_json.stdout)
    # The first record lost, placed as any broken record is (by partition and offset).
    assert answer["first_broken"] == {
        "position": 0,
        "partition": 0,
        "kind": "removed",
        "sid": None,
        "version": None,
        "event_id": None,
        "message": checked.stderr.removeprefix(
            "consent-ledger: verify: BROKEN (removed): "
        ).strip(),
    }
    # The same fields as any verify answer; the key store's gaps unknown, not "none".
    assert (answer["subjects_without_key"], answer["erasures_not_in_log"]) == (None, None)
    assert kafka_cli(cut.settings, "trail", "b-1", "--tenant", "demo").returncode == 6


def test_records_lost_crosses_a_process_pipe_whole() -> None:
    """The HTTP writer process sends its errors pickled; one that does not unpickle goes as
    a RuntimeError of its name, which the routes cannot answer as the ledger's refusal."""
    import pickle

    from api.writer_process import _portable
    from ledger.kafka.topics import RecordsLost

    lost = RecordsLost("topic t partition 2 begins at offset 7: ...", 2, 0)
    again = pickle.loads(pickle.dumps(lost))
    assert type(again) is RecordsLost
    assert (str(again), again.partition, again.offset) == (str(lost), 2, 0)
    assert _portable(lost) is lost


def test_a_process_with_another_ledgers_keys_is_refused(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Another master key: every record failed its MAC, so the process saw an empty ledger
    and would write a second ledger's records into the first one's topic. The same master
    key without the key store: a new pseudonym key, so new sids for everyone. Both refused,
    at every start."""
    import shutil
    from dataclasses import replace

    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.kafka.topics import TopicRefused
    from ledger.keystore import NotTheLogsKeyStore
    from tests.facts import grant

    settings = kafka_settings(tmp_path / "a", kafka_bootstrap)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant("someone", event_id="g1"))])
    ledger.close()
    other_master = replace(settings, data_dir=tmp_path / "b")  # a master.key of its own
    for _ in range(2):
        with pytest.raises(TopicRefused, match="none of the 3 records read from topic"):
            ConsentLedger(other_master)
    (tmp_path / "c").mkdir()
    shutil.copy2(tmp_path / "a" / "master.key", tmp_path / "c" / "master.key")
    same_master = replace(settings, data_dir=tmp_path / "c")
    for _ in range(2):
        with pytest.raises(NotTheLogsKeyStore):
            ConsentLedger(same_master)
    shutil.copy2(tmp_path / "a" / "keys.db", tmp_path / "c" / "keys.db")
    with_its_keys = ConsentLedger(same_master)  # the deployment's key store: the same ledger
    assert with_its_keys.subject("demo", with_its_keys.sid("demo", "someone")) is not None
    with_its_keys.close()


def test_a_cluster_gone_after_the_first_answer_is_unreachable_not_a_traceback(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection in the client library: a request after bootstrap times out, as when
    the brokers go away in between. Every command then says 'try again' (exit 6) and worker
    and serve wait, as for no answer at all; it was kafka-python's traceback."""
    from kafka.errors import KafkaTimeoutError

    from ledger.kafka.topics import BrokersUnreachable

    def timed_out(*_: object, **__: object) -> None:
        raise KafkaTimeoutError("request timed out")

    monkeypatch.setattr(KafkaAdminClient, "create_topics", timed_out)
    with pytest.raises(BrokersUnreachable, match="while the topics were created or checked"):
        ensure_topics(kafka_settings(tmp_path, kafka_bootstrap))


def test_a_command_whose_brokers_refuse_connections_is_told_so_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command reaches the brokers first (its topics checked): with their addresses
    refusing connections it says so once that has lasted `REFUSED_FOR_S` (exit 6), where it
    waited the whole first-contact timeout, here raised to 30 s to tell the two apart."""
    from ledger.kafka import reachable, topics
    from ledger.kafka.topics import BrokersUnreachable

    monkeypatch.setattr(topics, "BOOTSTRAP_TIMEOUT_MS", 30_000)
    with no_broker() as address:
        began = time.monotonic()
        with pytest.raises(BrokersUnreachable, match="refused connections for 5 s"):
            ensure_topics(kafka_settings(tmp_path, address))
        took = time.monotonic() - began
    assert reachable.REFUSED_FOR_S <= took < 15


def test_a_replica_of_another_topic_is_refused_as_such(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """LEDGER_TOPIC_PREFIX changed on a data directory: its replica, read from the old
    topic, took the new one for the same log with records lost, and `verify` reported the
    log BROKEN (removed) — tampering, where nothing was touched. Now a configuration error
    that names both topics; a replica made before it kept its topic learns it."""
    import sqlite3
    from dataclasses import replace

    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.kafka.recorder import ReplicaOfAnotherTopic
    from tests.facts import grant

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant("someone", event_id="g1"))])
    ledger.close()
    with sqlite3.connect(settings.log_path) as db:  # as a replica made before this change
        db.execute("DELETE FROM stored_events_kafka_topic")
    db.close()
    ConsentLedger(settings).close()  # learns its topic again
    moved = replace(settings, topic_prefix=f"{settings.topic_prefix}x")
    old_topic, new_topic = (
        Topics.of(settings.topic_prefix).ledger,
        Topics.of(moved.topic_prefix).ledger,
    )
    with pytest.raises(ReplicaOfAnotherTopic, match=f"read from topic {old_topic}, but"):
        ConsentLedger(moved)
    checked = kafka_cli(moved, "verify")
    assert checked.returncode == 2, checked.stderr
    assert checked.stderr.startswith("consent-ledger: configuration: the replica of this data")
    assert f"the settings name {new_topic} (LEDGER_TOPIC_PREFIX changed?)" in checked.stderr
    assert kafka_cli(settings, "verify").returncode == 0  # the prefix set back
    for leftover in settings.data_dir.glob("ledger-replica.db*"):  # what the message says
        leftover.unlink()
    (settings.data_dir / "views.db").unlink(missing_ok=True)
    ledger = ConsentLedger(moved)
    ledger.init_demo()
    ledger.close()
    assert kafka_cli(moved, "verify").returncode == 0


def _replica_of(tmp_path: Path, bootstrap: str) -> KafkaLedgerRecorder:
    recorder = KafkaLedgerRecorder(
        SQLiteDatastore(db_name=str(tmp_path / "r.db"), lock_timeout=30),
        link=KafkaLink(bootstrap, Topics.of("away"), 3, TEST_RECORD_KEY),
    )
    recorder.create_table()
    return recorder


def test_a_replica_catching_up_from_a_broker_that_is_away_ends_when_its_process_stops(
    tmp_path: Path,
) -> None:
    """The views' reader catches the replica up when it is behind; a worker stopped with
    SIGTERM then waited out the consumer's 30 s first contact. Each contact now lasts a
    step, the stop checked between."""
    from ledger.kafka.recorder import LedgerUnavailable

    with no_broker() as address:
        recorder = _replica_of(tmp_path, address)
    stopping = Stopping(after=3)
    with pytest.raises(LedgerUnavailable, match="stopped"):
        recorder.catch_up(stopping)
    assert stopping.asked == 3
    assert recorder.positions() == {}


def test_a_replica_whose_broker_refuses_connections_is_told_so_within_seconds(
    tmp_path: Path,
) -> None:
    """No broker runs at the address: its connections are refused from the first second,
    and the catch-up says so once that has lasted `REFUSED_FOR_S`, where it waited out the
    broker's 30 s answer timeout (an HTTP question, a CLI command, a worker's round)."""
    from ledger.kafka import reachable, reading
    from ledger.kafka.recorder import LedgerUnavailable

    with no_broker() as address:
        recorder = _replica_of(tmp_path, address)
        began = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="refused connections"):
            recorder.catch_up()
        took = time.monotonic() - began
    assert reachable.REFUSED_FOR_S <= took < reading.ANSWER_TIMEOUT_S / 2
    assert recorder.positions() == {}


def test_a_broker_that_takes_connections_and_never_answers_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that accepts connections may only be slow: it has the whole answer timeout
    however soon the brokers would count as away had it refused them."""
    from ledger.kafka import reachable, reading
    from ledger.kafka.recorder import LedgerUnavailable

    monkeypatch.setattr(reachable, "REFUSED_FOR_S", 1.0)
    monkeypatch.setattr(reading, "ANSWER_TIMEOUT_S", 4.0)
    with silent_broker() as address:
        recorder = _replica_of(tmp_path, address)
        began = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="did not answer"):
            recorder.catch_up()
    assert time.monotonic() - began >= reading.ANSWER_TIMEOUT_S


def test_a_replica_whose_end_offsets_never_come_ends_when_its_process_stops(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The real broker, asked the end offsets of partitions it does not have (as of a topic
    deleted, or a broker that lost them), never answers: asked a step at a time until the
    process stops, where kafka-python waited 30 s."""
    from ledger.kafka.recorder import LedgerUnavailable

    recorder = KafkaLedgerRecorder(
        SQLiteDatastore(db_name=str(tmp_path / "r.db"), lock_timeout=30),
        link=KafkaLink(kafka_bootstrap, Topics.of("t" + uuid.uuid4().hex[:12]), 3, TEST_RECORD_KEY),
    )
    recorder.create_table()
    stopping = Stopping(after=4)
    with pytest.raises(LedgerUnavailable, match="stopped"):
        recorder.catch_up(stopping)
    assert stopping.asked == 4
    recorder.close()


def test_a_replica_caught_up_on_kept_readers_applies_what_came_between_reads(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """`publish --wait` catches its replica up for every batch it answers, on consumers it
    keeps: each read starts where the replica stands, not where the consumer last polled."""
    from ledger.kafka.reading import KeptReaders

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    ensure_topics(settings)
    writer = new_recorder(tmp_path / "writer.db", kafka_bootstrap, settings.topic_prefix)
    # The writer's own replica shares its file with a reader, as the worker's does with a
    # command of the same data directory; the other reader has a file of its own.
    shared = new_recorder(tmp_path / "writer.db", kafka_bootstrap, settings.topic_prefix)
    apart = new_recorder(tmp_path / "apart.db", kafka_bootstrap, settings.topic_prefix)
    kept_shared = KeptReaders(kafka_bootstrap, "test")
    kept_apart = KeptReaders(kafka_bootstrap, "test")
    subjects = [uuid.uuid4() for _ in range(4)]
    try:
        for version in range(1, 6):
            writer.insert_events([_event(s, version, b'{"tenant":"demo"}') for s in subjects])
            assert shared.catch_up(kept=kept_shared) == 0  # the writer applied them
            assert apart.catch_up(kept=kept_apart) == len(subjects)
            assert apart.versions_of(subjects) == {s: version for s in subjects}
            assert apart.positions() == shared.positions()
        first = kept_apart.committed(timeout_s=30)
        assert apart.catch_up(kept=kept_apart) == 0
        assert kept_apart.committed(timeout_s=30) is first  # kept, not made again
    finally:
        kept_shared.close()
        kept_apart.close()
        for recorder in (writer, shared, apart):
            recorder.close()


def test_kept_readers_are_made_afresh_after_a_catch_up_that_failed(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer left in the middle of a failed read (a broker gone, a stop) is not used
    again: the next catch-up makes its own and applies what the failed one did not."""
    from ledger.kafka.reading import KeptReaders, ReadTimedOut
    from ledger.kafka.reading import settled_ends as settled
    from ledger.kafka.recorder import LedgerUnavailable

    settings = kafka_settings(tmp_path, kafka_bootstrap)
    ensure_topics(settings)
    writer = new_recorder(tmp_path / "writer.db", kafka_bootstrap, settings.topic_prefix)
    reader = new_recorder(tmp_path / "reader.db", kafka_bootstrap, settings.topic_prefix)
    kept = KeptReaders(kafka_bootstrap, "test")
    subject = uuid.uuid4()
    try:
        writer.insert_events([_event(subject, 1, b'{"tenant":"demo"}')])
        before = kept.committed(timeout_s=30)

        def timed_out(*args: object, **kwargs: object) -> object:
            raise ReadTimedOut("the broker did not answer")

        monkeypatch.setattr(recorder_module, "settled_ends", timed_out)
        with pytest.raises(LedgerUnavailable, match="did not answer"):
            reader.catch_up(kept=kept)
        monkeypatch.setattr(recorder_module, "settled_ends", settled)
        assert kept.committed(timeout_s=30) is not before
        assert reader.catch_up(kept=kept) == 1
        assert reader.versions_of([subject]) == {subject: 1}
    finally:
        kept.close()
        writer.close()
        reader.close()
