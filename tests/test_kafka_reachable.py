"""Whether the brokers are away (`ledger.kafka.reachable`), probed on real sockets: refused
(a port bound, not listened on), taken (a port listened on), and an unknown host name."""

from __future__ import annotations

import socket

from ledger.kafka import reachable
from ledger.kafka.reachable import BrokerWatch, addresses, refused


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_addresses_of_a_bootstrap_list() -> None:
    assert addresses("kafka-1:9092, kafka-2:9093") == [("kafka-1", 9092), ("kafka-2", 9093)]
    assert addresses("[::1]:9092,10.0.0.7:19092,") == [("::1", 9092), ("10.0.0.7", 19092)]
    assert addresses("kafka-1") == [("kafka-1", 9092)]  # kafka-python's default port
    # An address in any other form: no addresses, and a watch that never says "away".
    for unclear in ("::1", "kafka-1:x", ":9092", "kafka-1:9092,[::1]"):
        assert addresses(unclear) == []
        assert not BrokerWatch(unclear)()


def test_a_port_listened_on_is_not_refused_one_bound_only_and_an_unknown_host_are() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = ("127.0.0.1", s.getsockname()[1])
        assert refused(address)
        s.listen()
        assert not refused(address)
    assert refused(("no-such-broker.invalid", 9092))


def test_the_brokers_are_away_once_every_address_refused_for_the_whole_time() -> None:
    clock = Clock()
    with socket.socket() as up, socket.socket() as down:
        up.bind(("127.0.0.1", 0))
        down.bind(("127.0.0.1", 0))
        up.listen()
        both = f"127.0.0.1:{up.getsockname()[1]},127.0.0.1:{down.getsockname()[1]}"
        one = f"127.0.0.1:{down.getsockname()[1]}"
        # One address of two takes connections: never away, however long.
        watch = BrokerWatch(both, clock=clock)
        for _ in range(10):
            assert not watch()
            clock.now += reachable.REFUSED_FOR_S
        # Every address refuses: away once that has lasted REFUSED_FOR_S, not before.
        watch = BrokerWatch(one, clock=clock)
        assert not watch()
        clock.now += reachable.REFUSED_FOR_S - 0.1
        assert not watch()
        clock.now += 0.1
        assert watch()
        # A broker that comes back starts the count again.
        down.listen()
        clock.now += reachable.PROBE_EVERY_S
        assert not watch()
        clock.now += reachable.REFUSED_FOR_S
        assert not watch()


def test_a_watch_asked_often_probes_at_most_once_a_second() -> None:
    clock = Clock()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        watch = BrokerWatch(f"127.0.0.1:{s.getsockname()[1]}", clock=clock)

        def probes() -> int:
            taken = 0
            s.settimeout(0.2)
            while True:
                try:
                    s.accept()[0].close()
                except TimeoutError:
                    return taken
                taken += 1

        watch()
        assert probes() == 1
        for _ in range(5):
            clock.now += reachable.PROBE_EVERY_S / 10
            watch()
        assert probes() == 0
        clock.now += reachable.PROBE_EVERY_S
        watch()
        assert probes() == 1
