"""The read-to-the-end loop every Kafka-mode reader shares (`polls_to_end`), on a stand-in
consumer and clock: what is tested is the loop's own timeout, not Kafka (the real-broker
tests read through the same loop). The last test asks the real broker for a partition it
does not have, which it never answers."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError

from ledger.kafka.reading import (
    ANSWER_TIMEOUT_S,
    MAX_BOOTSTRAP_STEP_MS,
    STEP_MS,
    ReadStopped,
    ReadTimedOut,
    answered,
    bootstrapped,
    polls_to_end,
)
from tests.kafka_support import Stopping

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

    def position(self, tp: TopicPartition, timeout_ms: int) -> int:
        return self.at

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
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


class Unanswered(SlowPartition):
    """A broker gone: each question waits its whole timeout, then times out (end offsets)
    or comes back without an answer (a position not yet known)."""

    def position(self, tp: TopicPartition, timeout_ms: int) -> Any:
        self.clock.now += timeout_ms / 1000
        return None

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        self.clock.now += timeout_ms / 1000
        raise KafkaTimeoutError("no answer")


@pytest.mark.parametrize("known_end", [False, True])
def test_a_broker_that_does_not_answer_times_out_a_step_at_a_time(known_end: bool) -> None:
    """End offsets (when not given) and positions are asked a step at a time: each question
    is bounded, the read as a whole by its timeout; kafka-python's own position() waits for
    ever by default."""
    clock = Clock()
    consumer = Unanswered(clock, end=100, batches=[], seconds=1.0)
    end = {TP: 100} if known_end else None
    with pytest.raises(ReadTimedOut):
        list(polls_to_end(consumer, [TP], timeout_s=10, end=end, clock=clock))
    assert 10.0 < clock.now <= 10.0 + STEP_MS / 1000


def test_one_question_waits_no_longer_than_a_broker_has_to_answer() -> None:
    """However long the read may go without progress (the views' 120 s), a question the
    broker never answers ends at ANSWER_TIMEOUT_S: an HTTP question whose views could not
    reach the broker waited the whole 120 s."""
    clock = Clock()
    consumer = Unanswered(clock, end=100, batches=[], seconds=1.0)
    with pytest.raises(ReadTimedOut):
        list(polls_to_end(consumer, [TP], timeout_s=120, clock=clock))
    assert ANSWER_TIMEOUT_S < clock.now <= ANSWER_TIMEOUT_S + STEP_MS / 1000
    clock.now = 0.0
    with pytest.raises(ReadTimedOut):
        answered(lambda ms: consumer.position(TP, ms), timeout_s=120, clock=clock)
    assert ANSWER_TIMEOUT_S < clock.now <= ANSWER_TIMEOUT_S + STEP_MS / 1000


@pytest.mark.parametrize("known_end", [False, True])
def test_a_read_of_a_broker_that_does_not_answer_ends_when_its_process_stops(
    known_end: bool,
) -> None:
    """A worker stopped with SIGTERM while its broker was away waited for the projections'
    read (kafka-python's 30 s request timeout, each time): now within a step."""
    clock = Clock()
    consumer = Unanswered(clock, end=100, batches=[], seconds=1.0)
    stopping = Stopping(after=3)
    end = {TP: 100} if known_end else None
    with pytest.raises(ReadStopped):
        list(polls_to_end(consumer, [TP], timeout_s=120, end=end, clock=clock, stopping=stopping))
    assert stopping.asked == 3 and clock.now == 2 * STEP_MS / 1000


def test_stopping_ends_a_read_that_is_progressing() -> None:
    clock = Clock()
    consumer = SlowPartition(clock, end=100, batches=[10] * 10, seconds=1.0)
    # Asked before the end offsets, the two positions before polling, the first poll and
    # the position after it: stopped there.
    stopping = Stopping(after=5)
    with pytest.raises(ReadStopped):
        for _ in polls_to_end(consumer, [TP], timeout_s=3, clock=clock, stopping=stopping):
            pass
    assert consumer.at == 10


@pytest.mark.kafka
def test_a_partition_the_broker_does_not_have_is_asked_until_the_read_stops(
    kafka_bootstrap: str,
) -> None:
    """The real client against the real broker: the question is asked again a step at a
    time (the read would otherwise wait out kafka-python's 30 s request timeout)."""
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    missing = TopicPartition("no-such-topic", 0)
    consumer.assign([missing])
    stopping = Stopping(after=3)
    try:
        with pytest.raises(ReadStopped):
            list(polls_to_end(consumer, [missing], timeout_s=120, stopping=stopping))
    finally:
        consumer.close()
    assert stopping.asked == 3


class SlowBootstrap:
    """A client's constructor whose bootstrap takes `seconds` each attempt (each starts
    over): it times out when given less, as kafka-python's does."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds
        self.given: list[int] = []

    def __call__(self, ms: int) -> str:
        self.given.append(ms)
        if ms / 1000 < self.seconds:
            self.clock.now += ms / 1000
            raise KafkaTimeoutError("bootstrap timed out")
        self.clock.now += self.seconds
        return "client"


class Watch:
    """A broker watch that says whether every address refuses, and never that they are
    away."""

    def __init__(self, refusing: bool) -> None:
        self.refusing = refusing

    def __call__(self) -> bool:
        return False


def made(make: SlowBootstrap, clock: Clock, watch: Watch, timeout_s: float = 60) -> Any:
    return bootstrapped(make, timeout_s=timeout_s, clock=clock, away=watch)


def test_a_bootstrap_slower_than_a_step_is_given_longer_each_attempt() -> None:
    """Each attempt to make a client starts over; with each cut at STEP_MS, one whose
    handshakes took 2.5 s never completed, the cluster healthy."""
    clock = Clock()
    make = SlowBootstrap(clock, seconds=2.5)
    assert made(make, clock, Watch(refusing=False)) == "client"
    assert make.given == [STEP_MS, 2 * STEP_MS, 4 * STEP_MS]
    # No longer than MAX_BOOTSTRAP_STEP_MS at a time, so a stop is seen within it.
    clock.now = 0.0
    never_done = SlowBootstrap(clock, seconds=60)
    with pytest.raises(ReadTimedOut):
        made(never_done, clock, Watch(refusing=False), timeout_s=20)
    assert max(never_done.given) == MAX_BOOTSTRAP_STEP_MS
    # Never past the deadline by more than a step of the usual length.
    assert clock.now <= 20 + STEP_MS / 1000
    # A plain question keeps its step: asking it again does not start anything over.
    clock.now = 0.0
    plain = SlowBootstrap(clock, seconds=2.5)
    with pytest.raises(ReadTimedOut):
        answered(plain, timeout_s=5, clock=clock)
    assert set(plain.given) == {STEP_MS}


def test_a_bootstrap_whose_addresses_refuse_keeps_short_steps() -> None:
    """Nothing is slow where nothing listens: the stop and the watch are asked each second."""
    clock = Clock()
    make = SlowBootstrap(clock, seconds=60)
    with pytest.raises(ReadTimedOut):
        made(make, clock, Watch(refusing=True), timeout_s=5)
    assert set(make.given) == {STEP_MS}
