"""Whether the Kafka cluster can take the ledger's writes now, as `/readyz` asks it.

The topics' metadata alone cannot say so. On the compose file's three brokers with two of
them SIGKILLed (2026-12-06), the broker left answered every metadata question from its
cache, naming the dead brokers as leaders and in sync for as long as it ran: the
controllers that would change that had lost their quorum with the two brokers. `/readyz`
said ready while every write waited out its 30 s and was refused. So readiness also asks
the quorum: a broker forwards `DescribeQuorum` to the active controller, and without a
quorum there is none and the question waits out its timeout (3 s here), every time, from
about 3 s after the second broker died; with one broker of three down the quorum answered
throughout (a throwaway script on `deploy/kafka/cluster.py`'s brokers).

What a cluster that has its quorum says in its metadata is told too: a ledger partition
without a leader, or with fewer replicas in sync than `LEDGER_MIN_INSYNC`, takes no write
(with five brokers, two down can leave a partition so while the quorum stands).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from kafka import errors as kafka_errors

logger = logging.getLogger(__name__)

# Answers that say the question did not reach a broker, so another broker is asked.
_NOT_REACHED = (kafka_errors.KafkaConnectionError, kafka_errors.NodeNotReadyError)
# Answers that say a broker took the question and no controller answered it in time.
_NO_CONTROLLER = (kafka_errors.RequestTimedOutError, kafka_errors.KafkaTimeoutError)
# Brokers asked at most, each question after one that could not reach its broker.
ASKED_AT_MOST = 3

_refusal_logged = False

T = TypeVar("T")


def asked_of_some_broker(admin: Any, question: Callable[[], T]) -> T:
    """`question`'s answer from the first broker that takes it, trying up to
    `ASKED_AT_MOST` brokers; the last failure to reach one is raised.

    kafka-python asks the broker with the fewest requests waiting and skips one it could
    not reach a moment ago, so each try goes to another broker. Asked once, the probe after
    a quorum question that timed out said `broker_unreachable` (the cluster test's first
    run): kafka-python closes the connection a request timed out on, here the only live
    broker's, and picked a dead one for the next question. A dead broker picked with one of
    three down would do the same."""
    pause = admin.config.get("reconnect_backoff_ms", 50) / 1000
    for attempt in range(ASKED_AT_MOST):
        try:
            return question()
        except _NOT_REACHED:
            if attempt == ASKED_AT_MOST - 1:
                raise
            time.sleep(pause)  # the back-off after which kafka-python reconnects
    raise AssertionError("unreachable")  # pragma: no cover


def quorum_problem(admin: Any) -> tuple[str, str] | None:
    """`(code, message)` when the controllers have no quorum, or no broker could be asked;
    None when the quorum answered with a leader, or when the cluster refused this
    principal the question (logged once: the operator did not grant `Describe` on the
    cluster, and readiness cannot tell a lost quorum then, as before it asked)."""
    global _refusal_logged
    try:
        answer = asked_of_some_broker(admin, admin.describe_metadata_quorum)
    except _NOT_REACHED:
        return "broker_unreachable", "no Kafka broker took the question of the controllers' quorum"
    except _NO_CONTROLLER:
        return lost("no controller answered within the request timeout")
    except kafka_errors.ClusterAuthorizationFailedError:
        if not _refusal_logged:
            _refusal_logged = True
            logger.warning(
                "the Kafka cluster refused this principal Describe on the cluster: "
                "/readyz and a write waiting for its answer cannot tell a cluster whose "
                "controllers lost their quorum (`consent-ledger kafka-acls` lists the grant)"
            )
        return None
    except kafka_errors.UnsupportedVersionError:
        return None  # not a KRaft cluster: its controller is not asked this way
    leader = _quorum_leader(answer)
    if leader is None or leader < 0:
        return lost("the controllers have no leader")
    return None


def lost(why: str) -> tuple[str, str]:
    return (
        "kafka_quorum_lost",
        f"the Kafka cluster's controllers have no quorum ({why}): no write can commit "
        "until enough controllers are back",
    )


def _quorum_leader(answer: Mapping[str, Any]) -> int | None:
    for topic in answer.get("topics", ()):
        for partition in topic.get("partitions", ()):
            if partition.get("error"):
                return None
            leader = partition.get("leader_id")
            return leader if isinstance(leader, int) else None
    return None


def unwritable_partitions(
    described: Iterable[Mapping[str, Any]], topic: str, min_insync: int
) -> tuple[str, str] | None:
    """`(code, message)` naming the partitions of `topic` that take no write by the
    metadata (`described` as kafka-python's `describe_topics` gives it), or None."""
    leaderless, short = [], []
    for entry in described:
        if entry.get("name") != topic:
            continue
        for partition in entry.get("partitions") or ():
            index = partition.get("partition_index")
            if partition.get("leader_id", -1) < 0:
                leaderless.append(index)
            elif len(partition.get("isr_nodes") or ()) < min_insync:
                short.append(index)
    if not leaderless and not short:
        return None
    said = []
    if leaderless:
        said.append(f"partitions {_listed(leaderless)} have no leader")
    if short:
        said.append(
            f"partitions {_listed(short)} have fewer than {min_insync} replicas in sync "
            "(LEDGER_MIN_INSYNC)"
        )
    return "kafka_partitions_unwritable", f"topic {topic}: {'; '.join(said)}"


def _listed(indexes: list[Any]) -> str:
    return ", ".join(str(i) for i in sorted(indexes))
