"""The ledger's recorder in Kafka mode: the ledger topic is the log of record.

Kafka has no conditional append, so consistency comes from ownership. This recorder becomes
the one writer of the ledger topic the first time it writes: its transactional producer's
`init_transactions` fences every earlier producer with the same transactional id (derived from
the partitions it owns) and aborts whatever transaction such a producer left open; only then
does it rebuild what it needs from the partitions (read_committed) and append.

What it needs is kept in a local SQLite replica of the topic — the very recorder of embedded
mode, so the per-subject version index, the fact index (idempotency by `event_id`), the hash
chain heads and reads of a subject's facts all work unchanged — together with the next offset
of each partition it has applied. An append writes the replica rows and the Kafka transaction
inside one SQLite transaction that commits only after Kafka did: if Kafka refuses, nothing is
kept; if the process dies between the two commits, the next catch-up reads the facts back
from the topic. The replica is a cache: delete it and it is rebuilt from the partitions.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore
from kafka import KafkaProducer, TopicPartition
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    ProducerFencedError,
)
from kafka.structs import OffsetAndMetadata

from ledger.failpoints import failpoint
from ledger.kafka.acls import refused_access
from ledger.kafka.clients import Producer, close_producer
from ledger.kafka.names import Topics, intake_group, transactional_id
from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.reading import (
    STEP_MS,
    KeptReaders,
    ReadTimedOut,
    answered,
    bootstrapped,
    high_watermarks,
    ledger_events,
    never,
    polls_to_end,
    reader,
    settled_ends,
)
from ledger.kafka.record_sends import send_records
from ledger.kafka.records import (
    encode,
    intake_header,
    intake_read,
    partition_of,
    record_size,
)
from ledger.kafka.topics import KAFKA_DEFAULT_RECORD_LIMIT, RecordsLost, TopicRefused
from ledger.kafka.transaction_calls import (
    Begun,
    begin_abort,
    begin_commit,
    begin_offsets,
    held_error,
)
from ledger.kafka.write_watch import WriteWatch, know_the_quorum
from ledger.recorder import _BATCH_WINDOW, SUBJECT_TOPICS, FactKey, LedgerSQLiteRecorder
from ledger.settings import SettingsError
from ledger.sql import as_tuples, rows_in
from ledger.storage import RecordTooLarge
from ledger.store_format import REPLICA

log = logging.getLogger("consent_ledger.kafka")

FENCED = (ProducerFencedError, InvalidProducerEpochError)


# Every append is a transaction and its commit flushes whatever is buffered, so lingering
# costs no latency: records fill large batches until the commit instead of one tiny batch
# (and one sender wake-up) per record, which is what kafka-python does with linger_ms=0.
# A transaction that starts while the coordinator is still writing the previous one's
# markers gets CONCURRENT_TRANSACTIONS on its first AddOffsetsToTxn, which kafka-python
# retries after retry_backoff_ms; at its default of 100 ms a small transaction begun right
# after another waited about 100 ms (fd2775c gives the measurement).
PRODUCER_TUNING: dict[str, object] = {
    "enable_idempotence": True,
    "acks": "all",
    "linger_ms": 1000,
    "batch_size": 1024 * 1024,
    "max_request_size": 4 * 1024 * 1024,
    "retry_backoff_ms": 10,
    # kafka-python's default is 60 s: a writer paused longer mid-transaction (a VM paused, a
    # disk or lock stall) had its transaction aborted by the coordinator, which bumps the
    # epoch, and took the answer for a fence by another writer: it stopped for good (the
    # worker exited, `serve` answered every write 503 writer_fenced). Nothing else writes
    # the ledger's topics, so a longer wait holds up no reader; a writer that dies mid-
    # transaction is aborted at once by its successor's `init_transactions`. Five minutes is
    # within the broker's `transaction.max.timeout.ms` (15 minutes by default).
    "transaction_timeout_ms": 300_000,
}


# kafka-python's default transaction timeout: the writer's, on brokers that refuse the longer
# one of PRODUCER_TUNING (`KafkaLedgerRecorder._initialised_producer`).
FALLBACK_TIMEOUT_MS = 60_000


class WriterFenced(RuntimeError):
    """Another writer took ownership of the ledger partitions; this one may never append again."""


class LedgerUnavailable(RuntimeError):
    """The broker did not take the append; nothing of it was kept, and it may be retried."""


class AccessRefused(LedgerUnavailable):
    """The cluster refused the writer an ACL (its transactional id's, a topic's): nothing was
    kept, and the same append works once the operator grants it. Until 2026-12-06 a refused
    transactional id read as fenced by another writer (exit 5), which it is not."""


@dataclass(frozen=True)
class KafkaLink:
    bootstrap: str
    topics: Topics
    partitions: int
    # The MAC key of ledger records (KeyStore.record_key); never printed.
    record_key: bytes = field(repr=False)
    catch_up_timeout_s: float = 120.0
    # The ledger topic's `max.message.bytes` (ledger.kafka.topics.ledger_layout).
    record_limit: int = KAFKA_DEFAULT_RECORD_LIMIT
    # The intake topic's, which `publish` sends to (ledger.kafka.topics.Layout).
    intake_record_limit: int = KAFKA_DEFAULT_RECORD_LIMIT

    @property
    def transactional_id(self) -> str:
        return transactional_id(self.topics, self.partitions)

    @property
    def intake_group(self) -> str:
        return intake_group(self.topics)


@dataclass(frozen=True)
class _Opened:
    """A transaction begun ahead of its appends (`open_intake`), its offsets on their way."""

    thread: int
    offsets: dict[TopicPartition, int]
    sent: Begun


@dataclass
class IntakeCommit:
    """What an intake batch adds to the ledger's transaction: its rejects and its offsets."""

    rejects: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    group: Any = None
    # The intake topic's id, named with the offsets in the first ledger record's `intake`
    # header ("" for none: a broker without topic ids).
    topic_id: str = ""


class ReplicaOfAnotherTopic(SettingsError):
    """The data directory's replica was read from another ledger topic than the one the
    settings name (LEDGER_TOPIC_PREFIX changed under it).

    It was taken for this topic's replica: the new topic, shorter, read as a log of record
    that had lost records (`verify`: BROKEN (removed), a false report of tampering), and the
    message sent the operator to restore a topic that was never damaged.
    """

    def __init__(self, read_from: str, named: str) -> None:
        super().__init__(
            f"the replica of this data directory (ledger-replica.db) was read from topic "
            f"{read_from}, but the settings name {named} (LEDGER_TOPIC_PREFIX changed?): set "
            f"the prefix back, or, to run this data directory on {named}, move its "
            "ledger-replica.db and views.db away (both are rebuilt from the topic)"
        )


class KafkaLedgerRecorder(LedgerSQLiteRecorder):
    log_is_elsewhere = True
    store_format = REPLICA

    def __init__(
        self,
        datastore: SQLiteDatastore,
        events_table_name: str = "stored_events",
        *,
        link: KafkaLink,
    ) -> None:
        self.positions_table = f"{events_table_name}_kafka_positions"
        self.located_table = f"{events_table_name}_kafka_located"
        self.layout_table = f"{events_table_name}_kafka_layout"
        self.topic_table = f"{events_table_name}_kafka_topic"
        self.intake_table = f"{events_table_name}_kafka_intake"
        super().__init__(datastore, events_table_name)
        self.link = link
        self._producer: KafkaProducer | None = None
        self._fenced = False
        # The last ACL refusal of an append or of taking the partitions, until one succeeds.
        self._access_refused: str | None = None
        self._owning = threading.Lock()
        # One transaction at a time on the producer, whichever thread asks.
        self._transacting = threading.Lock()
        # The transaction `open_intake` began, held (with `_transacting`) until the append.
        self._opened: _Opened | None = None
        # The places in the topic of the positions the last committed append wrote, and, per
        # appending thread, those of the append still in its replica transaction.
        self._appended: dict[int, tuple[int, int]] = {}
        self._appending = threading.local()
        # Wall-clock seconds spent in Kafka transactions, from the first send (or the begin)
        # to the commit's answer: what the intake writer's stats split a batch's time by.
        self.transaction_s = 0.0

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {self.positions_table} ("
            "partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL)",
            # Where each replica row is in the ledger topic: receipts name that position.
            f"CREATE TABLE IF NOT EXISTS {self.located_table} ("
            "position INTEGER PRIMARY KEY, partition INTEGER NOT NULL, offset INTEGER NOT NULL)",
            # Which records of the topic are the ledger's: projections read only those.
            f"CREATE UNIQUE INDEX IF NOT EXISTS {self.located_table}_by_offset "
            f"ON {self.located_table} (partition, offset)",
            # The ledger topic's partition count when the replica first read it: one row.
            f"CREATE TABLE IF NOT EXISTS {self.layout_table} ("
            "id INTEGER PRIMARY KEY CHECK (id = 0), partitions INTEGER NOT NULL)",
            # The ledger topic the replica was read from: one row (`_known_topic`).
            f"CREATE TABLE IF NOT EXISTS {self.topic_table} ("
            "id INTEGER PRIMARY KEY CHECK (id = 0), topic TEXT NOT NULL)",
            # How far the intake writer's transactions read each intake partition, from the
            # ledger records' `intake` headers (`intake_positions`).
            f"CREATE TABLE IF NOT EXISTS {self.intake_table} ("
            "topic_id TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, "
            "PRIMARY KEY (topic_id, partition))",
        ]

    def log_coordinates(self, positions: Sequence[int]) -> dict[int, tuple[int, int]]:
        # The receipts of an append ask for the places it has just written: those are known
        # without reading them back (a query per intake batch or HTTP group).
        appended = self._appended
        found = {p: appended[p] for p in positions if p in appended}
        missing = [p for p in positions if p not in found]
        if missing:
            with self.datastore.transaction(commit=False) as c:
                for row in rows_in(
                    c,
                    f"SELECT position, partition, offset FROM {self.located_table} "
                    "WHERE position IN ({})",
                    missing,
                ):
                    found[int(row[0])] = (int(row[1]), int(row[2]))
        return found

    def recorded_at_before(self, positions: Mapping[int, int]) -> str | None:
        """The latest `recorded_at` of the facts before these positions (partition -> next
        offset) of the ledger topic: what views standing there know (`recorded_at_through`
        of embedded mode, for a position per partition).

        Within a partition the writer's records follow its stamps, so the last fact before a
        position is its latest; the last `_BATCH_WINDOW` are looked at, as embedded mode
        does for batches written before their facts were in stamp order."""
        latest: str | None = None
        with self.datastore.transaction(commit=False) as c:
            for partition, offset in positions.items():
                c.execute(
                    f"SELECT MAX(recorded_at) FROM (SELECT i.recorded_at FROM "
                    f"{self.located_table} AS l JOIN {self.index_table} AS i "
                    "ON i.position = l.position WHERE l.partition = ? AND l.offset < ? "
                    "AND i.recorded_at IS NOT NULL ORDER BY l.offset DESC LIMIT ?)",
                    (partition, offset, _BATCH_WINDOW),
                )
                row = c.fetchone()
                if row is not None and row[0] is not None and (latest is None or row[0] > latest):
                    latest = str(row[0])  # UTC isoformat stamps sort as their instants
        return latest

    def replica_state(self) -> tuple[int, dict[int, int], dict[int, tuple[int, str]]]:
        """In one read: the replica's last position, the next offset of each partition, and
        each partition's last record of the ledger's, with its hash (a views' `log_mark`).
        What views built from the replica up to that position stand at
        (`projections.rebuild`, filling an empty store)."""
        with self.datastore.transaction(commit=False) as c:
            upto = self._max_notification_id(c) or 0
            c.execute(f"SELECT partition, next_offset FROM {self.positions_table}")
            positions = {int(row[0]): int(row[1]) for row in c.fetchall()}
            marks: dict[int, tuple[int, str]] = {}
            for partition in positions:
                c.execute(
                    f"SELECT l.offset, i.hash FROM {self.located_table} AS l "
                    f"JOIN {self.index_table} AS i ON i.position = l.position "
                    "WHERE l.partition = ? AND l.position <= ? ORDER BY l.offset DESC LIMIT 1",
                    (partition, upto),
                )
                row = c.fetchone()
                if row is not None:
                    marks[partition] = (int(row[0]), str(row[1]))
        return upto, positions, marks

    def accepted_offsets(self, partition: int, first: int, last: int) -> set[int]:
        """The offsets in [first, last] of records this replica applied (the ledger's own)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT offset FROM {self.located_table} "
                "WHERE partition = ? AND offset BETWEEN ? AND ?",
                (partition, first, last),
            )
            return {int(row[0]) for row in c.fetchall()}

    def indexed_between(
        self, partition: int, first: int, last: int
    ) -> dict[int, tuple[UUID, int, str]]:
        """The facts this replica applied from offsets [first, last] of a ledger partition:
        offset -> (aggregate, version, hash)."""
        with self.datastore.transaction(commit=False) as c:
            as_tuples(c).execute(
                f"SELECT l.offset, i.originator_id, i.originator_version, i.hash "
                f"FROM {self.located_table} AS l JOIN {self.index_table} AS i "
                "ON i.position = l.position "
                "WHERE l.partition = ? AND l.offset BETWEEN ? AND ?",
                (partition, first, last),
            )
            return {int(o): (UUID(a), int(v), str(h)) for o, a, v, h in c.fetchall()}

    def hash_at_offset(self, partition: int, offset: int) -> str | None:
        """The hash of the ledger's record at this place of the topic, if the replica holds
        one there."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT i.hash FROM {self.located_table} AS l JOIN {self.index_table} AS i "
                "ON i.position = l.position WHERE l.partition = ? AND l.offset = ?",
                (partition, offset),
            )
            row = c.fetchone()
        return None if row is None else str(row[0])

    def first_subjects(self) -> list[UUID]:
        """The first subject of each ledger partition. A replica applies the partitions'
        records interleaved as it polls them, so its first row is not the log's first: a
        subject recorded after a backup of `keys.db` could come first and refuse that backup.
        The subject recorded first of all is first in its partition, so every key store of
        this log holds at least one of these (each lookup stops at the partition's first)."""
        firsts = []
        with self.datastore.transaction(commit=False) as c:
            for partition in range(self.link.partitions):
                c.execute(
                    f"SELECT e.originator_id FROM {self.located_table} AS l "
                    f"JOIN {self.events_table_name} AS e ON e.rowid = l.position "
                    "WHERE l.partition = ? AND e.topic LIKE ? ORDER BY l.offset LIMIT 1",
                    (partition, SUBJECT_TOPICS),
                )
                row = c.fetchone()
                if row is not None:
                    firsts.append(UUID(str(row[0])))
        return firsts

    def tree_partitions(self) -> range:
        return range(self.link.partitions)

    def _tree_order_sql(self) -> str | None:
        # The topic's own order, partition by partition: every replica's trees are the same,
        # and a rebuilt replica signs the roots its predecessor signed.
        return (
            f"SELECT i.originator_id, i.originator_version, i.hash, i.position, l.partition "
            f"FROM {self.index_table} AS i JOIN {self.located_table} AS l "
            "ON l.position = i.position ORDER BY l.partition, l.offset"
        )

    def _locate(self, c: SQLiteCursor, rows: Sequence[tuple[int, int, int]]) -> None:
        c.executemany(f"INSERT INTO {self.located_table} VALUES (?, ?, ?)", rows)

    def intake_positions(self, topic_id: str) -> dict[int, int]:
        """The next offset of each partition of this intake topic that the ledger's records
        say the intake writer committed (as far as the replica has read the ledger)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT partition, next_offset FROM {self.intake_table} WHERE topic_id = ?",
                (topic_id,),
            )
            return {int(row[0]): int(row[1]) for row in c.fetchall()}

    def _read_intake(self, c: SQLiteCursor, read: Mapping[tuple[str, int], int]) -> None:
        c.executemany(
            f"INSERT INTO {self.intake_table} VALUES (?, ?, ?) "
            "ON CONFLICT (topic_id, partition) "
            "DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
            [(topic, partition, offset) for (topic, partition), offset in read.items()],
        )

    # ---- reading the partitions ----------------------------------------------------------

    def positions(self) -> dict[int, int]:
        """The next offset to apply of each partition (a position is partition and offset)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT partition, next_offset FROM {self.positions_table}")
            return {int(row[0]): int(row[1]) for row in c.fetchall()}

    def catch_up(
        self,
        stopping: Callable[[], bool] = never,
        kept: KeptReaders | None = None,
        away: Callable[[], bool] | None = None,
    ) -> int:
        """Apply every committed record after the replica's positions; returns how many.

        Reads with read_committed up to each partition's last stable offset. Offsets have
        gaps (transaction markers, aborted records), so the next position is the consumer's,
        never the last record's offset plus one assumed contiguous.

        Every question to the broker is asked a step at a time, `stopping` checked between
        (`ledger.kafka.reading`): the views' reader catches the replica up when it is
        behind, and a worker stopped with SIGTERM in that moment of a broker outage waited
        for kafka-python's 30 s timeouts (its consumer's first contact, the end offsets).

        With `kept`, its consumers are used and left open (a caller that catches up again
        and again), or closed if the read fails; otherwise two are made for this read.
        `away` ends the read as one whose brokers are away (default: every bootstrap
        address refused connections for seconds, `BrokerWatch`).
        """
        timeout = self.link.catch_up_timeout_s
        if away is None:
            away = BrokerWatch(self.link.bootstrap)
        try:
            consumer = (
                kept.committed(timeout_s=timeout, stopping=stopping, away=away)
                if kept is not None
                else reader(
                    self.link.bootstrap,
                    "consent-ledger-replica",
                    timeout_s=timeout,
                    stopping=stopping,
                    away=away,
                )
            )
        except ReadTimedOut as error:
            raise LedgerUnavailable(str(error)) from error
        failed = True
        applied = 0
        partitions = self.link.partitions
        try:
            tps = [TopicPartition(self.link.topics.ledger, p) for p in range(partitions)]
            consumer.assign(tps)
            start = self.positions()
            read_from = self._known_topic()
            if read_from is not None and read_from != self.link.topics.ledger:
                raise ReplicaOfAnotherTopic(read_from, self.link.topics.ledger)
            known = self._known_partitions()
            if known is not None and known != partitions:
                raise self._partitions_changed(f"this replica was read from {known}")
            high = high_watermarks(
                self.link.bootstrap,
                tps,
                timeout_s=timeout,
                stopping=stopping,
                away=away,
                kept=kept,
            )
            ends = settled_ends(
                consumer, tps, high, timeout_s=timeout, stopping=stopping, away=away
            )
            firsts = answered(
                lambda ms: consumer.beginning_offsets(tps, timeout_ms=ms),
                timeout_s=timeout,
                stopping=stopping,
                away=away,
            )
            self._check_nothing_removed(firsts, high, start)
            for tp in tps:
                if tp.partition in start:
                    consumer.seek(tp, start[tp.partition])
                else:
                    consumer.seek_to_beginning(tp)
            reading = polls_to_end(
                consumer, tps, timeout_s=timeout, end=ends, stopping=stopping, away=away
            )
            foreign: list[Any] = []
            for polled in reading:
                events: list[StoredEvent] = []
                where: list[tuple[int, int]] = []
                facts: dict[tuple[UUID, int], FactKey] = {}
                intake_read: dict[tuple[str, int], int] = {}
                records = (r for rs in polled.values() for r in rs)
                for record, stored, fact in ledger_events(records, self.link.record_key, foreign):
                    if len(record.headers) > 2:  # an intake transaction's first record
                        _intake_read(record.headers, intake_read)
                    if partition_of(record.key, partitions) != record.partition:
                        raise self._partitions_changed(
                            f"the record at partition {record.partition}, offset "
                            f"{record.offset} was written when it had another number"
                        )
                    events.append(stored)
                    where.append((record.partition, record.offset))
                    if fact is not None:
                        facts[(_uuid(stored.originator_id), stored.originator_version)] = fact
                if not events and not start and not applied:
                    # Nothing of the ledger's yet in a replica built afresh: its positions wait
                    # for a record of the ledger's, so that a topic with none under this key
                    # (`_not_this_ledgers`) is refused again at every start, not only the first.
                    continue
                next_offsets = {tp.partition: consumer.position(tp) for tp in tps}
                with self.datastore.transaction(commit=True) as c:
                    # Another process sharing this replica (the writer, or another reader)
                    # may have applied some of these records since the positions were read:
                    # take the write lock first, then keep only what is still ahead of it.
                    self.take_write_lock(c)
                    c.execute(f"SELECT partition, next_offset FROM {self.positions_table}")
                    current = {int(row[0]): int(row[1]) for row in c.fetchall()}
                    ahead = [i for i, (p, o) in enumerate(where) if o >= current.get(p, 0)]
                    ahead = self._in_sequence(c, events, where, ahead, facts)
                    if ahead:
                        fresh = [events[i] for i in ahead]
                        rows = LedgerSQLiteRecorder._insert_events(self, c, fresh, facts=facts)
                        assert rows is not None
                        self._locate(c, [(r, *where[i]) for r, i in zip(rows, ahead, strict=True)])
                    self._set_positions(c, next_offsets)
                    self._read_intake(c, intake_read)
                applied += len(ahead)
            if foreign and not start and not applied:
                raise self._not_this_ledgers(len(foreign))
            # Remembered once: the count, as every record read sat where its key puts it;
            # the topic, once it held a record of the ledger's.
            remember: list[tuple[str, object]] = []
            if known is None:
                remember.append((self.layout_table, partitions))
            if read_from is None and (start or applied):
                remember.append((self.topic_table, self.link.topics.ledger))
            if remember:
                with self.datastore.transaction(commit=True) as c:
                    for table, value in remember:
                        c.execute(f"INSERT OR IGNORE INTO {table} VALUES (0, ?)", (value,))
            failed = False
        except ReadTimedOut as error:
            raise LedgerUnavailable(str(error)) from error
        except KafkaError as error:
            raise LedgerUnavailable(f"the ledger topic could not be read: {error}") from error
        finally:
            if kept is None:
                consumer.close()
            elif failed:
                kept.close()
        return applied

    def _check_nothing_removed(
        self,
        firsts: Mapping[TopicPartition, int],
        ends: Mapping[TopicPartition, int],
        read: Mapping[int, int],
    ) -> None:
        """Refuse a ledger topic that lost records: the log of record keeps every one.

        Its records are never deleted (retention -1, no compaction, checked at start), so a
        partition that does not begin at offset 0 had records deleted (the DeleteRecords
        admin call), and one that ends before where this replica read it to was deleted
        and made again, or cut short. Before this check, a writer carried on appending to
        a topic made again, empty: the history its next facts chain to was gone from the
        log, and a replica built afresh from it would have dropped them as out of sequence.

        `ends` are the high watermarks (where the partitions end for any reader), not the
        last stable offsets: a transaction's markers reach its partitions a moment after
        its commit returns, and the writer records its positions in the replica between
        the two, so the last stable offset can stand short of them for that moment.
        """
        topic = self.link.topics.ledger
        for tp in sorted(firsts, key=lambda t: t.partition):
            if firsts[tp] > 0:
                raise RecordsLost(
                    f"topic {topic} partition {tp.partition} begins at offset {firsts[tp]}: "
                    "records were deleted from the log of record; restore the topic from a "
                    "copy of it before any process of the ledger runs on it",
                    tp.partition,
                    0,
                )
            if tp.partition in read and read[tp.partition] > ends[tp]:
                raise RecordsLost(
                    f"topic {topic} partition {tp.partition} ends at offset {ends[tp]}, "
                    f"short of offset {read[tp.partition]} that this replica read it to: records "
                    "were removed from the log of record (was the topic deleted and made "
                    "again?); restore the topic from a copy of it before any process of the "
                    "ledger runs on it",
                    tp.partition,
                    ends[tp],
                )

    def _not_this_ledgers(self, records: int) -> TopicRefused:
        """A replica built afresh found records, and none the ledger's under this key.

        The record key comes from the key store, or from the master key for a new store: a
        process given another master key (or another ledger's key store) sees every record
        as foreign and the ledger as empty. It used to carry on, and a write (`init`, a
        fact) put a second ledger's records into the topic among the first one's. Records
        that fail among ones that verify are someone else's writes, skipped and named.
        """
        return TopicRefused(
            f"none of the {records} records read from topic {self.link.topics.ledger} was "
            "written under this process's record key: the topic is another ledger's, or this "
            "process has another LEDGER_MASTER_KEY or key store (keys.db) than the processes "
            "that wrote it (every process of one ledger needs the same)"
        )

    def _known_topic(self) -> str | None:
        """The ledger topic this replica was read from (replicas made before it was kept
        learn it at their next catch-up)."""
        found = self._remembered(self.topic_table, "topic")
        return None if found is None else str(found)

    def _known_partitions(self) -> int | None:
        """How many partitions the ledger topic had when this replica first read it."""
        found = self._remembered(self.layout_table, "partitions")
        return None if found is None else int(found)

    def _remembered(self, table: str, column: str) -> Any:
        """The value of a one-row table of what the replica first read, or None."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT {column} FROM {table}")
            row = c.fetchone()
        return None if row is None else row[0]

    def _partitions_changed(self, evidence: str) -> TopicRefused:
        """Partitions were added to the ledger topic (Kafka cannot remove them).

        A writer puts each subject's facts in the partition its key hashes to among the
        topic's partitions, and fences earlier writers by a transactional id naming them all:
        with more partitions, a subject's next facts land in another partition than its
        earlier ones (readers that go partition by partition then see them out of order),
        and a writer started now does not fence one still running with the old number, so
        both append. Refused before anything is read into the replica or written.
        """
        return TopicRefused(
            f"topic {self.link.topics.ledger} has {self.link.partitions} partitions, but "
            f"{evidence}: partitions must never be added to the log of record (a subject's "
            "facts would be split between partitions, and writers would no longer fence "
            "each other); see deploy/CONFIG.md"
        )

    def _in_sequence(
        self,
        c: SQLiteCursor,
        events: Sequence[StoredEvent],
        where: Sequence[tuple[int, int]],
        indices: Sequence[int],
        facts: Mapping[tuple[UUID, int], FactKey],
    ) -> list[int]:
        """The records that continue their aggregate's versions; others are skipped, loudly.

        Only this writer appends to the ledger topic, so a record out of sequence (a version
        already held, or one skipped) or repeating a recorded `event_id` was put there by
        someone else. Applying it would stop every later catch-up on the replica's unique
        constraints, or chain the next fact to it; it is left out, logged by partition and
        offset, and `verify` names it.
        """
        keys = [
            facts[(_uuid(events[i].originator_id), events[i].originator_version)]
            for i in indices
            if (_uuid(events[i].originator_id), events[i].originator_version) in facts
        ]
        by_tenant: dict[str, list[str]] = {}
        for known in keys:
            by_tenant.setdefault(known.tenant, []).append(known.event_id)
        seen: set[tuple[str, str]] = set()
        for tenant, event_ids in by_tenant.items():
            seen.update((tenant, event_id) for event_id in self._find_facts(c, tenant, event_ids))
        versions = self._versions_of(c, sorted({_uuid(events[i].originator_id) for i in indices}))
        kept: list[int] = []
        for i in indices:
            stored = events[i]
            aggregate = _uuid(stored.originator_id)
            key = facts.get((aggregate, stored.originator_version))
            repeated = key is not None and (key.tenant, key.event_id) in seen
            if repeated or stored.originator_version != versions.get(aggregate, 0) + 1:
                partition, offset = where[i]
                log.warning(
                    "skipped a ledger record out of its aggregate's sequence "
                    "(partition %d, offset %d)",
                    partition,
                    offset,
                    extra={"partition": partition, "offset": offset},
                )
                continue
            versions[aggregate] = stored.originator_version
            if key is not None:
                seen.add((key.tenant, key.event_id))
            kept.append(i)
        return kept

    def _set_positions(self, c: SQLiteCursor, offsets: Mapping[int, int]) -> None:
        c.executemany(
            f"INSERT INTO {self.positions_table} VALUES (?, ?) ON CONFLICT (partition) "
            "DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
            list(offsets.items()),
        )

    # ---- owning and writing ----------------------------------------------------------------

    @property
    def is_owner(self) -> bool:
        return self._producer is not None

    @property
    def access_refused(self) -> str | None:
        """Why the cluster refused this writer an ACL at its last attempt to write or to take
        the partitions, if it did and none has succeeded since (/readyz says it)."""
        return self._access_refused

    @property
    def fenced(self) -> bool:
        """Known only once a write was refused: Kafka tells a fenced producer when it writes."""
        return self._fenced

    def own(self, stopping: Callable[[], bool] = never) -> None:
        """Become the writer: fence earlier writers, then catch up with what they committed
        (a catch-up `stopping` ends, as `catch_up`'s)."""
        with self._owning:
            if self._fenced:
                raise WriterFenced("another writer owns the ledger partitions")
            if self._producer is not None:
                return
            producer = self._initialised_producer(stopping)
            self._access_refused = None
            know_the_quorum(self.link.bootstrap)
            # Writable only once the replica holds everything committed before the fence:
            # appending on a stale replica would reuse versions the topic already has. A
            # write's own wait (`WriteWatch`): with the controllers' quorum lost just after
            # the fence (two brokers of the compose file's three SIGKILLed), this catch-up
            # waited out its 30 s answer timeout, and every write queued behind the owning
            # with it (an HTTP publish refused after 27 s), where a write is refused once
            # the quorum is said lost, about 11 s.
            try:
                with contextlib.closing(WriteWatch(self.link.bootstrap)) as watch:
                    self.catch_up(stopping, away=watch)
            except BaseException:
                close_producer(producer, 5)
                raise
            self._producer = producer

    def _initialised_producer(self, stopping: Callable[[], bool]) -> KafkaProducer:
        """The transactional producer, its id registered (which fences earlier writers).

        A broker whose `transaction.max.timeout.ms` is below PRODUCER_TUNING's refuses the
        id (InvalidTransactionTimeout), where it took kafka-python's 60 s default: the
        writer then runs with that default, and says what it costs. One below that too is
        refused with the setting to raise, where it said only kafka-python's error.

        Made, and its id registered, a step at a time (`max_block_ms` is the step): with the
        broker away each waited kafka-python's 30 s and 60 s, the stop and the refused
        connections unseen. kafka-python documents both as safe to ask again.
        """
        timeouts = [int(str(PRODUCER_TUNING["transaction_timeout_ms"])), FALLBACK_TIMEOUT_MS]
        with contextlib.closing(WriteWatch(self.link.bootstrap)) as away:
            return self._initialised_with(timeouts, stopping, away)

    def _initialised_with(
        self, timeouts: list[int], stopping: Callable[[], bool], away: Callable[[], bool]
    ) -> KafkaProducer:
        for timeout_ms in timeouts:
            try:
                return self._registered_producer(timeout_ms, stopping, away)
            except ReadTimedOut as error:
                raise LedgerUnavailable(f"could not become the ledger writer: {error}") from error
            except KafkaError as error:
                refused = refused_access(error)
                if refused is not None:
                    self._access_refused = (
                        f"could not become the ledger writer (transactional id "
                        f"{self.link.transactional_id}): {refused}"
                    )
                    raise AccessRefused(self._access_refused) from error
                capped = "InvalidTransactionTimeout" in str(error)
                if capped and timeout_ms == timeouts[-1]:
                    raise LedgerUnavailable(
                        "could not become the ledger writer: the brokers' "
                        f"transaction.max.timeout.ms is below {timeout_ms} ms, the shortest "
                        "transaction timeout the writer takes; raise it on every broker "
                        f"({error})"
                    ) from error
                if capped:
                    log.warning(
                        "the brokers' transaction.max.timeout.ms is below %d ms: the writer's "
                        "transactions time out after %d ms, and a writer paused longer "
                        "mid-transaction will stop as if fenced",
                        timeout_ms,
                        timeouts[-1],
                    )
                    continue
                raise LedgerUnavailable(f"could not become the ledger writer: {error}") from error
        raise AssertionError("unreachable: the last timeout returns or raises")

    def _registered_producer(
        self, timeout_ms: int, stopping: Callable[[], bool], away: Callable[[], bool]
    ) -> KafkaProducer:
        """A transactional producer with `timeout_ms` for its transactions, its id
        registered; closed again if that fails."""
        producer: KafkaProducer = bootstrapped(
            lambda ms: Producer(
                bootstrap_servers=self.link.bootstrap,
                transactional_id=self.link.transactional_id,
                **{**PRODUCER_TUNING, "transaction_timeout_ms": timeout_ms},
                client_id="consent-ledger-writer",
                bootstrap_timeout_ms=ms,
                max_block_ms=STEP_MS,
            ),
            timeout_s=self.link.catch_up_timeout_s,
            stopping=stopping,
            away=away,
        )
        try:
            answered(
                lambda ms: producer.init_transactions() or True,
                timeout_s=self.link.catch_up_timeout_s,
                stopping=stopping,
                away=away,
            )
        except BaseException:
            close_producer(producer, 5)
            raise
        return producer

    def _insert_events(
        self,
        c: SQLiteCursor,
        stored_events: Sequence[StoredEvent],
        *,
        facts: Mapping[tuple[UUID, int], FactKey] | None = None,
        intake: IntakeCommit | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        if self._producer is None:
            raise LedgerUnavailable("this process is not the ledger writer (call own() first)")
        positions = super()._insert_events(c, stored_events, facts=facts, **kwargs)
        read = _read_by(intake)
        header = intake_header(intake.topic_id, read) if intake is not None and read else None
        records = [
            encode(
                s,
                (facts or {}).get((_uuid(s.originator_id), s.originator_version)),
                self.link.partitions,
                self.link.record_key,
                intake=None if i else header,
            )
            for i, s in enumerate(stored_events)
        ]
        for stored, record in zip(stored_events, records, strict=True):
            size = record_size(record)
            if size > self.link.record_limit:
                raise RecordTooLarge(
                    _uuid(stored.originator_id),
                    stored.originator_version,
                    size,
                    self.link.record_limit,
                    f"the max.message.bytes of topic {self.link.topics.ledger}",
                )
        offsets, where = self._transact(records, intake)
        assert positions is not None
        located = [(r, p, o) for r, (p, o) in zip(positions, where, strict=True)]
        self._appending.located = located  # committed to the topic, from here on
        self._locate(c, located)
        self._set_positions(c, offsets)
        if read:
            assert intake is not None
            self._read_intake(c, {(intake.topic_id, p): o for p, o in read.items()})
        return positions

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        self.own()
        self._appending.located = []
        try:
            positions = super().insert_events(stored_events, **kwargs)
        except BaseException:
            if self._appending.located:
                # Kafka committed, the replica did not (SQLite writes its pages at COMMIT, so
                # a full disk fails there): the topic holds facts this replica lacks, and
                # appending on from it would reuse their versions. Let go of the producer;
                # the next write owns the partitions again, which catches up first.
                log.error("the replica missed an append that Kafka committed; catching up")
                self._drop_producer()
            raise
        # Only now is the replica's transaction committed: until then a position may yet be
        # rolled back and given to another fact.
        self._appended = {r: (p, o) for r, p, o in self._appending.located}
        return positions

    def commit_extra(self, extra: object) -> None:
        """An intake batch that adds no fact: its rejects and offsets, in one transaction."""
        assert isinstance(extra, IntakeCommit)
        self.own()
        self._transact([], extra)

    def open_intake(self, offsets: Mapping[TopicPartition, int], group: Any) -> None:
        """Begin the transaction of an intake batch now, and send its offsets meanwhile.

        Adding consumed offsets to a transaction takes two round trips to the broker's
        coordinators (AddOffsetsToTxn, then TxnOffsetCommit), which kafka-python's
        `send_offsets_to_transaction` waits out. The offsets are known as soon as the batch is
        polled, so their requests are begun now (`transaction_calls.begin_offsets`: the
        producer's network thread sends them) while this thread checks and seals the
        batch. The append (`insert_events` or `commit_extra`, with an IntakeCommit of the same
        offsets) then joins them before it commits; a batch that will not be appended is
        `abandon`ed. Call it holding the application's lock, as appends are made: the
        transaction is held from here to the append.
        """
        self.own()
        self._transacting.acquire()
        try:
            producer = self._producer
            if producer is None:
                raise LedgerUnavailable("this process is not the ledger writer")
            to_send = _to_commit(offsets)
            try:
                producer.begin_transaction()
            except KafkaError as error:
                raise self._refused(error) from error
            try:
                # On their way while the batch is checked and sealed; the append waits.
                sent = begin_offsets(producer, to_send, group)
            except KafkaError as error:
                raise self._refused(error) from error
            except BaseException:
                # Refused before it was sent (the group's metadata): the transaction
                # begun for it is ended, so that the producer can begin the next one.
                self._abort(producer)
                raise
            self._opened = _Opened(threading.get_ident(), dict(offsets), sent)
        except BaseException:
            self._transacting.release()
            raise

    def abandon(self) -> None:
        """Abort the transaction this thread opened with `open_intake`, if it is still open."""
        opened = self._take_opened()
        if opened is None:
            return
        try:
            try:
                # An abort must not overtake the offsets in flight.
                self._settled(opened.sent)
            except ReadTimedOut:
                # Nor wait for a broker that did not take them: the next owner's fence
                # aborts the transaction.
                self._drop_producer(close_s=0)
            except Exception:
                pass
            if self._producer is not None:
                self._abort(self._producer)
        finally:
            self._transacting.release()

    def _abort(self, producer: KafkaProducer) -> None:
        try:
            self._settled(begin_abort(producer))
        except KafkaError as error:
            # Whatever state the producer is in, it is dropped: the next append fences it.
            self._refused(error)
        except ReadTimedOut:
            self._drop_producer(close_s=0)

    def _take_opened(self) -> _Opened | None:
        opened = self._opened
        if opened is None or opened.thread != threading.get_ident():
            return None
        self._opened = None
        return opened

    def _transact(
        self, records: Sequence[Any], intake: IntakeCommit | None
    ) -> tuple[dict[int, int], list[tuple[int, int]]]:
        """Append in one transaction; the next offset per partition, and each record's place."""
        opened = self._take_opened()
        if opened is None:
            self._transacting.acquire()
        started = time.perf_counter()
        try:
            return self._transact_once(records, intake, opened)
        finally:
            self.transaction_s += time.perf_counter() - started
            self._transacting.release()

    def _transact_once(
        self, records: Sequence[Any], intake: IntakeCommit | None, opened: _Opened | None
    ) -> tuple[dict[int, int], list[tuple[int, int]]]:
        producer = self._producer
        if producer is None:
            raise LedgerUnavailable("this process is not the ledger writer")
        topics = self.link.topics
        try:
            self._know_partitions(producer, records, intake)
            if opened is None:
                producer.begin_transaction()
            futures = send_records(producer, topics.ledger, records, self.link.record_limit)
            if intake is not None:
                for key, value, headers in intake.rejects:
                    producer.send(topics.rejected, key=key, value=value, headers=headers)
            if opened is not None:
                self._settled(opened.sent)  # raises what sending raised
                if intake is None or intake.offsets != opened.offsets:
                    raise AssertionError("an opened intake transaction appended other offsets")
            elif intake is not None and intake.offsets:
                offsets, group = _to_commit(intake.offsets), intake.group
                self._settled(begin_offsets(producer, offsets, group))
            failpoint("kafka-sent")
            self._commit(producer)
            failpoint("kafka-committed")
            written: dict[int, int] = {}
            where: list[tuple[int, int]] = []
            for future in futures:
                meta = future.get(timeout=0)
                where.append((meta.partition, meta.offset))
                written[meta.partition] = max(written.get(meta.partition, 0), meta.offset + 1)
            return written, where
        except KafkaError as error:
            raise self._refused(error) from error
        except ReadTimedOut as error:  # the partitions or the offsets not answered
            # No abort: it would wait for the same broker. The next owner's fence aborts
            # whatever this transaction holds.
            self._drop_producer(close_s=0)
            raise LedgerUnavailable(f"the broker did not take the append: {error}") from error
        except BaseException:
            # A failure of the ledger's own mid-transaction: abort it, so that nothing of it
            # commits and the producer can begin the next one.
            if self._producer is producer:
                self._abort(producer)
            raise

    def _commit(self, producer: KafkaProducer) -> None:
        """Commit the transaction (`_settled`). Past the wait, whether the broker committed
        is unknown: the producer is let go without an abort, and the next write's `own()`
        settles the transaction (init_transactions completes or aborts it) and catches the
        replica up with whatever it committed; a publisher that retries the same facts gets
        their first receipts if it did."""
        try:
            self._settled(begin_commit(producer))
            self._access_refused = None
        except ReadTimedOut as error:
            self._drop_producer(close_s=0)
            raise LedgerUnavailable(
                f"the broker did not confirm the append's commit ({error}); "
                "the next write settles whether it was committed"
            ) from error

    def _settled(self, call: Begun) -> None:
        """Wait for one of the producer's transactional calls (its commit, abort, or the
        offsets it adds), a step at a time: `ReadTimedOut` past the answer timeout or once
        the brokers refuse connections; else what the call raised, if it did.

        kafka-python waits for each without a bound: a broker stopped while an append was
        on its way held the append (and the HTTP service's writer thread, and every publish
        queued behind it) for as long as the broker stayed away, minutes in the test that
        found it. The call is begun (`ledger.kafka.transaction_calls`) and its result waited
        for here, so nothing is left waiting when this gives up.
        """
        with contextlib.closing(WriteWatch(self.link.bootstrap)) as watch:
            answered(
                lambda ms: call.done(ms) or None,
                timeout_s=self.link.catch_up_timeout_s,
                away=watch,
            )
        call.result()

    def _know_partitions(
        self, producer: KafkaProducer, records: Sequence[Any], intake: IntakeCommit | None
    ) -> None:
        """Wait, a step at a time, until the producer knows the partitions it will send to.

        A send waits for them (kafka-python forgets them when it loses its broker) for
        `max_block_ms`; at its default of 60 s, a publish during a broker outage was
        answered after a minute. Known, a send does not wait.
        """
        topics = [self.link.topics.ledger] if records else []
        if intake is not None and intake.rejects:
            topics.append(self.link.topics.rejected)
        with contextlib.closing(WriteWatch(self.link.bootstrap)) as away:
            for topic in topics:

                def known(ms: int, topic: str = topic) -> Any:
                    return producer.partitions_for(topic)

                answered(known, timeout_s=self.link.catch_up_timeout_s, away=away)

    def _refused(self, error: KafkaError) -> Exception:
        """What the broker's refusal means for this writer, the producer dropped either way.

        Fenced: another writer owns the partitions, and this one may never append again.
        Otherwise the outcome of the transaction is unknown only if the commit itself failed;
        either way the next write fences, resolves the transaction (commit or abort) and
        catches up before appending.
        """
        held = held_error(self._producer) if self._producer is not None else None
        if isinstance(error, FENCED) or isinstance(held, FENCED):
            self._fenced = True
            self._drop_producer()
            return WriterFenced("another writer owns the ledger partitions")
        self._drop_producer(abort=True)
        refused = refused_access(error) or (refused_access(held) if held is not None else None)
        if refused is not None:
            self._access_refused = refused
            return AccessRefused(refused)
        return LedgerUnavailable(f"the broker did not take the append: {error}")

    def _drop_producer(self, abort: bool = False, close_s: float = 5) -> None:
        """`close_s`: how long the producer may take to send what it holds; 0 when the
        broker is known to be away, whose records the next owner's fence aborts anyway."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        # The producer is being thrown away: its abort and close may fail like it did.
        if abort:
            try:
                self._settled(begin_abort(producer))
            except ReadTimedOut:
                close_s = 0
            except Exception:
                pass
        close_producer(producer, close_s)

    def close(self) -> None:
        self._drop_producer(abort=True)


def _read_by(intake: IntakeCommit | None) -> dict[int, int]:
    """The next offset per intake partition an intake transaction commits, if it has a topic
    id to name them under."""
    if intake is None or not intake.topic_id:
        return {}
    return {tp.partition: offset for tp, offset in intake.offsets.items()}


def _intake_read(headers: Sequence[tuple[str, bytes]], into: dict[tuple[str, int], int]) -> None:
    said = intake_read(headers)
    if said is None:
        return
    topic_id, next_offsets = said
    for partition, offset in next_offsets.items():
        key = (topic_id, partition)
        into[key] = max(into.get(key, 0), offset)


def _to_commit(offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    """Next offsets to consume, as a transaction commits them for the intake group."""
    return {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}


def _uuid(originator_id: UUID | str) -> UUID:
    return originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
