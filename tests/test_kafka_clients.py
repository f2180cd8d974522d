"""The Kafka clients the ledger makes (`ledger.kafka.clients`) against an address where no
broker answers: the real kafka-python clients, which start a network thread before they
wait for a broker and, failing, left it running; and, against the real broker, how soon they
refresh their metadata."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from ledger.kafka.clients import (
    RECONNECT_BACKOFF_MAX_MS,
    RETRY_BACKOFF_MS,
    AdminClient,
    Consumer,
    Producer,
)


@pytest.fixture
def no_broker() -> Iterator[str]:
    """An address that refuses connections: a port bound here, never listened on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def network_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kafka-io")]


@pytest.mark.parametrize("client", [Consumer, AdminClient])
def test_a_client_that_reaches_no_broker_leaves_no_thread_running(
    client: type, no_broker: str
) -> None:
    before = network_threads()
    for _ in range(3):
        with pytest.raises(KafkaTimeoutError):
            client(bootstrap_servers=no_broker, bootstrap_timeout_ms=100)
    assert network_threads() == before


@pytest.mark.kafka
@pytest.mark.parametrize("client", [Consumer, AdminClient])
def test_a_client_refreshes_its_metadata_after_its_own_retry_backoff(
    client: type, kafka_bootstrap: str
) -> None:
    """kafka-python keeps the cluster metadata's wait between refreshes at 100 ms whatever
    the client is given: a new reader's first end offsets waited for it. Made here, the
    client's `retry_backoff_ms` (ours by default) is the metadata's too."""
    made = client(bootstrap_servers=kafka_bootstrap)
    given = client(bootstrap_servers=kafka_bootstrap, retry_backoff_ms=7)
    try:
        assert made._client._manager.cluster.config["retry_backoff_ms"] == RETRY_BACKOFF_MS
        assert given._client._manager.cluster.config["retry_backoff_ms"] == 7
    finally:
        made.close()
        given.close()


@pytest.mark.kafka
def test_a_producer_refreshes_its_metadata_after_our_wait_and_retries_after_its_own(
    kafka_bootstrap: str,
) -> None:
    """A producer's first record waited the 100 ms for its topic's leaders too. Its own wait
    between retries of a send stays kafka-python's (100 ms) unless it is given one."""
    made = Producer(bootstrap_servers=kafka_bootstrap)
    given = Producer(bootstrap_servers=kafka_bootstrap, retry_backoff_ms=7)
    try:
        assert made._metadata.config["retry_backoff_ms"] == RETRY_BACKOFF_MS
        assert made.config["retry_backoff_ms"] == 100
        assert given._metadata.config["retry_backoff_ms"] == 7
        assert given.config["retry_backoff_ms"] == 7
    finally:
        made.close()
        given.close()


@pytest.mark.kafka
@pytest.mark.parametrize("client", [Consumer, AdminClient, Producer])
def test_a_client_tries_a_broker_that_went_away_again_within_a_second(
    client: type, kafka_bootstrap: str
) -> None:
    """kafka-python backs its attempts to reconnect off to 30 s, and learns that a dead
    leader's partitions moved only from the metadata refresh a failed attempt asks for (see
    `RECONNECT_BACKOFF_MAX_MS`); made here, a client waits at most a second between them,
    as the Java client does, unless it is given its own."""
    made = client(bootstrap_servers=kafka_bootstrap)
    given = client(bootstrap_servers=kafka_bootstrap, reconnect_backoff_max_ms=7_000)
    try:
        assert RECONNECT_BACKOFF_MAX_MS <= 1000
        assert network(made).config["reconnect_backoff_max_ms"] == RECONNECT_BACKOFF_MAX_MS
        assert network(given).config["reconnect_backoff_max_ms"] == 7_000
    finally:
        made.close()
        given.close()


def network(client: Any) -> Any:
    """The connection manager of a client's network thread (kafka-python 3.0.12), whose
    configuration its reconnects follow."""
    net = client._sender._client if isinstance(client, Producer) else client._client
    return net._manager
