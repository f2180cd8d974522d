"""What `/readyz` makes of the answers of a Kafka cluster (`ledger.kafka.readiness`), each
answer as kafka-python gives it. The cluster itself says them in `tests/test_kafka_cluster.py`
(a lost quorum) and `tests/test_kafka_acls.py` (the quorum question refused)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import errors as kafka_errors

from ledger.kafka.readiness import quorum_problem, unwritable_partitions


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


class Cluster:
    """The admin client's one question, answered as given: each answer in turn."""

    config = {"reconnect_backoff_ms": 1}

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked = 0

    def describe_metadata_quorum(self) -> Any:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def quorum(leader: int, error: str | None = None) -> dict[str, Any]:
    return {"topics": [{"partitions": [{"leader_id": leader, "error": error}]}]}


@pytest.mark.parametrize(
    ("answers", "said"),
    [
        ([quorum(3)], None),
        ([kafka_errors.KafkaConnectionError("refused"), quorum(2)], None),  # the next broker
        ([kafka_errors.RequestTimedOutError("3 s")], "kafka_quorum_lost"),
        (
            [kafka_errors.KafkaConnectionError("x"), kafka_errors.KafkaTimeoutError()],
            "kafka_quorum_lost",
        ),
        ([quorum(-1)], "kafka_quorum_lost"),
        ([quorum(1, "NotLeaderOrFollowerError")], "kafka_quorum_lost"),
        ([kafka_errors.KafkaConnectionError("x")] * 3, "broker_unreachable"),
        ([kafka_errors.UnsupportedVersionError()], None),  # not KRaft: not asked this way
        ([kafka_errors.ClusterAuthorizationFailedError()], None),  # not granted: cannot tell
    ],
)
def test_the_quorum_s_answers(answers: list[Any], said: str | None) -> None:
    cluster = Cluster(*answers)
    problem = quorum_problem(cluster)
    assert (problem and problem[0]) == said, problem
    assert cluster.answers == []  # asked no broker more than it took
