"""An empty views store over a long embedded log is filled by replay and copied in, not
caught up fact by fact; the answers are the same, and so are another reader's."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger import storage
from ledger.application import ConsentLedger
from ledger.demo import demo_stream
from ledger.envelope import parse_fact
from ledger.settings import Settings
from ledger.storage import StorageUnavailable
from projections import kafka_source
from projections import rebuild as rebuild_module
from projections import views as views_module
from projections.consent_projection import ConsentProjection
from projections.runner import APPLICATION, catch_up
from projections.store import ConsentViews
from projections.views import Views, fill_by_replay
from tests.facts import grant, withdraw
from tests.views_support import dump, refused_after_a_restore

PEOPLE = [f"fill-{n}" for n in range(40)]


def record(ledger: ConsentLedger, facts: list[dict[str, Any]]) -> None:
    ledger.record([parse_fact(f) for f in facts])


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    app = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    app.init_demo()
    record(app, demo_stream(subjects=300))
    yield app
    app.close()


def caught_up(ledger: ConsentLedger, path: Path) -> tuple[ConsentViews, ConsentProjection]:
    """The same log's views caught up in log order: what the answers must equal."""
    store = ConsentViews.open(path)
    projection = ConsentProjection(view=store)
    catch_up(ledger, projection)
    return store, projection


def filled(ledger: ConsentLedger, caplog: Any) -> tuple[Views, int]:
    """The ledger's views, whose first refresh filled the empty store by replay, and the
    entries that refresh said it read."""
    views = Views(ledger)
    with caplog.at_level(logging.INFO, logger="consent_ledger.projections"):
        read = views.refresh()
    assert "the empty views were filled by replay" in caplog.text
    return views, read


def caught_up_on_top(
    ledger: ConsentLedger, views: Views, reference: ConsentProjection, caplog: Any
) -> None:
    """Facts recorded after a fill are caught up on top, by the same store, without
    replaying again; `reference` (the projection of a store caught up in log order) takes
    them too."""
    record(ledger, [grant(p) for p in PEOPLE])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="consent_ledger.projections"):
        assert views.refresh() == len(PEOPLE)
    assert "filled by replay" not in caplog.text
    catch_up(ledger, reference)


def runs_of_pages(path: Path, name: str) -> int:
    """In how many runs of consecutive pages the table or index `name` lies in the file."""
    db = sqlite3.connect(path)
    try:
        [(runs,)] = db.execute(
            "WITH p AS (SELECT pageno - ROW_NUMBER() OVER (ORDER BY pageno) AS run FROM dbstat "
            "WHERE name = ?) SELECT COUNT(DISTINCT run) FROM p",
            (name,),
        ).fetchall()
    finally:
        db.close()
    return int(runs)


def test_an_empty_store_over_a_long_log_is_filled_by_replay(
    ledger: ConsentLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(views_module, "FILL_BY_REPLAY_FROM", 100)
    monkeypatch.setattr(rebuild_module, "PARALLEL_FROM", 100)  # a process per core, as at scale
    views, read = filled(ledger, caplog)
    # What the fill read counts as refreshed (`project` said 0 entries into a filled store).
    assert read == ledger.recorder.max_notification_id()
    reference, projection = caught_up(ledger, tmp_path / "caught-up.db")
    assert dump(views.store) == dump(reference)
    assert views.store.max_tracking_id(APPLICATION) == ledger.recorder.max_notification_id()
    # Laid out as replay lays a store out, each in one run of pages; caught up in log order,
    # the same index lies in many.
    path = ledger.settings.views_path
    assert runs_of_pages(path, "view_intervals_by_subject") == 1
    assert runs_of_pages(tmp_path / "caught-up.db", "view_intervals_by_subject") > 1
    # Copied from a store built without a write-ahead log, the live store keeps its own,
    # which its readers beside the writer need.
    assert [tuple(r) for r in views.store.rows("PRAGMA journal_mode")] == [("wal",)]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    caught_up_on_top(ledger, views, projection, caplog)
    assert dump(views.store) == dump(reference)
    views.close()
    reference.close()
    assert not [p.name for p in path.parent.iterdir() if ".replayed-" in p.name]


def test_a_short_log_is_caught_up_in_log_order(
    ledger: ConsentLedger, tmp_path: Path, caplog: Any
) -> None:
    views = Views(ledger)
    with caplog.at_level(logging.INFO, logger="consent_ledger.projections"):
        views.refresh()
    assert "filled by replay" not in caplog.text  # fewer entries than FILL_BY_REPLAY_FROM
    reference, _ = caught_up(ledger, tmp_path / "caught-up.db")
    assert dump(views.store) == dump(reference)
    views.close()
    reference.close()


def test_a_reader_whose_store_was_filled_under_it_reads_on_from_the_fill(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    """Another process had caught the store up part of the way, holding its subjects'
    states in its cache, when one that found it empty filled it: the first reads on from
    the fill's position, its cache dropped. Its cached states were of fewer facts than the
    fill's: applied on them, the withdrawals after would have written intervals without the
    second grants."""
    path = ledger.settings.views_path
    record(ledger, [grant(p, ("marketing",)) for p in PEOPLE])
    other = ConsentViews.open(path)
    projection = ConsentProjection(view=other)
    catch_up(ledger, projection)
    assert projection.cache_held()[0] > 0
    record(ledger, [grant(p, ("support",)) for p in PEOPLE])
    fill_by_replay(ledger, path)
    later = "2025-03-02T10:00:00+05:00"
    record(ledger, [withdraw(p, ("marketing", "support"), occurred_at=later) for p in PEOPLE[::2]])
    catch_up(ledger, projection)
    reference, _ = caught_up(ledger, tmp_path / "caught-up.db")
    assert dump(other) == dump(reference)
    other.close()
    reference.close()


def test_a_fill_removes_what_a_killed_fill_left(ledger: ConsentLedger) -> None:
    """A server killed while filling left its replayed store (as large as the views) and
    nothing would ever remove it; a running process's fill is left alone."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(ended.stdout)
    path = ledger.settings.views_path
    ConsentViews.open(path).close()
    names = [
        f"{path.name}.replayed-{dead}{end}" for end in ("", "-wal", ".partial", ".partial-shm")
    ]
    running = f"{path.name}.replayed-{os.getppid()}.partial"
    for name in [*names, running]:
        (path.parent / name).write_bytes(b"left")
    fill_by_replay(ledger, path)
    assert sorted(p.name for p in path.parent.glob(f"{path.name}.replayed-*")) == [running]


def test_a_fill_into_a_store_held_locked_gives_up_as_a_storage_failure(
    ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's backup stepped again every 250 ms for as long as the store was locked: a
    views store another process held a write transaction open on (readable, so the fill
    replayed and compared positions, then waited to copy in) kept the fill, and the question
    that asked for it, waiting for ever. It gives up after the busy timeout (30 s; 0.5 s
    here), as a storage failure, the replayed store removed."""
    path = ledger.settings.views_path
    record(ledger, [grant(p, ("marketing",)) for p in PEOPLE])
    ConsentViews.open(path).close()
    monkeypatch.setattr(storage, "LOCKED_WAIT_S", 0.5)
    holder = sqlite3.connect(path, isolation_level=None)
    assert holder.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageUnavailable, match=r"another process holds views\.db locked"):
            fill_by_replay(ledger, path)
    finally:
        holder.close()
    assert list(path.parent.glob(f"{path.name}.replayed-*")) == []
    assert fill_by_replay(ledger, path) is not None  # once let go, it is filled


def marks(views: ConsentViews) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in views.rows("SELECT * FROM view_log_marks"))


@pytest.mark.kafka
def test_an_empty_store_over_a_long_kafka_log_is_filled_from_the_replica(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """In Kafka mode an empty store took the ledger topic in its order, a page at a time
    (9,000 facts/s in `python -m bench kafka`'s replay row, against 24,000 for a replay
    subject by subject in one process). Filled from the process's replica, subject by
    subject (its worker processes reading the replica's file), it holds what catching up
    from the topic gives, stands where the replica stood with the marks of the same
    records, and is caught up from the topic on top."""
    from tests.kafka_support import kafka_settings

    ledger = ConsentLedger(kafka_settings(tmp_path / "data", kafka_bootstrap))
    try:
        ledger.init_demo()
        record(ledger, demo_stream(subjects=300))
        monkeypatch.setattr(kafka_source, "WHOLE_READ", 100)
        # A process per core, as at scale: the others read the replica's file, no broker.
        monkeypatch.setattr(rebuild_module, "PARALLEL_FROM", 100)
        views, read = filled(ledger, caplog)
        assert read == ledger.ledger_recorder.head()[0]  # the replica's entries, all read
        reference, projection = caught_up(ledger, tmp_path / "caught-up.db")
        assert dump(views.store) == dump(reference)
        assert marks(views.store) == marks(reference)
        assert len(marks(reference)) == ledger.settings.partitions
        assert views.store.tracking_names() == reference.tracking_names()
        path = ledger.settings.views_path
        assert runs_of_pages(path, "view_intervals_by_subject") == 1  # laid out by replay
        caught_up_on_top(ledger, views, projection, caplog)
        assert dump(views.store) == dump(reference)
        assert marks(views.store) == marks(reference)
        views.close()
        # Opened anew, the views' marks are checked against the replica's records.
        again = Views(ledger)
        assert again.refresh() == 0
        again.close()
        reference.close()
    finally:
        ledger.close()


@pytest.mark.kafka
def test_a_kafka_store_is_filled_when_its_catch_up_would_not_be_one_read(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """An empty store is caught up from the topic while that is one read, applied in one
    transaction (`WHOLE_READ` offsets), and filled from the replica once it would be more:
    a longer read commits as it goes, and another process applying the same views could
    find part of a ledger transaction applied. The bound is counted on the replica caught
    up first: the reader's data directory here is not the writer's, and its replica has
    only what it read when it opened; counted as it stood, the log looked short."""
    import base64
    import dataclasses

    from ledger.kafka.recorder import KafkaLedgerRecorder
    from tests.kafka_support import kafka_settings

    # One master key, as every process of one ledger has (the reader accepts the records).
    master = base64.b64encode(os.urandom(32)).decode()
    writing = kafka_settings(tmp_path / "writer", kafka_bootstrap, master_key=master)
    writer = ConsentLedger(writing)
    writer.init_demo()
    readers: list[ConsentLedger] = []
    try:
        for n in range(2):
            readers.append(
                ConsentLedger(dataclasses.replace(writing, data_dir=tmp_path / f"reader-{n}"))
            )
        # After the readers' replicas were read (as a `serve` beside a `worker` on another
        # data directory, opened before the facts came; a key store of its own is refused
        # over a log that already holds subjects).
        record(writer, demo_stream(subjects=100))
        offsets = topic_offsets(writer.settings)  # its records and transaction markers
        for reader, whole_read in zip(readers, [offsets, offsets - 1], strict=True):
            replica = reader.ledger_recorder
            assert isinstance(replica, KafkaLedgerRecorder)
            assert sum(replica.positions().values()) < whole_read  # as it opened
            monkeypatch.setattr(kafka_source, "WHOLE_READ", whole_read)
            views = Views(reader)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="consent_ledger.projections"):
                views.refresh()
            fill = "the empty views were filled by replay" in caplog.text
            assert fill == (whole_read < offsets), whole_read
            reference, _ = caught_up(writer, tmp_path / f"caught-up-{whole_read}.db")
            assert dump(views.store) == dump(reference)
            assert marks(views.store) == marks(reference)
            views.close()
            reference.close()
    finally:
        for reader in readers:
            reader.close()
        writer.close()


def topic_offsets(settings: Settings) -> int:
    """The offsets of the ledger topic's partitions, summed: what a catch-up of an empty
    store reads."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        topic = f"{settings.topic_prefix}.ledger"
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(settings.partitions)])
    finally:
        consumer.close()
    return sum(ends.values())


@pytest.mark.kafka
def test_a_kafka_fill_the_broker_ended_is_tried_again(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The fill's first step, catching the replica up, fails while the broker is away (here
    the recorder says so once: the step under test is what the views do after). The
    question fails as any would; the next fills the store, where marking the fill looked
    for before it was done had it caught up from the topic in many commits."""
    from ledger.kafka.recorder import KafkaLedgerRecorder, LedgerUnavailable
    from tests.kafka_support import kafka_settings

    ledger = ConsentLedger(kafka_settings(tmp_path / "data", kafka_bootstrap))
    try:
        ledger.init_demo()
        record(ledger, demo_stream(subjects=100))
        monkeypatch.setattr(kafka_source, "WHOLE_READ", 100)
        catch_up_replica = KafkaLedgerRecorder.catch_up
        calls = []

        def away_once(self: KafkaLedgerRecorder, *args: Any, **kwargs: Any) -> int:
            calls.append(1)
            if len(calls) == 1:
                raise LedgerUnavailable("the broker is away (a stand-in)")
            return catch_up_replica(self, *args, **kwargs)

        monkeypatch.setattr(KafkaLedgerRecorder, "catch_up", away_once)
        views = Views(ledger)
        with pytest.raises(LedgerUnavailable):
            views.refresh()
        assert views.store.tracking_names() == set()
        with caplog.at_level(logging.INFO, logger="consent_ledger.projections"):
            views.refresh()
        assert "the empty views were filled by replay" in caplog.text
        replica = ledger.ledger_recorder
        assert isinstance(replica, KafkaLedgerRecorder)
        assert views.store.tracking_names() == kafka_source.tracking_names(replica, APPLICATION)
        views.close()
    finally:
        ledger.close()


def test_a_fill_that_failed_is_not_tried_again_by_every_question(
    ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fill that failed for a cause of its own (here a full disk, said by the copy) is
    not tried again by the next question, which would replay the whole log to fail again:
    that question catches the store up as it stands."""
    monkeypatch.setattr(views_module, "FILL_BY_REPLAY_FROM", 100)
    fills = []

    def full_disk(ledger: ConsentLedger, path: Path) -> int:
        fills.append(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(views_module, "fill_by_replay", full_disk)
    views = Views(ledger)
    try:
        with pytest.raises(OSError):
            views.refresh()
        assert views.refresh() > 0  # caught up, not filled
        assert len(fills) == 1
    finally:
        views.close()


def refreshed(views: Views, caplog: Any) -> str:
    """What a refresh of the views logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="consent_ledger.projections"):
        views.refresh()
    return str(caplog.text)


def test_a_store_far_behind_a_long_log_is_filled_again(
    ledger: ConsentLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A store that is not empty, with at least `FILL_BY_REPLAY_FROM` entries and a quarter
    of the log unread (its service stopped while the log grew, a bulk `record` beside it),
    is filled again by replay, faster than catching it up (`python -m bench refill`); one
    behind by less than a quarter is caught up. The answers are the same."""
    monkeypatch.setattr(views_module, "FILL_BY_REPLAY_FROM", 100)
    views = Views(ledger)
    assert "the empty views were filled by replay" in refreshed(views, caplog)
    head = ledger.recorder.max_notification_id()
    assert head is not None and head > 300
    # A third as many facts again as the log holds: a quarter of it unread, just.
    behind = -(-head // 3)
    assert behind * 4 >= head + behind > (behind - 1) * 4
    record(ledger, [grant(f"behind-{n}", ("marketing",)) for n in range(behind)])
    said = refreshed(views, caplog)
    assert f"the views, {behind} log entries behind, were filled by replay" in said, said
    reference, projection = caught_up(ledger, tmp_path / "caught-up.db")
    assert dump(views.store) == dump(reference)
    # Short of a quarter of the log unread, and more than FILL_BY_REPLAY_FROM: caught up.
    head = ledger.recorder.max_notification_id() or 0
    short = (head - 1) // 3  # short * 4 < head + short
    assert short >= 100
    record(ledger, [withdraw(f"behind-{n}", ("marketing",)) for n in range(short)])
    assert "filled by replay" not in refreshed(views, caplog)
    catch_up(ledger, projection)
    assert dump(views.store) == dump(reference)
    assert views.store.max_tracking_id(APPLICATION) == ledger.recorder.max_notification_id()
    views.close()
    reference.close()


@pytest.mark.kafka
def test_a_kafka_store_far_behind_is_filled_again_from_the_replica(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """In Kafka mode a store that is not empty is filled again from the replica once more
    than `WHOLE_READ` offsets and a quarter of the topic are unread: caught up, such a read
    commits at instants rather than whole, and takes longer than the fill. Behind by less
    than a quarter, it is caught up from the topic."""
    from tests.kafka_support import kafka_settings

    ledger = ConsentLedger(kafka_settings(tmp_path / "data", kafka_bootstrap))
    try:
        ledger.init_demo()
        record(ledger, demo_stream(subjects=100))
        monkeypatch.setattr(kafka_source, "WHOLE_READ", 50)
        views = Views(ledger)
        assert "the empty views were filled by replay" in refreshed(views, caplog)
        before = topic_offsets(ledger.settings)
        record(ledger, [grant(f"behind-{n}", ("marketing",)) for n in range(before)])
        behind = topic_offsets(ledger.settings) - before
        said = refreshed(views, caplog)
        assert f"the views, {behind} log entries behind, were filled by replay" in said, said
        reference, projection = caught_up(ledger, tmp_path / "caught-up.db")
        assert dump(views.store) == dump(reference)
        assert marks(views.store) == marks(reference)
        # Less than a quarter of the topic unread, more than WHOLE_READ: caught up from it.
        total = topic_offsets(ledger.settings)
        record(ledger, [withdraw(f"behind-{n}", ("marketing",)) for n in range(total // 5)])
        assert topic_offsets(ledger.settings) - total > kafka_source.WHOLE_READ
        assert "filled by replay" not in refreshed(views, caplog)
        catch_up(ledger, projection)
        assert dump(views.store) == dump(reference)
        assert marks(views.store) == marks(reference)
        views.close()
        reference.close()
    finally:
        ledger.close()


def test_a_fill_does_not_take_back_what_another_process_caught_up_meanwhile(
    ledger: ConsentLedger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """While one process replayed (seconds to minutes), another caught the store up past
    the log the replay read: copied in, the replayed store took the facts recorded
    meanwhile back out of the answers until the next catch-up. The store is kept as it
    stands instead."""
    path = ledger.settings.views_path
    other = ConsentViews.open(path)
    projection = ConsentProjection(view=other)
    catch_up(ledger, projection)
    replay = rebuild_module.rebuild

    def meanwhile(*args: Any, **kwargs: Any) -> int:
        read = replay(*args, **kwargs)
        record(ledger, [grant(p, ("support",)) for p in PEOPLE])  # after the replay read
        catch_up(ledger, projection)
        return read

    monkeypatch.setattr(views_module, "rebuild", meanwhile)
    with caplog.at_level(logging.INFO, logger="consent_ledger.projections"):
        assert fill_by_replay(ledger, path) is None  # nothing copied in
    assert "caught up past the fill by another process meanwhile" in caplog.text
    reference, _ = caught_up(ledger, tmp_path / "caught-up.db")
    assert dump(other) == dump(reference)
    assert not [p.name for p in path.parent.iterdir() if ".replayed-" in p.name]
    other.close()
    reference.close()


def test_views_of_another_log_far_behind_are_refused_not_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Views kept over a ledger.db restored from an older backup and written to since are
    refused (`ViewsOfAnotherLog`) by their catch-up. Far enough behind to be filled again,
    they were replaced without a word, and the restore that broke them went unsaid; they
    are refused the same way."""
    import shutil

    monkeypatch.setattr(views_module, "FILL_BY_REPLAY_FROM", 100)
    settings = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    shutil.copy(settings.log_path, tmp_path / "older.db")
    ledger = ConsentLedger(settings)
    record(ledger, [grant(f"then-{n}", ("marketing",)) for n in range(20)])
    views = Views(ledger)
    views.refresh()
    views.close()
    ledger.close()
    since = [grant(f"since-{n}", ("marketing",)) for n in range(300)]
    refused_after_a_restore(settings, tmp_path / "older.db", since)
