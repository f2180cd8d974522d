"""The Kafka clients the ledger makes (`ledger.kafka.clients`) against an address where no
broker answers: the real kafka-python clients, which start a network thread before they
wait for a broker and, failing, left it running; and, against the real broker, how soon they
refresh their metadata, and how one is made through a slow link."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from ledger.kafka.clients import (
    RECONNECT_BACKOFF_MAX_MS,
    RETRY_BACKOFF_MS,
    AdminClient,
    Consumer,
    FencedBrokers,
    Producer,
)
from ledger.kafka.reading import STEP_MS
from ledger.kafka.topics import admin_client
from tests.kafka_support import kafka_settings, made_by_hand, publish


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


def test_a_stall_check_that_fails_leaves_the_writer_s_sender_polling(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The check for hung brokers (`FencedBrokers.leave`) reads
    kafka-python's connections as 3.0.12 keeps them; when it fails, the sender's thread goes
    on (the request timeout stands), and it is said, then not checked again."""
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise AttributeError("in_flight_requests")

    def said() -> int:
        message = "left to the request timeout (AttributeError)"
        return sum(message in r.getMessage() for r in caplog.records)

    with caplog.at_level("WARNING", logger="consent_ledger.kafka"):
        producer = Producer(bootstrap_servers=kafka_bootstrap)
        try:
            monkeypatch.setattr(producer._sender._client._fenced, "leave", fails)
            deadline = time.monotonic() + 10
            while not said():
                assert time.monotonic() < deadline, "the sender's polls never checked"
                time.sleep(0.05)  # a condition poll: the sender polls on its own thread
            assert said() == 1 and len(calls) == 1  # not checked again once it failed
            assert producer._sender.is_alive()
        finally:
            producer.close()


def test_a_reader_checks_for_hung_brokers_on_its_network_thread_until_the_check_fails(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer's requests are sent by its own network thread, so its check for hung
    brokers (`FencedBrokers`) runs there, again and again; when it fails it is said once and
    not run again, and the thread goes on serving the consumer."""
    threads: list[str] = []

    def second_fails(self: FencedBrokers) -> None:
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            raise AttributeError("in_flight_requests")

    def said() -> int:
        message = "left to the request timeout (AttributeError)"
        return sum(message in r.getMessage() for r in caplog.records)

    monkeypatch.setattr(FencedBrokers, "leave", second_fails)
    with caplog.at_level("WARNING", logger="consent_ledger.kafka"):
        consumer = Consumer(bootstrap_servers=kafka_bootstrap)
        try:
            deadline = time.monotonic() + 10
            while not said():
                assert time.monotonic() < deadline, "the check was not run twice"
                time.sleep(0.05)  # a condition poll: the check runs on the network thread
            assert consumer.topics() is not None  # a round trip: the thread still serves it
            assert said() == 1 and len(threads) == 2
            assert all(name.startswith("kafka-io") for name in threads), threads
        finally:
            consumer.close()


def test_an_answer_the_check_cannot_read_stops_the_check_and_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A metadata answer taken as kafka-python 3.0.12 takes it (`FencedBrokers`); read
    otherwise by another version, the check stops, said once, rather than have
    kafka-python log the failure of every answer while a request waits."""

    class Cluster:
        def update_metadata(self, response: object) -> None:
            raise AttributeError("brokers")

    class Manager:
        cluster = Cluster()

    fenced = FencedBrokers(Manager())
    with caplog.at_level("WARNING", logger="consent_ledger.kafka"):
        for node_id in (1, 2):
            fenced._brokers_said(node_id, object())
    assert fenced.unchecked
    said = [r for r in caplog.records if "left to the request timeout" in r.getMessage()]
    assert len(said) == 1 and "AttributeError" in said[0].getMessage()


def test_a_reader_whose_check_cannot_start_is_made_all_the_same(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer's check reads kafka-python 3.0.12's network internals as it starts;
    another version keeping them otherwise must not fail the consumer's constructor (which
    would leave its network thread running): said once, the consumer is made and reads."""

    def fails(self: FencedBrokers, manager: object) -> None:
        raise AttributeError("_conns")

    monkeypatch.setattr(FencedBrokers, "__init__", fails)
    with caplog.at_level("WARNING", logger="consent_ledger.kafka"):
        consumer = Consumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.topics() is not None
    finally:
        consumer.close()
    said = [r for r in caplog.records if "left to the request timeout" in r.getMessage()]
    assert len(said) == 1 and "AttributeError" in said[0].getMessage()


def test_a_reader_closed_as_its_check_wakes_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A consumer closed while its check is due to run: kafka-python's loop runs the
    ready task as it closes, and the loop, closed, refuses the task's next sleep. That is
    the consumer's end, not a check that failed; a warning of it on stderr broke the CLI's
    own message once (`publish --wait` with no worker, CI of 2026-12-07)."""
    from types import SimpleNamespace

    from kafka.net.manager import KafkaConnectionManager
    from kafka.net.selector import NetworkSelector

    from ledger.kafka.clients import _watch_fenced_brokers

    net = NetworkSelector()
    manager = KafkaConnectionManager(net, bootstrap_servers="127.0.0.1:9")
    consumer = SimpleNamespace(_client=SimpleNamespace(_manager=manager))
    with caplog.at_level("WARNING", logger="consent_ledger.kafka"):
        _watch_fenced_brokers(consumer)
        assert net._ready, "the check is not waiting to run"
        net.close()  # runs the ready check on a closed loop
    assert [r.getMessage() for r in caplog.records] == []


def test_a_connection_whose_broker_left_the_metadata_is_closed_and_counted() -> None:
    """Of two connections with a request waiting 5 s, the one whose broker the metadata
    answer still lists is left to wait, the other closed as `BrokerFenced` (its request
    then retried by kafka-python) and counted for `/metrics`."""
    from dataclasses import dataclass, field

    from api.metrics import worker_metrics
    from ledger.kafka.clients import BrokerFenced, fenced_broker_connections_closed
    from ledger.kafka.intake import IntakeStats

    @dataclass(frozen=True)
    class Broker:
        node_id: int
        host: str
        port: int

    @dataclass
    class Connection:
        in_flight_requests: list[tuple[int, object, float]]
        closed: list[Exception] = field(default_factory=list)

        def close(self, error: Exception) -> None:
            self.closed.append(error)

    brokers = {n: Broker(n, "127.0.0.1", 9000 + n) for n in (1, 2, 3)}

    class Cluster:
        def update_metadata(self, response: object) -> None:
            pass  # the answer: brokers 1 and 2 (3 was fenced)

        def brokers(self) -> list[Broker]:
            return [brokers[1], brokers[2]]

        def broker_metadata(self, node_id: int) -> Broker | None:
            return brokers.get(node_id)

    waiting = time.monotonic() - 5
    live, hung = Connection([(7, None, waiting)]), Connection([(8, None, waiting)])

    class Manager:
        cluster = Cluster()
        _conns = {2: live, 3: hung}

    before = fenced_broker_connections_closed()
    FencedBrokers(Manager())._brokers_said(1, object())
    assert live.closed == []
    assert [type(e) for e in hung.closed] == [BrokerFenced]
    assert fenced_broker_connections_closed() == before + 1
    line = f"ledger_kafka_fenced_broker_connections_closed_total {before + 1}"
    assert line in worker_metrics(None, IntakeStats()).splitlines()


@contextmanager
def delaying_proxy(target: str, delay_s: float) -> Iterator[str]:
    """A TCP proxy to `target` that hands on every chunk `delay_s` after it came, each way,
    in order: a link whose round trip is twice that (a remote cluster, or a broker whose TLS
    and SASL handshakes a busy machine makes slow). Its address, while it runs."""
    host, port = target.rsplit(":", 1)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    address: list[str] = []

    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def take() -> None:
            while True:
                data = await reader.read(65_536)
                await queue.put((loop.time() + delay_s, data))
                if not data:
                    return

        async def give() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        await asyncio.gather(take(), give(), return_exceptions=True)

    async def link(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(carry(reader, up_writer), carry(up_reader, writer))

    async def serve() -> None:
        done.append(asyncio.Event())
        server = await asyncio.start_server(link, "127.0.0.1", 0)
        address.append(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        ready.set()
        async with server:
            await done[0].wait()
        links = asyncio.all_tasks() - {asyncio.current_task()}
        for task in links:
            task.cancel()
        await asyncio.gather(*links, return_exceptions=True)

    def run() -> None:
        loop.run_until_complete(serve())
        loop.close()

    done: list[asyncio.Event] = []
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(done[0].set)
        thread.join(10)
        assert not thread.is_alive()


@pytest.mark.kafka
def test_a_client_is_made_through_a_link_slower_than_a_step(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Each attempt to make a client starts its bootstrap over, and was cut at STEP_MS:
    through a link whose round trip is longer, a healthy broker was never reached and the
    ledger said "no Kafka broker answered" (`ledger.kafka.reading.bootstrapped`)."""
    delay_s = 0.6
    assert 2 * delay_s > STEP_MS / 1000
    with delaying_proxy(kafka_bootstrap, delay_s) as slow:
        client = admin_client(kafka_settings(tmp_path, slow))
        try:
            assert client.describe_cluster()["brokers"]
        finally:
            client.close()


@pytest.mark.kafka
def test_a_reader_whose_metadata_names_a_leader_it_does_not_list_asks_again(
    kafka_bootstrap: str,
) -> None:
    """A broker killed under the compose file's cluster leaves, for a moment, a client
    naming it as a partition's leader after the broker list it learned no longer has it
    (fenced). kafka-python 3.0.12 then raised `UnknownBrokerIdError` out of a fetch or an
    offsets question, not retried as an unready broker is: the intake writer took it for an
    outage and started over ("ledger unavailable (UnknownBrokerIdError: 3)", with two
    brokers of three up). Made here, a reader takes it as a broker not ready: it refreshes
    its metadata and asks the leader it names then."""
    topic = f"unlisted-{uuid.uuid4().hex[:8]}"
    made_by_hand(kafka_bootstrap, topic, {})
    publish(kafka_bootstrap, topic, [(None, b"one"), (None, b"two")])
    consumer = Consumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        assert consumer.end_offsets([tp], timeout_ms=10_000) == {tp: 2}
        cluster = consumer._client._manager.cluster
        unlisted = 1 + max(broker.node_id for broker in cluster.brokers())

        def name_an_unlisted_leader() -> None:
            cluster._partitions[topic][0].leader_id = unlisted
            assert cluster.leader_for_partition(tp) == unlisted
            assert cluster.broker_metadata(unlisted) is None

        name_an_unlisted_leader()
        assert consumer.beginning_offsets([tp], timeout_ms=10_000) == {tp: 0}
        name_an_unlisted_leader()
        read: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(read) < 2 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                read.extend(r.value for r in records)
        assert read == [b"one", b"two"]
    finally:
        consumer.close()


@pytest.mark.kafka
def test_a_producer_whose_metadata_names_a_leader_it_does_not_list_sends_all_the_same(
    kafka_bootstrap: str,
) -> None:
    """The same moment for the writer's producer: kafka-python 3.0.12's sender raised
    `UnknownBrokerIdError` on its own thread at every turn of its loop and asked for no
    metadata, so the record waited there (its 15 s, in a throwaway probe). Made here, the
    sender takes the leader for one not ready, refreshes, and sends to the leader it names
    then."""
    topic = f"unlisted-{uuid.uuid4().hex[:8]}"
    made_by_hand(kafka_bootstrap, topic, {})
    producer = Producer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        assert producer.send(topic, b"zero").get(timeout=10).offset == 0
        cluster = producer._metadata
        unlisted = 1 + max(broker.node_id for broker in cluster.brokers())
        cluster._partitions[topic][0].leader_id = unlisted
        assert cluster.broker_metadata(unlisted) is None
        assert producer.send(topic, b"one").get(timeout=10).offset == 1
    finally:
        producer.close(timeout=5)
