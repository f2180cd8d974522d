"""What a write waiting for the broker asks while it goes unanswered
(`ledger.kafka.write_watch`): the quorum, asked as `/readyz` asks it. Here the question's
verdicts are given (`ledger.kafka.readiness.quorum_verdict`, whose answers
`tests/test_kafka_readiness.py` takes as kafka-python gives them); the compose cluster with
two brokers of three SIGKILLed says the same of a real write (`tests/test_kafka_cluster.py`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import errors as kafka_errors

from ledger.kafka import write_watch
from ledger.kafka.readiness import lost
from ledger.kafka.reading import BrokerAway, ReadTimedOut, answered
from ledger.kafka.write_watch import LOST_ANSWERS, QuorumLost, WriteWatch

TIMED_OUT = lost("no controller answered within the request timeout")


class Admin:
    """The quorum question's verdicts in turn (an exception is raised), from an admin
    client the watch closes."""

    closed = False

    def __init__(self, *verdicts: Any) -> None:
        self.verdicts = list(verdicts)
        self.asked = 0

    def verdict(self) -> Any:
        self.asked += 1
        verdict = self.verdicts.pop(0)
        if isinstance(verdict, BaseException):
            raise verdict
        return verdict

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def verdicts_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_watch, "quorum_problem", lambda admin, **_: admin.verdict())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listening() -> Iterator[str]:
    """An address whose port accepts connections, as a live broker's does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_a_lost_quorum_ends_the_wait_after_answers_in_a_row(listening: str) -> None:
    clock, cluster = Clock(), Admin(*[TIMED_OUT] * LOST_ANSWERS)
    made: list[Any] = []

    def admin() -> Admin:
        made.append(cluster)
        return cluster

    watch = WriteWatch(listening, clock=clock, admin=admin)
    assert watch() is False  # the first unanswered step: too soon to ask
    clock.now += write_watch.ASK_AFTER_S
    assert watch() is False and cluster.asked == 1  # lost once: an election may be on
    assert watch() is False and cluster.asked == 1  # not asked again so soon
    clock.now += write_watch.ASK_EVERY_S
    with pytest.raises(QuorumLost, match="controllers have no quorum"):
        watch()
    assert cluster.asked == LOST_ANSWERS and len(made) == 1
    watch.close()
    assert cluster.closed


def test_a_quorum_that_answers_between_says_nothing(listening: str) -> None:
    answers = [TIMED_OUT, None, TIMED_OUT, None]
    clock, cluster = Clock(), Admin(*answers)
    watch = WriteWatch(listening, clock=clock, admin=lambda: cluster)
    watch()
    for _ in answers:
        clock.now += write_watch.ASK_AFTER_S
        assert watch() is False
    assert cluster.verdicts == []


@pytest.mark.parametrize(
    "answer",
    [
        None,  # `Describe` on the cluster not granted, or not a KRaft cluster
        ("broker_unreachable", "no Kafka broker took the question"),
        kafka_errors.KafkaConnectionError("no broker took it"),
    ],
)
def test_a_question_without_an_answer_leaves_the_answer_timeout_to_stand(
    listening: str, answer: Any
) -> None:
    clock = Clock()
    clusters: list[Admin] = []

    def admin() -> Admin:
        clusters.append(Admin(*[answer] * 12))
        return clusters[-1]

    watch = WriteWatch(listening, clock=clock, admin=admin)
    watch()
    for _ in range(4):
        clock.now += write_watch.ASK_AFTER_S
        assert watch() is False
    watch.close()


def test_an_admin_client_that_cannot_be_made_says_nothing(listening: str) -> None:
    clock = Clock()

    def admin() -> Any:
        raise kafka_errors.NoBrokersAvailable()

    watch = WriteWatch(listening, clock=clock, admin=admin)
    watch()
    for _ in range(3):
        clock.now += write_watch.ASK_AFTER_S
        assert watch() is False


def test_a_write_s_wait_ends_as_one_whose_brokers_are_away(
    listening: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `answered`, as the recorder waits for its commit: `BrokerAway`, which the
    recorder answers `LedgerUnavailable` as it does a wait past the answer timeout."""
    monkeypatch.setattr(write_watch, "ASK_AFTER_S", 0.0)
    monkeypatch.setattr(write_watch, "ASK_EVERY_S", 0.0)
    cluster = Admin(*[TIMED_OUT] * LOST_ANSWERS)
    watch = WriteWatch(listening, admin=lambda: cluster)
    with pytest.raises(BrokerAway) as raised:
        answered(lambda ms: None, timeout_s=60, away=watch)
    assert isinstance(raised.value, ReadTimedOut) and isinstance(raised.value, QuorumLost)


def test_brokers_that_refuse_connections_are_not_asked_the_quorum() -> None:
    """Every address refusing is the brokers away (`reachable.BrokerWatch`), said within
    seconds; a quorum question would only wait out its own answer time first."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refusing = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        clock, asked = Clock(), []
        watch = WriteWatch(refusing, clock=clock, admin=lambda: asked.append(1))
        for _ in range(10):
            clock.now += write_watch.ASK_AFTER_S
            if watch():
                break
        assert watch() is True
        assert asked == []
