"""The HTTP service's index of the intake writer's refusals (`ledger.kafka.refusal_index`),
on the real broker: rejected records written as the intake writer writes them
(`rejected_record`, under the ledger's MAC), then asked by tenant and event id."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from ledger.application import ConsentLedger
from ledger.errors import Code, FactRejected
from ledger.kafka import refusal_index
from ledger.kafka.recorder import KafkaLink
from ledger.kafka.refusal_index import RefusalIndex
from ledger.kafka.rejected import rejected_record
from ledger.store_format import REFUSALS, StoreOfAnotherFormat
from projections.store import ConsentViews
from tests.kafka_support import end_offsets, kafka_settings, no_broker

pytestmark = pytest.mark.kafka

WEEK_MS = 7 * 24 * 3600 * 1000


def refuse(
    link: KafkaLink, offset: int, code: Code, body: dict[str, Any], mac: bool = True
) -> None:
    """A rejected record of the intake topic's partition 0 record at `offset`, which was
    `body` (a fact refused before it parsed: the index finds it by what it states)."""
    intake = SimpleNamespace(
        topic=link.topics.intake, partition=0, offset=offset, value=orjson.dumps(body)
    )
    key, value, headers = rejected_record(
        intake,  # the fields rejected_record reads (ConsumerRecord is untyped)
        FactRejected(code, f"refused as {code.value}", "channel"),
        None,
        "",
        link.record_key if mac else b"someone else's key",
    )
    producer = KafkaProducer(bootstrap_servers=link.bootstrap, acks="all")
    try:
        producer.send(link.topics.rejected, key=key, value=value, headers=headers).get(timeout=30)
    finally:
        producer.close()


def test_refusals_are_found_by_tenant_and_event_id_read_on_and_expire(
    tmp_path: Path,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Written to the file two at a time, as a long read is (5,000 at a time): what a read
    # keeps as it goes must say the same as a read kept whole.
    monkeypatch.setattr(refusal_index, "_KEPT_AT_A_TIME", 2)
    ledger = ConsentLedger(kafka_settings(tmp_path / "data", kafka_bootstrap))
    ledger.init_demo()
    link: KafkaLink = ledger.ledger_recorder.link  # type: ignore[attr-defined]
    ledger.close()
    refuse(link, 0, Code.INVALID_FIELD, {"tenant": "demo", "event_id": "a1"})
    refuse(link, 1, Code.INVALID_FIELD, {"tenant": "demo", "event_id": "a2"}, mac=False)
    refuse(link, 2, Code.MISSING_FIELD, {"tenant": "acme", "event_id": "a1"})
    refuse(link, 3, Code.INVALID_JSON, {"tenant": "demo", "event_id": "a3"})
    path = tmp_path / "refusals.db"
    index = RefusalIndex(path, link, WEEK_MS)
    try:
        found = index.of("demo", ["a1", "a2", "a3", "never"])
        # a2's record is not the ledger's; a3's refusal says it was not JSON, so what it
        # seems to state is not taken.
        assert list(found) == ["a1"]
        assert (found["a1"].refused.code, found["a1"].offset) == (Code.INVALID_FIELD, 0)
        assert index.of("acme", ["a1"])["a1"].refused.code == Code.MISSING_FIELD
        # Where it got to, kept beside them: the next question reads on from there.
        with sqlite3.connect(path) as db:
            kept = dict(db.execute("SELECT partition, next_offset FROM positions").fetchall())
        ends = end_offsets(kafka_bootstrap, link.topics.rejected)
        assert kept == {tp.partition: end for tp, end in ends.items() if end}
        # A later refusal of the same id is the one said.
        refuse(link, 4, Code.UNKNOWN_TYPE, {"tenant": "demo", "event_id": "a1"})
        assert index.of("demo", ["a1"])["a1"].offset == 4
    finally:
        index.close()
    # With no broker to read on from, what was read is the answer (the receipts beside it
    # come from the replica, which needs none), said in the log, and the broker is not asked
    # again until `recheck_s` has passed.
    with no_broker() as dead:
        away = RefusalIndex(path, dataclasses.replace(link, bootstrap=dead), WEEK_MS, recheck_s=60)
        try:
            with caplog.at_level(logging.WARNING, logger="consent_ledger.kafka"):
                assert away.of("demo", ["a1"])["a1"].offset == 4
                assert away.of("acme", ["a1"])["a1"].refused.code == Code.MISSING_FIELD
        finally:
            away.close()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refusals:")]
    assert len(said) == 1 and "answering from what was read before" in said[0], said
    # Past the topic's retention a refusal is no longer said, nor kept.
    later = RefusalIndex(path, link, WEEK_MS, clock=lambda: 4_000_000_000.0)
    try:
        assert later.of("demo", ["a1"]) == {}
    finally:
        later.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM refusals").fetchone() == (0,)
        # Stamped as what it is: another store's file is refused before anything is written.
        assert db.execute("PRAGMA application_id").fetchone() == (REFUSALS.application_id,)
    views = tmp_path / "data" / "views.db"
    ConsentViews.open(views).close()
    with pytest.raises(StoreOfAnotherFormat, match="not the intake writer's refusals"):
        RefusalIndex(views, link, WEEK_MS)
