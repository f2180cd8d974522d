"""Whether the brokers are away: refused for seconds, not waited for to the answer timeout.

A client that gets no answer cannot tell a slow broker from an absent one, so every question
waits up to `reading.ANSWER_TIMEOUT_S` (30 s) for its answer. When a broker is not running
at all, its host says so at once: a connection to its port is refused. During an outage the
HTTP service answered its first question after 30 s and a publish after kafka-python's 60 s
metadata wait, past many callers' own timeouts, where the host had said from the first
second that nothing was there. A `BrokerWatch` is asked each time a question goes
unanswered: once every bootstrap address has refused connections for `REFUSED_FOR_S`, the
broker is taken to be away and the question ends (503, exit 6: retry). An address that
accepts the connection, or lets it time out, may be a slow broker: the answer timeout
stands.

The watch looks at the bootstrap addresses only (`KAFKA_BOOTSTRAP`, which should list every
broker): it opens a TCP connection and closes it, no Kafka request, at most once a second.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable

# How long every bootstrap address must have refused before the brokers count as away: a
# broker restarting (its port closed for a few seconds) is waited for, as before.
REFUSED_FOR_S = 5.0
# How long one probe waits to connect: one that times out says nothing (a slow broker, or a
# firewall dropping packets), so it is short.
PROBE_TIMEOUT_S = 0.5
# Probes are made at most this often, however often the watch is asked.
PROBE_EVERY_S = 1.0

# Answers of a host that has nothing to connect to, as opposed to one that is slow to say.
_NOTHING_THERE = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}


def addresses(bootstrap: str) -> list[tuple[str, int]]:
    """The host and port of each address of a bootstrap list (`host:port`, `[v6]:port`, or
    `host` for kafka-python's default port 9092); none at all if any address is in another
    form, so that a watch that cannot tell where to look never says the brokers are away."""
    found = []
    for entry in filter(None, (e.strip() for e in bootstrap.split(","))):
        if entry.startswith("["):
            host, _, port = entry[1:].partition("]:")
        elif entry.count(":") == 1:
            host, _, port = entry.partition(":")
        elif ":" not in entry:
            host, port = entry, "9092"
        else:  # a bare IPv6 address: its port cannot be told from its last group
            return []
        if not host or not port.isdigit():
            return []
        found.append((host, int(port)))
    return found


def refused(address: tuple[str, int]) -> bool:
    """Whether a connection to the address is refused now (or its name is unknown, or its
    network unreachable): there is no broker to wait for."""
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
            return False
    except socket.gaierror:
        return True
    except OSError as error:
        return error.errno in _NOTHING_THERE


class BrokerWatch:
    """Asked after a question to the broker went unanswered: True once every bootstrap
    address has refused connections for `REFUSED_FOR_S` (an accepted connection starts the
    count again)."""

    def __init__(self, bootstrap: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.addresses = addresses(bootstrap)
        self.clock = clock
        self._refused_since: float | None = None
        self._probed_at: float | None = None

    @property
    def refusing(self) -> bool:
        """Whether every address refused connections when last probed."""
        return self._refused_since is not None

    def __call__(self) -> bool:
        if not self.addresses:
            return False
        now = self.clock()
        if self._probed_at is None or now - self._probed_at >= PROBE_EVERY_S:
            self._probed_at = now
            if all(refused(address) for address in self.addresses):
                if self._refused_since is None:
                    self._refused_since = now
            else:
                self._refused_since = None
        return self._refused_since is not None and now - self._refused_since >= REFUSED_FOR_S
