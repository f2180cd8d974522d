"""The HTTP service in Kafka mode: receipts after the commit, intake in the same process,
readiness that knows the broker, and a fenced service that refuses writes with a 503."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.kafka.names import Topics
from ledger.settings import Settings
from tests.answers_support import conforms
from tests.facts import grant
from tests.kafka_support import (
    another_writer,
    headers,
    kafka_settings,
    no_broker,
    publish,
    read_committed,
    silent_broker,
)

pytestmark = pytest.mark.kafka


def test_http_on_the_kafka_log(tmp_path: Path, kafka_bootstrap: str) -> None:
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    topics = Topics.of(settings.topic_prefix)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.create_tenant("acme")
    ledger.close()
    store = ApiKeys(keys_path(settings))
    _, key = store.create("demo", {"publisher", "compliance", "admin"})
    _, acme_key = store.create("acme", {"publisher"})
    store.close()
    auth = {"Authorization": f"Bearer {key}"}

    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["backend"] == "kafka"

        body = grant("http-1", event_id="http-g1")
        del body["tenant"]
        created = client.post("/v1/facts", json=body, headers=auth)
        assert created.status_code == 201, created.text
        # The receipt came back after the commit: the fact is already readable, committed.
        landed = [
            headers(r).get("event_id") for r in read_committed(kafka_bootstrap, topics.ledger)
        ]
        assert "http-g1" in landed

        # A fact published to the intake topic is written by the service's own intake writer,
        # after (under one key, so in order) a retry of the HTTP fact and a refused one.
        publish(
            kafka_bootstrap,
            topics.intake,
            [
                (b"demo/http-2", orjson.dumps(grant("http-1", event_id="http-g1"))),
                (
                    b"demo/http-2",
                    orjson.dumps(grant("http-2", event_id="intake-bad", purposes=("astrology",))),
                ),
                (b"demo/http-2", orjson.dumps(grant("http-2", event_id="intake-g1"))),
            ],
        )
        sid = client.post("/v1/subjects:resolve", json={"subject": "http-2"}, headers=auth)
        consents = None
        for _ in range(600):  # the writer polls every 0.5 s; ask until the fact is there
            answer = client.get(f"/v1/subjects/{sid.json()['sid']}/consents", headers=auth)
            if answer.status_code == 200:
                consents = answer.json()
                break
            assert answer.status_code == 404
            client.app.state.service.intake.stop.wait(0.05)  # type: ignore[attr-defined]
        assert consents is not None, "the intake fact never reached the ledger"
        [marketing] = [p for p in consents["purposes"] if p["purpose"] == "marketing"]
        assert marketing["state"] == "granted"
        metrics = client.get("/metrics").text
        assert "\nledger_intake_expired_unread_total 0\n" in metrics
        # A process-wide count (other tests in this process may have added to it).
        assert re.search(r"\nledger_kafka_fenced_broker_connections_closed_total \d+\n", metrics)
        # Counted apart from what was published over HTTP.
        for line in [
            "ledger_facts_accepted_total 1",
            "ledger_intake_facts_accepted_total 1",
            "ledger_intake_facts_duplicate_total 1",
            'ledger_intake_facts_refused_total{code="unknown_purpose"} 1',
            # The key names http-2's reference, the subject of the last two.
            "ledger_intake_keyed_by_reference_total 2",
        ]:
            assert f"\n{line}\n" in metrics, line
        # Every record taken: no partition behind (measured after the poll that took them).
        lag = [line for line in metrics.splitlines() if line.startswith("ledger_intake_lag{")]
        assert lag and all(line.endswith(" 0") for line in lag), lag

        # Asked by event id, as a publisher to the intake topic asks: what landed, and why
        # the intake writer refused the rest (it answered `recorded: false` alone).
        asked = {"event_ids": ["intake-g1", "intake-bad", "never", "http-g1"]}
        looked = client.post("/v1/facts:lookup", json=asked, headers=auth)
        assert looked.status_code == 200, looked.text
        results = looked.json()["results"]
        assert [r["recorded"] for r in results] == [True, False, False, True]
        refused = results[1]["refused"]
        assert (refused["code"], refused["field"]) == ("unknown_purpose", "purposes")
        assert refused["source"]["offset"] == 1  # the second of the three records of its key
        assert refused["message"] == "purpose 'astrology' is not in policy version 'crmpro-1.0'"
        assert refused["rejected_at"]
        # As the OpenAPI document says it, nothing it does not name.
        assert conforms(client, looked) == "/v1/facts:lookup"
        assert "refused" not in results[2] and "refused" not in results[0]
        # Asked again, the service reads on from where it got to; a refusal published since
        # is found, and another tenant's key learns nothing of demo's.
        publish(
            kafka_bootstrap,
            topics.intake,
            [(b"demo/http-2", orjson.dumps(grant("http-2", event_id="never", channel="fax")))],
        )
        for _ in range(600):  # the writer polls every 0.5 s; ask until it took the record
            again = client.post("/v1/facts:lookup", json=asked, headers=auth).json()["results"]
            if "refused" in again[2]:
                break
            client.app.state.service.intake.stop.wait(0.05)  # type: ignore[attr-defined]
        assert again[2]["refused"]["code"] == "invalid_field", again
        assert again[1] == results[1]
        theirs = client.post(
            "/v1/facts:lookup", json=asked, headers={"Authorization": f"Bearer {acme_key}"}
        ).json()["results"]
        assert theirs == [
            {"index": i, "event_id": e, "recorded": False} for i, e in enumerate(asked["event_ids"])
        ]

        # Another writer of the deployment (its master key and key store) takes the
        # partitions: this service is fenced and says so.
        other = another_writer(settings, tmp_path / "other")
        body = grant("http-3", event_id="http-g3")
        del body["tenant"]
        refused = client.post("/v1/facts", json=body, headers=auth)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "writer_fenced"
        assert refused.headers["content-type"] == "application/problem+json"
        unready = client.get("/readyz")
        assert unready.status_code == 503 and unready.json()["code"] == "writer_fenced"
        other.close()
    landed = [headers(r).get("event_id") for r in read_committed(kafka_bootstrap, topics.ledger)]
    assert "http-g3" not in landed


def kafka_threads() -> int:
    """The Kafka clients' network threads now running in this process."""
    return sum(t.name.startswith("kafka-io") for t in threading.enumerate())


def test_readyz_reports_an_unreachable_broker(tmp_path: Path, kafka_bootstrap: str) -> None:
    import dataclasses
    import socket

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        service = client.app.state.service  # type: ignore[attr-defined]
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        service.settings = dataclasses.replace(settings, kafka_bootstrap=dead)
        if service.admin is not None:
            service.admin.close()
            service.admin = None
        answer = client.get("/readyz")
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "broker_unreachable"
        # Each probe tries a new client: one that cannot reach a broker leaves no network
        # thread behind (kafka-python's left one per probe: 11 threads became 29 in 20).
        threads = kafka_threads()
        for _ in range(2):
            assert client.get("/readyz").status_code == 503
        assert kafka_threads() == threads


def test_readyz_answers_a_problem_when_the_quorum_question_itself_fails(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quorum question's client failing under it (its network thread stopped: another
    probe, running at the same time, closed the client after a failure of its own) is a
    503 the probe can read, not a 500; the next probe makes a new client."""
    from kafka.errors import KafkaConnectionError

    from ledger.kafka import readiness

    def stopped(admin: object) -> None:
        raise KafkaConnectionError("Event loop stopped")

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        service = client.app.state.service  # type: ignore[attr-defined]
        with monkeypatch.context() as patched:
            patched.setattr(readiness, "ask_quorum", stopped)
            answer = client.get("/readyz")
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "broker_unreachable"
        assert "KafkaConnectionError" in answer.json()["detail"]
        assert service.admin is None
        assert client.get("/readyz").status_code == 200


def test_readiness_probes_at_once_ask_the_cluster_one_after_the_other(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probes run side by side in the server's thread pool and share one admin client: one
    whose client failed closed it, and the question another probe was asking on it failed,
    a broker said unreachable that had answered. One probe at a time asks: while the first
    probe's quorum question is held open, nothing of the second reaches the cluster."""
    from ledger.kafka import readiness

    ask_quorum, asked_of_some_broker = readiness.ask_quorum, readiness.asked_of_some_broker
    inside, go, meanwhile = threading.Event(), threading.Event(), threading.Event()

    def held(admin: Any) -> Any:
        inside.set()
        assert go.wait(30)
        return ask_quorum(admin)

    def described(admin: Any, ask: Any) -> Any:
        if inside.is_set() and not go.is_set():
            meanwhile.set()
        return asked_of_some_broker(admin, ask)

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        monkeypatch.setattr(readiness, "ask_quorum", held)
        monkeypatch.setattr(readiness, "asked_of_some_broker", described)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.get, "/readyz")
            try:
                assert inside.wait(30), "the first probe never asked the quorum"
                second = pool.submit(client.get, "/readyz")
                # A bounded look for what must not happen: the second probe asking meanwhile.
                assert not meanwhile.wait(1.0), "the second probe asked while the first did"
            finally:
                go.set()
            assert first.result().status_code == 200, first.result().text
            assert second.result().status_code == 200, second.result().text


def test_readyz_reports_a_topic_deleted_under_it(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The broker answers, a topic the ledger needs is gone: not ready, naming the topic
    (not `broker_unreachable`, which would send an operator to the network)."""
    from kafka import KafkaAdminClient

    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    topics = Topics.of(settings.topic_prefix)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics([topics.rejected])
        finally:
            admin.close()
        # Deleted once the controller committed it; the broker's metadata follows it.
        deadline = time.monotonic() + 30
        while (answer := client.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "the deleted topic was still described"
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "topics_missing", answer.text
        assert answer.json()["detail"] == f"topics not available: {topics.rejected}"


def _compliance_key(tmp_path: Path, kafka_bootstrap: str) -> tuple[Settings, dict[str, str]]:
    """A Kafka-mode ledger with the demo tenant, and a compliance key's header for it."""
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    store = ApiKeys(keys_path(settings))
    _, key = store.create("demo", {"compliance"})
    store.close()
    return settings, {"Authorization": f"Bearer {key}"}


def _views_read_from(views: Any, address: str) -> None:
    """The service's views read the ledger topic from `address` from now."""
    import dataclasses

    from projections.kafka_source import LedgerTopicReader

    with views._lock:
        views._reader.close()
        views._reader = LedgerTopicReader(views.ledger.recorder, views.stopping)
        views._reader.link = dataclasses.replace(views._reader.link, bootstrap=address)


def test_a_question_whose_views_cannot_reach_the_broker_is_a_503(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The views catch up from the ledger topic before answering: with no broker answering,
    503 `ledger_unavailable` once the broker has had its time to answer (a 500
    `internal_error` after kafka-python's 30 s before)."""
    from ledger.kafka import reading

    settings, auth = _compliance_key(tmp_path, kafka_bootstrap)
    question = "/v1/purposes/marketing/subjects"
    with TestClient(create_app(settings)) as client, silent_broker() as silent:
        assert client.get(question, headers=auth).status_code == 200
        views = client.app.state.service.views  # type: ignore[attr-defined]
        _views_read_from(views, silent)
        monkeypatch.setattr(reading, "ANSWER_TIMEOUT_S", 2.0)
        answer = client.get(question, headers=auth)
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "ledger_unavailable"
        assert answer.headers["Retry-After"] == "5"
        # Asked again within those 5 s: answered so at once, the broker not asked again.
        began = time.monotonic()
        again = client.get(question, headers=auth)
        assert again.status_code == 503 and again.json()["code"] == "ledger_unavailable"
        assert time.monotonic() - began < reading.ANSWER_TIMEOUT_S
        # Questions asked together once that has passed: the first waits for the broker,
        # the others, which wait for it to finish, are answered with it. Each used to
        # wait for the broker in turn (the third after three times the timeout).
        views._away = None
        began = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: client.get(question, headers=auth), range(3)))
        assert [a.status_code for a in answers] == [503] * 3
        assert time.monotonic() - began < 2 * reading.ANSWER_TIMEOUT_S


def test_a_question_waiting_for_the_broker_ends_when_the_server_stops(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` tells the service when a signal stops it (create_app's `stopping`): a question
    whose views wait for a broker that is away is answered 503 then, where uvicorn, which
    waits for requests in flight, was held for the broker's answer timeout."""
    from ledger.kafka import reading

    settings, auth = _compliance_key(tmp_path, kafka_bootstrap)
    question = "/v1/purposes/marketing/subjects"
    stop = threading.Event()
    with TestClient(create_app(settings, stopping=stop.is_set)) as client, silent_broker() as at:
        assert client.get(question, headers=auth).status_code == 200
        views = client.app.state.service.views  # type: ignore[attr-defined]
        assert views.stopping == stop.is_set
        _views_read_from(views, at)
        monkeypatch.setattr(reading, "ANSWER_TIMEOUT_S", 20.0)
        stop.set()
        began = time.monotonic()
        answer = client.get(question, headers=auth)
        assert answer.status_code == 503 and answer.json()["code"] == "ledger_unavailable"
        assert time.monotonic() - began < reading.ANSWER_TIMEOUT_S


def test_a_question_whose_broker_refuses_connections_is_a_503_within_seconds(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """With no broker running at the address, its connections refused from the first second,
    the first question is answered 503 once that has lasted `REFUSED_FOR_S`, where it waited
    the broker's 30 s answer timeout (past many an HTTP client's own timeout)."""
    from ledger.kafka import reachable, reading

    settings, auth = _compliance_key(tmp_path, kafka_bootstrap)
    question = "/v1/purposes/marketing/subjects"
    with TestClient(create_app(settings)) as client, no_broker() as nowhere:
        assert client.get(question, headers=auth).status_code == 200
        _views_read_from(client.app.state.service.views, nowhere)  # type: ignore[attr-defined]
        began = time.monotonic()
        answer = client.get(question, headers=auth)
        took = time.monotonic() - began
        assert answer.status_code == 503 and answer.json()["code"] == "ledger_unavailable"
        assert reachable.REFUSED_FOR_S <= took < reading.ANSWER_TIMEOUT_S / 2
