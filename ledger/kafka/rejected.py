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
from typing import Any

import orjson
from kafka.consumer.fetcher import ConsumerRecord

from ledger.envelope import Fact
from ledger.errors import FactRejected
from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.reading import ReadTimedOut, from_the_beginning
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
    if fact is not None:
        body["tenant"] = fact.tenant
        body["event_id"] = fact.event_id
    key = f"{record.topic}/{record.partition}/{record.offset}".encode()
    value = orjson.dumps(body)
    headers = [("code", refusal.code.value.encode())]
    if topic_id:
        headers.append((SOURCE_TOPIC_ID_HEADER, topic_id.encode()))
    headers.append((MAC_HEADER, record_mac(mac_key, key, value, dict(headers))))
    return key, value, headers


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
    try:
        for record in from_the_beginning(
            link.bootstrap,
            link.topics.rejected,
            timeout_s=link.catch_up_timeout_s,
            client_id="consent-ledger-intake-positions",
            away=BrokerWatch(link.bootstrap),
        ):
            key = record.key or b""
            if not key.startswith(prefix):
                continue
            said = dict(record.headers or [])
            if said.get(SOURCE_TOPIC_ID_HEADER) != wanted or not by_the_ledger(
                record, link.record_key
            ):
                continue
            try:
                partition, offset = (int(n) for n in key[len(prefix) :].split(b"/"))
            except ValueError:
                continue
            found[partition] = max(found.get(partition, 0), offset + 1)
    except ReadTimedOut as error:
        raise LedgerUnavailable(f"the rejected topic could not be read: {error}") from error
    return found
