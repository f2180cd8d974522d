"""What `/readyz` makes of the answers of a Kafka cluster (`ledger.kafka.readiness`), each
answer as kafka-python gives it. The cluster itself says them in `tests/test_kafka_cluster.py`
(a lost quorum) and `tests/test_kafka_acls.py` (the quorum question refused)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import errors as kafka_errors

from ledger.kafka import readiness
from ledger.kafka.readiness import (
    QuorumAsked,
    asked_of_some_broker,
    quorum_verdict,
    unwritable_partitions,
)


def partition(index: int, leader: int, isr: list[int]) -> dict[str, Any]:
    return {"partition_index": index, "leader_id": leader, "isr_nodes": isr}


def test_ledger_partitions_without_a_leader_or_enough_replicas_in_sync_are_named() -> None:
    described = [
        {"name": "c.intake", "partitions": [partition(0, -1, [])]},  # not the ledger's
        {
            "name": "c.ledger",
            "partitions": [
                partition(2, 1, [1]),
                partition(0, 1, [1, 2]),
                partition(1, -1, [2]),
                partition(3, 3, [3]),
            ],
        },
    ]
    assert unwritable_partitions(described, "c.ledger", 1) == (
        "kafka_partitions_unwritable",
        "topic c.ledger: partitions 1 have no leader",
    )
    assert unwritable_partitions(described, "c.ledger", 2) == (
        "kafka_partitions_unwritable",
        "topic c.ledger: partitions 1 have no leader; partitions 2, 3 have fewer than 2 "
        "replicas in sync (LEDGER_MIN_INSYNC)",
    )
    healthy = [{"name": "c.ledger", "partitions": [partition(0, 1, [1, 2, 3])]}]
    assert unwritable_partitions(healthy, "c.ledger", 2) is None


def quorum(leader: int, error: str | None = None, voters: tuple[int, ...] = ()) -> dict[str, Any]:
    return {
        "topics": [
            {
                "partitions": [
                    {
                        "leader_id": leader,
                        "error": error,
                        "current_voters": [{"replica_id": v} for v in voters],
                    }
                ]
            }
        ]
    }


REFUSED = kafka_errors.KafkaConnectionError("refused")
SILENT = kafka_errors.KafkaTimeoutError("no answer within the request timeout")
TIMED_OUT = kafka_errors.RequestTimedOutError("3 s")


def asked(*answers: Any, responsive: tuple[int, ...] = (), cluster: str = "c") -> QuorumAsked:
    return QuorumAsked(
        answers=list(answers),
        responsive=frozenset(responsive),
        brokers=frozenset({1, 2, 3}),
        cluster_id=cluster,
    )


def code(answers: QuorumAsked) -> str | None:
    problem = quorum_verdict(answers)
    return problem and problem[0]


@pytest.fixture(autouse=True)
def no_voters_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readiness, "_COMBINED_VOTERS", {})


@pytest.mark.parametrize(
    ("answers", "said"),
    [
        ([quorum(3), SILENT, SILENT], None),  # one broker naming the leader is enough
        ([REFUSED, quorum(0), SILENT], None),  # node 0 is a leader too
        ([TIMED_OUT, TIMED_OUT, SILENT], "kafka_quorum_lost"),
        ([REFUSED, REFUSED, TIMED_OUT], "kafka_quorum_lost"),  # two brokers of three dead
        ([quorum(-1), SILENT], "kafka_quorum_lost"),
        ([quorum(1, "NotLeaderOrFollowerError")], "kafka_quorum_lost"),
        ([REFUSED, kafka_errors.NodeNotReadyError(2), REFUSED], "broker_unreachable"),
        ([], "broker_unreachable"),  # no broker known to ask
        ([kafka_errors.UnsupportedVersionError(), SILENT], None),  # not KRaft
        ([kafka_errors.ClusterAuthorizationFailedError(), SILENT], None),  # not granted
    ],
)
def test_the_quorum_s_answers(answers: list[Any], said: str | None) -> None:
    assert code(asked(*answers, responsive=(1, 2, 3))) == said


def test_silence_with_most_voters_answering_as_brokers_is_no_lost_quorum() -> None:
    """The compose file's nodes are brokers and controllers at once: when the active
    controller hangs, every broker's forwarded question waits on it while the others elect
    a leader, and the brokers answering at all say that a majority of the voters runs."""
    silent = (TIMED_OUT, TIMED_OUT, SILENT)
    assert code(asked(*silent, responsive=(2, 3))) == "kafka_quorum_lost"
    assert quorum_verdict(asked(quorum(1, voters=(1, 2, 3)), responsive=(1, 2, 3))) is None
    assert quorum_verdict(asked(*silent, responsive=(2, 3))) is None
    assert code(asked(*silent, responsive=(3,))) == "kafka_quorum_lost"
    # Still known once the hung voter is fenced, left out of the brokers (and answers).
    fenced = QuorumAsked([quorum(2, voters=(1, 2, 3))], frozenset({2, 3}), frozenset({2, 3}), "c")
    assert quorum_verdict(fenced) is None
    assert quorum_verdict(asked(*silent, responsive=(2, 3))) is None
    # Learnt per cluster: another cluster's voters say nothing of this one.
    assert code(asked(*silent, responsive=(2, 3), cluster="d")) == "kafka_quorum_lost"


def test_silence_of_controllers_that_are_not_the_brokers_is_a_lost_quorum() -> None:
    silent = (TIMED_OUT, TIMED_OUT, TIMED_OUT)
    assert quorum_verdict(asked(quorum(1, voters=(1, 2, 3)), responsive=(1, 2, 3))) is None
    assert code(asked(*silent, responsive=(1, 2, 3))) is None
    # The controllers moved to processes of their own: the brokers answering says nothing.
    assert quorum_verdict(asked(quorum(101, voters=(101, 102, 103)), responsive=(1, 2, 3))) is None
    assert code(asked(*silent, responsive=(1, 2, 3))) == "kafka_quorum_lost"


class Answers:
    """A question answered in turn as given: each error raised, the first value returned."""

    config = {"reconnect_backoff_ms": 1}

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)

    def __call__(self) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.mark.parametrize(
    "before",
    [
        [REFUSED],
        [TIMED_OUT],  # a broker that hangs took it
        [SILENT, kafka_errors.NodeNotReadyError(1)],
    ],
)
def test_a_question_is_asked_of_another_broker_until_one_answers(before: list[Any]) -> None:
    question = Answers(*before, "answer", "never asked")
    assert asked_of_some_broker(question, question) == "answer"
    assert question.answers == ["never asked"]


def test_a_question_no_broker_answers_raises_the_last_failure() -> None:
    question = Answers(REFUSED, TIMED_OUT, SILENT, "never asked")
    with pytest.raises(kafka_errors.KafkaTimeoutError):
        asked_of_some_broker(question, question)
    assert question.answers == ["never asked"]
