"""Kafka clients that leave nothing running when no broker answers their constructor.

kafka-python 3.0.12's consumer and admin client start their network thread, then wait in
the constructor for a broker (`bootstrap_timeout_ms`); when none answers they raise and
leave that thread running, with its selector, for the life of the process. Every reader,
readiness probe and retry made during a broker outage starts a client, so a server whose
`/readyz` was asked 20 times while the broker was away held 18 more threads (11 to 29), and
a worker 3 more after 95 s. Made here, a client that cannot be made closes what it started.
The producer is not wrapped: it starts its thread only once it has reached a broker.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient


class _ClosedIfUnreached:
    """Put before the client's class: its constructor, and on failure `_close_started`."""

    def __init__(self, **configs: Any) -> None:
        try:
            super().__init__(**configs)
        except BaseException:
            _close_started(self)
            raise


class Consumer(_ClosedIfUnreached, KafkaConsumer):  # type: ignore[misc]
    pass


class AdminClient(_ClosedIfUnreached, KafkaAdminClient):  # type: ignore[misc]
    pass


def _close_started(client: Any) -> None:
    """Stop the network thread (and close the connections) of a client whose constructor
    failed after starting it."""
    network = getattr(client, "_client", None)
    if network is not None:
        network.close()
