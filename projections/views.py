"""The read side of one data directory: the consent views, kept up to date from the log."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ledger.application import ConsentLedger
from ledger.storage import BACKUP_STEP_WAIT_S, given_up_when_locked
from projections.consent_projection import ConsentProjection
from projections.rebuild import rebuild, remove_store
from projections.runner import APPLICATION, catch_up, check_within_log
from projections.store import ConsentViews, ViewReads

log = logging.getLogger("consent_ledger.projections")

# An empty views store over an embedded log at least this long is filled by replay (subject
# by subject, one process per core: `projections.rebuild`) and copied in, rather than caught
# up in log order, a page of the log per transaction: over the million facts of `python -m
# bench projections` the catch-up ran at 4,925-7,133 entries a second and replay at
# 20,000-46,344, so a first question on a data directory without views (a new server over
# an old log, views moved away after an upgrade) waited minutes. Below it, catching up
# takes seconds and starting replay's processes is not repaid. Kafka mode has a bound of its
# own (`Views._worth_filling`).
FILL_BY_REPLAY_FROM = 50_000
# A store that is not empty is filled again by replay, rather than caught up, once at least
# a quarter of the log is unread (and, embedded, `FILL_BY_REPLAY_FROM` entries; Kafka mode,
# more than `WHOLE_READ` offsets): a store whose process was stopped while the log grew, or a
# bulk `record` beside a running service. `python -m bench refill` (2026-12-06, 200,000
# facts, two rounds taking turns, nothing else running) filled again in 7.48-8.62 s whatever
# the share, against 17.75-18.14 s caught up with half the log unread, 10.42-10.54 s with a
# quarter, 5.75-6.43 s with 15% (the ingest benchmark's stream); over the projections
# benchmark's history (`--history projections`, subjects' facts interleaved) 4.90-5.80 s
# against 15.15-15.89 s and 8.80-8.97 s. So from a quarter the fill was the faster in both. In
# Kafka mode (`--kafka`, 100,000 facts) a fill from the replica took 3.97-4.71 s against
# 10.11-10.29 s caught up from the topic at a half, 4.95-5.34 s at a quarter, 2.98-3.12 s at
# 15%; and a fill is copied in whole, where a catch-up that long commits at instants.
REFILL_BEHIND_SHARE = 4


class Views:
    """Opens the views store next to the log and catches it up before answering.

    Catching up is incremental (only facts after the stored position), so reads see every
    fact recorded before they were asked, in this process or another.
    """

    def __init__(
        self,
        ledger: ConsentLedger,
        path: Path | None = None,
        *,
        stopping: Callable[[], bool] | None = None,
        recheck_s: float = 0.0,
    ) -> None:
        """`stopping`: whether the process is stopping, which ends a Kafka-mode catch-up
        in progress (`LedgerUnavailable`) instead of waiting out a broker that is away.

        `recheck_s`: for this long after a Kafka-mode catch-up found the broker away, a
        refresh says so at once (`LedgerUnavailable`) instead of asking it again. The HTTP
        service sets it: its questions catch up one at a time, so during an outage each
        waited out the broker's answer timeout (30 s) after every question ahead of it,
        the tenth about five minutes.
        """
        self.ledger = ledger
        self.stopping = stopping
        self.recheck_s = recheck_s
        # When the broker was last found away (monotonic), and what was said.
        self._away: tuple[float, str] | None = None
        self.store = ConsentViews.open(path or ledger.settings.views_path)
        self.projection = ConsentProjection(
            view=self.store, cache_facts=ledger.settings.views_cache_facts
        )
        self._lock = threading.Lock()
        self._reader: Any = None  # Kafka mode: one ledger-topic consumer kept between reads
        self._fill_off = False  # after a fill failed for a cause of its own (`_fill_if_worth_it`)

    def recorded_through(self, reads: ViewReads) -> datetime | None:
        """When the last fact the views know in this state of them (`reads`) was recorded:
        the moment the pages of who had consent after the first answer as known at.

        In Kafka mode the views stand at a position per ledger partition, and the replica
        says when the last fact before each was recorded (`recorded_at_before`); it took the
        reader's clock until 2026-12-06, which counted on later pages a fact stamped before
        the clock and committed after the first page was read."""
        recorder = self.ledger.ledger_recorder
        if self.ledger.settings.backend != "kafka":
            position = reads.position(APPLICATION)
            recorded = recorder.recorded_at_through(position) if position else None
        else:
            from ledger.kafka.recorder import KafkaLedgerRecorder
            from projections.kafka_source import partition_name

            assert isinstance(recorder, KafkaLedgerRecorder)
            positions = {
                p: reads.position(partition_name(recorder, APPLICATION, p))
                for p in range(recorder.link.partitions)
            }
            recorded = recorder.recorded_at_before({p: o for p, o in positions.items() if o})
        return None if recorded is None else datetime.fromisoformat(recorded)

    def lag(self) -> int:
        """Log entries the views have not applied yet: in Kafka mode, summed over the ledger
        partitions, from what the replica holds. For /metrics (the service's and the
        worker's); nothing is read from the broker."""
        store = self.store
        recorder = self.ledger.ledger_recorder
        if self.ledger.settings.backend != "kafka":
            head = recorder.max_notification_id() or 0
            return max(0, head - (store.max_tracking_id(APPLICATION) or 0))
        from ledger.kafka.recorder import KafkaLedgerRecorder
        from projections.kafka_source import partition_name

        assert isinstance(recorder, KafkaLedgerRecorder)
        lag = 0
        for partition, offset in recorder.positions().items():
            read = store.max_tracking_id(partition_name(recorder, APPLICATION, partition))
            lag += max(0, offset - (read or 0))
        return lag

    def check(self) -> None:
        """Refuse views not built from this log now, as their first refresh would
        (`projections.runner.check_within_log`)."""
        with self._lock:
            check_within_log(self.ledger, self.store, self.stopping)
            self.projection.log_checked = True

    def refresh(self, *, known_at: datetime | None = None, page: int = 5000) -> int:
        with self._lock:
            if self._reader is None and self.ledger.settings.backend == "kafka":
                from ledger.kafka.recorder import KafkaLedgerRecorder
                from projections.kafka_source import LedgerTopicReader

                assert isinstance(self.ledger.recorder, KafkaLedgerRecorder)
                self._reader = LedgerTopicReader(self.ledger.recorder, self.stopping)
            if self._reader is None:
                filled = (
                    0 if known_at is not None else self._fill_if_worth_it(self._embedded_unread)
                )
                return filled + catch_up(self.ledger, self.projection, known_at=known_at, page=page)
            return self._kafka_catch_up(known_at, page)

    def _fill_if_worth_it(self, unread: Callable[[], tuple[int, int] | None]) -> int:
        """Fill the store by replay if that is worth it (`_worth_filling`); `unread` counts
        what a catch-up would read and the whole log, or says None (no fill). Returns the
        log entries the fill read (0: none), which the refresh counts with what it caught
        up: `project` said it projected 0 entries into a store it had filled.

        A fill that the broker's absence ended (Kafka mode) is tried again with the next
        question; one that failed otherwise (a full disk) is not tried again by this
        process, so that every question does not replay the log to fail again: they catch
        up as the store stands."""
        if self._fill_off:
            return 0
        try:
            counted = unread()
        except Exception as error:
            self._fill_off = not self._broker_away(error)
            raise
        if counted is None or not self._worth_filling(*counted):
            return 0
        if counted[0] != counted[1] and not self.projection.log_checked:
            # Views of another log (a hand restore) are refused as their catch-up refuses
            # them (`views_of_another_log`), not replaced without a word.
            check_within_log(self.ledger, self.store, self.stopping)
            self.projection.log_checked = True
        try:
            began = time.monotonic()
            assert self.store.path is not None  # opened by ConsentViews.open
            read = fill_by_replay(self.ledger, self.store.path)
        except Exception as error:
            self._fill_off = not self._broker_away(error)
            raise
        if read is None:  # another process caught the store up past it meanwhile
            return 0
        log.info(
            "%s filled by replay: %d log entries in %.1f s",
            "the empty views were"
            if counted[0] == counted[1]
            else f"the views, {counted[0]} log entries behind, were",
            read,
            time.monotonic() - began,
            extra={"entries": read, "behind": counted[0]},
        )
        return read

    def _broker_away(self, error: Exception) -> bool:
        if self._reader is None:  # embedded: no broker
            return False
        from ledger.kafka.recorder import LedgerUnavailable

        return isinstance(error, LedgerUnavailable)

    def _worth_filling(self, unread: int, log_length: int) -> bool:
        """Whether the store is filled by replay (from the embedded log, or in Kafka mode
        from the process's replica of the ledger topic, subject by subject) rather than
        caught up, with `unread` of the log's `log_length` entries (Kafka mode: offsets,
        records and transaction markers) still to read.

        Embedded: an empty store from `FILL_BY_REPLAY_FROM` entries, where replay repays its
        processes; one that is not empty once it is that far behind and at least a quarter
        of the log (`REFILL_BEHIND_SHARE`). In Kafka mode, whenever catching up from the topic
        would be a read longer than one transaction of the views holds
        (`kafka_source.WHOLE_READ` offsets): such a read commits as it goes (at instants of
        transaction time), so another process applying the same views (a `worker` beside
        the service) could find part of a ledger transaction applied, while a fill is copied
        in whole, and it is faster too (`python -m bench kafka`, 2026-12-06: 21,940 entries
        a second from the replica in one process, 12,244 from the topic); for a store that
        is not empty, once that is at least a quarter of the topic (`REFILL_BEHIND_SHARE`).
        """
        # An empty store has the whole log unread, so one rule says both.
        if self.ledger.settings.backend != "kafka":
            long = unread >= FILL_BY_REPLAY_FROM
        else:
            from projections import kafka_source

            long = unread > kafka_source.WHOLE_READ
        return long and unread * REFILL_BEHIND_SHARE >= log_length

    def _embedded_unread(self) -> tuple[int, int]:
        head = self.ledger.ledger_recorder.max_notification_id() or 0
        return max(0, head - (self.store.max_tracking_id(APPLICATION) or 0)), head

    def _kafka_catch_up(self, known_at: datetime | None, page: int) -> int:
        from ledger.kafka.recorder import LedgerUnavailable

        if self._away is not None and time.monotonic() - self._away[0] < self.recheck_s:
            raise LedgerUnavailable(f"{self._away[1]} (less than {self.recheck_s:g} s ago)")
        try:
            # Where the topic ends, asked once: what the views have not read of it decides
            # whether they are filled, and the catch-up reads to the same ends.
            ends = self._reader.ends()
            filled = 0
            if known_at is None:
                filled = self._fill_if_worth_it(lambda: self._kafka_unread(ends))
            read = filled + catch_up(
                self.ledger,
                self.projection,
                known_at=known_at,
                page=page,
                reader=self._reader,
                upto=ends,
            )
        except LedgerUnavailable as error:
            self._away = (time.monotonic(), str(error))
            raise
        self._away = None
        return read

    def _kafka_unread(self, ends: dict[int, int]) -> tuple[int, int] | None:
        """The offsets of the ledger topic the views have not read, and all of them, to
        `ends`; None where a fill could not help (too few unread). Past that, the replica
        is caught up to the ends first: a fill builds from it."""
        from ledger.kafka.reading import never
        from ledger.kafka.recorder import KafkaLedgerRecorder
        from projections import kafka_source

        recorder = self.ledger.ledger_recorder
        assert isinstance(recorder, KafkaLedgerRecorder)
        unread = 0
        for partition, end in ends.items():
            name = kafka_source.partition_name(recorder, APPLICATION, partition)
            unread += max(0, end - (self.store.max_tracking_id(name) or 0))
        if unread <= kafka_source.WHOLE_READ:
            return None
        if any(recorder.positions().get(p, 0) < end for p, end in ends.items()):
            # On the consumers the views' reads keep, not two more.
            recorder.catch_up(self.stopping or never, kept=self._reader.kept())
        return unread, sum(ends.values())

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
        self.store.close()


def fill_by_replay(ledger: ConsentLedger, path: Path) -> int | None:
    """Replace the views store at `path` with the log's views built by replay; returns the
    log entries read, or None if the store was left as it stands (`_ahead`).

    The replayed store is copied in by SQLite's backup API, which replaces the store's pages
    in one write transaction: other processes reading it see it as it was or whole, never
    half, and one catching it up meanwhile finds the position it read from gone
    (`ViewMovedOn`) and reads again from the new one, its cache dropped. Two processes that
    both find the store empty both replay; the later copy stays, each a store of this log at
    a position of it.
    """
    _remove_abandoned(path)
    replayed = path.with_name(f"{path.name}.replayed-{os.getpid()}")
    remove_store(replayed)
    try:
        read = rebuild(ledger, replayed, from_replica=True)
        if _ahead(path, replayed):
            log.info(
                "the views were caught up past the fill by another process meanwhile: "
                "kept as they stand"
            )
            return None
        source = sqlite3.connect(replayed)
        target = sqlite3.connect(path, timeout=BACKUP_STEP_WAIT_S)
        try:
            # Waiting for the store's write lock a step at a time (`given_up_when_locked`):
            # Python's backup waited for ever on a store held locked.
            source.backup(target, progress=given_up_when_locked(path.name))
        finally:
            source.close()
            target.close()
    finally:
        remove_store(replayed)
    return read


def _ahead(path: Path, replayed: Path) -> bool:
    """Whether the store at `path` stands past the replayed one in any log or partition:
    another process caught it up while this one replayed (a fill takes seconds to minutes),
    and copied in, the replayed store would take facts back out of the answers."""

    def positions(store: Path) -> dict[str, int]:
        db = sqlite3.connect(store, timeout=30)
        try:
            rows = db.execute(
                "SELECT application_name, MAX(notification_id) FROM tracking "
                "WHERE application_name != '__migration__' GROUP BY application_name"
            ).fetchall()
        finally:
            db.close()
        return {str(name): int(position) for name, position in rows}

    built = positions(replayed)
    return any(position > built.get(name, 0) for name, position in positions(path).items())


def _remove_abandoned(path: Path) -> None:
    """Remove what fills of this store by processes no longer running left (a server
    killed while filling): a replayed store is as large as the views, and nothing else
    would ever remove it. A running process's fill is left alone."""
    for leftover in path.parent.glob(f"{path.name}.replayed-*"):
        pid = leftover.name.removeprefix(f"{path.name}.replayed-").split(".")[0].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except PermissionError:
            pass  # running, as another user
