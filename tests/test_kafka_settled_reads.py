"""A read waits for the transactions under the high watermark of its start (`settled_ends`),
on the real broker.

A transaction's commit returns before its markers reach its partitions; until they do, the
last stable offset stands short of its records. A replica built right after a receipt had no
such subject (a CI run of test_trail), and `publish` could answer "no outcome was found" for
a fact the writer had taken. The pause between the read's questions is where these tests
commit: the order of commit and question is the test's, never a race.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ledger.kafka.reading import (
    ReadStopped,
    end_offsets,
    from_the_beginning,
    high_watermarks,
    reader,
    settled_ends,
)
from projections.queries import who_had_consent
from tests.kafka_support import Stopping, made_by_hand

pytestmark = pytest.mark.kafka


@pytest.fixture
def open_transaction(kafka_bootstrap: str) -> Iterator[tuple[str, KafkaProducer]]:
    """A topic whose last record is in a transaction written and not yet committed."""
    topic = f"consent.test.settle.{uuid.uuid4().hex[:8]}"
    made_by_hand(kafka_bootstrap, topic, {})
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"settle-{uuid.uuid4().hex[:8]}"
    )
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, value=b"committed once the read began")
    producer.flush()
    try:
        yield topic, producer
    finally:
        producer.close()


class Settling:
    """A clock for `settled_ends` that moves only when the read pauses, a tenth of a second
    a pause: the settle time is counted in pauses, whatever the machine's load. On the wall
    clock, a first question to the broker that took longer than a 0.3 s settle time (a
    loaded CI run) ended the wait before its first pause, and the test saw none."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses = 0

    def clock(self) -> float:
        return self.now

    def pause(self) -> None:
        self.pauses += 1
        self.now += 0.1


@contextlib.contextmanager
def read_of(
    bootstrap: str, topic: str
) -> Iterator[tuple[TopicPartition, dict[TopicPartition, int], KafkaConsumer]]:
    """The topic's partition, its high watermark now, and a read_committed consumer."""
    tp = TopicPartition(topic, 0)
    high = high_watermarks(bootstrap, [tp], timeout_s=30)
    consumer = reader(bootstrap, "test-settle", timeout_s=30)
    try:
        yield tp, high, consumer
    finally:
        consumer.close()


def test_a_read_takes_in_a_transaction_committed_after_it_began(
    kafka_bootstrap: str, open_transaction: tuple[str, KafkaProducer]
) -> None:
    topic, producer = open_transaction
    committed: list[bool] = []

    def commit() -> None:
        if not committed:
            producer.commit_transaction()
            committed.append(True)

    with read_of(kafka_bootstrap, topic) as (tp, high, consumer):
        stable = end_offsets(consumer, [tp], timeout_s=30)
        assert stable[tp] < high[tp]  # the open transaction holds the end back
        ends = settled_ends(consumer, [tp], high, timeout_s=30, settle_s=60, pause=commit)
    assert committed
    assert ends[tp] >= high[tp]
    read = list(from_the_beginning(kafka_bootstrap, topic, timeout_s=30, client_id="test"))
    assert [r.value for r in read] == [b"committed once the read began"]


def test_a_transaction_left_open_is_waited_for_no_longer_than_the_settle_time(
    kafka_bootstrap: str, open_transaction: tuple[str, KafkaProducer]
) -> None:
    """A writer that died in a transaction holds the last stable offset until the broker
    aborts it: the read goes to where the committed records end, its record left out."""
    topic, _ = open_transaction
    settling = Settling()
    with read_of(kafka_bootstrap, topic) as (tp, high, consumer):
        ends = settled_ends(
            consumer,
            [tp],
            high,
            timeout_s=30,
            settle_s=0.3,
            pause=settling.pause,
            clock=settling.clock,
        )
    assert settling.pauses == 3  # it waited its settle time, and no longer
    assert ends[tp] < high[tp]
    assert list(from_the_beginning(kafka_bootstrap, topic, timeout_s=30, client_id="test")) == []


def test_a_process_that_stops_ends_the_wait(
    kafka_bootstrap: str, open_transaction: tuple[str, KafkaProducer]
) -> None:
    topic, _ = open_transaction
    with read_of(kafka_bootstrap, topic) as (tp, high, consumer), pytest.raises(ReadStopped):
        settled_ends(
            consumer,
            [tp],
            high,
            timeout_s=30,
            settle_s=600,
            stopping=Stopping(after=3),
            pause=lambda: None,
        )


def test_a_read_waits_once_for_a_transaction_left_open_until_it_ends(
    kafka_bootstrap: str, open_transaction: tuple[str, KafkaProducer]
) -> None:
    """Nothing committed after a transaction left open can be read until it ends: a
    command's replica and its views each waited the whole settle time for it."""
    topic, producer = open_transaction
    first = Settling()
    again: list[int] = []
    with read_of(kafka_bootstrap, topic) as (tp, high, consumer):
        held = settled_ends(
            consumer,
            [tp],
            high,
            timeout_s=30,
            settle_s=0.3,
            pause=first.pause,
            clock=first.clock,
        )
        assert first.pauses == 3 and held[tp] < high[tp]
        # The same end again: no wait, however long this read would allow.
        ends = settled_ends(
            consumer, [tp], high, timeout_s=30, settle_s=600, pause=lambda: again.append(1)
        )
        assert again == [] and ends == held
        # Once it ends, reads wait for the transactions under the high watermark again.
        producer.commit_transaction()
        after = high_watermarks(kafka_bootstrap, [tp], timeout_s=30)
        ends = settled_ends(consumer, [tp], after, timeout_s=30, settle_s=600)
        assert ends[tp] >= after[tp] > high[tp]


def test_a_read_from_given_offsets_never_skips_a_record_it_has_not_read(
    kafka_bootstrap: str,
) -> None:
    """`since` (where a reader got to, as the HTTP service's refusals keep it): read on from
    there; from the beginning when the offset is past the topic's end (a topic deleted and
    made again under the name) or before it (records retention deleted unread). The
    consumer's default, kafka-python's `auto_offset_reset="latest"`, skipped to the end."""
    from kafka.admin import KafkaAdminClient

    from tests.kafka_support import publish

    topic = f"consent.test.since.{uuid.uuid4().hex[:8]}"
    made_by_hand(kafka_bootstrap, topic, {})
    publish(kafka_bootstrap, topic, [(None, f"r{i}".encode()) for i in range(6)])

    def values(since: dict[int, int]) -> list[bytes]:
        read = from_the_beginning(
            kafka_bootstrap, topic, timeout_s=30, client_id="since-test", since=since
        )
        return [r.value for r in read]

    everything = [f"r{i}".encode() for i in range(6)]
    assert values({}) == everything
    assert values({0: 4}) == everything[4:]
    assert values({0: 6}) == []
    assert values({0: 60}) == everything  # past the end: another topic of the same name
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 0): 3})
    finally:
        admin.close()
    assert values({0: 1}) == everything[3:]  # deleted unread: on from the beginning


def test_the_views_take_no_record_past_where_their_read_began(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The views' catch-up reads to the ends of its start and no further, so that they hold
    whole transactions, all committed before the read began: a transaction committed during
    the read was applied on the partitions polled after its commit and not on those polled
    before. Here the ends of the read's start are those of before a second batch (the
    batch committed "during" the read): its facts are left for the next read, which takes
    them from where the first stopped."""
    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.kafka.names import Topics
    from projections import kafka_source
    from projections.views import Views
    from tests.facts import grant
    from tests.kafka_support import end_offsets as committed_ends
    from tests.kafka_support import kafka_settings

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    first = [f"first-{i}" for i in range(6)]
    later = [f"later-{i}" for i in range(6)]
    ledger.record([parse_fact(grant(p)) for p in first])
    began = committed_ends(kafka_bootstrap, Topics.of(settings.topic_prefix).ledger)
    ledger.record([parse_fact(grant(p)) for p in later])
    monkeypatch.setattr(kafka_source, "settled_ends", lambda consumer, tps, *a, **k: began)
    views = Views(ledger, tmp_path / "views.db")
    try:
        views.refresh()
        at = datetime.now(UTC)
        listed = set(who_had_consent(views.store, "demo", "marketing", at, None))
        assert listed == {ledger.sid("demo", p).hex for p in first}
        monkeypatch.undo()
        views.refresh()
        listed = set(who_had_consent(views.store, "demo", "marketing", at, None))
        assert listed == {ledger.sid("demo", p).hex for p in first + later}
    finally:
        views.close()
        ledger.close()


def test_views_another_reader_took_past_this_read_s_end_stay_where_they_are(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition whose views stand past this read's end (another process read later) is
    still polled with the others, and what it gives is all past the end: its views are left
    where they stand, never moved back to the end, whose facts they hold already and would
    take again."""
    from kafka import TopicPartition as Partition

    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.kafka.names import Topics
    from projections import kafka_source
    from projections.kafka_source import tracking_name
    from projections.runner import APPLICATION
    from projections.views import Views
    from tests.facts import grant
    from tests.kafka_support import end_offsets as committed_ends
    from tests.kafka_support import kafka_settings

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    topic = Topics.of(settings.topic_prefix).ledger
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    views = Views(ledger, tmp_path / "views.db")

    def standing() -> dict[int, int]:
        return {
            tp.partition: views.store.position(tracking_name(APPLICATION, tp))
            for tp in (Partition(topic, p) for p in range(settings.partitions))
        }

    try:
        ledger.record([parse_fact(grant(f"a-{i}")) for i in range(12)])
        after_a = committed_ends(kafka_bootstrap, topic)
        ledger.record([parse_fact(grant(f"b-{i}")) for i in range(12)])
        views.refresh()
        after_b = standing()
        ledger.record([parse_fact(grant(f"c-{i}")) for i in range(12)])
        after_c = committed_ends(kafka_bootstrap, topic)
        grew = [tp for tp in after_c if after_c[tp] > after_b[tp.partition]]
        assert len(grew) >= 2, "the test needs the last batch on two partitions"
        low, high = grew[0], grew[1]
        # This read's end: the first batch's on one partition, the last's on another.
        ends = {tp: after_a[tp] if tp == low else after_c[tp] for tp in after_c}
        monkeypatch.setattr(kafka_source, "settled_ends", lambda consumer, tps, *a, **k: ends)
        views.refresh()
        now = standing()
        assert now[low.partition] == after_b[low.partition]  # not moved back to its end
        assert now[high.partition] > after_b[high.partition]  # read on to its end
        monkeypatch.undo()
        views.refresh()
        at = datetime.now(UTC)
        listed = set(who_had_consent(views.store, "demo", "marketing", at, None))
        everyone = [f"{b}-{i}" for b in "abc" for i in range(12)]
        assert listed == {ledger.sid("demo", p).hex for p in everyone}
    finally:
        views.close()
        ledger.close()


class Observed(NamedTuple):
    """What `_observed_reads` saw: the positions the store held at each poll, those at the
    end, whether its rows came out as a whole read's, and at each poll the facts (event id,
    recorded_at) it held, with those the ledger holds."""

    seen: list[frozenset[tuple[str, int]]]
    end: frozenset[tuple[str, int]]
    same: bool
    held: list[frozenset[tuple[str, str]]]
    facts: frozenset[tuple[str, str]]


def time_prefix(held: frozenset[tuple[str, str]], facts: frozenset[tuple[str, str]]) -> bool:
    """Whether the views hold every fact recorded up to the latest they hold (and so none
    is applied later with an instant the first page of who had consent took as the
    divide)."""
    latest = max((datetime.fromisoformat(at) for _, at in held), default=None)
    if latest is None:
        return True
    return held == {f for f in facts if datetime.fromisoformat(f[1]) <= latest}


def spanning(ledger: Any, count: int) -> list[str]:
    """`count` subjects whose facts go to every ledger partition, as many to each: sids
    are keyed per data directory, and twelve subjects taken as they came left a partition
    without one about once in fifty runs (3 x (2/3)^12)."""
    from ledger.kafka.records import partition_of

    partitions = ledger.settings.partitions
    by_partition: dict[int, list[str]] = {p: [] for p in range(partitions)}
    n = 0
    while any(len(names) < count // partitions for names in by_partition.values()):
        name = f"whole-{n}"
        n += 1
        sid = ledger.sid("demo", name).hex
        by_partition[partition_of(f"demo/{sid}".encode(), partitions)].append(name)
    return [name for names in by_partition.values() for name in names[: count // partitions]]


def _observed_reads(
    tmp_path: Path,
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    whole_read: int,
    hold: int = 20_000,
) -> Observed:
    """One catch-up of a fresh store over a transaction that spans the ledger's three
    partitions, polled a record at a time. Between polls, a connection of its own (as
    another process would) reads the positions and facts the store holds."""
    import sqlite3

    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.kafka import reading
    from projections import kafka_source
    from projections.consent_projection import ConsentProjection
    from projections.runner import catch_up
    from projections.store import ConsentViews
    from tests.facts import grant
    from tests.kafka_support import kafka_settings

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    ledger = ConsentLedger(settings)
    store = ConsentViews.open(tmp_path / "views.db")
    reader = kafka_source.LedgerTopicReader(ledger.ledger_recorder)  # type: ignore[arg-type]
    reader.whole_read = whole_read
    reader.hold = hold
    seen: list[frozenset[tuple[str, int]]] = []
    held: list[frozenset[tuple[str, str]]] = []
    other = sqlite3.connect(tmp_path / "views.db")

    def positions() -> frozenset[tuple[str, int]]:
        rows = other.execute("SELECT application_name, notification_id FROM tracking")
        return frozenset((str(n), int(i)) for n, i in rows if "@" in str(n))

    def facts(db: sqlite3.Connection) -> frozenset[tuple[str, str]]:
        return frozenset(db.execute("SELECT event_id, recorded_at FROM view_entries"))

    polls = reading.polls_to_end  # the function kafka_source calls, watched in its place

    def watched(*args: object, **kwargs: object) -> Iterator[dict[TopicPartition, list[object]]]:
        for polled in polls(*args, **kwargs):  # type: ignore[arg-type]
            yield polled
            # Resumed: what the read made of that poll is written (one read transaction).
            other.execute("BEGIN")
            seen.append(positions())
            held.append(facts(other))
            other.execute("COMMIT")

    monkeypatch.setattr(kafka_source, "polls_to_end", watched)
    try:
        ledger.init_demo()
        ledger.record([parse_fact(grant(p)) for p in spanning(ledger, 12)])
        catch_up(ledger, ConsentProjection(store), page=1, reader=reader)
        monkeypatch.undo()
        reference = ConsentViews.open(tmp_path / "reference.db")
        try:
            catch_up(ledger, ConsentProjection(reference))
        finally:
            reference.close()
        with contextlib.closing(sqlite3.connect(tmp_path / "reference.db")) as db:
            every = facts(db)
        same = _rows(tmp_path / "views.db") == _rows(tmp_path / "reference.db")
        return Observed(seen, positions(), same, held, every)
    finally:
        other.close()
        reader.close()
        store.close()
        ledger.close()


def _rows(path: Path) -> dict[str, list[object]]:
    """The views' rows and marks. Not their positions: a read polled a record at a time
    stops at the last record, short of the transaction marker after it, which a read of
    larger polls steps past; both are positions after the same facts."""
    import sqlite3

    tables = ("view_subjects", "view_entries", "view_intervals", "view_log_marks")
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def test_another_process_finds_the_views_before_a_read_or_after_it_never_within(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catch-up applied each partition's page in a transaction of its own: a `worker`
    applying the views beside the service committed the first partition's part of a ledger
    transaction before the others', and the service's question in between found part of
    it (the moment of who had consent's pages, the latest fact the views hold, then
    divided nothing). A read of up to `WHOLE_READ` offsets is applied in one transaction at
    its end."""
    read = _observed_reads(tmp_path, kafka_bootstrap, monkeypatch, 20_000)
    assert len(read.seen) >= 12  # a record a poll: the read was watched between its polls
    assert len(read.end) == 3  # the transaction spans the partitions
    assert set(read.seen) <= {frozenset(), read.end}, "the store held part of the read"
    assert read.same


def test_a_read_too_large_to_hold_commits_a_poll_at_a_time_to_the_same_views(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `WHOLE_READ`, a read's events are not all held: it commits as it goes, the
    partitions it read together, and the views come out as a read applied whole makes
    them. Each commit is an instant of transaction time: the views hold every fact
    recorded up to the latest they hold. Committed poll by poll, as until 2026-12-06, the
    first partition's facts of the transaction stood applied before the second's, and who
    had consent's first page took the latest of them as the divide of its pages, before
    which facts were still to be applied."""
    read = _observed_reads(tmp_path, kafka_bootstrap, monkeypatch, 0)
    assert len(read.end) == 3
    assert set(read.seen) - {frozenset(), read.end}, "no poll was committed before the read's end"
    assert len(read.facts) == 12  # the grants (the views hold subjects' facts)
    assert all(time_prefix(held, read.facts) for held in read.held), "not an instant"
    assert read.same


def test_a_long_read_holding_too_much_commits_what_it_read(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Holding more than `hold` records for a later commit (partitions fetched far apart),
    a long read commits what it read, warning that part of a ledger transaction may be in
    it: memory stays bounded as for a read held whole, and the views come out the same."""
    with caplog.at_level(logging.WARNING, logger="consent_ledger.projections"):
        read = _observed_reads(tmp_path, kafka_bootstrap, monkeypatch, 0, hold=1)
    assert "held more than 1 records for a later commit" in caplog.text
    assert set(read.seen) - {frozenset(), read.end}, "no poll was committed before the read's end"
    assert read.same
