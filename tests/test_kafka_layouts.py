"""A ledger topic holds records of every layout the ledger ever wrote, and every reader takes
them all: the log of record is replayed for years, whatever version of the ledger wrote it.

The first layout (one header per field) is written here by hand, record for record as the
ledger wrote it before its `ledger` header (2411e37), from a log the current code recorded.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.kafka.names import Topics
from ledger.kafka.topics import ensure_topics
from ledger.receipt import Receipt
from ledger.settings import Settings
from projections.trail import subject_trail
from projections.views import Views
from tests.facts import grant, withdraw
from tests.kafka_support import in_first_layout, kafka_cli, kafka_settings, read_committed

pytestmark = pytest.mark.kafka

MARCH_2 = "2025-03-02T10:00:00+05:00"
MARCH_3 = "2025-03-03T10:00:00+05:00"


def ledger_of(settings: Settings) -> str:
    return Topics.of(settings.topic_prefix).ledger


def unplaced(trail: dict[str, Any]) -> dict[str, Any]:
    """A trail but for where its facts lie in the topic that holds them."""
    facts = [
        {k: v for k, v in f.items() if k not in ("position", "partition")} for f in trail["facts"]
    ]
    return {**trail, "facts": facts}


def test_a_topic_of_both_layouts_is_read_by_the_replica_the_projections_and_verify(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=1)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    first = ledger.record(
        [
            parse_fact(grant("layout-1", event_id="lay-1", personal_data={"full_name": "A"})),
            parse_fact(withdraw("layout-1", event_id="lay-2", occurred_at=MARCH_2)),
            parse_fact(grant("layout-2", event_id="lay-3")),
        ]
    )
    assert all(isinstance(r, Receipt) for r in first)
    sid = uuid.UUID(first[0].sid)  # type: ignore[union-attr]
    before = subject_trail(ledger, "demo", sid)
    assert before is not None and [f["event_id"] for f in before["facts"]] == ["lay-1", "lay-2"]
    mac_key = ledger.ledger_recorder.link.record_key  # type: ignore[attr-defined]
    ledger.close()

    # The same log on a topic of its own, every record but the last in the first layout.
    records = read_committed(kafka_bootstrap, Topics.of(settings.topic_prefix).ledger)
    assert len(records) >= 4
    moved = dataclasses.replace(settings, topic_prefix=f"t{uuid.uuid4().hex[:12]}")
    ensure_topics(moved)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i, record in enumerate(records):
        layout = in_first_layout(record, mac_key) if i < len(records) - 1 else record.headers
        producer.send(
            Topics.of(moved.topic_prefix).ledger,
            key=record.key,
            value=record.value,
            headers=layout,
            partition=record.partition,
        )
    producer.flush()
    producer.close()
    # Nothing of the first topic's reading is kept: the replica and the views are rebuilt.
    for leftover in settings.data_dir.glob("*"):
        if leftover.name.startswith(("ledger-replica.db", "views.db")):
            leftover.unlink()

    ledger = ConsentLedger(moved)  # the replica, rebuilt from the moved topic
    rebuilt = subject_trail(ledger, "demo", sid)
    assert rebuilt is not None
    # Each fact's place is its offset in the topic that holds it now: the copy has no
    # transaction markers between records, so its offsets are not the first topic's.
    moved_to = {(r.partition, r.offset) for r in read_committed(kafka_bootstrap, ledger_of(moved))}
    assert {(f["partition"], f["position"]) for f in rebuilt["facts"]} <= moved_to
    assert unplaced(rebuilt) == unplaced(before)
    [after] = ledger.record([parse_fact(grant("layout-1", event_id="lay-4", occurred_at=MARCH_3))])
    assert isinstance(after, Receipt), after
    views = Views(ledger)
    views.refresh()
    entries = views.store.rows("SELECT event_id FROM view_entries ORDER BY event_id")
    assert [row[0] for row in entries] == ["lay-1", "lay-2", "lay-3", "lay-4"]
    views.close()
    ledger.close()

    verified = kafka_cli(moved, "verify", timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_views_ahead_of_their_replica_catch_it_up_on_kept_consumers(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Views whose data directory is not the writer's (a `serve` beside a `worker`) read
    facts their replica has not applied yet, and catch it up on consumers they keep from
    refresh to refresh: each refresh projects what was recorded since the last."""
    import base64
    import os

    # One master key, as every process of one ledger has: the reader's key store then
    # derives the same record key, and accepts the writer's records.
    master = base64.b64encode(os.urandom(32)).decode()
    writing = kafka_settings(tmp_path / "writer", kafka_bootstrap, master_key=master)
    reading = dataclasses.replace(writing, data_dir=tmp_path / "reader")
    writer = ConsentLedger(writing)
    writer.init_demo()
    reader = ConsentLedger(reading)
    views = Views(reader)
    try:
        views.refresh()  # the demo tenant's facts
        kept = None
        for n in range(1, 4):
            recorded = writer.record([parse_fact(grant(f"person-{n}", event_id=f"g-{n}"))])
            assert isinstance(recorded[0], Receipt)
            assert views.refresh() == 1  # the replica caught up first, then the views
            assert reader.ledger_recorder.find_facts("demo", [f"g-{n}"]).keys() == {f"g-{n}"}
            now = views._reader.kept().committed(timeout_s=30)
            assert now.assignment(), "the replica's catch-up did not read on this consumer"
            assert kept is None or now is kept  # made once, kept
            kept = now
    finally:
        views.close()
        reader.close()
        writer.close()
