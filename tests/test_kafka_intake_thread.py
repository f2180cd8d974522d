"""The service's intake writer thread (`ledger.kafka.intake_thread`): started again after a
failure it did not expect, said by `/readyz` and `/metrics` meanwhile, and left stopped
once another writer fenced it, the record it was writing left to that writer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

import ledger.kafka.intake_thread as intake_thread
from api.app import create_app
from ledger.application import ConsentLedger
from ledger.kafka.intake import IntakeWriter
from ledger.kafka.names import Topics
from ledger.kafka.publish import intake_key
from ledger.settings import Settings
from tests.facts import grant
from tests.kafka_support import (
    another_writer,
    headers,
    kafka_cli,
    kafka_settings,
    publish,
    read_committed,
)

pytestmark = pytest.mark.kafka

SECRET = "intake-thread-secret-reference"
PUBLISHER_KEY = b"a publishing service's own secret"


def _started(tmp_path: Path, kafka_bootstrap: str) -> tuple[Settings, Topics]:
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    return settings, Topics.of(settings.topic_prefix)


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # a condition poll: the intake writer works on its own thread


def _failing_steps(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """`IntakeWriter.step` failing its first `failures` calls, as a bug would, with an error
    whose message names a person; the calls that failed are counted."""
    failed: list[int] = []
    step = IntakeWriter.step

    def failing(self: IntakeWriter, timeout_ms: int = 500) -> int:
        if len(failed) < failures:
            failed.append(1)
            raise RuntimeError(f"a bug that quotes {SECRET}")
        return step(self, timeout_ms)

    monkeypatch.setattr(IntakeWriter, "step", failing)
    return failed


def _in_ledger(kafka_bootstrap: str, topics: Topics, event_id: str) -> int:
    records = read_committed(kafka_bootstrap, topics.ledger)
    return sum(headers(r).get("event_id") == event_id for r in records)


def test_a_service_whose_intake_writer_failed_starts_it_again(
    tmp_path: Path,
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, topics = _started(tmp_path, kafka_bootstrap)
    publish(
        kafka_bootstrap,
        topics.intake,
        [
            (
                intake_key(PUBLISHER_KEY, "demo", "it-1"),
                orjson.dumps(grant("it-1", event_id="it-g1")),
            )
        ],
    )
    monkeypatch.setattr(intake_thread, "RESTART_S", 0.1)
    failed = _failing_steps(monkeypatch, 2)  # two in a row: the second pause is doubled
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        _until(lambda: service.intake.writer.stats.accepted > 0, "the fact was not taken")
        assert len(failed) == 2 and service.intake.writer.stats.restarts == 2
        assert service.intake.thread.is_alive() and service.intake.failed is None
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        assert "\nledger_intake_restarts_total 2\n" in metrics
        assert "\nledger_intake_facts_accepted_total 1\n" in metrics
    assert _in_ledger(kafka_bootstrap, topics, "it-g1") == 1
    said = [r.getMessage() for r in caplog.records if r.name == "consent_ledger.intake"]
    assert said == [
        "the intake writer stopped (RuntimeError); starting it again in 0.1 s",
        "the intake writer stopped (RuntimeError); starting it again in 0.2 s",
    ]
    assert SECRET not in caplog.text


def test_readiness_says_the_intake_writer_waits_to_start_again_and_a_stop_ends_the_wait(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = _started(tmp_path, kafka_bootstrap)
    monkeypatch.setattr(intake_thread, "RESTART_S", 600.0)
    _failing_steps(monkeypatch, 1)
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        _until(lambda: service.intake.failed is not None, "the writer did not fail")
        unready = client.get("/readyz")
        assert unready.status_code == 503
        assert unready.json()["code"] == "not_ready"
        assert unready.json()["detail"] == (
            "the intake writer stopped (RuntimeError); starting it again"
        )
        assert SECRET not in unready.text
        assert "\nledger_intake_restarts_total 0\n" in client.get("/metrics").text
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 30  # the stop cut the 600 s pause short
    assert not service.intake.thread.is_alive()


def test_a_fenced_intake_writer_stays_stopped_and_leaves_its_record_to_the_new_owner(
    tmp_path: Path, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings, topics = _started(tmp_path, kafka_bootstrap)
    other: ConsentLedger | None = None
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        # Another writer of the deployment (its master key and key store) takes the ledger.
        other = another_writer(settings, tmp_path / "other")
        fact = grant("it-2", event_id="it-g2")
        publish(
            kafka_bootstrap,
            topics.intake,
            [(intake_key(PUBLISHER_KEY, "demo", "it-2"), orjson.dumps(fact))],
        )
        _until(lambda: service.intake.fenced, "the intake writer was not fenced")
        service.intake.thread.join(30)
        assert not service.intake.thread.is_alive() and service.intake.writer.stats.restarts == 0
        unready = client.get("/readyz")
        assert unready.status_code == 503 and unready.json()["code"] == "writer_fenced"
    assert _in_ledger(kafka_bootstrap, topics, "it-g2") == 0
    said = [r.getMessage() for r in caplog.records if r.name == "consent_ledger.intake"]
    assert said == ["fenced: another writer owns the ledger partitions"]
    # The new owner's intake writer takes the record the fenced one could not commit.
    assert other is not None
    writer = IntakeWriter(other)
    try:
        writer.start()
        deadline = time.monotonic() + 60
        while writer.stats.accepted < 1:
            assert time.monotonic() < deadline, "the new owner did not take the record"
            writer.step()
    finally:
        writer.close()
        other.close()
    assert _in_ledger(kafka_bootstrap, topics, "it-g2") == 1


def test_a_service_whose_key_store_was_rotated_under_it_stops_its_intake_writer_for_good(
    tmp_path: Path, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`master-key rotate` under a running service: its intake writer, on the retired key,
    stops with nothing of its batch committed or rejected (as `worker` exits 2), and is not
    started again, which could only fail the same way until the service restarts."""
    settings, topics = _started(tmp_path, kafka_bootstrap)
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        rotated = kafka_cli(settings, "master-key", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        fact = grant("it-3", event_id="it-g3")
        publish(
            kafka_bootstrap,
            topics.intake,
            [(intake_key(PUBLISHER_KEY, "demo", "it-3"), orjson.dumps(fact))],
        )
        _until(lambda: service.intake.ended is not None, "the intake writer did not stop")
        service.intake.thread.join(30)
        assert not service.intake.thread.is_alive()
        assert service.intake.writer.stats.restarts == 0 and service.intake.failed is None
        assert client.get("/readyz").status_code == 503
    said = [r.getMessage() for r in caplog.records if r.name == "consent_ledger.intake"]
    assert len(said) == 1, said
    assert said[0].startswith(
        "the intake writer stopped: the master key does not open the key store"
    )
    assert said[0].endswith("; restart the service")
    assert _in_ledger(kafka_bootstrap, topics, "it-g3") == 0
    assert read_committed(kafka_bootstrap, topics.rejected) == []
