"""A full disk or a locked file is the storage's failure, not the facts': it is answered
"retry" (exit 6, 503 `storage_unavailable`, an intake batch polled again) and once the
storage takes writes again nothing is lost, refused or recorded twice.

The failures are real: a process under a file-size limit (RLIMIT_FSIZE, its writes past the
limit failing as on a full disk) and a key store whose SQLite page budget is spent
(`max_page_count`, SQLite's own SQLITE_FULL).
"""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.kafka.intake import IntakeWriter
from ledger.kafka.names import Topics
from ledger.kafka.recorder import KafkaLedgerRecorder
from ledger.kafka.verify import verify_topic
from ledger.receipt import Receipt
from ledger.settings import Settings
from ledger.storage import StorageUnavailable, storage_failure
from ledger.verify import verify_ledger
from tests.cli_support import file_size_limit, line_within
from tests.facts import grant, policy, withdraw
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
from tests.server_support import demo_key, serve

LIMIT = 1 << 20  # bytes a file may grow to under the limit; the batches below need more


def big_grants(n: int, prefix: str) -> list[dict[str, Any]]:
    """Grants of new subjects with a kilobyte of personal data each."""
    return [
        grant(f"{prefix}-{i}", event_id=f"{prefix}-{i}", personal_data={"email": "x" * 1024})
        for i in range(n)
    ]


def cli(data: Path, *args: str, limit: int | None = None, stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        env={**os.environ, "LEDGER_DATA_DIR": str(data)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=file_size_limit(limit) if limit else None,
    )


def until(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def facts_checked(data: Path) -> int:
    out = cli(data, "verify", "--json")
    assert out.returncode == 0, out.stderr
    return int(orjson.loads(out.stdout)["facts_checked"])


# ---- what a storage failure is -------------------------------------------------------------


def test_a_storage_failure_is_found_down_the_chain_of_causes() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"
    try:
        try:
            raise RuntimeError("wrapped") from full
        except RuntimeError:
            # A failed COMMIT's cleanup raising again, the real error as its context.
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")  # noqa: B904
    except sqlite3.OperationalError as masked:
        found = storage_failure(masked)
    assert found is not None and found.reason == "the disk is full"
    io = sqlite3.OperationalError("disk I/O error")
    io.sqlite_errorname = "SQLITE_IOERR_WRITE"
    assert storage_failure(io) is not None
    assert storage_failure(OSError(28, "No space left on device")) is not None
    # Not the storage: a constraint, a corrupt file, a bug.
    unique = sqlite3.IntegrityError("UNIQUE constraint failed")
    unique.sqlite_errorname = "SQLITE_CONSTRAINT_UNIQUE"
    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    corrupt.sqlite_errorname = "SQLITE_CORRUPT"
    for error in (unique, corrupt, KeyError("x"), OSError(2, "No such file")):
        assert storage_failure(error) is None


# ---- embedded: the CLI, the application service, the HTTP service ------------------------


def test_record_on_a_full_disk_exits_6_records_nothing_and_a_retry_records_all(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    assert cli(data, "init").returncode == 0
    before = facts_checked(data)
    # A file, not a pipe: from a pipe a batch also ends where the next line has not come
    # yet, so the facts before a slow write of the pipe's writer were recorded (and
    # answered) before the disk filled (a CI run of 2026-12-04). From a file the 1,000 are
    # one batch, recorded in one transaction or not at all.
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(orjson.dumps(f).decode() for f in big_grants(1000, "full")))

    refused = cli(data, "record", str(facts), limit=LIMIT)

    assert refused.returncode == 6, refused.stderr
    assert refused.stderr.startswith("consent-ledger: storage unavailable: "), refused.stderr
    assert "Traceback" not in refused.stderr
    assert refused.stdout == ""  # no receipt for a fact that was not recorded
    assert facts_checked(data) == before
    retried = cli(data, "record", str(facts))
    assert retried.returncode == 0, retried.stderr
    receipts = [orjson.loads(line)["receipt"] for line in retried.stdout.splitlines()]
    assert len(receipts) == 1000 and not any(r["duplicate"] for r in receipts)
    assert facts_checked(data) == before + 1000


def test_an_evidence_package_the_disk_could_not_take_is_not_left_half_written(
    tmp_path: Path,
) -> None:
    """Its personal data cut short would be taken for the whole package, and the retry
    refused because the file exists."""
    data = tmp_path / "data"
    assert cli(data, "init").returncode == 0
    facts = [
        grant("person-1", event_id=f"g-{i}", personal_data={"email": "x" * 1000})
        for i in range(400)
    ]
    assert cli(data, "record", "-", stdin=orjson.dumps(facts).decode()).returncode == 0
    command = ("evidence", "person-1", "--tenant", "demo", "--out")
    assert cli(data, *command, "-").returncode == 0  # the signing key made, the files settled
    # Room for every file of the data directory to be rewritten, not for the package.
    limit = max(p.stat().st_size for p in data.iterdir()) + (64 << 10)
    out = tmp_path / "evidence.json"

    refused = cli(data, *command, str(out), limit=limit)

    assert refused.returncode == 6, refused.stderr
    assert refused.stderr.startswith("consent-ledger: storage unavailable: "), refused.stderr
    assert not out.exists()
    retried = cli(data, *command, str(out))
    assert retried.returncode == 0, retried.stderr
    assert out.stat().st_size > limit and out.stat().st_mode & 0o777 == 0o600


def test_a_backup_the_disk_could_not_take_leaves_no_directory_that_looks_like_one(
    tmp_path: Path,
) -> None:
    """Before, the files copied until the disk filled stayed in the target: the views and
    the log without the key store, which is copied last."""
    data = tmp_path / "data"
    assert cli(data, "init").returncode == 0
    facts = [grant(f"b-{i}", personal_data={"email": "x" * 1000}) for i in range(400)]
    assert cli(data, "record", "-", stdin=orjson.dumps(facts).decode()).returncode == 0
    log = (data / "ledger.db").stat().st_size
    into = tmp_path / "backups" / "today"

    refused = cli(data, "backup", "--into", str(into), limit=log // 2)

    assert refused.returncode == 6, refused.stderr
    assert refused.stderr.startswith("consent-ledger: storage unavailable: "), refused.stderr
    assert list((tmp_path / "backups").iterdir()) == []  # nothing half-made, not even hidden
    made = cli(data, "backup", "--into", str(into))
    assert made.returncode == 0, made.stderr
    assert {"ledger.db", "keys.db"} <= {p.name for p in into.iterdir()}
    assert list((tmp_path / "backups").iterdir()) == [into]


def test_a_replay_the_disk_could_not_take_leaves_nothing_behind(tmp_path: Path) -> None:
    """Before, the half-built store stayed as views.db.partial, holding the space an
    operator had to free for the retry."""
    data = tmp_path / "data"
    assert cli(data, "init").returncode == 0
    grants = [grant(f"r-{i}", event_id=f"r-{i}") for i in range(2000)]
    assert cli(data, "record", "-", stdin=orjson.dumps(grants).decode()).returncode == 0
    into = tmp_path / "replayed"

    refused = cli(data, "replay", "--into", str(into), limit=64 << 10)

    assert refused.returncode == 6, refused.stderr
    assert refused.stderr.startswith("consent-ledger: storage unavailable: "), refused.stderr
    assert [p.name for p in into.iterdir()] == []
    assert cli(data, "replay", "--into", str(into)).returncode == 0
    assert [p.name for p in into.iterdir()] == ["views.db"]


def test_a_rotation_the_disk_could_not_begin_leaves_no_next_key(tmp_path: Path) -> None:
    """Before, master.key.next was left with part of a key: every later rotation took it
    for the key of one to finish and failed to read it."""
    data = tmp_path / "data"
    assert cli(data, "init").returncode == 0
    old_key = (data / "master.key").read_text()

    refused = cli(data, "master-key", "rotate", limit=10)

    assert refused.returncode == 6, refused.stderr
    assert not (data / "master.key.next").exists()
    assert (data / "master.key").read_text() == old_key
    assert cli(data, "verify").returncode == 0
    rotated = cli(data, "master-key", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert (data / "master.key").read_text() != old_key


def test_a_rotation_the_disk_could_not_finish_leaves_every_key_under_the_old_master_key(
    tmp_path: Path,
) -> None:
    """The new master key written, the re-wrapping of 1,500 data keys outgrew what the disk
    took: the store's one transaction rolls back, the old key still opens every subject's
    data, and running the rotation again finishes it with the key it began with."""
    data = tmp_path / "data"
    assert cli(data, "init").returncode == 0
    facts = "\n".join(orjson.dumps(f).decode() for f in big_grants(1500, "rot"))
    assert cli(data, "record", "-", stdin=facts).returncode == 0
    old_key = (data / "master.key").read_text()
    assert (data / "keys.db").stat().st_size > 2 * 64 * 1024  # more than the limit takes

    refused = cli(data, "master-key", "rotate", limit=64 * 1024)

    assert refused.returncode == 6 and "storage unavailable" in refused.stderr, refused.stderr
    assert (data / "master.key").read_text() == old_key
    begun = (data / "master.key.next").read_text()
    trail = cli(data, "trail", "rot-7", "--tenant", "demo", "--json")
    assert trail.returncode == 0 and "x" * 1024 in trail.stdout, trail.stderr
    assert cli(data, "verify").returncode == 0
    finished = cli(data, "master-key", "rotate")
    assert finished.returncode == 0 and "re-wrapped 1,500 data keys" in finished.stdout
    assert (data / "master.key").read_text() == begun and not (data / "master.key.next").exists()
    assert "x" * 1024 in cli(data, "trail", "rot-7", "--tenant", "demo", "--json").stdout


def test_an_erasure_the_disk_could_not_take_destroys_no_key_and_records_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    assert cli(data, "init").returncode == 0
    facts = "\n".join(orjson.dumps(f).decode() for f in big_grants(3, "er"))
    assert cli(data, "record", "-", stdin=facts).returncode == 0
    erase = ("erase", "er-1", "--tenant", "demo", "--ground", "subject_request")

    refused = cli(data, *erase, limit=10)

    assert refused.returncode == 6 and "storage unavailable" in refused.stderr, refused.stderr
    kept = orjson.loads(cli(data, "trail", "er-1", "--tenant", "demo", "--json").stdout)
    assert [f["type"] for f in kept["facts"]] == ["consent.granted"]
    assert kept["facts"][0]["personal_data"] == {"personal_data": {"email": "x" * 1024}}
    assert cli(data, "verify").returncode == 0
    assert cli(data, *erase).returncode == 0
    erased = orjson.loads(cli(data, "trail", "er-1", "--tenant", "demo", "--json").stdout)
    assert [f["type"] for f in erased["facts"]] == ["consent.granted", "subject.erased"]
    assert "x" * 1024 not in orjson.dumps(erased).decode()


@pytest.fixture
def full_key_store(backend_ledger: ConsentLedger) -> Iterator[Callable[[bool], None]]:
    """Spend (True) or restore (False) the key store's page budget: a new subject's data key
    then fails with SQLite's own SQLITE_FULL."""
    db = backend_ledger.keystore._db

    def spend(full: bool) -> None:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages if full else 1 << 30}")

    yield spend
    spend(False)


def test_a_full_key_store_records_nothing_and_the_retry_records_once(
    backend_ledger: ConsentLedger, full_key_store: Callable[[bool], None]
) -> None:
    ledger = backend_ledger
    [first] = ledger.record([parse_fact(grant("known"))])
    assert isinstance(first, Receipt)
    batch = [parse_fact(f) for f in big_grants(200, "new")]
    full_key_store(True)

    with pytest.raises(StorageUnavailable, match="the disk is full"):
        ledger.record(batch)

    # The ledger writes on: a known subject's fact needs no new key.
    [alone] = ledger.record([parse_fact(withdraw("known"))])
    assert isinstance(alone, Receipt)
    full_key_store(False)
    outcomes = ledger.record(batch)
    assert all(isinstance(o, Receipt) and not o.duplicate for o in outcomes)
    result = (
        verify_topic(ledger.ledger_recorder)  # type: ignore[arg-type]
        if ledger.settings.backend == "kafka"
        else verify_ledger(ledger.ledger_recorder)
    )
    assert result.ok, result.problems


def test_a_policy_published_in_a_batch_the_storage_refused_is_unknown_to_the_next(
    backend_ledger: ConsentLedger, full_key_store: Callable[[bool], None]
) -> None:
    """The batch publishes on its own copy of the tenant: a reader holding the shared one
    (the HTTP routes do, on other threads) never sees a version the log does not hold, and
    the retry is recorded, not refused as a version published with other content."""
    ledger = backend_ledger
    held = ledger.tenant("demo", shared=True)
    assert held is not None
    publication = parse_fact(policy("2025-06", effective_at="2025-06-01T00:00:00+05:00"))
    batch = [publication, *(parse_fact(f) for f in big_grants(200, "new"))]
    full_key_store(True)

    with pytest.raises(StorageUnavailable, match="the disk is full"):
        ledger.record(batch)

    assert "2025-06" not in held.policies
    assert "2025-06" not in ledger.tenant("demo").policies  # type: ignore[union-attr]
    full_key_store(False)
    [receipt] = ledger.record([publication])
    assert isinstance(receipt, Receipt) and not receipt.duplicate, receipt
    assert "2025-06" in ledger.tenant("demo").policies  # type: ignore[union-attr]


def position(db: Path, query: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as c:
        try:
            return int(c.execute(query).fetchone()[0] or 0)
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):  # the views' tables are not made yet
                raise
            return 0


def test_a_following_projection_waits_out_a_full_disk(tmp_path: Path) -> None:
    """`project` alone exits 6; `project --follow` logs, waits and catches up afterwards."""
    data = tmp_path / "data"
    assert cli(data, "init").returncode == 0
    grants = [grant(f"v-{i}", event_id=f"v-{i}") for i in range(2000)]
    recorded = cli(data, "record", "-", stdin="\n".join(orjson.dumps(g).decode() for g in grants))
    assert recorded.returncode == 0, recorded.stderr
    last = position(data / "ledger.db", "SELECT max(rowid) FROM stored_events")
    assert last > 2000
    # The views of 2,000 subjects need more; their empty tables and indexes (70 KB of WAL
    # since the register and /metrics have indexes of their own) need less.
    small = 128 << 10

    once = cli(data, "project", limit=small)
    assert once.returncode == 6 and "storage unavailable: " in once.stderr, once.stderr

    follower = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "project", "--follow", "--interval", "0.05"],
        env={**os.environ, "LEDGER_DATA_DIR": str(data)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=file_size_limit(small),
    )
    try:
        assert follower.stderr is not None
        # Its first failure, logged; a follower that never fails must not hang the test.
        line = line_within(follower.stderr)
        assert "storage unavailable (" in line and "retrying" in line, line
        assert follower.poll() is None  # it waits, it does not exit
        resource.prlimit(follower.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        views = data / "views.db"
        until(lambda: position(views, "SELECT max(notification_id) FROM tracking") == last)
        follower.send_signal(signal.SIGTERM)
        out, _ = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0
    assert out.startswith("projected "), out
    assert cli(data, "project").stdout.startswith("projected 0 log entries")


def descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += descendants(int(child))
    return found


def test_the_http_service_answers_503_storage_unavailable_and_the_retry_records_all(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    key = demo_key(settings, "publisher", "compliance")
    server, base = serve(settings, preexec_fn=file_size_limit(LIMIT))
    auth = {"Authorization": f"Bearer {key}"}
    batch = {
        "facts": [{k: v for k, v in f.items() if k != "tenant"} for f in big_grants(1000, "h")]
    }
    try:
        refused = httpx.post(f"{base}/v1/facts:batch", json=batch, headers=auth, timeout=60)
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "storage_unavailable"
        # Served on: reads, and writes that fit.
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        small = {k: v for k, v in grant("small", event_id="small").items() if k != "tenant"}
        assert (
            httpx.post(f"{base}/v1/facts", json=small, headers=auth, timeout=60).status_code == 201
        )
        for pid in descendants(server.pid):  # the operator frees the disk
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        retried = httpx.post(f"{base}/v1/facts:batch", json=batch, headers=auth, timeout=60)
        assert retried.status_code == 200, retried.text
        results = retried.json()["results"]
        assert [r["receipt"]["duplicate"] for r in results] == [False] * 1000
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    logged = [orjson.loads(line) for line in output.splitlines() if line.startswith(b"{")]
    assert any(e["message"].startswith("storage unavailable: ") for e in logged)
    assert b"x" * 64 not in output  # the personal data is nowhere in the logs


@pytest.mark.parametrize("store", ["ledger.db", "keys.db"])
def test_a_store_moved_away_under_the_service_takes_no_write_and_loses_none(
    tmp_path: Path, store: str
) -> None:
    """The log or the key store moved out of the data directory while `serve` ran: its open
    connection wrote on into the moved file, every receipt from then on for a fact the
    directory would not hold at the next start. Now writes are refused (503, "retry"), the
    service says it is not ready, and with the file back and a restart the retry records."""
    settings = Settings(data_dir=tmp_path / "data")
    key = demo_key(settings, "publisher", "compliance")
    auth = {"Authorization": f"Bearer {key}"}
    first, second = (
        {k: v for k, v in grant(f"moved-{i}", event_id=f"moved-{i}").items() if k != "tenant"}
        for i in (1, 2)
    )
    away = tmp_path / "away"
    away.mkdir()
    server, base = serve(settings)
    try:
        accepted = httpx.post(f"{base}/v1/facts", json=first, headers=auth, timeout=60)
        assert accepted.status_code == 201, accepted.text
        for path in settings.data_dir.glob(f"{store}*"):
            path.rename(away / path.name)
        refused = httpx.post(f"{base}/v1/facts", json=second, headers=auth, timeout=60)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "storage_unavailable"
        assert f"{store} was moved or removed from the data directory" in refused.json()["detail"]
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert (ready.status_code, ready.json()["code"]) == (503, "not_ready")
    finally:
        server.terminate()
        server.communicate(timeout=60)
    for path in away.iterdir():
        path.rename(settings.data_dir / path.name)
    server, base = serve(settings)
    try:
        retried = httpx.post(f"{base}/v1/facts", json=second, headers=auth, timeout=60)
        assert retried.status_code == 201, retried.text
        for fact in (first, second):
            sid = httpx.post(
                f"{base}/v1/subjects:resolve", json={"subject": fact["subject"]}, headers=auth
            ).json()["sid"]
            trail = httpx.get(f"{base}/v1/subjects/{sid}/trail", headers=auth, timeout=60)
            assert [f["event_id"] for f in trail.json()["facts"]] == [fact["event_id"]]
    finally:
        server.terminate()
        server.communicate(timeout=60)


# ---- Kafka mode: the intake writer, and a replica that failed after Kafka committed -------


@pytest.fixture
def kafka_ledger(tmp_path: Path, kafka_bootstrap: str) -> Iterator[ConsentLedger]:
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, intake_max_bytes=OVERSIZE_LIMIT)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    yield ledger
    ledger.close()


@pytest.mark.kafka
def test_intake_waits_out_a_full_key_store_and_rejects_nothing(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str
) -> None:
    """Before, every record of the batch was isolated and rejected as processing_failed:
    valid consents lost to a full disk."""
    ledger = kafka_ledger
    topics = Topics.of(ledger.settings.topic_prefix)
    items = intake_stream(valid=300, bad=30)
    publish(kafka_bootstrap, topics.intake, [(i.key, i.value) for i in items])  # type: ignore[misc]
    ends = end_offsets(kafka_bootstrap, topics.intake)
    db = ledger.keystore._db
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
    writer = IntakeWriter(ledger)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,))
    thread.start()
    try:
        until(
            lambda: writer.stats.retries >= 2 or bool(writer.stats.rejected)
        )  # it failed, waited, and failed again
        assert writer.stats.accepted == 0 and not writer.stats.rejected
        assert read_committed(kafka_bootstrap, topics.rejected, timeout=5) == []
        db.execute("PRAGMA max_page_count=1073741823")
        until(lambda: all(writer.committed.get(tp, 0) >= end for tp, end in ends.items()))
    finally:
        stop.set()
        thread.join(60)
        writer.close()
    assert not thread.is_alive()
    check_exactly_once(
        items,
        read_committed(kafka_bootstrap, topics.ledger),
        read_committed(kafka_bootstrap, topics.rejected),
    )
    assert writer.stats.accepted == 300
    assert "processing_failed" not in writer.stats.rejected


@contextlib.contextmanager
def files_limited_to(size: int) -> Iterator[None]:
    """This process may not grow a file past `size` bytes while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.kafka
def test_a_replica_that_failed_after_kafka_committed_is_caught_up_before_the_next_append(
    kafka_ledger: ConsentLedger, kafka_bootstrap: str
) -> None:
    """SQLite writes a transaction's pages to its WAL file at COMMIT, which the replica runs
    after Kafka committed: on a full disk the facts are on the ledger topic and not in the
    replica. Appending on from the replica would give the subject's next fact a version the
    topic already holds."""
    ledger = kafka_ledger
    [first] = ledger.record(
        [parse_fact(grant("p-1", purposes=("marketing", "service_improvement")))]
    )
    assert isinstance(first, Receipt)
    withdrawal = parse_fact(withdraw("p-1", event_id="w-1"))
    with files_limited_to(4096), pytest.raises(StorageUnavailable):
        ledger.record([withdrawal])  # a known subject: no new data key, only the replica

    [later] = ledger.record([parse_fact(withdraw("p-1", ("service_improvement",), event_id="w-2"))])
    [retried] = ledger.record([withdrawal])

    assert isinstance(later, Receipt) and not later.duplicate
    assert isinstance(retried, Receipt) and retried.duplicate  # it was on the topic
    topics = Topics.of(ledger.settings.topic_prefix)
    records = read_committed(kafka_bootstrap, topics.ledger)
    versions = [
        (h["originator_id"], int(h["originator_version"]))
        for h in map(headers, records)
        if "originator_version" in h
    ]
    assert len(versions) == len(set(versions)), "a version appended twice"
    assert [h.get("event_id") for h in map(headers, records)].count("w-1") == 1
    result = verify_topic(ledger.ledger_recorder)  # type: ignore[arg-type]
    assert result.ok, result.problems


@pytest.mark.kafka
def test_a_writer_whose_replica_cannot_catch_up_waits_and_rejects_nothing(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Taking ownership catches the replica up with what another writer appended, outside
    the ledger's record(): before, a full disk there sent every record of the batch to
    isolation and the last one's failure out of the worker, which stopped."""
    master_key = base64.b64encode(os.urandom(32)).decode()
    writer_settings = kafka_settings(
        tmp_path / "w", kafka_bootstrap, master_key=master_key, intake_max_bytes=OVERSIZE_LIMIT
    )
    ledger = ConsentLedger(writer_settings)
    ledger.init_demo()
    other = ConsentLedger(
        replace(writer_settings, data_dir=tmp_path / "other")  # same topics, same master key
    )
    other.record(
        [parse_fact(grant(f"o-{i}", personal_data={"email": "x" * 500})) for i in range(300)]
    )
    other.close()  # it took ownership: the writer's replica is 300 records behind
    # The writer lets go of the producer `init_demo` registered, which the other writer
    # fenced, as it does after an outage: it owns the ledger again as it starts, and
    # catches up first. (Until cbfba3c the stale producer's fence, met in the background,
    # was taken for an outage and did the same by chance; known as a fence, it stops the
    # writer, as a fence must.)
    recorder = ledger.ledger_recorder
    assert isinstance(recorder, KafkaLedgerRecorder)
    recorder.close()
    topics = Topics.of(writer_settings.topic_prefix)
    items = intake_stream(valid=100, bad=10)
    publish(kafka_bootstrap, topics.intake, [(i.key, i.value) for i in items])  # type: ignore[misc]
    ends = end_offsets(kafka_bootstrap, topics.intake)
    writer = IntakeWriter(ledger)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,))
    try:
        with files_limited_to(64 << 10):
            thread.start()
            until(
                lambda: (
                    writer.stats.retries >= 2
                    or bool(writer.stats.rejected)
                    or not thread.is_alive()
                )
            )
            assert thread.is_alive() and not writer.stats.rejected
        until(lambda: all(writer.committed.get(tp, 0) >= end for tp, end in ends.items()))
    finally:
        stop.set()
        thread.join(60)
        writer.close()
        ledger.close()
    check_exactly_once(
        items,
        [
            r
            for r in read_committed(kafka_bootstrap, topics.ledger)
            if not headers(r).get("event_id", "").startswith("ev-")  # the other writer's
        ],
        read_committed(kafka_bootstrap, topics.rejected),
    )
    assert writer.stats.accepted == 100


@pytest.mark.parametrize(
    ("store", "table"), [("views.db", "tracking"), ("ledger.db", "stored_events_head")]
)
def test_readyz_says_not_ready_when_a_store_cannot_be_read(
    tmp_path: Path, store: str, table: str
) -> None:
    """A store the service cannot read (here a table of it dropped by another process, as a
    damaged or half-restored file would be): ready would send it requests it fails."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        with contextlib.closing(sqlite3.connect(settings.data_dir / store)) as damage:
            damage.execute(f"DROP TABLE {table}")
            damage.commit()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/problem+json"
        assert (ready.json()["code"], ready.json()["detail"]) == (
            "not_ready",
            "store unavailable (OperationalError)",
        )
