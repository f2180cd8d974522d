"""Bring a projection up to date with the log, a page of notifications per transaction.

The library's ProjectionRunner needs a recorder that supports subscriptions, which its SQLite
recorder does not, and commits once per event; catching up in pages keeps the same guarantee
(each page's view changes and its last position are one transaction) at replay speed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Tracking

from ledger.application import ConsentLedger
from ledger.chain import stored_hash
from projections.consent_projection import ConsentProjection
from projections.known import KnownAt
from projections.store import ConsentViews, ViewMovedOn, ViewsAheadOfLog, ViewsOfAnotherLog

APPLICATION = ConsentLedger.name
log = logging.getLogger("consent_ledger.projections")


def catch_up(
    ledger: ConsentLedger,
    projection: ConsentProjection,
    *,
    known_at: datetime | None = None,
    page: int = 5000,
    reader: Any = None,
    upto: Mapping[int, int] | None = None,
) -> int:
    """Process every notification after the view's position; returns how many were read.

    With `known_at`, facts recorded after that instant are left out: the view is what the
    ledger knew then. In Kafka mode the log is the ledger topic itself, read per partition
    (to `upto`, offset by partition, when given: `LedgerTopicReader.catch_up`).
    If another process catching up the same store gets ahead mid-way, reading starts again
    from where the store now stands.
    """
    # One cut for the whole catch-up: a subject found past the instant before a restart
    # stays past it after.
    known = None if known_at is None else KnownAt(known_at)
    while True:
        try:
            return _catch_up(ledger, projection, known, page, reader, upto)
        except ViewMovedOn:
            log.info("the views were moved on by another process; reading from there")


def check_within_log(
    ledger: ConsentLedger, view: ConsentViews, stopping: Callable[[], bool] | None = None
) -> None:
    """Refuse views that stand past the end of the embedded log (`ViewsAheadOfLog`), or
    that applied another fact at their position than the log holds (`ViewsOfAnotherLog`;
    in Kafka mode, per partition of the ledger topic)."""
    from ledger.kafka.recorder import KafkaLedgerRecorder

    path = str(view.path or "views.db")
    if isinstance(ledger.recorder, KafkaLedgerRecorder):
        from projections.kafka_source import check_marks, tracking_names

        _check_read_only_from(view, tracking_names(ledger.recorder, APPLICATION))
        check_marks(ledger.recorder, view, APPLICATION, stopping)
        return
    _check_read_only_from(view, {APPLICATION})
    position = view.max_tracking_id(APPLICATION) or 0
    if position:
        end = ledger.recorder.max_notification_id() or 0
        if position > end:
            raise ViewsAheadOfLog(path, position, end)
    mark = view.log_mark(APPLICATION)
    if mark is not None and ledger.ledger_recorder.hash_at(mark[0]) != mark[1]:
        raise ViewsOfAnotherLog(
            path,
            f"the log's fact at position {mark[0]} is not the one they applied",
            "a ledger.db restored from an older backup, without its views, and written to since?",
        )


def _check_read_only_from(view: ConsentViews, names: set[str]) -> None:
    """Refuse views that also read another log: one of another backend, or (Kafka mode)
    another ledger topic. Catching up would add this log's facts to the other's."""
    other = sorted(view.tracking_names() - names)
    if other:
        name = other[0]
        read = (
            "the embedded log"
            if name == APPLICATION
            else f"the ledger topic {name.partition('@')[2].rpartition('/')[0]}"
            if name.startswith(f"{APPLICATION}@")
            else repr(name)
        )
        raise ViewsOfAnotherLog(
            str(view.path or "views.db"),
            f"they hold facts read from {read}, which this ledger does not read from",
            "LEDGER_BACKEND or LEDGER_TOPIC_PREFIX changed?",
        )


def _catch_up(
    ledger: ConsentLedger,
    projection: ConsentProjection,
    known: KnownAt | None,
    page: int,
    reader: Any,
    upto: Mapping[int, int] | None,
) -> int:
    from ledger.kafka.recorder import KafkaLedgerRecorder

    if not projection.log_checked:
        # Once per projection object (a process's views): a restore, the case this guards
        # against, happens while the ledger's processes are stopped.
        check_within_log(ledger, projection.view, getattr(reader, "stopping", None))
        projection.log_checked = True
    if isinstance(ledger.recorder, KafkaLedgerRecorder):
        from projections.kafka_source import LedgerTopicReader

        own_reader = reader is None
        topic_reader = reader or LedgerTopicReader(ledger.recorder)
        try:
            return topic_reader.catch_up(
                ledger.mapper, projection, APPLICATION, known=known, page=page, upto=upto
            )
        finally:
            if own_reader:
                topic_reader.close()
    position = projection.view.max_tracking_id(APPLICATION) or 0
    processed = 0
    while True:
        notifications = ledger.recorder.select_notifications(
            start=position, limit=page, inclusive_of_start=False
        )
        if not notifications:
            return processed
        events: list[Any] = []
        for notification in notifications:
            event: Any = ledger.mapper.to_domain_event(notification)
            if known is None or known(event):
                events.append(event)
        after, position = position, notifications[-1].id
        projection.process_batch(
            events,
            Tracking(APPLICATION, position),
            after=after,
            mark=(position, stored_hash(notifications[-1])),
        )
        processed += len(notifications)
