"""The intake writer on the real broker: poison never stops it, and every record lands once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ledger.application import ConsentLedger
from ledger.kafka import intake as intake_module
from ledger.kafka.intake import IntakeWriter, wait_until_consumed
from ledger.kafka.topics import Topics
from ledger.settings import Settings
from tests.kafka_support import (
    OVERSIZE_LIMIT,
    check_exactly_once,
    end_offsets,
    headers,
    intake_stream,
    kafka_settings,
    publish,
    read_committed,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def kafka_ledger(tmp_path: Path, kafka_bootstrap: str) -> Iterator[ConsentLedger]:
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, intake_max_bytes=OVERSIZE_LIMIT)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    yield ledger
    ledger.close()


def _drain(ledger: ConsentLedger, settings: Settings) -> IntakeWriter:
    topics = Topics.of(settings.topic_prefix)
    assert settings.kafka_bootstrap
    writer = IntakeWriter(ledger)
    writer.start()
    try:
        wait_until_consumed(writer, end_offsets(settings.kafka_bootstrap, topics.intake), 180)
        # A running writer keeps polling: nothing it already committed may come back.
        assert writer.step(timeout_ms=300) == 0
    finally:
        writer.close()
    return writer


def test_poison_interleaved_with_valid_facts(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str
) -> None:
    """1,000 malformed or invalid records among 10,000 valid ones."""
    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    items = intake_stream(valid=10_000, bad=1_000)
    publish(kafka_bootstrap, topics.intake, [(i.key, i.value) for i in items])  # type: ignore[misc]

    writer = _drain(kafka_ledger, settings)

    ledger = read_committed(kafka_bootstrap, topics.ledger)
    rejected = read_committed(kafka_bootstrap, topics.rejected)
    check_exactly_once(items, ledger, rejected)
    assert writer.stats.accepted == 10_000
    assert sum(writer.stats.rejected.values()) == 1_000
    for record in rejected:
        body = orjson.loads(record.value)
        assert headers(record)["code"] == body["code"]
        assert body["source"]["topic"] == topics.intake
        assert (
            record.key
            == f"{topics.intake}/{body['source']['partition']}/{body['source']['offset']}".encode()
        )
    # The writer's facts are readable through the same application service.
    sample = next(i for i in items if i.expected == "accepted")
    assert sample.subject is not None
    subject = kafka_ledger.subject("demo", kafka_ledger.sid("demo", sample.subject))
    assert subject is not None


def test_a_record_that_breaks_the_writer_is_isolated_and_rejected(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: parsing raises an unexpected error for one record of a batch."""
    settings = kafka_ledger.settings
    topics = Topics.of(settings.topic_prefix)
    items = intake_stream(valid=300, bad=0)
    real_parse = intake_module.parse_fact_bytes  # type: ignore[attr-defined]

    def parse(data: bytes, tenant: str | None = None) -> object:
        if b"trip-the-writer" in data:
            raise RuntimeError("a bug")
        return real_parse(data, tenant)

    monkeypatch.setattr(intake_module, "parse_fact_bytes", parse)
    values = [i.value for i in items]
    values.insert(150, b'{"trip-the-writer": true}')
    publish(kafka_bootstrap, topics.intake, [(b"k", v) for v in values])  # type: ignore[misc]

    writer = _drain(kafka_ledger, settings)

    rejected = [orjson.loads(r.value) for r in read_committed(kafka_bootstrap, topics.rejected)]
    assert [r["code"] for r in rejected] == ["processing_failed"]
    landed = [headers(r).get("event_id") for r in read_committed(kafka_bootstrap, topics.ledger)]
    assert {i.event_id for i in items} <= set(landed)
    assert writer.stats.accepted == 300
