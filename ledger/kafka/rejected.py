"""The rejected topic's records: what the intake writer refused, and how far it had read.

A rejected record says why (code, message, the field), where from (the intake topic by name
and id, partition and offset) and carries the original bytes (the first 512 KiB of a larger
record, with its size and SHA-256). Its `mac` header, the ledger records' rule
(ledger.kafka.records), tells the ledger's own from a record anyone else appended: a writer
whose committed offsets Kafka deleted reads how far it had got from these records and the
ledger's `intake` headers (ledger.kafka.intake, `read_positions`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from kafka.consumer.fetcher import ConsumerRecord

from ledger.envelope import Fact
from ledger.errors import Code, FactRejected
from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.reading import KeptReaders, ReadTimedOut, from_the_beginning, never
from ledger.kafka.recorder import KafkaLink, LedgerUnavailable
from ledger.kafka.records import MAC_HEADER, record_mac
from ledger.kafka.topics import ORIGINAL_KEPT

# The header naming the id of the intake topic the refused record was in.
SOURCE_TOPIC_ID_HEADER = "source_topic_id"


def rejected_record(
    record: ConsumerRecord,
    refusal: FactRejected,
    fact: Fact | None,
    topic_id: str,
    mac_key: bytes,
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The rejected topic's record: why, where from, and the original bytes.

    The key is the source coordinates, not the publisher's key (which may be personal data).
    The original bytes are as sensitive as the intake topic itself, which is why the rejected
    topic has a finite retention (LEDGER_REJECTED_RETENTION_MS). The intake topic's id (a
    header, and in the source) tells how far the writer read it (`read_positions`), and the
    `mac` header (the ledger records' rule) that the ledger wrote it: a record appended by
    anyone else could otherwise move a recovering writer past facts it never read.
    """
    original = record.value or b""
    source: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }
    if topic_id:
        source["topic_id"] = topic_id
    body: dict[str, Any] = {
        **refusal.as_dict(),
        "source": source,
        "original": base64.b64encode(original[:ORIGINAL_KEPT]).decode(),
    }
    if len(original) > ORIGINAL_KEPT:
        # Whole, a record near the intake topic's limit made a rejected record (base64 and
        # the reasons) larger than the rejected topic takes: the transaction failed, was
        # retried for ever, and the partition stopped behind it. The source coordinates
        # still find the whole record while the intake topic keeps it.
        body["original_size"] = len(original)
        body["original_sha256"] = hashlib.sha256(original).hexdigest()
        body["original_truncated"] = True
    named = (fact.tenant, fact.event_id) if fact is not None else stated_ids(original, refusal)
    if named is not None:
        body["tenant"], body["event_id"] = named
    key = f"{record.topic}/{record.partition}/{record.offset}".encode()
    value = orjson.dumps(body)
    headers = [("code", refusal.code.value.encode())]
    if topic_id:
        headers.append((SOURCE_TOPIC_ID_HEADER, topic_id.encode()))
    headers.append((MAC_HEADER, record_mac(mac_key, key, value, dict(headers))))
    return key, value, headers


# Refusals of records that are not one JSON object, or too large to be read as one.
_UNREAD = {Code.INVALID_JSON, Code.NOT_AN_OBJECT, Code.OVERSIZE}
# The longest event id and tenant the envelope takes (ledger.envelope).
_EVENT_ID_MAX, _TENANT_MAX = 128, 64


def stated_ids(original: bytes, refusal: FactRejected) -> tuple[str, str] | None:
    """The tenant and event id a fact refused before it parsed (a field missing or
    invalid, an unknown type) states, so that its publisher finds the refusal by event id
    (`receipts`, `POST /v1/facts:lookup`): it named neither, and read as a fact never
    sent. None for a record that is not one JSON object or names either other than as a
    string of its length; the intake topic lets any publisher name any tenant, so this
    says no more than the fact did."""
    if refusal.code in _UNREAD:
        return None
    try:
        parsed = orjson.loads(original)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    tenant, event_id = parsed.get("tenant"), parsed.get("event_id")
    if not isinstance(tenant, str) or not 0 < len(tenant) <= _TENANT_MAX:
        return None
    if not isinstance(event_id, str) or not 0 < len(event_id) <= _EVENT_ID_MAX:
        return None
    return tenant, event_id


def by_the_ledger(record: Any, mac_key: bytes) -> bool:
    """Whether a record of the rejected topic carries the ledger's MAC: anyone who may write
    to the topic could otherwise move a recovering writer past facts it never read, or
    refuse a fact in `publish`'s answer."""
    said = dict(record.headers or [])
    mac = record_mac(mac_key, record.key or b"", record.value or b"", said)
    return hmac.compare_digest(said.get(MAC_HEADER, b""), mac)


def rejected_positions(link: KafkaLink, intake_id: str) -> dict[int, int]:
    """Per intake partition, the offset after the last record the rejected topic holds of
    this intake topic (by id) under the ledger's MAC: the whole topic is read."""
    found: dict[int, int] = {}
    wanted = intake_id.encode()
    prefix = f"{link.topics.intake}/".encode()
    for record in _every_rejected(link, "consent-ledger-intake-positions"):
        key = record.key or b""
        if not key.startswith(prefix):
            continue
        said = dict(record.headers or [])
        if said.get(SOURCE_TOPIC_ID_HEADER) != wanted or not by_the_ledger(record, link.record_key):
            continue
        try:
            partition, offset = (int(n) for n in key[len(prefix) :].split(b"/"))
        except ValueError:
            continue
        found[partition] = max(found.get(partition, 0), offset + 1)
    return found


def _every_rejected(link: KafkaLink, client_id: str) -> Iterator[Any]:
    """Every committed record of the rejected topic, from its beginning to where it ended
    when the read started; a broker that does not answer is the ledger unavailable."""
    return rejected_since(link, {}, client_id)


def rejected_since(
    link: KafkaLink,
    since: Mapping[int, int],
    client_id: str = "consent-ledger-refusals",
    stopping: Callable[[], bool] = never,
    kept: KeptReaders | None = None,
) -> Iterator[Any]:
    """The committed records of the rejected topic from `since` (partition -> offset; a
    partition not in it from its beginning) to where it ended when the read started, by
    `kept`'s consumers when given (`from_the_beginning`)."""
    try:
        yield from from_the_beginning(
            link.bootstrap,
            link.topics.rejected,
            timeout_s=link.catch_up_timeout_s,
            client_id=client_id,
            since=since,
            stopping=stopping,
            away=BrokerWatch(link.bootstrap),
            kept=kept,
        )
    except ReadTimedOut as error:
        raise LedgerUnavailable(f"the rejected topic could not be read: {error}") from error


class Refusal(NamedTuple):
    """The intake writer's refusal of a fact, as the rejected topic holds it."""

    refused: FactRejected
    partition: int  # of the intake topic, where the refused record was
    offset: int
    rejected_ms: int  # when the rejected topic took it (LogAppendTime), ms since the epoch

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.refused.as_dict(),
            "source": {"partition": self.partition, "offset": self.offset},
            "rejected_at": datetime.fromtimestamp(self.rejected_ms / 1000, UTC).isoformat(),
        }


def refusals_of(link: KafkaLink, tenant: str, event_ids: Collection[str]) -> dict[str, Refusal]:
    """The latest refusal the rejected topic holds (under the ledger's MAC) of a fact of
    `tenant` published to this intake topic under each of these event ids: the whole topic
    is read, as far back as its retention keeps (LEDGER_REJECTED_RETENTION_MS). A record
    that did not parse names no tenant or event id, and is found by its place only."""
    wanted = set(event_ids)
    found: dict[str, Refusal] = {}
    if not wanted:
        return found
    for record in _every_rejected(link, "consent-ledger-receipts"):
        refusal = _refusal_of(record, link, tenant, wanted)
        if refusal is None:
            continue
        event_id, said = refusal
        earlier = found.get(event_id)
        if earlier is None or said.rejected_ms >= earlier.rejected_ms:
            found[event_id] = said
    return found


def _refusal_of(
    record: Any, link: KafkaLink, tenant: str, wanted: set[str]
) -> tuple[str, Refusal] | None:
    parsed = parsed_refusal(record, link)
    if parsed is None or parsed[0] != tenant or parsed[1] not in wanted:
        return None
    return parsed[1], parsed[2]


def parsed_refusal(record: Any, link: KafkaLink) -> tuple[str, str, Refusal] | None:
    """The tenant, event id and refusal a rejected record of the ledger's says, of a fact
    published to this intake topic; None for any other record (one that did not parse names
    no tenant or event id)."""
    if not by_the_ledger(record, link.record_key):
        return None  # anyone who may write to the topic could otherwise refuse a fact here
    try:
        body = orjson.loads(record.value or b"")
        tenant, event_id = body.get("tenant"), body.get("event_id")
        source = body["source"]
        if not isinstance(tenant, str) or not isinstance(event_id, str):
            return None
        if source["topic"] != link.topics.intake:
            return None
        refused = FactRejected(Code(body["code"]), body["message"], body.get("field"))
        return (
            tenant,
            event_id,
            Refusal(
                refused, int(source["partition"]), int(source["offset"]), int(record.timestamp)
            ),
        )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None
