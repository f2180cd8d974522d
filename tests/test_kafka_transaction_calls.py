"""The producer's transactional calls begun without a thread to wait in (ledger.kafka.
transaction_calls): on this kafka-python against the real broker, and the thread kept for
a producer that does not expose its parts."""

from __future__ import annotations

import threading
import uuid

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from ledger.kafka.transaction_calls import begin_abort, begin_commit, begin_offsets, direct
from tests.kafka_support import made_by_hand, read_committed

pytestmark = pytest.mark.kafka


def _until_done(call: object) -> None:
    """Wait, a second at a time, up to 30 s; a call never done fails the test."""
    for _ in range(30):
        if call.done(1000):  # type: ignore[attr-defined]
            return
    raise AssertionError("the transactional call did not end in 30 s")


def test_commit_abort_and_offsets_are_begun_directly_on_this_kafka_python(
    kafka_bootstrap: str,
) -> None:
    """If kafka-python moved its parts, the writer would fall back to a thread per call,
    left waiting for good in an outage: this says so before a release does."""
    topic = f"consent.test.{uuid.uuid4().hex[:8]}"
    made_by_hand(kafka_bootstrap, topic, {})
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-calls-{uuid.uuid4().hex[:8]}"
    )
    try:
        assert direct(producer)
        producer.init_transactions()
        threads = {t.ident for t in threading.enumerate()}

        producer.begin_transaction()
        producer.send(topic, value=b"aborted")
        aborting = begin_abort(producer)
        _until_done(aborting)
        aborting.result()

        producer.begin_transaction()
        producer.send(topic, value=b"committed")
        offsets = begin_offsets(producer, {TopicPartition(topic, 0): _offset(7)}, "tx-calls")
        _until_done(offsets)
        offsets.result()
        committing = begin_commit(producer)
        _until_done(committing)
        committing.result()
        # Nothing started a thread to wait in.
        assert {t.ident for t in threading.enumerate()} <= threads
    finally:
        producer.close()
    assert [r.value for r in read_committed(kafka_bootstrap, topic)] == [b"committed"]


def test_a_failed_call_raises_its_error_once_waited_for(kafka_bootstrap: str) -> None:
    """A commit with no transaction begun fails in kafka-python's own state check: raised by
    the begin, as the public call raises it."""
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-calls-{uuid.uuid4().hex[:8]}"
    )
    try:
        producer.init_transactions()
        with pytest.raises(KafkaError, match=r"Invalid transition .* to state COMMITTING"):
            begin_commit(producer)
    finally:
        producer.close()


class _OtherProducer:
    """A producer that keeps its parts elsewhere: its public calls are all there is."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def commit_transaction(self) -> None:
        self.release.wait()

    def abort_transaction(self) -> None:
        raise ValueError("refused")


def test_a_producer_of_another_kind_is_waited_for_in_a_thread() -> None:
    other = _OtherProducer()
    assert not direct(other)
    committing = begin_commit(other)
    assert not committing.done(10)
    other.release.set()
    _until_done(committing)
    committing.result()

    aborting = begin_abort(other)
    _until_done(aborting)
    # As kafka-python's own calls fail: a KafkaError, the call's own error its cause.
    with pytest.raises(KafkaError, match="ValueError: refused") as refused:
        aborting.result()
    assert isinstance(refused.value.__cause__, ValueError)


def _offset(n: int) -> object:
    from kafka.structs import OffsetAndMetadata

    return OffsetAndMetadata(n, "", -1)
