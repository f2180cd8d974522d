"""Reading a topic up to where it ends now, the one loop every Kafka-mode reader shares.

"The end" is the end offset the consumer's isolation level gives (for read_committed, the
last stable offset) when reading starts, once it has reached the high watermark of that
moment (`settled_ends`); records committed later are left for next time.
Offsets have gaps (transaction markers, aborted records), so progress is the consumer's
position, never a record's offset plus one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from eventsourcing.persistence import StoredEvent
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from ledger.kafka.clients import Consumer
from ledger.kafka.records import NotALedgerRecord, decode
from ledger.recorder import FactKey

log = logging.getLogger("consent_ledger.kafka")


class ReadTimedOut(TimeoutError):
    """A read of a topic to its end made no progress for its timeout (the broker is slow or
    unreachable)."""


class BrokerAway(ReadTimedOut):
    """Every bootstrap address refused connections while a question went unanswered
    (`ledger.kafka.reachable`): no broker is running there to wait for."""


class ReadStopped(ReadTimedOut):
    """The reader's process is stopping: the read ended before the topic's end, as one cut
    short by a broker would (what was applied before stays applied)."""


def never() -> bool:
    """A process that is not stopping: the default of every `stopping`."""
    return False


T = TypeVar("T")

# How long one call to the broker may wait before the reader looks at its clock and at
# whether it is stopping.
STEP_MS = 1000
# The longest one attempt to make a client may wait for its bootstrap (`bootstrapped`):
# the stop is seen within it, and a supervisor's SIGTERM ends a waiting worker in time.
MAX_BOOTSTRAP_STEP_MS = 4000
# How long the broker has to answer one question (a client's first contact, end offsets, a
# position) however long the read may go on without progress: kafka-python's own request
# timeout, which bounded these before they were asked a step at a time. An HTTP question
# whose views could not reach the broker waited the reader's whole 120 s without it.
ANSWER_TIMEOUT_S = 30.0
# How long one poll of a read to the end may wait for records (`polls_to_end`). A poll
# that fetches only a transaction's commit marker gets no records and waits its whole
# timeout, though the position has moved past it. That is every catch-up of a replica the
# writer shares: the writer records its positions after its last record, before the
# marker. With 50 ms, that poll took 51 ms of each fact `publish --wait` answered, with
# 5 ms, 5-7 ms (2026-12-04, bench/RESULTS.md); a read that waits for records asks more often.
POLL_MS = 5
# How long a read waits for the transactions under the high watermark to end before it
# reads to where the committed records end then (`settled_ends`), and the pause between
# its questions.
SETTLE_S = 2.0
SETTLE_PAUSE_S = 0.005
# Why a read ended when the broker was found away (`BrokerAway`).
REFUSED = "the broker refused connections: none is running at the bootstrap addresses"


def polls_to_end(
    consumer: KafkaConsumer,
    partitions: Sequence[TopicPartition],
    *,
    timeout_s: float,
    max_records: int = 5000,
    end: dict[TopicPartition, int] | None = None,
    clock: Callable[[], float] = time.monotonic,
    stopping: Callable[[], bool] = never,
    away: Callable[[], bool] = never,
) -> Iterator[dict[TopicPartition, list[Any]]]:
    """Poll from the consumer's current positions until each partition reaches its end
    (`end`, when the caller already asked for it).

    `timeout_s` bounds the time without progress, not the whole read: a total bound failed
    every read longer than it however well the broker answered, so that `verify` (300 s)
    could never check a ledger of several million facts, and a replica built afresh for a
    read command took several runs (`ReadTimedOut` is answered "unavailable, retry").
    Every call to the broker waits at most `STEP_MS`, so `stopping` (checked between) ends
    the read within about a second: the worker's projections, stopped with SIGTERM while
    the broker was away, held the worker for up to kafka-python's 30 s request timeout.
    `away` (a `BrokerWatch`) is asked whenever a step brings nothing: a broker gone for good
    ends the read within seconds of it, not at the timeout (`BrokerAway`).
    """
    if end is None:
        end = end_offsets(
            consumer, partitions, timeout_s=timeout_s, stopping=stopping, clock=clock, away=away
        )
    deadline = clock() + timeout_s

    def position(tp: TopicPartition) -> int:
        return int(
            _answered(
                lambda ms: consumer.position(tp, timeout_ms=ms), deadline, stopping, clock, away
            )
        )

    pending = [tp for tp in partitions if position(tp) < end[tp]]
    read = sum(position(tp) for tp in pending)
    while pending:
        if stopping():
            raise ReadStopped("the read was stopped")
        if clock() > deadline:
            raise ReadTimedOut("the topic could not be read to its end")
        # A short poll: kafka-python's poll waits its whole timeout unless records come,
        # even once the position has passed the end. A partition whose last records are
        # a transaction's commit marker has none to give, and every read command in
        # Kafka mode waited 0.5 s on it (a `consents` after a `record`).
        yield consumer.poll(timeout_ms=POLL_MS, max_records=max_records)
        positions = {tp: position(tp) for tp in pending}
        if sum(positions.values()) > read:
            deadline = clock() + timeout_s
        elif away():
            raise BrokerAway(REFUSED)
        pending = [tp for tp in pending if positions[tp] < end[tp]]
        read = sum(positions[tp] for tp in pending)


def end_offsets(
    consumer: KafkaConsumer,
    partitions: Sequence[TopicPartition],
    *,
    timeout_s: float,
    stopping: Callable[[], bool] = never,
    clock: Callable[[], float] = time.monotonic,
    away: Callable[[], bool] = never,
) -> dict[TopicPartition, int]:
    """The partitions' end offsets, asked a step at a time for up to `timeout_s`."""
    return dict(
        answered(
            lambda ms: consumer.end_offsets(list(partitions), timeout_ms=ms),
            timeout_s=timeout_s,
            stopping=stopping,
            clock=clock,
            away=away,
        )
    )


def high_watermarks(
    bootstrap: str,
    partitions: Sequence[TopicPartition],
    *,
    timeout_s: float,
    stopping: Callable[[], bool] = never,
    away: Callable[[], bool] = never,
    kept: KeptReaders | None = None,
) -> dict[TopicPartition, int]:
    """Where the partitions end for any reader (the high watermark), asked by a
    read_uncommitted consumer (`kept`'s, or one made for it): kafka-python asks end offsets
    at the consumer's own isolation level, so a read_committed one learns only the last
    stable offset."""
    if kept is not None:
        consumer = kept.uncommitted(timeout_s=timeout_s, stopping=stopping, away=away)
        return end_offsets(consumer, partitions, timeout_s=timeout_s, stopping=stopping, away=away)
    consumer = reader(
        bootstrap,
        "consent-ledger-high-watermarks",
        timeout_s=timeout_s,
        stopping=stopping,
        away=away,
        committed=False,
    )
    try:
        return end_offsets(consumer, partitions, timeout_s=timeout_s, stopping=stopping, away=away)
    finally:
        consumer.close()


class KeptReaders:
    """A read_committed and a read_uncommitted consumer of no group, each made when first
    asked and kept until `close`, for a process that reads the same topics to their ends
    again and again.

    Made for each read, the two a replica's catch-up needs took about 100 ms of the 170 ms
    that `publish --wait` took to answer a fact of a pipe (2026-12-04): a connection, the
    cluster's metadata and the partitions' leaders, each time. A reader that keeps them must
    `close` them after a read that failed, so that the next read starts afresh.

    Kept through a `publish --wait` of 200,000 facts whose replica read them all, the
    process peaked 30 MB higher than with consumers made per batch (110 against 80 MB; at
    100,000 facts 81-86 against 70-71), in memory outside Python's allocator (tracemalloc's
    peak: 22 MiB); made again every 10,000 records read, 98 and 109 MB. So `publish` keeps
    them for small batches only, where making them was most of a fact's answer.
    """

    def __init__(self, bootstrap: str, client_id: str) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._made: dict[bool, KafkaConsumer] = {}

    def committed(
        self,
        *,
        timeout_s: float,
        stopping: Callable[[], bool] = never,
        away: Callable[[], bool] = never,
    ) -> KafkaConsumer:
        return self._consumer(True, timeout_s, stopping, away)

    def uncommitted(
        self,
        *,
        timeout_s: float,
        stopping: Callable[[], bool] = never,
        away: Callable[[], bool] = never,
    ) -> KafkaConsumer:
        return self._consumer(False, timeout_s, stopping, away)

    def _consumer(
        self,
        committed: bool,
        timeout_s: float,
        stopping: Callable[[], bool],
        away: Callable[[], bool],
    ) -> KafkaConsumer:
        consumer = self._made.get(committed)
        if consumer is None:
            consumer = self._made[committed] = reader(
                self._bootstrap,
                self._client_id,
                timeout_s=timeout_s,
                stopping=stopping,
                away=away,
                committed=committed,
            )
        return consumer

    def close(self) -> None:
        made, self._made = self._made, {}
        for consumer in made.values():
            consumer.close()


def settled_ends(
    consumer: KafkaConsumer,
    partitions: Sequence[TopicPartition],
    high: Mapping[TopicPartition, int],
    *,
    timeout_s: float,
    stopping: Callable[[], bool] = never,
    away: Callable[[], bool] = never,
    settle_s: float = SETTLE_S,
    pause: Callable[[], None] = lambda: time.sleep(SETTLE_PAUSE_S),
    clock: Callable[[], float] = time.monotonic,
) -> dict[TopicPartition, int]:
    """The read_committed consumer's end offsets once each has reached `high` (the high
    watermarks asked before), or as they stand after `settle_s`.

    A transaction's commit returns before its markers reach its partitions, and until they
    do the last stable offset stands short of its records. A process that read right after
    another's receipt missed the fact it named: a replica built afresh had no such subject,
    and `publish` answered "no outcome was found" for a fact the writer had taken (its
    rejections, on the rejected topic, likewise). Waiting for the high watermark of the
    moment the read began takes in every transaction committed before it. A transaction
    still open then is waited for `settle_s` at most: a writer that died in one holds the
    last stable offset until the broker aborts it, and its records were never committed
    (`_held_at`).
    """
    cluster = str(consumer.config.get("bootstrap_servers"))
    deadline = clock() + settle_s
    while True:
        ends = end_offsets(
            consumer, partitions, timeout_s=timeout_s, stopping=stopping, clock=clock, away=away
        )
        short = [tp for tp in partitions if ends[tp] < high.get(tp, 0)]
        for tp in set(partitions) - set(short):
            _held_at.pop((cluster, tp), None)
        if all(_held_at.get((cluster, tp)) == ends[tp] for tp in short):
            return ends  # settled, or held where a wait already ended in vain
        if clock() >= deadline:
            _held_at.update({(cluster, tp): ends[tp] for tp in short})
            return ends
        if stopping():
            raise ReadStopped("the read was stopped")
        pause()


# Where a partition's last stable offset stood when a read's wait for it ended in vain (a
# transaction left open: a writer that died in it), by cluster and partition. Until it
# moves, nothing committed after that transaction can be read however long one waits, so
# the process's next reads do not wait again: a command's replica catch-up and its views
# each waited the whole settle time, `verify` twice.
_held_at: dict[tuple[str, TopicPartition], int] = {}


def committed_offsets(
    consumer: KafkaConsumer, partitions: Sequence[TopicPartition], ms: int
) -> dict[TopicPartition, int | None] | None:
    """The consumer's group's committed offsets (None for a partition with none), or None
    if the broker did not answer within `ms`: an `ask` for `answered`. kafka-python's
    `committed` has no bound of its own, and raises a refused connection out at once; that
    is no answer either (the watch says when it is more)."""
    try:
        return {tp: consumer.committed(tp, timeout_ms=ms) for tp in partitions}
    except KafkaError as error:
        if not error.retriable:
            raise
        time.sleep(min(ms / 1000, 0.1))  # not at once: the same refusal again
        return None


def answered(
    ask: Callable[[int], Any],
    *,
    timeout_s: float,
    stopping: Callable[[], bool] = never,
    clock: Callable[[], float] = time.monotonic,
    away: Callable[[], bool] = never,
) -> Any:
    """`ask(STEP_MS)` again until it answers, for up to `timeout_s` and `ANSWER_TIMEOUT_S`
    (`ReadTimedOut`), until `stopping` (`ReadStopped`) or until `away` says the broker is
    away (`BrokerAway`). `ask` is given the milliseconds it may wait; it answers anything
    but None, or times out with `KafkaTimeoutError` (as a client that cannot reach a broker
    does from its constructor)."""
    return _answered(ask, clock() + timeout_s, stopping, clock, away)


def bootstrapped(
    make: Callable[[int], T],
    *,
    timeout_s: float,
    stopping: Callable[[], bool] = never,
    clock: Callable[[], float] = time.monotonic,
    away: Callable[[], bool] = never,
) -> T:
    """A client `make(ms)` builds (its `bootstrap_timeout_ms`), tried as `answered` tries,
    each attempt given twice the time of the one before, from `STEP_MS` to
    `MAX_BOOTSTRAP_STEP_MS`, while the brokers' addresses do not refuse connections.

    Each attempt starts over: a new connection, its TLS and SASL handshakes, the first
    questions. With every attempt cut at `STEP_MS`, a bootstrap that takes longer never
    completed, however healthy the cluster: through a link with a round trip of 1.2 s
    (a throwaway delaying proxy, 2026-12-07) `init` said "no Kafka broker answered" after
    10 s, and so did a SASL login over TLS that a busy machine took more than a second to
    refuse, which was to be said as a refused login (tests/test_kafka_security.py, failed
    once in CI). While every address refuses, nothing is slow: the steps stay short, and
    the stop and the watch are asked as often as before."""
    answer: T = _answered(make, clock() + timeout_s, stopping, clock, away, grow=True)
    return answer


def _answered(
    ask: Callable[[int], Any],
    deadline: float,
    stopping: Callable[[], bool],
    clock: Callable[[], float],
    away: Callable[[], bool],
    grow: bool = False,
) -> Any:
    """`ask(STEP_MS)` again until it answers (not None, no timeout), for up to
    `ANSWER_TIMEOUT_S` or to the `deadline`, whichever comes first (with `grow`, see
    `bootstrapped`)."""
    deadline = min(deadline, clock() + ANSWER_TIMEOUT_S)
    step = STEP_MS
    while True:
        if stopping():
            raise ReadStopped("the read was stopped")
        try:
            # Never past the deadline by more than a step of the usual length.
            answer = ask(min(step, max(STEP_MS, int((deadline - clock()) * 1000))))
        except KafkaTimeoutError:
            answer = None
        if answer is not None:
            return answer
        if clock() > deadline:
            raise ReadTimedOut("the broker did not answer")
        if away():
            raise BrokerAway(REFUSED)
        refusing = bool(getattr(away, "refusing", False))
        step = STEP_MS if not grow or refusing else min(step * 2, MAX_BOOTSTRAP_STEP_MS)


def reader(
    bootstrap: str,
    client_id: str,
    *,
    timeout_s: float,
    stopping: Callable[[], bool] = never,
    away: Callable[[], bool] = never,
    committed: bool = True,
) -> KafkaConsumer:
    """A consumer of no group, read_committed unless `committed` is False, made in attempts
    of growing length (`bootstrapped`): with no broker, kafka-python's constructor waits
    30 s (`bootstrap_timeout_ms`), the stop unseen."""
    return bootstrapped(
        lambda ms: Consumer(
            bootstrap_servers=bootstrap,
            isolation_level="read_committed" if committed else "read_uncommitted",
            enable_auto_commit=False,
            # Every read seeks where it starts; an offset retention deleted under it is
            # read on from the topic's beginning, never skipped to its end.
            auto_offset_reset="earliest",
            client_id=client_id,
            bootstrap_timeout_ms=ms,
        ),
        timeout_s=timeout_s,
        stopping=stopping,
        away=away,
    )


def from_the_beginning(
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float,
    client_id: str,
    partitions: Sequence[int] | None = None,
    since: Mapping[int, int] | None = None,
    stopping: Callable[[], bool] = never,
    away: Callable[[], bool] = never,
    kept: KeptReaders | None = None,
) -> Iterator[Any]:
    """Every committed record of the topic (of `partitions`, default all), from its
    beginning (or, for a partition in `since`, from that offset) to where it ends when the
    read starts, partition by partition as polled.

    Asked a step at a time with `away` (a `BrokerWatch`): its consumer was made with
    kafka-python's 30 s bootstrap wait and its end offsets asked unwatched, so `verify`, a
    writer finding its intake positions, and `publish` waiting for its outcomes each waited
    the whole answer timeout for a broker that had stopped.

    With `kept`, its consumers are used and left open for the next read (closed if this
    one fails or is left unfinished); otherwise two are made for this read.
    """
    consumer = (
        kept.committed(timeout_s=timeout_s, stopping=stopping, away=away)
        if kept is not None
        else reader(bootstrap, client_id, timeout_s=timeout_s, stopping=stopping, away=away)
    )
    finished = False
    try:
        if partitions is None:
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            finished = True
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        high = high_watermarks(
            bootstrap, tps, timeout_s=timeout_s, stopping=stopping, away=away, kept=kept
        )
        end = settled_ends(consumer, tps, high, timeout_s=timeout_s, stopping=stopping, away=away)
        for tp in tps:
            # Past the end, `since` was of a topic deleted and made again under the same
            # name: its records are all new. Before the topic's beginning (retention
            # deleted records not read yet), the consumer resets to the beginning
            # (`auto_offset_reset`), never to the end.
            if since and tp.partition in since and since[tp.partition] <= end[tp]:
                consumer.seek(tp, since[tp.partition])
        for polled in polls_to_end(
            consumer, tps, timeout_s=timeout_s, end=end, stopping=stopping, away=away
        ):
            for tp, records in polled.items():
                yield from (r for r in records if r.offset < end[tp])
        finished = True
    finally:
        if kept is None:
            consumer.close()
        elif not finished:
            kept.close()


def ledger_events(
    records: Iterable[Any], mac_key: bytes, skipped: list[Any] | None = None
) -> Iterator[tuple[Any, StoredEvent, FactKey | None]]:
    """Each record the ledger wrote, decoded; any other record is skipped and logged (and
    added to `skipped`, when given)."""
    for record in records:
        try:
            stored, fact = decode(record.key, record.value, dict(record.headers or []), mac_key)
        except NotALedgerRecord:
            if skipped is not None:
                skipped.append(record)
            log.warning(
                "skipped a record the ledger did not write (partition %d, offset %d)",
                record.partition,
                record.offset,
                extra={"partition": record.partition, "offset": record.offset},
            )
            continue
        yield record, stored, fact
