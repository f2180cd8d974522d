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

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import errors as kafka_errors
from kafka.future import Future
from kafka.protocol.admin import DescribeQuorumRequest
from kafka.protocol.metadata import MetadataRequest

logger = logging.getLogger(__name__)

# Answers that say the question did not reach a broker, so another broker is asked.
_NOT_REACHED = (kafka_errors.KafkaConnectionError, kafka_errors.NodeNotReadyError)
# Answers that say a broker took the question and no controller answered it in time.
_NO_CONTROLLER = (kafka_errors.RequestTimedOutError, kafka_errors.KafkaTimeoutError)
# Brokers asked at most, each question after one that could not reach its broker or was
# not answered by it in time.
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
    three down would do the same. A question that timed out is asked again too: the broker
    that took it may hang (SIGSTOPped, one of the compose file's three: `/readyz` said
    `broker_unreachable` once it had picked that broker, a throwaway probe, 2026-12-06);
    kafka-python closes the connection it timed out on, so the next try goes elsewhere."""
    pause = admin.config.get("reconnect_backoff_ms", 50) / 1000
    for attempt in range(ASKED_AT_MOST):
        try:
            return question()
        except _NOT_REACHED + _NO_CONTROLLER:
            if attempt == ASKED_AT_MOST - 1:
                raise
            time.sleep(pause)  # the back-off after which kafka-python reconnects
    raise AssertionError("unreachable")  # pragma: no cover


def quorum_problem(admin: Any) -> tuple[str, str] | None:
    """`(code, message)` when the controllers have no quorum, or no broker could be asked;
    None when the quorum answered with a leader, when it cannot be told (below), or when
    the cluster refused this principal the question (logged once: the operator did not
    grant `Describe` on the cluster, and readiness cannot tell a lost quorum then, as
    before it asked)."""
    return quorum_verdict(ask_quorum(admin))


@dataclass(frozen=True)
class QuorumAsked:
    """The quorum question asked of every broker at once (`ask_quorum`)."""

    # Per broker asked: its described quorum (as kafka-python's `describe_metadata_quorum`
    # gives it) or the error that came instead (`KafkaTimeoutError`: no answer in time).
    answers: list[Any]
    # The brokers that answered a metadata question asked of each meanwhile: alive, whatever
    # became of the quorum question.
    responsive: frozenset[Any] = frozenset()
    brokers: frozenset[Any] = frozenset()  # the brokers asked
    cluster_id: str | None = None


# Per cluster id, the controllers that vote in its quorum, learnt from an answer that named
# the leader, when they are brokers too (combined mode, as the compose file runs them):
# then a broker answering is a voter alive.
_COMBINED_VOTERS: dict[str, frozenset[int]] = {}


def quorum_verdict(asked: QuorumAsked) -> tuple[str, str] | None:
    """What the brokers' answers to the quorum question say.

    One broker naming the quorum's leader is enough. Silence from all is not always a lost
    quorum: a broker forwards the question to the active controller, and when that
    controller's process hangs (stopped, frozen) every broker's forwarded question waits
    on it, about 30 s, though the other controllers elected a new leader within seconds
    and writes go on (a throwaway probe on the compose file's brokers, 2026-12-06: the
    active controller SIGSTOPped, no broker answered for the 30 s it was stopped). Asked
    of one broker at a time, the silence of a hung broker of three, or of the brokers
    behind a hung controller, made a write waiting for its answer refuse itself as if the
    quorum were lost (in 3 of 6 hangs in that probe, one broker at a time SIGSTOPped for
    25 s under a writer). So when the cluster's voters are its brokers (known from an
    earlier answer) and a majority of them answered a metadata question meanwhile, the
    quorum stands (a majority of its voters run) and silence says nothing. Where the
    controllers are processes of their own, their silence is still taken for a lost
    quorum: the brokers' answers say nothing of them.
    """
    global _refusal_logged
    answers = asked.answers
    for answer in answers:
        if _names_leader(answer):
            _learn_voters(asked, answer)
            return None
    if any(isinstance(a, kafka_errors.ClusterAuthorizationFailedError) for a in answers):
        if not _refusal_logged:
            _refusal_logged = True
            logger.warning(
                "the Kafka cluster refused this principal Describe on the cluster: "
                "/readyz and a write waiting for its answer cannot tell a cluster whose "
                "controllers lost their quorum (`consent-ledger kafka-acls` lists the grant)"
            )
        return None
    if any(isinstance(a, kafka_errors.UnsupportedVersionError) for a in answers):
        return None  # not a KRaft cluster: its controller is not asked this way
    if any(isinstance(a, Mapping) for a in answers):
        return lost("the controllers have no leader")
    voters = _COMBINED_VOTERS.get(asked.cluster_id or "")
    if voters and len(voters & asked.responsive) > len(voters) // 2:
        return None
    if any(isinstance(a, _NO_CONTROLLER) for a in answers):
        return lost("no controller answered within the request timeout")
    return "broker_unreachable", "no Kafka broker took the question of the controllers' quorum"


def _learn_voters(asked: QuorumAsked, answer: Mapping[str, Any]) -> None:
    if asked.cluster_id is None:
        return
    voters = frozenset(
        voter.get("replica_id")
        for topic in answer.get("topics", ())
        for partition in topic.get("partitions", ())
        for voter in partition.get("current_voters") or ()
    )
    # Most of them among the brokers, not all: a voter whose broker hangs is fenced, and
    # left out of the metadata, while the quorum it votes in still answers.
    if voters and len(voters & (asked.responsive | asked.brokers)) > len(voters) // 2:
        _COMBINED_VOTERS[asked.cluster_id] = voters
    else:
        _COMBINED_VOTERS.pop(asked.cluster_id, None)


def ask_quorum(admin: Any) -> QuorumAsked:
    """Every broker the admin client knows, asked at once for the quorum and for the
    cluster's metadata, until one names the quorum's leader, every one has answered both,
    or the client's request timeout passes. The connections of questions left unanswered
    then are closed (below), so an admin client closed after it has none in flight."""
    manager = admin._manager
    asked: QuorumAsked = manager.run(
        _asked_of_every_broker, manager, admin.config["request_timeout_ms"]
    )
    return asked


async def _asked_of_every_broker(manager: Any, timeout_ms: int) -> QuorumAsked:
    """On the admin client's own IO thread, as its questions are asked."""
    brokers = [broker.node_id for broker in manager.cluster.brokers()]
    # First: a broker answers the requests of a connection in turn, and a question
    # waiting behind a forwarded one that never comes back would never be answered.
    alive = [
        manager.send(
            MetadataRequest(
                topics=MetadataRequest.NO_TOPICS,
                allow_auto_topic_creation=False,
                include_cluster_authorized_operations=False,
                include_topic_authorized_operations=False,
            ),
            node_id=node_id,
            request_timeout_ms=timeout_ms,
        )
        for node_id in brokers
    ]
    topic = DescribeQuorumRequest.TopicData
    quorum = [
        manager.send(
            DescribeQuorumRequest(
                topics=[
                    topic(
                        topic_name="__cluster_metadata",
                        partitions=[topic.PartitionData(partition_index=0)],
                    )
                ]
            ),
            node_id=node_id,
            request_timeout_ms=timeout_ms,
        )
        for node_id in brokers
    ]
    decided = Future()

    def settle(_: Any = None) -> None:
        named = any(f.succeeded() and _names_leader(_answer(f)) for f in quorum)
        if not decided.is_done and (named or all(f.is_done for f in quorum + alive)):
            decided.success(None)

    for future in quorum + alive:
        future.add_both(settle)
    settle()
    with contextlib.suppress(kafka_errors.KafkaTimeoutError):
        await manager.wait_for(decided, timeout_ms)
    asked = QuorumAsked(
        answers=[_answer(future) for future in quorum],
        responsive=frozenset(n for n, f in zip(brokers, alive, strict=True) if f.succeeded()),
        brokers=frozenset(brokers),
        cluster_id=manager.cluster.cluster_id,
    )
    # A question left waiting on a connection would hold the next one's metadata question
    # behind it (a broker answers a connection's requests in turn): in a throwaway probe,
    # brokers whose last quorum question was forwarded to a controller that hung just then
    # looked silent to the next question, and the quorum was said lost. Closed, the next
    # question connects anew.
    for node_id, question, metadata in zip(brokers, quorum, alive, strict=True):
        if not (question.is_done and metadata.is_done):
            manager.close(node_id)
    return asked


def _names_leader(answer: Any) -> bool:
    if not isinstance(answer, Mapping):
        return False
    leader = _quorum_leader(answer)
    return leader is not None and leader >= 0


def _answer(future: Any) -> Any:
    if not future.is_done:
        return kafka_errors.KafkaTimeoutError("no answer within the request timeout")
    if future.failed():
        return future.exception
    response = future.value
    error = kafka_errors.for_code(response.error_code)
    if error is not kafka_errors.NoError:
        return error(response.error_message or "")
    return _described(response)


def _described(response: Any) -> dict[str, Any]:
    """A DescribeQuorumResponse as kafka-python's `describe_metadata_quorum` returns it."""
    result: dict[str, Any] = response.to_dict()
    for topic in result.get("topics", ()):
        for partition in topic.get("partitions", ()):
            code = partition.pop("error_code", 0)
            message = partition.pop("error_message", None)
            partition["error"] = None if code == 0 else str(kafka_errors.for_code(code)(message))
    return result


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
