"""The brokers' `request.timeout.ms`, read from a real broker, and the warning the writer
gives when a cluster of several brokers keeps it above 10 s (`ledger.kafka.broker_settings`).
The compose cluster's brokers, which set 5 s, are read in `test_kafka_cluster.py`."""

from __future__ import annotations

import logging
import threading

import pytest
from kafka.admin import KafkaAdminClient

from ledger.kafka import broker_settings
from ledger.kafka.broker_settings import (
    REQUEST_TIMEOUT_WARN_MS,
    request_timeout_warnings,
    request_timeouts,
    warn_of_broker_settings,
)


def asked(bootstrap: str) -> None:
    """`warn_of_broker_settings`, and the end of the question it asked."""
    before = set(threading.enumerate())
    warn_of_broker_settings(bootstrap)
    for thread in set(threading.enumerate()) - before:
        if thread.name == "consent-ledger-broker-settings":
            thread.join(timeout=60)
            assert not thread.is_alive()


def test_a_broker_s_request_timeout_is_read_and_one_broker_alone_is_not_warned_of(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        timeouts = request_timeouts(admin)
    finally:
        admin.close()
    # deploy/kafka/broker.sh leaves Kafka's default: one broker writes its markers on itself.
    assert list(timeouts.values()) == [30_000], timeouts
    broker_settings._ASKED.discard(kafka_bootstrap)  # asked again here, whoever asked before
    with caplog.at_level(logging.WARNING, logger="consent_ledger.kafka"):
        asked(kafka_bootstrap)
        asked(kafka_bootstrap)  # answered: not asked again
    assert kafka_bootstrap in broker_settings._ASKED
    assert "request.timeout.ms" not in caplog.text


def test_brokers_above_ten_seconds_are_warned_of_by_name_and_the_others_not() -> None:
    (warning,) = request_timeout_warnings({"1": 30_000, "2": 5_000, "3": 12_000})
    assert "Kafka brokers 1 (30000 ms), 3 (12000 ms) wait" in warning
    assert "2 (" not in warning
    assert "request.timeout.ms=5000" in warning
    assert request_timeout_warnings({"1": 5_000, "2": REQUEST_TIMEOUT_WARN_MS}) == []
    assert request_timeout_warnings({"1": 30_000}) == []  # one broker
    assert request_timeout_warnings({}) == []  # settings refused: nothing said


def test_a_cluster_that_does_not_answer_is_warned_of_nothing_and_asked_again() -> None:
    nowhere = "127.0.0.1:9"  # the discard port: nothing listens
    asked(nowhere)
    assert nowhere not in broker_settings._ASKED
