"""A topic just made reaches each broker's metadata in its own time, and the ledger's checks
of its topics ask whichever broker kafka-python picks (`ledger.kafka.topics`). A broker that
has not heard of the topic yet is asked again, not taken for the cluster's answer: CI once
refused a three-broker cluster's own new ledger topic so. The answers here are metadata as
kafka-python 3.0.12's `describe_topics` gives them; the cluster says the same in
`tests/test_kafka_cluster.py`, where the moment cannot be chosen."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.kafka import topics as topics_module
from ledger.kafka.topics import TopicRefused, described

UNKNOWN = {"name": "c.ledger", "error_code": 3, "partitions": []}
KNOWN = {
    "name": "c.ledger",
    "error_code": 0,
    "partitions": [{"partition_index": 0, "leader_id": 1, "replica_nodes": [1, 2, 3]}],
}


class Brokers:
    """Answers of brokers in turn, the first `unaware` of which have not heard of the topic."""

    def __init__(self, unaware: int) -> None:
        self.unaware = unaware
        self.asked = 0

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        assert names == ["c.ledger"]
        self.asked += 1
        return [UNKNOWN if self.asked <= self.unaware else KNOWN]


def test_a_topic_a_broker_has_not_heard_of_yet_is_asked_of_again() -> None:
    brokers = Brokers(unaware=3)
    assert described(brokers, "c.ledger") == KNOWN
    assert brokers.asked == 4


def test_a_topic_no_broker_knows_within_the_settling_time_does_not_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(topics_module, "SETTLE_STEP_S", 0.0)
    brokers = Brokers(unaware=10**9)
    with pytest.raises(TopicRefused, match=r"topic c\.ledger does not exist"):
        described(brokers, "c.ledger", settle_s=0.2)
    assert brokers.asked > 1
    # Asked once, where a missing topic is itself the answer (a Create refused by ACL).
    once = Brokers(unaware=10**9)
    with pytest.raises(TopicRefused):
        described(once, "c.ledger", settle_s=0.0)
    assert once.asked == 1
