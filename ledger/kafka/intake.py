"""The intake writer: publishers' facts from the intake topic into the ledger, exactly once.

Each poll is one batch and one Kafka transaction: the accepted facts go to the ledger topic,
the refused and malformed records to the rejected topic (code, message, where they came from
and the original bytes), and the intake offsets are committed with them through
`send_offsets_to_transaction`, sent as soon as the batch is polled so that their round trips
to the broker overlap with its checks (`KafkaLedgerRecorder.open_intake`). A crash anywhere
leaves either all of that or none of it; the restarted writer fences the dead one, resolves
its open transaction and resumes from the committed offsets.

Poison never blocks a partition: a record that is not a fact is rejected with its code; a
record that makes the writer itself fail is isolated (the batch is retried one record at a
time) and rejected as `processing_failed`. A failure of the writer's storage (a full disk, a
key store locked by another process) is no record's fault: the batch is read again and the
writer waits for the storage as it waits for the broker, rejecting nothing.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, OffsetOutOfRangeError

from ledger.application import ConsentLedger
from ledger.envelope import Fact, parse_fact_bytes
from ledger.errors import Code, FactRejected
from ledger.failpoints import failpoint
from ledger.kafka.clients import Consumer
from ledger.kafka.publish import names_the_reference
from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.reading import ReadTimedOut, answered, bootstrapped, committed_offsets, never
from ledger.kafka.recorder import (
    IntakeCommit,
    KafkaLedgerRecorder,
    LedgerUnavailable,
    WriterFenced,
)
from ledger.kafka.rejected import rejected_positions, rejected_record
from ledger.kafka.topics import BrokersUnreachable, TopicRefused, intake_topic
from ledger.keystore import KeyStoreBusyError
from ledger.receipt import ErasureNotOverwritten, Outcome, Receipt
from ledger.settings import SettingsError
from ledger.storage import StorageUnavailable, storage_failure

log = logging.getLogger("consent_ledger.intake")

# What stops a batch without being any record's fault, so no record is rejected for it: the
# broker or the storage unavailable, the writer fenced, this process's own configuration or
# state (SettingsError: a key store rotated to a new master key under it), the key store held
# open by another process. Anything else a batch raises is looked for record by record.
NOT_A_RECORDS_FAULT = (
    LedgerUnavailable,
    WriterFenced,
    KafkaError,
    StorageUnavailable,
    SettingsError,
    KeyStoreBusyError,
)

# How often a running writer commits its intake positions again, in a transaction of their
# own. Kafka deletes a group's offsets `offsets.retention.minutes` (7 days by default) after
# their last commit, and an intake partition may stay quiet longer than that; it also
# forgets a transactional id that has not begun a transaction for
# `transactional.id.expiration.ms` (7 days), and the next append then failed once
# (InvalidProducerIdMapping: an intake batch retried, an HTTP publish answered 503). An
# hour is well inside both as operators set them; the transaction costs milliseconds.
POSITIONS_REFRESH_S = 3600.0

# How often a running writer looks for partitions added to the intake topic (its consumer's
# metadata is refreshed as often): a record in a new partition waits about this long at most.
PARTITIONS_RECHECK_S = 30.0


@dataclass
class IntakeStats:
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    # Writers started again after a failure they did not expect (`ledger.kafka.intake_thread`).
    restarts: int = 0
    # Wall-clock seconds of the batches written, by part: the poll that returned them, and
    # their write, of which the Kafka transaction (sends, the offsets' round trips, the
    # commit); the rest of the write is parsing, the checks, sealing and the replica. A
    # batch's latency is their sum, and the part that does not grow with its size is what
    # the end-to-end latency at a given rate hangs on (README, Kafka mode).
    poll_s: float = 0.0
    write_s: float = 0.0
    transaction_s: float = 0.0
    # Records keyed by their subject's reference in the clear (`names_the_reference`).
    keyed_by_reference: int = 0
    # Offsets of intake records deleted by the topic's retention before they were read
    # (transaction markers among them too: "up to" that many facts).
    expired_unread: int = 0
    # Per intake partition, the offsets between what the writer committed and the end the
    # broker last gave (records not taken yet, and any transaction markers among them),
    # measured after each poll; replaced whole, as /metrics reads it from another thread.
    lag: dict[int, int] = field(default_factory=dict)

    def reject(self, code: str) -> None:
        self.rejected[code] = self.rejected.get(code, 0) + 1


class IntakeWriter:
    def __init__(
        self, ledger: ConsentLedger, *, batch: int | None = None, max_bytes: int | None = None
    ) -> None:
        recorder = ledger.ledger_recorder
        if not isinstance(recorder, KafkaLedgerRecorder):
            raise TypeError("the intake writer needs the ledger in Kafka mode")
        self.ledger = ledger
        self.recorder = recorder
        self.link = recorder.link
        self.batch = batch or ledger.settings.intake_batch
        self.max_bytes = max_bytes or ledger.settings.intake_max_bytes
        self.stats = IntakeStats()
        self.consumer: KafkaConsumer | None = None
        self.partitions_recheck_s = PARTITIONS_RECHECK_S
        self._partitions_checked_at = 0.0
        # The intake offsets committed by this writer's own transactions (and found at start).
        self.committed: dict[TopicPartition, int] = {}
        # The batch being written: how many of its records were keyed by their reference;
        # counted in the stats once the batch commits (a retried batch is counted once).
        self._keyed_in_batch = 0
        self._keyed_partitions: set[int] = set()  # each is named in the log once
        self._expired_reported: dict[TopicPartition, int] = {}  # first offset kept, as said
        # The intake topic's id (`ledger.kafka.topics.intake_topic`), read at each start, and its
        # warnings said (once each).
        self.intake_id = ""
        self._warned: set[str] = set()
        self.positions_refresh_s = POSITIONS_REFRESH_S
        self._refreshed_at = time.monotonic()

    # ---- life cycle ----------------------------------------------------------------------

    def start(self, stop: threading.Event | None = None) -> None:
        """Own the ledger (fencing any earlier writer), then resume from the committed offsets.

        Ownership comes first: it resolves a dead writer's open transaction, so the offsets
        read next are the ones that really committed. The intake consumer is made before it
        (it reads no offsets until assigned), a step at a time with `stop` checked between:
        during a broker outage, this is where a writer starting again waits for the broker,
        and it waited kafka-python's 30 s at a time, unseen by the stop (a `serve` stopped
        with SIGTERM then waited for it: 18 s after a 10 s outage).
        """
        stopping = never if stop is None else stop.is_set
        try:
            consumer = bootstrapped(
                lambda ms: self._consumer(bootstrap_timeout_ms=ms),
                timeout_s=self.link.catch_up_timeout_s,
                stopping=stopping,
                away=BrokerWatch(self.link.bootstrap),
            )
        except ReadTimedOut as error:
            raise LedgerUnavailable(f"the intake topic could not be read: {error}") from error
        try:
            self.recorder.own(stopping)
            self._start(consumer)
        except BaseException:
            if self.consumer is consumer:
                self.consumer = None
            consumer.close()
            raise

    def _consumer(self, **configs: Any) -> KafkaConsumer:
        return Consumer(
            bootstrap_servers=self.link.bootstrap,
            group_id=self.link.intake_group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            # Never "earliest" or "latest": a position whose records were deleted unread
            # must be said (`_rewind`), not silently moved past.
            auto_offset_reset="none",
            max_poll_records=self.batch,
            # A fetch the broker holds until a record is there (`fetch_min_bytes` 1: it
            # answers at once when one is), up to half a second. At 20 ms, an idle worker
            # asked fifty times a second for nothing: 0.09 s of CPU a second, and the
            # broker's 0.16 for it, against 0.009 and 0.055 at 500, the latency of a lone
            # fact the same (a throwaway probe, 2026-12-06; `bench kafka` meters both).
            fetch_max_wait_ms=500,
            client_id="consent-ledger-intake",
            metadata_max_age_ms=max(1, int(self.partitions_recheck_s * 1000)),
            **configs,
        )

    def _start(self, consumer: KafkaConsumer) -> None:
        partitions = consumer.partitions_for_topic(self.link.topics.intake) or set()
        if not partitions:
            raise LedgerUnavailable(f"topic {self.link.topics.intake} has no partitions")
        consumer.assign([TopicPartition(self.link.topics.intake, p) for p in sorted(partitions)])
        try:
            intake_id, warnings = intake_topic(self.ledger.settings, self.link.topics)
        except (BrokersUnreachable, TopicRefused, KafkaError) as error:
            raise LedgerUnavailable(str(error)) from error
        for warning in warnings:
            if warning not in self._warned:
                self._warned.add(warning)
                log.warning("%s", warning, extra={"error": "IntakeTopicSettings"})
        if intake_id != self.intake_id:
            # Another topic under the name (deleted and made again): its offsets start over,
            # and what this writer committed of the last one says nothing of it.
            self.committed.clear()
            self._expired_reported.clear()
            self.intake_id = intake_id
        self.consumer = consumer
        self._partitions_checked_at = time.monotonic()
        self._rewind()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: poll, write, commit. A broker outage is waited out, not fatal.

        A fenced writer stops (WriterFenced propagates): another writer owns the ledger now,
        and coming back would fence it in turn.
        """
        backoff = 0.2
        while not stop.is_set():
            try:
                if self.consumer is None:
                    self.start(stop)
                self.step()
                if self._partitions_added():
                    self.close()  # started again next round, on every partition
                backoff = 0.2
            except WriterFenced:
                raise
            except (LedgerUnavailable, KafkaError) as error:
                if stop.is_set():
                    break  # ended by the stop itself (`ReadStopped`): not an outage to report
                self.stats.retries += 1
                # With the reason: the broker's and the ledger's own words (names of topics
                # and errors, offsets; never a record's bytes). Without it, a broker that
                # refused every append for good read like one briefly away.
                log.warning(
                    "ledger unavailable (%s: %s), retrying",
                    type(error).__name__,
                    str(error)[:300],
                    extra={"error": type(error).__name__},
                )
                self.close()
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as error:
                # Nothing of the batch was committed or rejected for it: it is polled again
                # once the storage takes writes (an operator frees the disk, a backup lets go
                # of a lock or of the key store).
                if isinstance(error, KeyStoreBusyError):
                    # Before a commit; none is raised there today (an earlier erasure's key
                    # finished by a batch is deleted and its wait logged), but one must not
                    # be taken for a record's fault or stop the writer.
                    why = "the key store is held open by another process"
                    kind = "KeyStoreBusyError"
                else:
                    failure = storage_failure(error)
                    if failure is None:
                        raise
                    why, kind = f"storage unavailable ({failure.reason})", "StorageUnavailable"
                self.stats.retries += 1
                log.error("%s, retrying", why, extra={"error": kind})
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _partitions_added(self) -> bool:
        """Whether the intake topic has partitions this writer is not reading (checked every
        `partitions_recheck_s`).

        Partitions are assigned, not subscribed (the writer's transactions commit offsets of
        partitions it holds alone), so one added to the topic later is not read until the
        writer starts again: its records waited, unread and unreported, for a restart.
        """
        consumer = self.consumer
        now = time.monotonic()
        if consumer is None or now - self._partitions_checked_at < self.partitions_recheck_s:
            return False
        self._partitions_checked_at = now
        found = consumer.partitions_for_topic(self.link.topics.intake) or set()
        added = found - {tp.partition for tp in consumer.assignment()}
        if added:
            log.info(
                "the intake topic has %d partitions now; reading them all",
                len(found),
                extra={"partitions": len(found)},
            )
        return bool(added)

    # ---- one batch -----------------------------------------------------------------------

    def step(self, timeout_ms: int = 500) -> int:
        """Poll one batch and commit it; returns how many intake records it consumed."""
        assert self.consumer is not None
        failpoint("intake-step")
        started = time.perf_counter()
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.batch)
        except OffsetOutOfRangeError:
            # The next records to read were deleted (the intake topic's retention ran past a
            # writer that fell behind): said and counted by `_rewind`, which moves on. Or the
            # topic was deleted and made again, its offsets starting over: starting again
            # reads its id, and what this writer committed of the old one is forgotten.
            self.close()
            self.start()
            return 0
        records = [r for tp in sorted(polled, key=lambda t: t.partition) for r in polled[tp]]
        if not records:
            self._refresh_positions()
            self._measure_lag()
            return 0
        polled_at = time.perf_counter()
        in_transaction = 0.0  # the isolating retries' transactions count in the rest
        try:
            in_transaction = self._write(records, _next_offsets(records))
        except NOT_A_RECORDS_FAULT as error:
            self._read_again(error)
            raise
        except Exception as error:
            self._unless_storage(error)
            # A bug tripped over one of these records: find it, reject it, keep going. The
            # log names the error's type only: its message might quote the record.
            log.error("intake batch failed (%s); isolating the record", type(error).__name__)
            self._rewind_safely()
            self._write_isolating(records)
            # Every record of the batch is committed now (appended or rejected); the consumer
            # was rewound for the retries and must move on from the committed offsets.
            self._rewind_safely()
        stats = self.stats
        stats.batches += 1
        stats.poll_s += polled_at - started
        stats.write_s += time.perf_counter() - polled_at
        stats.transaction_s += in_transaction
        self._refresh_positions()
        self._measure_lag()
        return len(records)

    def _measure_lag(self) -> None:
        """How far each partition's committed offset is behind the end the last fetch
        saw (`KafkaConsumer.highwater`: no round trip); a partition not yet fetched or
        committed is left out."""
        consumer = self.consumer
        if consumer is None:
            return
        lag = {}
        for tp in consumer.assignment():
            end, at = consumer.highwater(tp), self.committed.get(tp)
            if end is not None and at is not None:
                lag[tp.partition] = max(end - at, 0)
        self.stats.lag = lag

    def _write(
        self, records: Sequence[ConsumerRecord], offsets: dict[TopicPartition, int]
    ) -> float:
        """Write one batch in one transaction; returns the seconds that transaction took."""
        group = self._group()
        # Under the ledger's lock from the transaction's start to its commit, the order every
        # append takes the two locks in (an HTTP publish shares the producer in the server).
        with self.ledger.lock:
            in_transactions = self.recorder.transaction_s
            self.recorder.open_intake(offsets, group)
            try:
                outcomes, codes = self._append(records, offsets, group)
            finally:
                self.recorder.abandon()  # only if nothing committed it
            in_transaction = self.recorder.transaction_s - in_transactions
        self.committed.update(offsets)
        self.stats.keyed_by_reference += self._keyed_in_batch
        for code in codes:
            self.stats.reject(code)
        for outcome in outcomes:
            if isinstance(outcome, FactRejected):
                self.stats.reject(outcome.code.value)
            elif isinstance(outcome, Receipt) and outcome.duplicate:
                self.stats.duplicates += 1
            else:
                self.stats.accepted += 1
        return in_transaction

    def _append(
        self, records: Sequence[ConsumerRecord], offsets: dict[TopicPartition, int], group: Any
    ) -> tuple[list[Outcome], list[str]]:
        """Parse, check and append the batch in the transaction `open_intake` began; the
        outcomes of the facts and the codes of the records that were not facts."""
        facts: list[Fact] = []
        origin: list[ConsumerRecord] = []
        rejects: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
        codes: list[str] = []
        self._keyed_in_batch = 0
        for record in records:
            try:
                fact = self._parse(record)
            except FactRejected as refusal:
                rejects.append(self._rejected(record, refusal, None))
                codes.append(refusal.code.value)
                continue
            facts.append(fact)
            origin.append(record)
            if fact.subject is not None and names_the_reference(
                record.key, fact.subject, fact.tenant
            ):
                self._keyed_by_reference(record)

        def with_refusals(outcomes: Sequence[Outcome | None]) -> IntakeCommit:
            refused = list(rejects)
            for record, fact, outcome in zip(origin, facts, outcomes, strict=True):
                if isinstance(outcome, FactRejected):
                    refused.append(self._rejected(record, outcome, fact))
            return IntakeCommit(refused, offsets, group, self.intake_id)

        if not facts:
            self.recorder.commit_extra(IntakeCommit(rejects, offsets, group, self.intake_id))
            return [], codes
        try:
            return self.ledger.record(facts, with_refusals=with_refusals), codes
        except ErasureNotOverwritten as busy:
            # Committed, offsets with it: the erasures' keys are deleted, and only the
            # overwriting of their old page images waits for the key store's next erasure.
            # Raised on, the batch was taken for uncommitted and written again, its poison
            # records rejected twice (6b62446 told the two apart by the transaction's state).
            log.warning(
                "an erased key's old page images stay in the key store's WAL until the "
                "next erasure: another process holds the key store open",
                extra={"error": "KeyStoreBusyError"},
            )
            return busy.outcomes, codes

    def _keyed_by_reference(self, record: ConsumerRecord) -> None:
        """Count a record whose key is its subject's reference, and name the first of each
        partition in the log, by place only (the key is the personal data)."""
        self._keyed_in_batch += 1
        if record.partition in self._keyed_partitions:
            return
        self._keyed_partitions.add(record.partition)
        log.warning(
            "an intake record is keyed by its subject's reference in the clear (partition "
            "%d, offset %d): personal data in a Kafka key, which no erasure reaches; the "
            "publisher should key by a keyed hash (deploy/CONFIG.md, the intake topic)",
            record.partition,
            record.offset,
            extra={"partition": record.partition, "offset": record.offset},
        )

    def _write_isolating(self, records: Sequence[ConsumerRecord]) -> None:
        """Retry in halves until the record that fails alone is found; reject just that one."""
        if len(records) > 1:
            middle = len(records) // 2
            for half in (records[:middle], records[middle:]):
                try:
                    self._write(half, _next_offsets(half))
                except NOT_A_RECORDS_FAULT as error:
                    self._read_again(error)
                    raise
                except Exception as error:
                    self._unless_storage(error)
                    self._rewind_safely()
                    self._write_isolating(half)
            return
        [record] = records
        log.error(
            "an intake record made the writer fail; rejected (partition %d, offset %d)",
            record.partition,
            record.offset,
            extra={"partition": record.partition, "offset": record.offset},
        )
        refusal = FactRejected(
            Code.PROCESSING_FAILED, "the ledger failed while processing this record"
        )
        self.recorder.commit_extra(
            IntakeCommit(
                [self._rejected(record, refusal, None)],
                _next_offsets(records),
                self._group(),
                self.intake_id,
            )
        )
        self.committed.update(_next_offsets(records))
        self.stats.reject(refusal.code.value)

    def _unless_storage(self, error: Exception) -> None:
        """Raise StorageUnavailable if the storage is why `error` happened (the replica's
        catch-up as the writer takes ownership, say, which runs outside the ledger's record):
        that is no record's fault, and none may be rejected for it."""
        failure = storage_failure(error)
        if failure is not None:
            self._rewind_safely()
            raise failure from error

    def _parse(self, record: ConsumerRecord) -> Fact:
        value = record.value
        if value is None:
            raise FactRejected(Code.INVALID_JSON, "the record has no value")
        if len(value) > self.max_bytes:
            raise FactRejected(Code.OVERSIZE, f"a fact may be at most {self.max_bytes} bytes")
        return parse_fact_bytes(value)

    # ---- positions -----------------------------------------------------------------------

    def _rejected(
        self, record: ConsumerRecord, refusal: FactRejected, fact: Fact | None
    ) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        return rejected_record(record, refusal, fact, self.intake_id, self.link.record_key)

    def _refresh_positions(self) -> None:
        """Every `positions_refresh_s`, commit the positions of every intake partition again
        (nothing else in the transaction): a partition quiet for longer than the broker
        keeps offsets still has them, for the restarted writer and for whoever watches the
        group's lag, and the broker still knows the writer's transactional id.

        Called between batches, when the consumer's position of each partition is what is
        committed (or, for one never read, its first record: where reading would begin).
        """
        now = time.monotonic()
        consumer = self.consumer
        if now - self._refreshed_at < self.positions_refresh_s or consumer is None:
            return
        positions = {
            tp: self._asked(functools.partial(_position, consumer, tp))
            for tp in consumer.assignment()
        }
        if positions:
            with self.ledger.lock:
                self.recorder.commit_extra(
                    IntakeCommit([], positions, self._group(), self.intake_id)
                )
            self.committed.update(positions)
        self._refreshed_at = now

    def _group(self) -> Any:
        assert self.consumer is not None
        return self.consumer.group_metadata()

    def _rewind(self) -> None:
        """Go back to the committed offsets: whatever was polled after them is read again.

        A committed offset before the partition's first kept record means records published
        (and acknowledged to their publishers) were deleted before any writer read them:
        the intake topic's retention is shorter than the writer was stopped or behind. The
        consumer reset itself to the earliest record without a word, and those facts were
        lost with nobody told. They cannot be recovered here, but the loss is now logged
        by partition and offsets, counted (`IntakeStats.expired_unread`) and printed in
        the worker's summary, and reading goes on from the first record kept.

        No committed offset at all is what Kafka leaves when it deletes the group's offsets
        (`offsets.retention.minutes` after the last commit: the writer assigns its own
        partitions, so a quiet partition loses them while the writer runs). Reading such a
        partition from its beginning read facts again, and one rejected before could be
        recorded now. The position is taken instead from what this writer committed, else
        from the ledger's own records (`read_positions`); only a partition of which the
        ledger holds nothing is read from its beginning.
        """
        consumer = self.consumer
        assert consumer is not None
        assigned = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        kept_from: dict[TopicPartition, int] = (
            self._asked(lambda ms: consumer.beginning_offsets(assigned, timeout_ms=ms))
            if assigned
            else {}
        )
        committed_of: dict[TopicPartition, int | None] = (
            self._asked(functools.partial(committed_offsets, consumer, assigned))
            if assigned
            else {}
        )
        ends: dict[TopicPartition, int] | None = None
        recovered: dict[int, int] | None = None
        for tp in assigned:
            committed = committed_of.get(tp)
            first_kept = kept_from.get(tp, 0)
            if committed is None:
                committed = self.committed.get(tp)
            if committed is None:
                if ends is None:
                    ends = self._asked(lambda ms: consumer.end_offsets(assigned, timeout_ms=ms))
                if ends.get(tp, 0) > first_kept:  # records to read: where were we?
                    if recovered is None:
                        recovered = self.read_positions()
                    committed = recovered.get(tp.partition)
                    if committed is not None:
                        self._refreshed_at = -math.inf  # committed again at the next step
                        log.warning(
                            "intake partition %d has no committed position (the group's "
                            "offsets expired or were deleted); resuming at offset %d, after "
                            "the last record the ledger and rejected topics say it read",
                            tp.partition,
                            committed,
                            extra={"partition": tp.partition, "offset": committed},
                        )
            if committed is None:
                if first_kept and tp not in self._expired_reported:
                    self._expired_reported[tp] = first_kept
                    # Not counted: records read by a writer before the ledger said how far
                    # it read (3 December 2026) leave no trace of it, and a record that was
                    # a duplicate leaves none either.
                    log.warning(
                        "intake partition %d has no committed position and begins at offset "
                        "%d, and the ledger holds nothing read from it: unless the records "
                        "before were read before the ledger kept its positions, or were all "
                        "duplicates, they were deleted unread",
                        tp.partition,
                        first_kept,
                        extra={"partition": tp.partition, "error": "IntakeExpiredUnread"},
                    )
                consumer.seek_to_beginning(tp)
                continue
            if committed < first_kept:
                self._expired_unread(tp, committed, first_kept)
                consumer.seek(tp, first_kept)
            else:
                consumer.seek(tp, committed)
            self.committed[tp] = committed

    def read_positions(self) -> dict[int, int]:
        """How far the ledger's records say this intake topic was read, per partition: the
        ledger records' `intake` headers (kept by the replica) and the rejected records'
        sources, whichever is further. A batch that wrote neither (every fact a duplicate)
        may be read again, and is again only duplicates."""
        if not self.intake_id:
            return {}
        found = self.recorder.intake_positions(self.intake_id)
        for partition, offset in rejected_positions(self.link, self.intake_id).items():
            found[partition] = max(found.get(partition, 0), offset)
        return found

    def _expired_unread(self, tp: TopicPartition, since: int, first_kept: int) -> None:
        """Report intake records deleted before this ledger read them (once per gap)."""
        reported = self._expired_reported.get(tp, 0)
        if first_kept <= reported:
            return
        lost_from = max(since, reported)
        self._expired_reported[tp] = first_kept
        self.stats.expired_unread += first_kept - lost_from
        log.error(
            "intake partition %d: offsets %d to %d were deleted before the writer read "
            "them (the intake topic's retention ran out): up to %d published facts are "
            "lost; their publishers must send them again",
            tp.partition,
            lost_from,
            first_kept - 1,
            first_kept - lost_from,
            extra={"partition": tp.partition, "error": "IntakeExpiredUnread"},
        )

    def _read_again(self, error: Exception) -> None:
        """Make the batch a failure left uncommitted be read again.

        After the broker's failure (or the writer's, fenced) the consumer is let go: the
        run loop makes a new one once the writer owns the ledger again, and that one goes
        back to the committed offsets. Asked there and then, the old one could wait for
        the writer itself. A transaction given up in an outage (its commit unconfirmed) is
        left open, and its intake offsets with it; a read_committed consumer asks for the
        stable committed offsets, which the broker refuses to give (UNSTABLE_OFFSET_COMMIT,
        retried by kafka-python) until that transaction ends, and only the next owner's
        fence ends it, or the producer's 300 s transaction timeout. The writer waited out
        the timeout (the broker restart test, stuck for 300 s in CI). Any other failure
        (the storage, the key store) aborted its transaction and keeps the consumer, which
        goes back to the committed offsets now.
        """
        if isinstance(error, (LedgerUnavailable, WriterFenced, KafkaError)):
            self.close()
        else:
            self._rewind_safely()

    def _rewind_safely(self) -> None:
        try:
            self._rewind()
        except (KafkaError, LedgerUnavailable):
            self.close()  # the next round starts over from the committed offsets

    def _asked(self, ask: Callable[[int], Any]) -> Any:
        """A question about the intake positions, asked a step at a time with the broker
        watched (`answered`); LedgerUnavailable when it goes unanswered, which the run loop
        waits out with a new consumer.

        kafka-python asks for a committed offset without a bound (it retries until the
        group's coordinator gives a stable answer: `_read_again` says when it cannot), and
        for the first and last offsets for its 30 s request timeout, the broker's refusals
        unseen.
        """
        try:
            return answered(
                ask,
                timeout_s=self.link.catch_up_timeout_s,
                away=BrokerWatch(self.link.bootstrap),
            )
        except ReadTimedOut as error:
            raise LedgerUnavailable(f"the intake positions were not answered: {error}") from error


def _position(consumer: KafkaConsumer, tp: TopicPartition, ms: int) -> int | None:
    return consumer.position(tp, timeout_ms=ms)  # type: ignore[no-any-return]


def _next_offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The intake position after these records (they are in offset order per partition)."""
    return {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}


def wait_until_consumed(
    writer: IntakeWriter, ends: dict[TopicPartition, int], timeout: float
) -> None:
    """Drive `step` until the committed intake offsets reach `ends` (tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while True:
        if all(writer.committed.get(tp, 0) >= end for tp, end in ends.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the intake writer did not reach the end offsets")
        writer.step()
