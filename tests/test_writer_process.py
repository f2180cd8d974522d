"""The HTTP service's writer process: outcomes cross the pipe intact, and a writer that dies
is replaced without losing or doubling a fact (real child processes, real SQLite files)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app, keys_path
from api.keys import ApiKeys
from api.process_committer import ProcessCommitter
from api.writer_process import WriterProcess, WriterUnavailable, _portable
from ledger.application import ConsentLedger
from ledger.envelope import Item, parse_fact
from ledger.errors import FactRejected
from ledger.receipt import Outcome, Receipt
from ledger.settings import Settings, SettingsError
from ledger.verify import verify_ledger
from tests.cli_support import children_of, start_with
from tests.facts import grant, withdraw


def with_demo_tenant(settings: Settings) -> None:
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()


def record(writer: WriterProcess, facts: Sequence[Item]) -> list[Outcome]:
    """One group through the service's own path to the writer (`ProcessCommitter`); a
    writer that dies idle or hangs is covered in tests/test_process_committer.py."""
    committer = ProcessCommitter(writer)
    try:
        return asyncio.run(asyncio.wait_for(committer.outcomes(facts), 120))
    finally:
        committer.close()


@pytest.fixture
def writer(settings: Settings) -> Iterator[WriterProcess]:
    with_demo_tenant(settings)
    process = WriterProcess(settings)
    yield process
    process.close()


def test_receipts_and_refusals_come_back_in_order(writer: WriterProcess) -> None:
    facts = [
        parse_fact(grant("wp-1", event_id="wp-1")),
        parse_fact(grant("wp-2", event_id="wp-2", purposes=("lottery",))),
        parse_fact(withdraw("wp-3", event_id="wp-3")),
        parse_fact(grant("wp-1", event_id="wp-1")),
    ]
    first, refused, not_in_force, again = record(writer, facts)
    assert isinstance(first, Receipt) and not first.duplicate and first.sid
    assert isinstance(refused, FactRejected)
    assert (refused.code.value, refused.field) == ("unknown_purpose", "purposes")
    assert isinstance(not_in_force, FactRejected)
    assert not_in_force.code.value == "purpose_not_in_force"
    assert isinstance(again, Receipt) and again.duplicate and again.position == first.position


def test_a_writer_dying_between_commit_and_answer_loses_and_doubles_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group was committed and the answer lost: the caller is told nothing is known, and
    the retry gets the first receipt from the next writer."""
    with_demo_tenant(settings)
    monkeypatch.setenv("LEDGER_FAILPOINT", "writer-recorded:1")
    writer = WriterProcess(settings)
    monkeypatch.delenv("LEDGER_FAILPOINT")  # only the first child is armed
    fact = parse_fact(grant("lost-answer", event_id="lost-answer"))
    try:
        with pytest.raises(WriterUnavailable):
            record(writer, [fact])
        [retry] = record(writer, [fact])
    finally:
        writer.close()
    assert isinstance(retry, Receipt) and retry.duplicate
    ledger = ConsentLedger(settings)
    try:
        assert ledger.ledger_recorder.find_facts("demo", ["lost-answer"])["lost-answer"].position
        assert verify_ledger(ledger.ledger_recorder).ok
    finally:
        ledger.close()


def test_http_says_writer_unavailable_and_the_retry_gets_the_first_receipt(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_demo_tenant(settings)
    store = ApiKeys(keys_path(settings))
    _, key = store.create("demo", {"publisher"})
    store.close()
    headers = {"Authorization": f"Bearer {key}"}
    monkeypatch.setenv("LEDGER_FAILPOINT", "writer-recorded:1")
    with TestClient(create_app(settings)) as client:
        monkeypatch.delenv("LEDGER_FAILPOINT")
        body = grant("http-lost", event_id="http-lost")
        lost = client.post("/v1/facts", json=body, headers=headers)
        assert lost.status_code == 503
        assert lost.headers["content-type"] == "application/problem+json"
        assert lost.json()["code"] == "writer_unavailable"
        retry = client.post("/v1/facts", json=body, headers=headers)
        metrics = client.get("/metrics").text
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    assert "ledger_writer_restarts_total 1\n" in metrics


def test_a_writer_that_cannot_open_the_store_fails_the_start_with_its_error(
    settings: Settings,
) -> None:
    with_demo_tenant(settings)
    wrong = dataclasses.replace(settings, master_key=base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(SettingsError, match="master key does not open"):
        WriterProcess(wrong)


def test_a_start_that_fails_after_the_writer_started_leaves_no_writer_behind(
    settings: Settings,
) -> None:
    """The API key store cannot be opened (a directory where its file belongs): the start
    fails with that error, and the writer process already started is stopped with it."""
    import multiprocessing
    import sqlite3

    from api.app import build_service

    def writers() -> set[int | None]:
        # Other tests' services may still run theirs: only a new one counts.
        return {p.pid for p in multiprocessing.active_children() if p.name == "ledger-writer"}

    with_demo_tenant(settings)
    keys_path(settings).mkdir()
    before = writers()
    with pytest.raises(sqlite3.OperationalError):
        build_service(settings)
    assert writers() - before == set()


class _Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("+998901234567")
        self.handle = lambda: None  # a lambda cannot be pickled


def test_an_error_that_cannot_cross_the_pipe_keeps_its_name_and_not_its_text() -> None:
    portable = _portable(_Unpicklable())
    assert isinstance(portable, RuntimeError)
    assert "_Unpicklable" in str(portable) and "998" not in str(portable)


def _running(pid: int) -> bool:
    """Not ended (a zombie has ended: nothing reaps it in some containers)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_writer_process_ends_with_the_service(settings: Settings, stop: int) -> None:
    """Stopped cleanly or killed, the service leaves no writer process behind. Asked where
    it waits (SIGUSR1) before it is stopped cleanly, it prints its threads' stacks and
    runs on."""
    with_demo_tenant(settings)
    store = ApiKeys(keys_path(settings))
    _, key = store.create("demo", {"publisher"})
    store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = start_with(
        {**os.environ, "LEDGER_DATA_DIR": str(settings.data_dir)},
        *("serve", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=(stderr := (settings.data_dir / "serve.stderr").open("wb")).fileno(),
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness: the server answers /readyz (its writer is started by then)
            assert server.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        published = httpx.post(
            f"http://127.0.0.1:{port}/v1/facts",
            json=grant("ends-with-service", event_id="ends-with-service"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert published.status_code == 201
        children = children_of(server.pid)
        assert children, "the service runs its writer in a process of its own"
    finally:
        if stop == signal.SIGTERM:
            # Delivered before the SIGTERM (lower signals first); the dump is written as it
            # arrives, and the stop that follows is still a clean one.
            server.send_signal(signal.SIGUSR1)
        server.send_signal(stop)
        server.wait(timeout=60)
        stderr.close()
    if stop == signal.SIGTERM:
        # Ended by the SIGTERM (uvicorn raises it again once shut down), not the SIGUSR1.
        assert server.returncode in (0, -signal.SIGTERM)
        printed = (settings.data_dir / "serve.stderr").read_text()
        assert "most recent call first" in printed
        assert "ledger/cli/service.py" in printed
    deadline = time.monotonic() + 60
    while any(_running(pid) for pid in children):  # each notices its service is gone
        assert time.monotonic() < deadline, "a writer process outlived its service"
        time.sleep(0.05)


def test_publishes_racing_erasures_of_the_same_subjects_answer_and_keep_the_log_whole(
    settings: Settings,
) -> None:
    """Publishes go through the writer process while the erasure route writes from the
    service's own process, on the same subjects: every answer is a receipt or a refusal
    (never a 5xx), every erasure lands, and the log verifies."""
    with_demo_tenant(settings)
    store = ApiKeys(keys_path(settings))
    _, key = store.create("demo", {"publisher", "admin", "compliance"})
    store.close()
    headers = {"Authorization": f"Bearer {key}"}
    statuses: list[int] = []
    erasures: list[int] = []
    with TestClient(create_app(settings)) as client:
        firsts = [grant(f"race-{s}", event_id=f"first-{s}") for s in range(10)]
        sids = [client.post("/v1/facts", json=f, headers=headers).json()["sid"] for f in firsts]

        def publish(thread: int) -> None:
            for i in range(40):
                build = grant if i % 2 else withdraw
                body = build(
                    f"race-{(i + thread) % 10}",
                    event_id=f"race-{thread}-{i}",
                    occurred_at=f"2025-02-{1 + i % 27:02d}T10:00:00+05:00",
                )
                statuses.append(client.post("/v1/facts", json=body, headers=headers).status_code)

        def erase() -> None:
            for sid in sids[::2]:
                body = {"ground": "subject_request"}
                answer = client.post(f"/v1/subjects/{sid}/erasure", json=body, headers=headers)
                erasures.append(answer.status_code)

        threads = [threading.Thread(target=publish, args=(t,)) for t in range(3)]
        threads.append(threading.Thread(target=erase))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        verified = client.get("/v1/verify", headers=headers).json()
        erased = [
            client.get(f"/v1/subjects/{sid}/consents", headers=headers).json()["erased"]
            for sid in sids
        ]
    assert len(statuses) == 120 and set(statuses) <= {201, 422}
    assert erasures == [201] * 5
    assert verified["ok"] is True
    assert erased == [True, False] * 5
