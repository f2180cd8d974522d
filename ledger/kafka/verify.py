"""Verify the ledger topic itself, not only the writer's replica of it.

Read with read_committed, each record's MAC is checked (see `records`), then it is rehashed
and checked against its subject's chain (versions 1, 2, 3... in partition order, `prev_hash`
equal to the rehash of the record before) and against the fact the writer indexed at that
place of the topic when it appended. A record the ledger did not write, a gap, a swap or
changed bytes is named by its partition and offset.
"""

from __future__ import annotations

from itertools import islice
from typing import Any
from uuid import UUID

import orjson

from ledger.chain import GENESIS, stored_hash
from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.reading import ReadTimedOut, from_the_beginning
from ledger.kafka.recorder import KafkaLedgerRecorder, LedgerUnavailable
from ledger.kafka.records import NotALedgerRecord, decode
from ledger.verify import Problem, VerifyResult


def verify_topic(
    recorder: KafkaLedgerRecorder, timeout_s: float = 300.0, chunk: int = 5000
) -> VerifyResult:
    """Memory grows with the subjects (each one's last version and hash), not with the
    facts: the replica's index is asked only for the records in hand, `chunk` at a time."""
    link = recorder.link
    heads: dict[UUID, tuple[int, str]] = {}
    problems: list[Problem] = []
    checked = 0
    records = from_the_beginning(
        link.bootstrap,
        link.topics.ledger,
        timeout_s=timeout_s,
        client_id="consent-ledger-verify",
        partitions=range(link.partitions),
        away=BrokerWatch(link.bootstrap),
    )
    try:
        while batch := list(islice(records, chunk)):
            indexed = _indexed(recorder, batch)
            for record in batch:
                where = (record.partition, record.offset)
                found = _check(record, heads, indexed.get(where), link.record_key)
                if found is not None:
                    problems.append(found)
            checked += len(batch)
    except ReadTimedOut as error:
        raise LedgerUnavailable(str(error)) from error
    return VerifyResult(facts_checked=checked, root=recorder.head()[1], problems=problems)


def _indexed(
    recorder: KafkaLedgerRecorder, records: list[Any]
) -> dict[tuple[int, int], tuple[UUID, int, str]]:
    """What the replica indexed at the places of these records (one query a partition)."""
    spans: dict[int, tuple[int, int]] = {}
    for r in records:
        first, last = spans.get(r.partition, (r.offset, r.offset))
        spans[r.partition] = (min(first, r.offset), max(last, r.offset))
    return {
        (partition, offset): row
        for partition, (first, last) in spans.items()
        for offset, row in recorder.indexed_between(partition, first, last).items()
    }


def _check(
    record: Any,
    heads: dict[UUID, tuple[int, str]],
    indexed: tuple[UUID, int, str] | None,
    mac_key: bytes,
) -> Problem | None:
    def problem(kind: str, agg: str, version: int, message: str) -> Problem:
        return Problem(record.offset, kind, agg, version, None, message, record.partition)

    try:
        stored, _ = decode(record.key, record.value, dict(record.headers or []), mac_key)
    except NotALedgerRecord:
        return problem("inserted", "", 0, "a record the ledger did not write (no valid MAC)")
    agg = stored.originator_id
    assert isinstance(agg, UUID)
    version = stored.originator_version
    digest = stored_hash(stored)
    last_version, last_hash = heads.get(agg, (0, GENESIS))
    heads[agg] = (version, digest)
    if version != last_version + 1:
        kind = "removed" if version > last_version + 1 else "reordered"
        return problem(kind, agg.hex, version, f"follows version {last_version}")
    if indexed is not None:
        indexed_agg, indexed_version, indexed_hash = indexed
        if (indexed_agg, indexed_version) != (agg, version):
            return problem(
                "reordered",
                agg.hex,
                version,
                f"the replica indexed version {indexed_version} of another or the same "
                "subject at this place",
            )
        if indexed_hash != digest:
            return problem("altered", agg.hex, version, "the bytes differ from those indexed")
    try:
        prev = orjson.loads(stored.state).get("prev_hash", GENESIS)
    except orjson.JSONDecodeError:
        prev = None
    if prev != last_hash:
        return problem("altered", agg.hex, version, "prev_hash breaks the chain")
    return None
