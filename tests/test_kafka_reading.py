"""The read-to-the-end loop every Kafka-mode reader shares (`polls_to_end`), on a stand-in
consumer and clock: what is tested is the loop's own timeout, not Kafka (the real-broker
tests read through the same loop)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import TopicPartition

from ledger.kafka.reading import ReadTimedOut, polls_to_end

TP = TopicPartition("t", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowPartition:
    """One partition whose every poll takes `seconds` and brings the next of `batches`
    (record counts; 0 brings none) until its end."""

    def __init__(self, clock: Clock, end: int, batches: list[int], seconds: float) -> None:
        self.clock, self.end, self.batches, self.seconds = clock, end, list(batches), seconds
        self.at = 0

    def position(self, tp: TopicPartition) -> int:
        return self.at

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.end for tp in tps}

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.clock.now += self.seconds
        count = min(self.batches.pop(0) if self.batches else 0, self.end - self.at)
        records = list(range(self.at, self.at + count))
        self.at += count
        return {TP: records} if records else {}


def test_a_long_read_that_keeps_progressing_is_not_cut_short() -> None:
    """Ten polls of a second each against a 3 s timeout: read to the end (a total bound
    failed every read longer than it, such as `verify` of a large ledger)."""
    clock = Clock()
    consumer = SlowPartition(clock, end=100, batches=[10] * 10, seconds=1.0)
    polls = list(polls_to_end(consumer, [TP], timeout_s=3, clock=clock))
    assert consumer.at == 100 and len(polls) == 10 and clock.now == 10.0


def test_a_read_that_stops_progressing_times_out_from_its_last_progress() -> None:
    clock = Clock()
    consumer = SlowPartition(clock, end=100, batches=[10, 10, 10], seconds=1.0)
    with pytest.raises(ReadTimedOut):
        for _ in polls_to_end(consumer, [TP], timeout_s=3, clock=clock):
            pass
    assert consumer.at == 30
    assert 6.0 <= clock.now <= 7.0  # the last progress at 3 s, then 3 s without
