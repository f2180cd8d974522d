"""The HTTP service's writes in Kafka mode, refused at once for a few seconds after the
broker did not take one (`api.write_window`). The writer here is a stand-in that fails as
the Kafka recorder does; the cluster says the same of the real one with its quorum lost
(`tests/test_kafka_cluster.py`)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from api.write_window import WriteWindow
from ledger.envelope import Item
from ledger.kafka.recorder import AccessRefused, LedgerUnavailable
from ledger.receipt import Outcome


class Writer:
    """Fails with `failing` while it is set; counts the groups it was asked to record."""

    def __init__(self) -> None:
        self.failing: LedgerUnavailable | None = None
        self.asked = 0

    def __call__(self, items: Sequence[Item]) -> list[Outcome]:
        self.asked += 1
        if self.failing is not None:
            raise self.failing
        return []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_writes_are_refused_without_asking_for_the_window_then_asked_again() -> None:
    writer, clock = Writer(), Clock()
    window = WriteWindow(writer, 5, clock)
    assert window([]) == [] and writer.asked == 1
    writer.failing = LedgerUnavailable("the broker did not answer")
    with pytest.raises(LedgerUnavailable, match="did not answer"):
        window([])
    assert writer.asked == 2
    # Within the window: refused at once, saying so, the writer not asked.
    writer.failing = None
    clock.now += 4.9
    with pytest.raises(LedgerUnavailable, match=r"did not answer \(less than 5 s ago"):
        window([])
    assert writer.asked == 2
    # Past it: asked again, and a write taken closes the window.
    clock.now += 0.1
    assert window([]) == [] and writer.asked == 3
    assert window([]) == [] and writer.asked == 4


def test_a_write_refused_again_past_the_window_opens_it_anew_of_its_own_kind() -> None:
    writer, clock = Writer(), Clock()
    window = WriteWindow(writer, 5, clock)
    writer.failing = AccessRefused("the cluster refused the transactional id")
    with pytest.raises(AccessRefused):
        window([])
    clock.now += 6
    with pytest.raises(AccessRefused):
        window([])
    assert writer.asked == 2
    clock.now += 1
    # An ACL refused stays that (503 `kafka_access_refused`), not a broker away.
    with pytest.raises(AccessRefused, match="less than 5 s ago"):
        window([])
    assert writer.asked == 2
