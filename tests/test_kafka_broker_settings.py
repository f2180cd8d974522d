"""The brokers' `request.timeout.ms`, read from a real broker, and the warning the writer
gives when a cluster of several brokers keeps it above 10 s (`ledger.kafka.broker_settings`).
The compose cluster's brokers, which set 5 s, are read in `test_kafka_cluster.py`."""

from __future__ import annotations

from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaTimeoutError

from ledger.kafka.broker_settings import (
    REQUEST_TIMEOUT_WARN_MS,
    broker_warnings,
    request_timeout_warnings,
    request_timeouts,
)


def test_a_broker_s_request_timeout_is_read_and_one_broker_alone_is_not_warned_of(
    kafka_bootstrap: str,
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        timeouts = request_timeouts(admin)
        warned = broker_warnings(admin)
    finally:
        admin.close()
    # deploy/kafka/broker.sh leaves Kafka's default: one broker writes its markers on itself.
    assert list(timeouts.values()) == [30_000], timeouts
    assert warned == []


def test_brokers_above_ten_seconds_are_warned_of_by_name_and_the_others_not() -> None:
    (warning,) = request_timeout_warnings({"1": 30_000, "2": 5_000, "3": 12_000})
    assert "Kafka brokers 1 (30000 ms), 3 (12000 ms) wait" in warning
    assert "2 (" not in warning
    assert "request.timeout.ms=5000" in warning
    assert request_timeout_warnings({"1": 5_000, "2": REQUEST_TIMEOUT_WARN_MS}) == []
    assert request_timeout_warnings({"1": 30_000}) == []  # one broker
    assert request_timeout_warnings({}) == []  # settings refused: nothing said


class Unanswered:
    """An admin client whose cluster does not answer (the questions time out)."""

    def describe_cluster(self) -> Any:
        raise KafkaTimeoutError("no answer")


def test_a_cluster_that_does_not_answer_is_warned_of_nothing() -> None:
    assert broker_warnings(Unanswered()) == []
