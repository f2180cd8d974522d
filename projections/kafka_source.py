"""Projections fed straight from the ledger topic (Kafka mode).

A position is (partition, offset): each ledger partition is tracked on its own, under the
tracking name `<application>@<topic>/<partition>` with the next offset to read, and the
view changes a read makes commit with the positions of every partition it read in one
transaction — the same exactly-once idiom as embedded mode; a read too long to hold whole
commits as it goes, at instants of transaction time (`_Read`). Offsets have gaps (transaction
markers, aborted records), so the position is always the consumer's, never an offset plus
one assumed.

Only records the replica accepted are projected. Anyone allowed to write to the topic could
append a record: one without the ledger's MAC, or a copy of a real one. The replica applies
only authenticated records that continue their subject's versions with a new event id;
projecting anything else would put a fact in the views that the ledger does not hold, or
stop the projection for good on a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import Mapper, Tracking
from kafka import KafkaConsumer, TopicPartition

from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.reading import (
    KeptReaders,
    ReadTimedOut,
    end_offsets,
    ledger_events,
    never,
    polls_to_end,
    reader,
    settled_ends,
)
from ledger.kafka.recorder import KafkaLedgerRecorder, LedgerUnavailable
from ledger.recorder import FactKey
from projections.consent_projection import ConsentProjection
from projections.known import KnownAt
from projections.store import ConsentViews, ViewsOfAnotherLog

log = logging.getLogger("consent_ledger.projections")

# Offsets (records, and the transaction markers among them) a catch-up may span and still
# apply all it reads in one transaction: its decoded events are held until then, a few
# tens of megabytes at this many.
WHOLE_READ = 20_000

# The most records a longer read holds for a later commit, all partitions together
# (`_Read.settled`): as many as a read held whole.
HOLD = 20_000


def tracking_name(application: str, tp: TopicPartition) -> str:
    return f"{application}@{tp.topic}/{tp.partition}"


def partition_name(recorder: KafkaLedgerRecorder, application: str, partition: int) -> str:
    """The tracking name of one partition of the recorder's ledger topic."""
    return tracking_name(application, TopicPartition(recorder.link.topics.ledger, partition))


def tracking_names(recorder: KafkaLedgerRecorder, application: str) -> set[str]:
    """The tracking names of the ledger topic's partitions."""
    return {partition_name(recorder, application, p) for p in range(recorder.link.partitions)}


def check_marks(
    recorder: KafkaLedgerRecorder,
    view: ConsentViews,
    application: str,
    stopping: Callable[[], bool] | None = None,
) -> None:
    """Refuse views whose last applied record of a partition is not the replica's record
    at that offset (`ViewsOfAnotherLog`): views of another ledger topic, or of this one
    before it was deleted and made again, would count people the ledger does not hold.
    """
    for partition in range(recorder.link.partitions):
        tp = TopicPartition(recorder.link.topics.ledger, partition)
        mark = view.log_mark(tracking_name(application, tp))
        if mark is None:
            continue
        offset, fact_hash = mark
        if recorder.positions().get(partition, 0) <= offset:
            recorder.catch_up(stopping or never)
        if recorder.hash_at_offset(partition, offset) != fact_hash:
            raise ViewsOfAnotherLog(
                str(view.path or "views.db"),
                f"the ledger topic's record at {tp.topic}/{partition} offset {offset} is not "
                "the one they applied",
                "views of another ledger topic, or of this one before it was deleted and made "
                "again?",
            )


@dataclass
class _Page:
    """What a read took of one partition: from `after` (the views' position before it) to
    `position`, the events to apply, and the offset and hash of the last record of the
    ledger's among them (the views' `log_mark`)."""

    after: int | None
    position: int = 0
    events: list[Any] = field(default_factory=list)
    mark: tuple[int, str] | None = None


class _Read:
    """The records one catch-up has read and not applied yet, partition by partition, and
    which of them may be applied together (`settled`)."""

    def __init__(
        self,
        tps: list[TopicPartition],
        read_from: dict[TopicPartition, int | None],
        ends: dict[TopicPartition, int],
        hash_at: Callable[[int, int], str | None],
        hold: int = HOLD,
    ) -> None:
        """`hash_at(partition, offset)`: the hash of the ledger's record there, for the
        views' mark (`KafkaLedgerRecorder.hash_at_offset`: the replica accepted every record
        a read applies, and holds its hash)."""
        self.tps = tps
        self.hash_at = hash_at
        self.hold = hold
        self.after = dict(read_from)  # where the views stand in each partition
        self.ends = ends
        # How far each partition was read (its consumer's position after the last poll).
        self.read_to: dict[TopicPartition, int] = {tp: read_from[tp] or 0 for tp in tps}
        # The records read and not applied yet, in three lists a partition (no object a
        # record: held for every record of a read held whole, a tuple each, or its stored
        # event, cost the catch-up about 5%, the garbage collector's): their offsets, their
        # transaction times as recorded (an event that is not a fact has that of the fact
        # before it in the partition; None before any), and the events to apply (None: left
        # out by `known`). The views' mark takes the replica's hash of the last one.
        self.offsets: dict[TopicPartition, list[int]] = {tp: [] for tp in tps}
        self.recorded: dict[TopicPartition, list[str | None]] = {tp: [] for tp in tps}
        self.events: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
        self.latest: dict[TopicPartition, str | None] = dict.fromkeys(tps)

    def take(
        self,
        tp: TopicPartition,
        decoded: Iterable[tuple[int, FactKey | None, Any]],
        position: int,
    ) -> None:
        """Hold what a poll gave of a partition, (offset, fact, event to apply or None) in
        offset order, read to `position`."""
        offsets, recorded, events = self.offsets[tp], self.recorded[tp], self.events[tp]
        latest = self.latest[tp]
        for offset, fact, event in decoded:
            if fact is not None:
                latest = fact.recorded_at
            offsets.append(offset)
            recorded.append(latest)
            events.append(event)
        self.latest[tp] = latest
        self.read_to[tp] = position

    def reached(self, tp: TopicPartition, position: int) -> None:
        """The partition's consumer stands at `position` (at most the read's end): every
        record before it has been given to `take`."""
        if position > self.read_to[tp]:
            self.read_to[tp] = position

    def settled(self, *, final: bool) -> dict[TopicPartition, _Page]:
        """The pages to apply now, taken out of what is held: everything at the read's end
        (`final`); before it, the facts recorded up to the earliest of the latest
        instants read in the partitions not read to their end yet.

        Each partition holds its facts in the order of their transaction time (the writer
        stamps a batch in log order, and no later than the log's last fact), so a partition
        read to instant T has nothing unread recorded at T or before: up to the earliest
        such T, the facts of every partition are all read. Committed poll by poll instead,
        one partition's facts of a transaction stood applied without another's, and the
        instant of the latest fact the views held divided nothing.
        """
        cut: datetime | None = None
        if not final:
            unread = [self.latest[tp] for tp in self.tps if self.read_to[tp] < self.ends[tp]]
            if None in unread:
                cut = _NOTHING  # a partition not read yet could hold any instant after
            elif unread:
                cut = min(_instant(t) for t in unread)
            if cut is not None and sum(len(o) for o in self.offsets.values()) > self.hold:
                # Partitions fetched far apart (their leaders on brokers of unequal speed):
                # bounded as a read held whole is, at the price of one commit that is not
                # an instant.
                log.warning(
                    "the views' catch-up held more than %d records for a later commit: "
                    "committed what it read, part of a ledger transaction maybe among it",
                    self.hold,
                )
                cut = None
        pages: dict[TopicPartition, _Page] = {}
        for tp in self.tps:
            offsets, recorded, events = self.offsets[tp], self.recorded[tp], self.events[tp]
            n = len(offsets)
            if cut is not None:
                n = 0
                while n < len(offsets) and _instant(recorded[n]) <= cut:
                    n += 1
            position = offsets[n] if n < len(offsets) else self.read_to[tp]
            if position <= (self.after[tp] or 0):
                continue
            last = offsets[n - 1] if n else None
            fact_hash = None if last is None else self.hash_at(tp.partition, last)
            pages[tp] = _Page(
                after=self.after[tp],
                position=position,
                events=[e for e in events[:n] if e is not None],
                mark=None if last is None or fact_hash is None else (last, fact_hash),
            )
            del offsets[:n], recorded[:n], events[:n]
            self.after[tp] = position
        return pages


# Before any instant: what a record without one (nothing of its partition read before it
# but events that are not facts) is taken to have been recorded at.
_NOTHING = datetime.min.replace(tzinfo=UTC)


def _instant(recorded_at: str | None) -> datetime:
    return _NOTHING if recorded_at is None else datetime.fromisoformat(recorded_at)


def _to_apply(
    decoded: Iterable[tuple[Any, Any, FactKey | None]], mapper: Mapper[Any], known: KnownAt | None
) -> Iterator[tuple[int, FactKey | None, Any]]:
    """(offset, fact, the event to apply or None: one `known` leaves out)."""
    for record, stored, fact in decoded:
        event = mapper.to_domain_event(stored)
        yield record.offset, fact, event if known is None or known(event) else None


class LedgerTopicReader:
    """One read_committed consumer of the ledger topic, kept between catch-ups.

    Not thread-safe: its owner (Views) calls it under its own lock.
    """

    def __init__(
        self,
        recorder: KafkaLedgerRecorder,
        stopping: Callable[[], bool] | None = None,
        partitions: Sequence[int] | None = None,
    ) -> None:
        """`partitions`: the ledger partitions this reader reads (default: all), for a
        replay split over processes by partition (`projections.rebuild`)."""
        self.recorder = recorder
        self.link = recorder.link
        self.partitions = list(
            range(recorder.link.partitions) if partitions is None else partitions
        )
        # Whether the process is stopping: a read in progress then ends (`ReadStopped`).
        self.stopping = stopping or never
        self._consumer: KafkaConsumer | None = None
        # A read_uncommitted consumer, for the high watermarks a read waits to settle
        # (`settled_ends`), and the replica's read_committed one for when the views read
        # ahead of it (`_accepted`): made once, as `publish --wait` keeps its own.
        self._kept: KeptReaders | None = None
        # The most offsets a read applies in one transaction at its end (see `_catch_up`).
        self.whole_read = WHOLE_READ
        # The most records a longer read holds for a later commit (`_Read.settled`).
        self.hold = HOLD

    def consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = self._reader("consent-ledger-projection", committed=True)
            tps = [TopicPartition(self.link.topics.ledger, p) for p in self.partitions]
            self._consumer.assign(tps)
        return self._consumer

    def kept(self) -> KeptReaders:
        if self._kept is None:
            self._kept = KeptReaders(self.link.bootstrap, "consent-ledger-projection-replica")
        return self._kept

    def watermarks(self) -> KafkaConsumer:
        return self.kept().uncommitted(
            timeout_s=self.link.catch_up_timeout_s,
            stopping=self.stopping,
            away=BrokerWatch(self.link.bootstrap),
        )

    def _reader(self, client_id: str, *, committed: bool) -> KafkaConsumer:
        return reader(
            self.link.bootstrap,
            client_id,
            timeout_s=self.link.catch_up_timeout_s,
            stopping=self.stopping,
            away=BrokerWatch(self.link.bootstrap),
            committed=committed,
        )

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._consumer = None
        if self._kept is not None:
            self._kept.close()
        self._kept = None

    def _apply(
        self,
        projection: ConsentProjection,
        application: str,
        pages: dict[TopicPartition, _Page],
    ) -> None:
        if not pages:
            return
        projection.process_read(
            [
                (
                    page.events,
                    Tracking(tracking_name(application, tp), page.position),
                    page.after,
                    page.mark,
                )
                for tp, page in sorted(pages.items(), key=lambda item: item[0].partition)
            ]
        )

    def ends(self) -> dict[int, int]:
        """Where each of this reader's partitions ends now (offset by partition), as a
        catch-up takes its end: for the processes of a split replay to read to."""
        try:
            consumer = self.consumer()
            tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
            ends = self._ends(consumer, tps, BrokerWatch(self.link.bootstrap))
        except ReadTimedOut as error:
            self.close()
            raise LedgerUnavailable(f"the ledger topic could not be read: {error}") from error
        except Exception:
            self.close()  # start over with a fresh consumer next time, as `catch_up` does
            raise
        return {tp.partition: end for tp, end in ends.items()}

    def _ends(
        self, consumer: KafkaConsumer, tps: list[TopicPartition], away: BrokerWatch
    ) -> dict[TopicPartition, int]:
        timeout = self.link.catch_up_timeout_s
        high = end_offsets(
            self.watermarks(), tps, timeout_s=timeout, stopping=self.stopping, away=away
        )
        # Read to where each partition ended as the read began, and no further: a
        # transaction committed during the read would otherwise be applied on the
        # partitions read after its commit and not on those read before, and the views hold
        # part of it (who had consent's pages take the moment of the last fact they hold
        # as the divide between what the first page read and what it did not).
        return settled_ends(
            consumer, tps, high, timeout_s=timeout, stopping=self.stopping, away=away
        )

    def _accepted(self, partition: int, records: list[Any]) -> set[int]:
        """The offsets among `records` that the replica accepted as the ledger's records."""
        if not records:
            return set()
        first, last = records[0].offset, records[-1].offset  # a partition's, in offset order
        if self.recorder.positions().get(partition, 0) <= last:
            self.recorder.catch_up(self.stopping, kept=self.kept())
        accepted = self.recorder.accepted_offsets(partition, first, last)
        for record in records:
            if record.offset not in accepted:
                log.warning(
                    "left out a record the replica did not accept (partition %d, offset %d)",
                    partition,
                    record.offset,
                    extra={"partition": partition, "offset": record.offset},
                )
        return accepted

    def catch_up(
        self,
        mapper: Mapper[Any],
        projection: ConsentProjection,
        application: str,
        *,
        known: KnownAt | None = None,
        page: int = 5000,
        upto: Mapping[int, int] | None = None,
    ) -> int:
        """Apply every committed ledger record after the view's positions; returns how many.

        The positions come from the view on every call (not from the consumer), so a view
        written by another process, or rolled back by a failed page, is read from where it
        really stands. With `known`, only the events it keeps: what the ledger knew at an
        instant (`projections.known`). With `upto` (offset by partition, from `ends` and
        with the replica caught up to it), the read ends there instead of where the topic
        ends as it begins: each process of a split replay reads to the same ends.
        """
        try:
            return self._catch_up(mapper, projection, application, known, page, upto)
        except ReadTimedOut as error:
            self.close()
            raise LedgerUnavailable(f"the ledger topic could not be read: {error}") from error
        except Exception:
            self.close()  # start over with a fresh consumer next time
            raise

    def _catch_up(
        self,
        mapper: Mapper[Any],
        projection: ConsentProjection,
        application: str,
        known: KnownAt | None,
        page: int,
        upto: Mapping[int, int] | None,
    ) -> int:
        consumer = self.consumer()
        tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        read_from: dict[TopicPartition, int | None] = {}
        for tp in tps:
            position = read_from[tp] = projection.view.max_tracking_id(
                tracking_name(application, tp)
            )
            if position:
                consumer.seek(tp, position)
            else:
                consumer.seek_to_beginning(tp)
        processed = 0
        # Bounded by the time without progress, as every reader of the topic is: unbounded,
        # a broker gone mid-read held the read (and `worker`, waiting for it at SIGTERM)
        # until the broker came back. What was committed before stays applied (a read held
        # whole, below, commits nothing until its end, and is read again).
        away = BrokerWatch(self.link.bootstrap)
        timeout = self.link.catch_up_timeout_s
        if upto is None:
            ends = self._ends(consumer, tps, away)
        else:
            ends = {tp: upto.get(tp.partition, 0) for tp in tps}
        reading = polls_to_end(
            consumer,
            tps,
            timeout_s=timeout,
            max_records=page,
            end=ends,
            stopping=self.stopping,
            away=away,
        )
        # A read small enough to hold is applied in one transaction at its end: another
        # process applying the same views (a `worker` or `project --follow` beside the
        # service) then only ever finds them at the end of a read, which holds whole
        # transactions. A larger one (views far behind) commits as it goes, at instants of
        # transaction time (`_Read.settled`): each commit holds every fact recorded up to
        # the latest it holds and none after, which is what the moment of who had
        # consent's pages needs of them.
        whole = sum(max(0, ends[tp] - (read_from[tp] or 0)) for tp in tps) <= self.whole_read
        read = _Read(tps, read_from, ends, self.recorder.hash_at_offset, self.hold)
        for polled in reading:
            for tp, polled_records in polled.items():
                records = [r for r in polled_records if r.offset < ends[tp]]
                if len(records) == len(polled_records):
                    position = consumer.position(tp)
                elif records:
                    # Those past the end are left for the next read, which starts after
                    # the last one taken (it seeks to the views' positions).
                    position = records[-1].offset + 1
                else:
                    # Nothing before the end: a partition read to its end, or one whose
                    # views another process had taken past this read's end, polled with
                    # the others. Its position stays where the views have it.
                    continue
                accepted = self._accepted(tp.partition, records)
                decoded = ledger_events(
                    (r for r in records if r.offset in accepted), self.link.record_key
                )
                read.take(tp, _to_apply(decoded, mapper, known), position)
                processed += len(records)
            for tp in tps:
                # A poll that reached a transaction's marker gives no record of it, only a
                # position past it: without it a partition read to its end stood short of
                # it, and the partitions ahead were held until the read's end.
                read.reached(tp, min(consumer.position(tp), ends[tp]))
            if not whole:
                self._apply(projection, application, read.settled(final=False))
        self._apply(projection, application, read.settled(final=True))
        return processed
