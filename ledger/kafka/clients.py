"""Kafka clients that leave nothing running when no broker answers their constructor.

kafka-python 3.0.12's consumer and admin client start their network thread, then wait in
the constructor for a broker (`bootstrap_timeout_ms`); when none answers they raise and
leave that thread running, with its selector, for the life of the process. Every reader,
readiness probe and retry made during a broker outage starts a client, so a server whose
`/readyz` was asked 20 times while the broker was away held 18 more threads (11 to 29), and
a worker 3 more after 95 s. Made here, a client that cannot be made closes what it started.
The producer starts its thread only once it has reached a broker, so it needs no such
care.

They also wait less for the cluster's metadata. kafka-python documents `retry_backoff_ms`
as the wait between metadata refreshes too, but does not pass it to its cluster metadata,
which keeps a fixed 100 ms: a new client's first question about a topic (its end offsets)
waited that long for the refresh that finds the topic's leaders, after the one its
bootstrap made. Every Kafka-mode command makes several readers (the replica's catch-up,
the high watermarks, the views' reader), so each spent 0.1 s a reader in that wait (a
`consents` took 1.2 s where its work took 0.7). Forwarded here, with 20 ms as our default.
A producer's first record waited the same way for its topic's leaders (114 and 108 ms
against 32 and 27 with the wait forwarded, a throwaway script against the local broker,
2026-12-04): `Producer` forwards the wait to its metadata alone, and leaves its own wait
between retries of a send as given (kafka-python's 100 ms by default).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaConnectionError, NodeNotReadyError, UnknownBrokerIdError
from kafka.net.compat import KafkaNetClient
from kafka.net.sasl.oauth import AbstractTokenProvider

from ledger.settings import Settings, SettingsError

# Between retries and between metadata refreshes, unless a client is given its own.
RETRY_BACKOFF_MS = 20
# The longest wait between attempts to reconnect to a broker, unless a client is given its
# own: the Java client's `reconnect.backoff.max.ms`, where kafka-python's is 30 s. A client
# learns that a partition's leader moved from the metadata refresh a failed reconnect asks
# for, and kafka-python's attempts to a broker that died back off towards 30 s: a reader
# went on waiting for a dead leader after the controller had moved its partitions. A
# read_committed consumer of a 6-partition topic on the compose cluster's three brokers,
# one SIGKILLed in each run (a throwaway probe, 2026-12-06): every partition waited until
# the controller fenced the dead broker (5.8 to 10.8 s; it was in every in-sync set), and
# the last to go on did so 5.2 to 7.1 s after the first in 3 runs of 5 (1.8 and 2.6 s in
# the others) with kafka-python's back-off, 1.5 to 2.6 s after it in 7 runs of 7 with this.
RECONNECT_BACKOFF_MAX_MS = 1000

# A client's request unanswered this long has its broker looked for in the cluster's
# metadata, refreshed for it at most every `STALLED_CHECK_S` while the request waits
# (`FencedBrokers`).
STALLED_S = 2.0
STALLED_CHECK_S = 0.5

log = logging.getLogger("consent_ledger.kafka")

# Connections this process's clients closed because their broker left the cluster's
# metadata with a request waiting on it (`FencedBrokers`), for `/metrics`.
_fenced_closes = 0
_fenced_closes_lock = threading.Lock()


def fenced_broker_connections_closed() -> int:
    """How many connections this process's Kafka clients closed because their broker left
    the cluster's metadata (fenced: hung, or gone) while a request waited on them, each
    request then retried on the live brokers: a count to alert on, where the log says each
    one."""
    return _fenced_closes


# Per bootstrap list, how the clients made for it reach its brokers (`secured`).
_SECURITY: dict[str, dict[str, Any]] = {}


def secured(settings: Settings) -> str:
    """KAFKA_BOOTSTRAP, its clients' security registered: every consumer, producer and
    admin client made here for that bootstrap list then reaches the brokers as the
    settings say (TLS, SASL), without each of the places that make one, and each function
    that passes a bootstrap list on, carrying the settings too."""
    bootstrap = settings.bootstrap()
    _SECURITY[bootstrap] = security_configs(settings)
    return bootstrap


def security_configs(settings: Settings) -> dict[str, Any]:
    """kafka-python's configuration for the settings' KAFKA_SECURITY_PROTOCOL and the rest
    (its SCRAM mechanisms take the `sasl_plain_*` user and password too)."""
    configs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_ssl_cafile is not None:
        configs["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile is not None and settings.kafka_ssl_keyfile is not None:
        configs["ssl_certfile"] = str(settings.kafka_ssl_certfile)
        configs["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
    if settings.kafka_sasl_mechanism is not None:
        configs["sasl_mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_oauth_token_file is not None:
        tokens = TokenFile(settings.kafka_sasl_oauth_token_file)
        try:
            # Read once now: a file that is not there or holds no token is the operator's to
            # mend, said at once (exit 2), where each connection failed in turn until the
            # bootstrap timeout said "is the cluster up?".
            tokens.token()
        except ValueError as error:
            raise SettingsError(str(error)) from None
        configs["sasl_oauth_token_provider"] = tokens
    elif settings.kafka_sasl_mechanism is not None:
        configs["sasl_plain_username"] = settings.kafka_sasl_username
        configs["sasl_plain_password"] = settings.kafka_sasl_password
    return configs


class TokenFile(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER's access token, read from KAFKA_SASL_OAUTH_TOKEN_FILE at each connection.

    The identity provider's tokens expire (minutes to hours); whatever renews them (a
    sidecar, Kubernetes' projected service-account token) rewrites the file, and the next
    connection takes the new one: the ledger holds no OAuth client secret and speaks to no
    identity provider itself. A file that cannot be read, or holds no token, fails that
    connection with its reason, which the one-line "no Kafka broker answered" names.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def token(self) -> str:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or type(error).__name__
            raise ValueError(f"KAFKA_SASL_OAUTH_TOKEN_FILE {self.path}: {reason}") from None
        token = text.strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError(
                f"KAFKA_SASL_OAUTH_TOKEN_FILE {self.path} holds no token (one JWT, nothing else)"
            )
        return token

    def __repr__(self) -> str:  # the token is a credential: its path only
        return f"TokenFile({str(self.path)!r})"


def _with_security(configs: dict[str, Any]) -> dict[str, Any]:
    return {**_SECURITY.get(str(configs.get("bootstrap_servers")), {}), **configs}


class _BootstrapFailures(logging.Handler):
    """Why kafka-python's last bootstrap connection failed, which it logs and does not
    raise: a client refused by the brokers' SASL (a wrong password) or whose TLS did not
    trust them waited out its bootstrap timeout like one whose cluster was down, and the
    ledger said "is the cluster up?" (`ledger.kafka.topics.BrokersUnreachable`)."""

    _FAILED = re.compile(r"Bootstrap connection to \S+ failed: (.+?)(?: \(backoff [^)]*\))?$")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.recent: collections.deque[tuple[float, str]] = collections.deque(maxlen=32)

    def emit(self, record: logging.LogRecord) -> None:
        found = self._FAILED.match(record.getMessage())
        if found:
            self.recent.append((time.monotonic(), found.group(1)))


_failures = _BootstrapFailures()
logging.getLogger("kafka.net.manager").addHandler(_failures)
# What says why a broker refused the client, among the failures of a bootstrap: a refused
# SASL login alternates with the disconnects and timeouts that follow it.
_TELLING = re.compile(r"Authentication|Sasl|SSL|Handshake|Unsupported", re.IGNORECASE)


def last_bootstrap_failure(within_s: float) -> str | None:
    """Why this process's bootstrap connections failed in the last `within_s` seconds, if
    they did: the latest refusal of the login or of TLS among them, else the latest failure
    (kafka-python's words, the brokers' for a refused login; no credentials)."""
    since = time.monotonic() - within_s
    recent = [reason for at, reason in list(_failures.recent) if at >= since]
    telling = [reason for reason in recent if _TELLING.search(reason)]
    chosen = telling or recent
    return chosen[-1] if chosen else None


class _ClosedIfUnreached:
    """Put before the client's class: its constructor, and on failure `_close_started`;
    then `retry_backoff_ms` given to the cluster metadata too. A broker that went away is
    tried again at least every `RECONNECT_BACKOFF_MAX_MS`."""

    def __init__(self, **configs: Any) -> None:
        configs = _with_security(configs)
        configs.setdefault("retry_backoff_ms", RETRY_BACKOFF_MS)
        configs.setdefault("reconnect_backoff_max_ms", RECONNECT_BACKOFF_MAX_MS)
        try:
            super().__init__(**configs)
        except BaseException:
            _close_started(self)
            raise
        manager = _manager(self)
        cluster = getattr(manager, "cluster", None)
        if cluster is not None:
            cluster.config["retry_backoff_ms"] = configs["retry_backoff_ms"]
        unlisted_brokers_not_ready(manager)


class Consumer(_ClosedIfUnreached, KafkaConsumer):  # type: ignore[misc]
    """A consumer whose fetches let go of a broker the cluster fenced (`FencedBrokers`).

    Its requests are sent by the network thread kafka-python starts for it, not by a poll
    of ours, so the check runs there, as a task of that thread's loop, every
    `STALLED_CHECK_S`. Without it, a reader of the ledger topic read nothing of the
    partitions a hung broker had led for as long as the broker stayed hung, although the
    cluster had moved them and the writer appended to them: with one of the compose file's
    three brokers SIGSTOPped for 40 s under a writer appending ten facts every 0.2 s (a
    throwaway probe, 2026-12-06), the facts of its two partitions written 15 s and more into
    the hang were read 0 of 355 while it lasted, the other four partitions' within 0.2 s.
    """

    def __init__(self, **configs: Any) -> None:
        super().__init__(**configs)
        _watch_fenced_brokers(self)


class AdminClient(_ClosedIfUnreached, KafkaAdminClient):  # type: ignore[misc]
    pass


class _PacedNetClient(KafkaNetClient):  # type: ignore[misc]
    """kafka-python's network client, for a producer whose sender must not spin while the
    records it holds cannot be sent.

    The sender of kafka-python 3.0.12 polls its connections with a timeout of 0 whenever a
    broker has records ready, and for as many milliseconds as `connection_delay` says when
    the broker cannot take them yet. On the compose file's three brokers with two of them
    SIGKILLed, the writer's append waited out its 30 s for an answer with the sender's
    thread at 100% of a core (29-32 s of CPU in 30 s, in 10 runs of 15 on 2026-12-06), two
    ways: `connection_delay` gives the reconnect back-off in seconds (kafka-python's own
    metadata code multiplies it by 1000), so the wait for a broker that was down lasted at
    most a millisecond; and with records of partitions not yet added to the transaction
    (their coordinator down), the surviving broker counted as ready though none of them
    could be drained, so the sender polled with 0 some 19,000 times a second. Here the
    delay is in milliseconds (a connection being made counts one reconnect back-off), and a
    0 poll that follows no request sent since the last poll waits up to `retry_backoff_ms`
    instead: the poll still returns at once when a socket has data or a record is added
    (the producer wakes it), so a wait is only ever added to a loop that sent nothing.
    """

    def __init__(self, **configs: Any) -> None:
        super().__init__(**configs)
        unlisted_brokers_not_ready(self._manager)
        self._idle_poll_ms = float(configs.get("retry_backoff_ms", 100))
        self._sent_since_poll = True
        self._fenced = FencedBrokers(self._manager)

    def connection_delay(self, node_id: Any) -> float:
        connection = self._manager._conns.get(node_id)
        if connection is not None and connection.initializing:
            return float(self._manager.config["reconnect_backoff_ms"])
        return float(super().connection_delay(node_id)) * 1000

    def await_ready(self, node_id: Any, timeout_ms: float = 30_000) -> bool:
        """False, not `KafkaConnectionError`, for a broker that cannot be reached.

        kafka-python 3.0.12's sender asks this of the transaction coordinator before each
        transactional request, and when it raises, looks the coordinator up again but does
        not put the request back in its queue (`Sender._maybe_send_transactional_request`:
        the retry is skipped once a target was chosen; the Java client retries it): a
        commit whose coordinator was SIGKILLed under it lost its EndTxn, the sender fell
        idle, and the writer waited out its 30 s answer timeout (7 of 12 SIGKILLs of one of
        the compose file's three brokers under a writer committing ten facts at a time, in
        a throwaway probe, 2026-12-06; the write was then refused and retried). Answered
        False, the sender takes the path it takes for a coordinator not ready, which looks
        it up again and retries the request, so the commit completes once the controller
        has moved the coordinator: the longest write in the same probe 8.7 to 13.4 s, none
        refused, in 12 kills."""
        try:
            return bool(super().await_ready(node_id, timeout_ms=timeout_ms))
        except KafkaConnectionError:
            return False

    def send(self, node_id: Any, request: Any, **kwargs: Any) -> Any:
        self._sent_since_poll = True
        return super().send(node_id, request, **kwargs)

    def poll(self, timeout_ms: float | None = None, future: Any = None) -> Any:
        if timeout_ms == 0 and future is None and not self._sent_since_poll:
            timeout_ms = self._idle_poll_ms
        if future is None and (timeout_ms is None or timeout_ms > STALLED_CHECK_S * 1000):
            # The sender otherwise sleeps until its next deadline (a whole request timeout
            # while it only waits for answers), and the stalls would go unchecked.
            timeout_ms = STALLED_CHECK_S * 1000
        self._sent_since_poll = False
        polled = super().poll(timeout_ms=timeout_ms, future=future)
        self._fenced.check()  # the sender's thread drives these connections
        return polled


def unlisted_brokers_not_ready(manager: Any) -> None:
    """Make a request to a broker the client's metadata no longer lists fail as one to a
    broker not ready yet, which kafka-python retries once it has refreshed its metadata.

    A broker killed under a cluster leaves a client, for a moment, naming it as a
    partition's leader after the list of brokers it learned last no longer has it (the
    controller fenced it): the client's offsets questions are sent on tasks of its network
    loop, each to the leader named when they were grouped, and a metadata refresh between
    the two is enough. kafka-python 3.0.12 then raises `UnknownBrokerIdError` from its
    connection manager, which it takes for a fatal error, where the Java client asks the
    metadata again. Out of a consumer's `beginning_offsets`, `end_offsets` or poll it
    reaches the caller: the intake writer took it for an outage and started over ("ledger
    unavailable (UnknownBrokerIdError: UnknownBrokerIdError: 3), retrying", in the compose
    cluster's test with one broker of three killed, 2026-12-07). A producer's sender raised
    it at every turn of its loop without asking for the metadata, and the record waited.
    Here the manager's `get_connection` raises `NodeNotReadyError` for it instead, as it
    does itself for a broker backing off, and asks for the metadata
    (`tests/test_kafka_clients.py` makes the moment with a real broker). Where another
    version keeps no such manager, nothing is changed.
    """
    get_connection = getattr(manager, "get_connection", None)
    cluster = getattr(manager, "cluster", None)
    if get_connection is None or cluster is None:
        return

    def connection(node_id: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return get_connection(node_id, *args, **kwargs)
        except UnknownBrokerIdError as error:
            cluster.request_update()
            raise NodeNotReadyError(
                f"broker {node_id} is not in the cluster's metadata; asking it again"
            ) from error

    manager.get_connection = connection


class FencedBrokers:
    """Fails the requests of one client that wait on a broker the cluster no longer lists.

    A broker that hangs (a stopped process, a frozen VM, a stalled disk) keeps its
    connections open and answers nothing. The controller fences it once its heartbeats
    stop (`broker.session.timeout.ms`, 9 s by default) and moves its partitions and
    transaction coordinators to live brokers, but a request already sent to it waits
    out the request timeout (30 s), after which kafka-python closes the connection,
    refreshes its metadata and retries elsewhere; and its metadata refresh itself may
    be the request waiting, when it went to the hung broker. With one of the compose
    file's three brokers SIGSTOPped for 25 s under a writer committing ten facts at a
    time (a throwaway probe, 2026-12-06), a produce request sent to it waited the whole
    25 s.

    Here, on the thread that drives the client's connections (a producer's sender, a
    consumer's network thread), while a request has gone unanswered for `STALLED_S`, every
    `STALLED_CHECK_S` each broker it is not waiting on (a broker answers a connection's
    requests in turn) is asked for the cluster's metadata, and each answer is taken as
    kafka-python's own refresh would take it (so the client also learns the partitions'
    new leaders at once). Once an answer no longer lists the broker of a waiting request
    (fenced brokers are left out of it), that connection is closed as a lost connection
    (`BrokerFenced`), on which a consumer fetches from the partitions' new leaders, and a
    producer retries: its produce requests (idempotent), and a transactional request
    once it has looked the coordinator up again. Not as a request timeout: kafka-python
    3.0.12 retries a produce request that timed out but fails the transaction of a
    transactional one ("for unknown reasons"; the Java client retries both), so a commit
    whose coordinator hung was refused at the timeout even when the controller had moved
    the coordinator long before. A consumer's fetch waited the same way (`Consumer`).
    """

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._checked_at = 0.0
        self.unchecked = False  # set once the check failed (`check`)
        self._asking: set[Any] = set()  # brokers asked for the metadata, not answered yet

    def check(self) -> None:
        """`leave`, at most every `STALLED_CHECK_S`, on the thread that drives the client's
        connections; said once and not done again if it fails."""
        if self.unchecked:
            return
        try:
            self.leave()
        except Exception as error:
            # It reads kafka-python's connections as 3.0.12 keeps them; another version
            # must not have the client's thread die of it: its request timeout stands.
            self.unchecked = True
            _unchecked(error)

    def leave(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < STALLED_CHECK_S:
            return
        self._checked_at = now
        # kafka-python 3.0.12's own; where another keeps them otherwise, `check` says so once.
        manager = self._manager
        stalled = _stalled(manager, now)
        if not stalled:
            return
        cluster = manager.cluster
        suspects = {_address(cluster, node_id) for node_id in stalled}
        for broker in cluster.brokers():
            # Connected or not: once a hung broker was let go of, its partitions' leaders
            # moved to the others, and those this client had no connection to lead nothing
            # it writes; all it was connected to could be waiting then (a throwaway probe
            # had every connection waiting for 25 s, and no broker asked).
            if broker.node_id in self._asking or (broker.host, broker.port) in suspects:
                continue
            self._asking.add(broker.node_id)
            asked = manager.send(cluster.metadata_request(), node_id=broker.node_id)
            asked.add_callback(self._brokers_said, broker.node_id)
            asked.add_errback(lambda _error, node_id=broker.node_id: self._asking.discard(node_id))

    def _brokers_said(self, node_id: Any, response: Any) -> None:
        self._asking.discard(node_id)
        if self.unchecked:
            return
        try:
            self._leave_unlisted(response)
        except Exception as error:
            # As in `check`: called back by kafka-python, which would log the failure of
            # each answer, every `STALLED_CHECK_S` while a request waits.
            self.unchecked = True
            _unchecked(error)

    def _leave_unlisted(self, response: Any) -> None:
        manager = self._manager
        cluster = manager.cluster
        cluster.update_metadata(response)
        live = {(broker.host, broker.port) for broker in cluster.brokers()}
        if not live:
            return
        now = time.monotonic()
        for stalled_id, waited_s in _stalled(manager, now).items():
            # A broker the metadata no longer names at all (its node id) is unknown here.
            address = _address(cluster, stalled_id)
            conn = manager._conns.get(stalled_id)
            if address in live or conn is None:
                continue
            log.warning(
                "Kafka broker %s left the cluster's metadata (fenced) with a request "
                "unanswered for %.1f s; retrying it on the live brokers",
                stalled_id if address is None else f"{address[0]}:{address[1]}",
                waited_s,
                extra={"error": "BrokerFenced"},
            )
            conn.close(
                BrokerFenced(f"no answer in {waited_s:.1f} s from a broker the cluster fenced")
            )
            _count_fenced_close()


class BrokerFenced(KafkaConnectionError):  # type: ignore[misc]
    """A connection closed because its broker left the cluster's metadata while a request
    waited on it (`FencedBrokers`)."""


def _count_fenced_close() -> None:
    global _fenced_closes
    with _fenced_closes_lock:  # clients' network threads close side by side
        _fenced_closes += 1


def _unchecked(error: Exception) -> None:
    log.warning(
        "hung Kafka brokers are left to the request timeout (%s)",
        type(error).__name__,
        extra={"error": type(error).__name__},
    )


def _watch_fenced_brokers(consumer: KafkaConsumer) -> None:
    """`FencedBrokers.check` every `STALLED_CHECK_S`, as a task of the loop of the
    consumer's network thread (kafka-python 3.0.12's; where it is otherwise, said once,
    and the consumer, made all the same, is left to its request timeout). The task ends
    with the loop, as the consumer closes."""
    try:
        manager = consumer._client._manager
        net = manager._net
        fenced = FencedBrokers(manager)

        async def every_check() -> None:
            try:
                while not fenced.unchecked:
                    await net.sleep(STALLED_CHECK_S)
                    if _closing(net):
                        return
                    fenced.check()
            except Exception as error:  # the loop's own sleep, say: never its thread's end
                # A loop closing runs the tasks ready then and refuses their next sleep
                # (`RuntimeError`): the consumer's end, not a check that failed.
                if not _closing(net):
                    _unchecked(error)

        manager.call_soon(every_check)
    except Exception as error:
        _unchecked(error)


def _closing(net: Any) -> bool:
    """Whether kafka-python 3.0.12's loop was closed (its consumer closing)."""
    return bool(getattr(net, "_closed", False))


def _stalled(manager: Any, now: float) -> dict[Any, float]:
    """The connections with a request unanswered for `STALLED_S`, and for how long."""
    return {
        node_id: now - conn.in_flight_requests[0][2]
        for node_id, conn in list(manager._conns.items())
        if conn.in_flight_requests and now - conn.in_flight_requests[0][2] >= STALLED_S
    }


def _address(cluster: Any, node_id: Any) -> tuple[str, int] | None:
    """The broker's host and port (a coordinator's connection has a node id of its own)."""
    broker = cluster.broker_metadata(node_id)
    return None if broker is None else (broker.host, broker.port)


class Producer(KafkaProducer):  # type: ignore[misc]
    """A producer whose cluster metadata waits `RETRY_BACKOFF_MS` between refreshes (or
    the `retry_backoff_ms` it is given), which tries a broker that went away again at least
    every `RECONNECT_BACKOFF_MAX_MS`, and whose sender does not spin while a broker it has
    records for is down (`_PacedNetClient`)."""

    def __init__(self, **configs: Any) -> None:
        configs = _with_security(configs)
        configs.setdefault("kafka_client", _PacedNetClient)
        configs.setdefault("reconnect_backoff_max_ms", RECONNECT_BACKOFF_MAX_MS)
        super().__init__(**configs)
        config = getattr(getattr(self, "_metadata", None), "config", None)
        if isinstance(config, dict):  # kafka-python 3.0.12 keeps it there
            config["retry_backoff_ms"] = configs.get("retry_backoff_ms", RETRY_BACKOFF_MS)


def _close_started(client: Any) -> None:
    """Stop the network thread (and close the connections) of a client whose constructor
    failed after starting it."""
    network = getattr(client, "_client", None)
    if network is not None:
        network.close()


def _manager(client: Any) -> Any:
    """The client's network manager (kafka-python 3.0.12), or None where another version
    keeps it elsewhere: its cluster metadata then waits its own 100 ms again, slower but
    right (tests/test_kafka_clients.py says so), and an unlisted broker stays its error."""
    return getattr(getattr(client, "_client", None), "_manager", None)


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close a producer, its network thread included, however its broker is doing.

    kafka-python 3.0.12's `close` first flushes, and a flush that times out (records unsent,
    their broker away) raises before the network thread is force-closed: each producer the
    writer let go in an outage kept its thread, and a transaction's commit waiting on it,
    for the life of the process. When the close fails, the network thread is force-closed
    (which fails what it held) and the close made again; where another version keeps that
    thread elsewhere, the failed close is all there is.
    """
    try:
        producer.close(timeout=timeout_s)
    except Exception:
        sender = getattr(producer, "_sender", None)
        if sender is not None and hasattr(sender, "force_close"):
            sender.force_close()
            with contextlib.suppress(Exception):
                producer.close(timeout=0)
