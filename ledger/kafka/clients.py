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

import contextlib
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

# Between retries and between metadata refreshes, unless a client is given its own.
RETRY_BACKOFF_MS = 20


class _ClosedIfUnreached:
    """Put before the client's class: its constructor, and on failure `_close_started`;
    then `retry_backoff_ms` given to the cluster metadata too."""

    def __init__(self, **configs: Any) -> None:
        configs.setdefault("retry_backoff_ms", RETRY_BACKOFF_MS)
        try:
            super().__init__(**configs)
        except BaseException:
            _close_started(self)
            raise
        cluster = _cluster(self)
        if cluster is not None:
            cluster.config["retry_backoff_ms"] = configs["retry_backoff_ms"]


class Consumer(_ClosedIfUnreached, KafkaConsumer):  # type: ignore[misc]
    pass


class AdminClient(_ClosedIfUnreached, KafkaAdminClient):  # type: ignore[misc]
    pass


class Producer(KafkaProducer):  # type: ignore[misc]
    """A producer whose cluster metadata waits `RETRY_BACKOFF_MS` between refreshes (or
    the `retry_backoff_ms` it is given)."""

    def __init__(self, **configs: Any) -> None:
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


def _cluster(client: Any) -> Any:
    """The cluster metadata of the client's network manager (kafka-python 3.0.12), or None
    where another version keeps it elsewhere: its clients then wait its own 100 ms again,
    slower but right (tests/test_kafka_clients.py says so)."""
    manager = getattr(getattr(client, "_client", None), "_manager", None)
    return getattr(manager, "cluster", None)


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
