"""Publishing facts to the intake topic, as a service would, and waiting for their outcomes.

In Kafka mode `consent-ledger record` is a writer (it fences a running worker); `publish`
is the way in that leaves the running writer alone: the facts go to the intake topic, keyed
by tenant and `sid` (never the reference itself) so one person's facts keep their order, and
with a wait the command reports each fact's outcome once the writer has committed it — the
reason from the rejected topic (matched by the intake partition and offset it was published
at, among the refusals the ledger wrote after the command began), or the receipt from the
ledger.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.record.default_records import DefaultRecordBatchBuilder

from ledger.application import ConsentLedger
from ledger.envelope import without_bom
from ledger.errors import Code, FactRejected
from ledger.kafka.clients import Consumer, Producer, close_producer
from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.reading import (
    ANSWER_TIMEOUT_S,
    STEP_MS,
    BrokerAway,
    KeptReaders,
    ReadTimedOut,
    answered,
    bootstrapped,
    committed_offsets,
    end_offsets,
    polls_to_end,
    reader,
    settled_ends,
)
from ledger.kafka.recorder import KafkaLedgerRecorder, KafkaLink, LedgerUnavailable
from ledger.kafka.rejected import by_the_ledger
from ledger.kafka.topics import RECORD_LIMIT
from ledger.kafka.write_watch import WriteWatch
from ledger.receipt import Receipt


class NotConsumed(TimeoutError):
    """The writer did not commit the published facts in time (is a worker or serve running?)."""


@dataclass(frozen=True)
class Published:
    partition: int
    offset: int
    tenant: str | None
    event_id: str | None


def intake_key(secret: bytes, tenant: str, subject: str) -> bytes:
    """A key for a service publishing without the ledger's key store: its own keyed hash of
    tenant and reference. Kafka keys are not encrypted, so the reference itself must not be
    one; keyed, so nobody can test a guessed phone number against it; stable, so one
    person's facts share a key and stay in order."""
    return (
        hmac.new(secret, f"{tenant}\x00{subject}".encode(), hashlib.sha256)
        .hexdigest()[:32]
        .encode()
    )


# What publishers put between parts of a key ("tenant/reference", "crm:reference").
_KEY_PARTS = re.compile(rb"[/:|,; \x00]")


def names_the_reference(key: bytes | None, subject: str, tenant: str) -> bool:
    """Whether an intake record's key is the subject's reference in the clear, or has it as
    one of its parts (case aside: an email address lower-cased is the same person).

    The contract keeps personal data out of Kafka keys, which no erasure can reach: a topic
    keeps them for its retention, and a compacted or copied one for ever. The ledger
    cannot take a key back once published; it can tell the operator which publisher did it.
    """
    if not key or subject.lower() == tenant.lower():  # a key by tenant is no reference
        return False
    reference = subject.encode().lower()
    lowered = key.lower()
    return lowered == reference or reference in _KEY_PARTS.split(lowered)


def publish(
    ledger: ConsentLedger, items: Sequence[bytes | Any], tenant: str | None
) -> list[Published | FactRejected]:
    """Send each item to the intake topic with a producer of its own (see `Publisher`)."""
    with Publisher(ledger, tenant) as publisher:
        return publisher.send(items)


class Publisher:
    """Sends facts (JSON bytes, or already-decoded objects) to the intake topic, a batch at a
    time on one producer, and says where each went or why it could not be sent (`oversize`:
    larger than the topic takes).

    One producer for every batch: `publish` reads its input a batch at a time, and a
    producer made per batch would cost a connection and the topic's metadata each time.

    A record too large for the producer or the topic raised out of here as a traceback: a
    fact of the envelope's full 1 MiB did, with kafka-python's default 1 MiB request.

    Everything it waits for is asked a step at a time with a `BrokerWatch`: with the broker
    gone it waited kafka-python's 30 s to make the producer and 60 s for the topic's
    partitions, then raised a traceback (`LedgerUnavailable` now, within seconds). A fact
    the broker did not confirm may or may not have been published; published again, it is
    taken once (by its `event_id`).
    """

    def __init__(self, ledger: ConsentLedger, tenant: str | None) -> None:
        self._ledger = ledger
        self._tenant = tenant
        self._link = link = _link(ledger)
        away = BrokerWatch(link.bootstrap)
        # Whether the broker confirmed every record sent; if not, the close waits for none.
        self._confirmed = False
        try:
            self._producer: KafkaProducer = bootstrapped(
                lambda ms: Producer(
                    bootstrap_servers=link.bootstrap,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=5,
                    max_request_size=RECORD_LIMIT,
                    client_id="consent-ledger-publish",
                    bootstrap_timeout_ms=ms,
                    max_block_ms=STEP_MS,
                ),
                timeout_s=ANSWER_TIMEOUT_S,
                away=away,
            )
        except ReadTimedOut as error:
            raise LedgerUnavailable(f"nothing was published: {error}") from error

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Closed at once when the broker is away: a close flushes what is unsent first.
        close_producer(self._producer, 5 if self._confirmed else 0)

    def send(self, items: Sequence[bytes | Any]) -> list[Published | FactRejected]:
        """Where each item went, once the broker confirmed them all.

        Its waits ask a `WriteWatch`: with the cluster's quorum lost the broker left alive
        took the records and confirmed none, and a batch waited out the 30 s answer
        timeout, as the ledger's own writes did (`ledger.kafka.write_watch`)."""
        with contextlib.closing(WriteWatch(self._link.bootstrap)) as away:
            return self._sent(items, away)

    def _sent(
        self, items: Sequence[bytes | Any], away: WriteWatch
    ) -> list[Published | FactRejected]:
        self._confirmed = False
        link = self._link
        sending: list[Any] = []
        for item in items:
            value, key, fact_tenant, event_id = _prepare(self._ledger, item, self._tenant)
            # As the broker counts it: the record in a batch of its own (an upper bound).
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > link.intake_record_limit:
                # Refused here, never sent: the broker's refusal of it would leave this
                # producer failing every record sent after it (see `_confirmed`).
                limit = f"topic {link.topics.intake} takes ({link.intake_record_limit} bytes)"
                sending.append(_too_large(size, limit))
                continue

            def send_one(ms: int, key: bytes | None = key, value: bytes = value) -> Any:
                return self._producer.send(link.topics.intake, key=key, value=value)

            try:
                # A send waits (up to a step) only for the topic's partitions, and one that
                # times out has put nothing in the producer's buffer: asked again.
                future = answered(send_one, timeout_s=ANSWER_TIMEOUT_S, away=away)
            except MessageSizeTooLargeError:  # over the request size this command sends
                sending.append(_too_large(size, f"publish sends ({RECORD_LIMIT} bytes)"))
                continue
            except ReadTimedOut as error:
                raise LedgerUnavailable(_unconfirmed(error)) from error
            sending.append((future, fact_tenant, event_id))
        if any(not isinstance(sent, FactRejected) for sent in sending):
            try:
                # Sent now, not after the producer's linger: the batch is whole.
                answered(self._flushed, timeout_s=ANSWER_TIMEOUT_S, away=away)
            except ReadTimedOut as error:
                raise LedgerUnavailable(_unconfirmed(error)) from error
        published: list[Published | FactRejected] = []
        for sent in sending:
            if isinstance(sent, FactRejected):
                published.append(sent)
                continue
            future, fact_tenant, event_id = sent
            try:
                meta = answered(
                    functools.partial(_confirmed, future), timeout_s=ANSWER_TIMEOUT_S, away=away
                )
            except (ReadTimedOut, KafkaError) as error:
                raise LedgerUnavailable(_unconfirmed(error)) from error
            published.append(Published(meta.partition, meta.offset, fact_tenant, event_id))
        self._confirmed = True
        return published

    def _flushed(self, ms: int) -> bool:
        """True once every record sent has its answer (kept or failed), for `answered`."""
        self._producer.flush(timeout=ms / 1000)  # KafkaTimeoutError: not yet
        return True


def _confirmed(future: Any, ms: int) -> Any:
    """The record's metadata once the broker confirmed it; None while it may still; what it
    failed with, if it did (a delivery that timed out is a failure, not a wait).

    A broker's refusal of a record as too large is not that record's answer: kafka-python's
    idempotent producer (3.0.12) takes it as a fatal error and fails every record it holds
    or is given after it with the same error, small ones too. `send` refuses a record the
    intake topic cannot take before sending it; a refusal all the same (the topic's
    `max.message.bytes` lowered since) ends the command as the broker's other failures do,
    every fact to be published again, rather than calling facts too large that were not.
    """
    if not future.is_done:
        with contextlib.suppress(KafkaTimeoutError):
            future.get(timeout=ms / 1000)
        if not future.is_done:
            return None
    if future.failed():
        exception = future.exception
        if isinstance(exception, KafkaTimeoutError):  # its delivery timed out
            raise KafkaError(f"the broker did not take the record: {exception}")
        raise exception
    return future.value


def _unconfirmed(error: Exception) -> str:
    return (
        f"the broker did not confirm every fact ({error}): some may have been published; "
        "publish them all again (a fact published twice is taken once, by its event_id)"
    )


def _too_large(size: int, limit: str) -> FactRejected:
    return FactRejected(
        Code.OVERSIZE,
        f"the record ({size} bytes) is larger than {limit}; nothing was published for it",
    )


def _prepare(
    ledger: ConsentLedger, item: bytes | Any, tenant: str | None
) -> tuple[bytes, bytes | None, str | None, str | None]:
    """The record's value as given (the writer judges it) and a key free of personal data."""
    obj: Any = item
    if isinstance(item, bytes):
        item = without_bom(item)  # as the writer reads it: keyed as any other fact
        try:
            obj = orjson.loads(item)
        except orjson.JSONDecodeError:
            return item, None, None, None
    if not isinstance(obj, dict):  # the writer refuses it, keeping the bytes as written
        return item if isinstance(item, bytes) else orjson.dumps(obj), None, None, None
    value = item if isinstance(item, bytes) else orjson.dumps(obj)
    if tenant is not None and "tenant" not in obj:
        obj = {**obj, "tenant": tenant}
        value = orjson.dumps(obj)
    fact_tenant = obj.get("tenant") if isinstance(obj.get("tenant"), str) else None
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    subject = obj.get("subject")
    key = None
    if fact_tenant is not None and isinstance(subject, str):
        key = f"{fact_tenant}/{ledger.sid(fact_tenant, subject).hex}".encode()
    return value, key, fact_tenant, event_id


@dataclass(frozen=True)
class Before:
    """Where the rejected and ledger topics ended, per partition, before the facts were
    published: what `outcomes` reads of the one, and what it counts as recorded before in
    the other."""

    rejected: dict[int, int]
    ledger: dict[int, int]


class Outcomes:
    """What became of published facts, asked with the consumers `publish` keeps for every
    batch it answers: the topics' ends (read_uncommitted, so the high watermarks), the
    writer's group (its committed intake offsets) and the rejected topic (read_committed).

    Made for each batch, with one more for the rejected topic's high watermarks, they took
    about 170 ms of the 320 ms a fact answered on its own took (2026-12-04), and `publish`
    answers a pipe's facts as they come. The replica's catch-up for a small batch's receipts
    keeps its read_committed consumer here too, and shares the topics' ends one
    (`KeptReaders`).
    """

    def __init__(self, ledger: ConsentLedger) -> None:
        self._ledger = ledger
        self._link = link = _link(ledger)
        self._kept = KeptReaders(link.bootstrap, "consent-ledger-publish")
        self._group: KafkaConsumer | None = None
        self._rejected: KafkaConsumer | None = None

    def __enter__(self) -> Outcomes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._kept.close()
        for consumer in (self._group, self._rejected):
            if consumer is not None:
                consumer.close()
        self._group = self._rejected = None

    def ends_before(self) -> Before:
        """The rejected and ledger topics' ends now, taken before publishing.

        Read from the rejected topic's beginning, an answer was wrong once the intake topic
        had been deleted and made again (its offsets start over): a fact recorded at the
        same partition and offset as one refused before was reported with the old refusal.
        Every `publish` read the whole topic, as large as a week of refusals. And a fact the
        ledger held before (a retry) was answered `"duplicate": false`, where `record` and
        HTTP answer true. The ends are the brokers' high watermarks: every record committed
        before now lies below them, and every record written after, above.
        """
        link = self._link
        away = BrokerWatch(link.bootstrap)
        topics = (link.topics.rejected, link.topics.ledger)
        try:
            consumer = self._ends_reader(away)
            tps = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            ends = end_offsets(consumer, tps, timeout_s=ANSWER_TIMEOUT_S, away=away)
        except ReadTimedOut as error:
            raise LedgerUnavailable(
                f"nothing was published: the topics' ends could not be read ({error})"
            ) from error
        rejected, ledger_ends = (
            {tp.partition: offset for tp, offset in ends.items() if tp.topic == topic}
            for topic in topics
        )
        return Before(rejected, ledger_ends)

    def of(
        self, published: Sequence[Published], timeout_s: float, before: Before
    ) -> list[Receipt | FactRejected]:
        """Wait until the writer committed past every published record; then what became
        of each. `before`: `ends_before` as it was before they were published."""
        link = self._link
        last: dict[TopicPartition, int] = {}
        for p in published:
            tp = TopicPartition(link.topics.intake, p.partition)
            last[tp] = max(last.get(tp, -1), p.offset)
        self._wait_committed(last, timeout_s)
        refused = self._rejected_after(published, timeout_s, before.rejected)
        recorder = self._ledger.ledger_recorder
        assert isinstance(recorder, KafkaLedgerRecorder)
        # Kept consumers save about 45 ms a catch-up: most of a lone fact's answer, nothing
        # to a batch of thousands, and kept through a large file's reads they left the
        # process 16-30 MB larger at 200,000 facts (bench/RESULTS.md, 2026-12-04).
        recorder.catch_up(kept=self._kept if len(published) <= KEPT_FOR_UP_TO else None)
        results: list[Receipt | FactRejected] = []
        for p in published:
            found = refused.get((p.partition, p.offset))
            if found is not None:
                results.append(found)
                continue
            results.append(_receipt(self._ledger, p, before.ledger))
        return results

    def _ends_reader(self, away: BrokerWatch) -> KafkaConsumer:
        return self._kept.uncommitted(timeout_s=ANSWER_TIMEOUT_S, away=away)

    def _wait_committed(self, last: dict[TopicPartition, int], timeout_s: float) -> None:
        """Until the writer's group has committed past `last`, for up to `timeout_s`.

        The group's offsets are asked a step at a time with a `BrokerWatch`: kafka-python's
        `committed` has no bound of its own, and with the broker stopped mid-wait it raised
        its connection error out of the command as a traceback (exit 1).
        """
        link = self._link
        away = BrokerWatch(link.bootstrap)
        deadline = time.monotonic() + timeout_s
        if self._group is None:
            try:
                self._group = bootstrapped(
                    lambda ms: Consumer(
                        bootstrap_servers=link.bootstrap,
                        group_id=link.intake_group,
                        enable_auto_commit=False,
                        client_id="consent-ledger-publish",
                        bootstrap_timeout_ms=ms,
                    ),
                    timeout_s=timeout_s,
                    away=away,
                )
            except ReadTimedOut as error:
                raise _outcomes_unread(error) from error
        consumer = self._group
        while True:
            try:
                committed = answered(
                    functools.partial(committed_offsets, consumer, list(last)),
                    timeout_s=max(deadline - time.monotonic(), 0.0),
                    away=away,
                )
            except BrokerAway as error:
                raise _outcomes_unread(error) from error
            except ReadTimedOut:
                committed = {}
            if all((committed.get(tp) or 0) > offset for tp, offset in last.items()):
                return
            if time.monotonic() > deadline:
                raise NotConsumed(
                    f"the ledger writer did not take the facts within {timeout_s:g} s "
                    "(is `consent-ledger worker` or `serve` running?)"
                )
            time.sleep(COMMITTED_POLL_S)  # polling the group's committed offsets on the broker

    def _rejected_after(
        self, published: Sequence[Published], timeout_s: float, since: Mapping[int, int]
    ) -> dict[tuple[int, int], FactRejected]:
        """Rejects of our records, read_committed from `since` to the rejected topic's end
        (as `from_the_beginning` reads, on the consumers kept)."""
        link = self._link
        wanted = {(p.partition, p.offset) for p in published}
        found: dict[tuple[int, int], FactRejected] = {}
        away = BrokerWatch(link.bootstrap)
        try:
            ends = self._ends_reader(away)
            if self._rejected is None:
                self._rejected = reader(
                    link.bootstrap, "consent-ledger", timeout_s=timeout_s, away=away
                )
                self._rejected.assign(
                    [
                        TopicPartition(link.topics.rejected, p)
                        for p in sorted(
                            self._rejected.partitions_for_topic(link.topics.rejected) or ()
                        )
                    ]
                )
            consumer = self._rejected
            tps = sorted(consumer.assignment())
            if not tps:
                return found
            for tp in tps:
                if tp.partition in since:
                    consumer.seek(tp, since[tp.partition])
                else:
                    consumer.seek_to_beginning(tp)
            high = end_offsets(ends, tps, timeout_s=timeout_s, away=away)
            end = settled_ends(consumer, tps, high, timeout_s=timeout_s, away=away)
            for polled in polls_to_end(consumer, tps, timeout_s=timeout_s, end=end, away=away):
                for tp, records in polled.items():
                    for record in records:
                        if record.offset >= end[tp]:
                            continue
                        refusal = _refusal(record, link, wanted)
                        if refusal is not None:
                            found[refusal[0]] = refusal[1]
        except BrokerAway as error:
            raise _outcomes_unread(error) from error
        except ReadTimedOut as error:
            raise NotConsumed("the rejected topic could not be read to its end") from error
        return found


# How often `Outcomes` asks whether the writer's group has committed past a batch: a
# question on a consumer it keeps, a round trip to the broker.
COMMITTED_POLL_S = 0.02
# The largest batch whose replica catch-up reads on the consumers `Outcomes` keeps.
KEPT_FOR_UP_TO = 100


def _receipt(
    ledger: ConsentLedger, p: Published, ledger_ends: Mapping[int, int]
) -> Receipt | FactRejected:
    found = (
        ledger.receipts(p.tenant, [p.event_id]).get(p.event_id) if p.tenant and p.event_id else None
    )
    if found is None:
        # Committed past, neither rejected nor in the ledger: only a retry of a fact that
        # had been refused before can end like that — or the record was not ours to find.
        return FactRejected(Code.PROCESSING_FAILED, "no outcome was found for this fact")
    # In the ledger before this was published: a retry, answered as `record` answers it.
    return found._replace(
        duplicate=found.partition is not None
        and found.position < ledger_ends.get(found.partition, 0)
    )


def _outcomes_unread(error: Exception) -> LedgerUnavailable:
    return LedgerUnavailable(
        f"the facts were published, but their outcomes could not be read ({error}); publish "
        "them again to learn them (a fact published twice is taken once, by its event_id)"
    )


def _refusal(
    record: Any, link: KafkaLink, wanted: set[tuple[int, int]]
) -> tuple[tuple[int, int], FactRejected] | None:
    """One of our records' refusal, or None (another's, or a record the writer did not
    write)."""
    if not by_the_ledger(record, link.record_key):
        return None
    try:
        body = orjson.loads(record.value or b"")
        source = body["source"]
        place = (source["partition"], source["offset"])
        if source["topic"] != link.topics.intake or place not in wanted:
            return None
        return place, FactRejected(Code(body["code"]), body["message"], body.get("field"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _link(ledger: ConsentLedger) -> KafkaLink:
    recorder = ledger.ledger_recorder
    if not isinstance(recorder, KafkaLedgerRecorder):
        raise TypeError("publishing to the intake topic needs the ledger in Kafka mode")
    return recorder.link
