"""Crypto-shredding: after `consent-ledger erase`, no byte of the subject's personal data (or of
its data key) is left in any file under LEDGER_DATA_DIR, and the log still verifies."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.errors import Code
from ledger.kafka.names import Topics
from ledger.keystore import KeyStoreBusyError
from ledger.receipt import ErasureNotOverwritten, Receipt
from ledger.settings import Settings
from projections.trail import subject_trail
from tests.facts import fact, grant, request, withdraw
from tests.kafka_support import kafka_env, read_committed
from tests.keystore_support import reader_holding
from tests.server_support import serve

REFERENCE = "+998901112233"
NAME = "Qodirova Dilnoza Botirovna"
EMAIL = "dilnoza.qodirova@example.uz"
PHONE = "+998935554433"
IP = "84.54.71.203"
AGENT = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/117"
PERSONAL = [REFERENCE, NAME, EMAIL, PHONE, IP, AGENT, "identity proven by passport AB1234567"]


# Kafka-mode settings by data directory, for the test that runs on both backends.
KAFKA_ENV: dict[Path, dict[str, str]] = {}


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **KAFKA_ENV.get(data_dir, {}), "LEDGER_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def files_containing(root: Path, needle: bytes) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    ]


def test_erase_leaves_no_personal_data_and_keeps_the_trail(backend_settings: Settings) -> None:
    settings = backend_settings
    if settings.backend == "kafka":
        KAFKA_ENV[settings.data_dir] = kafka_env(settings)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    evidence = {"ip": IP, "user_agent": AGENT, "form_id": "signup"}
    facts = [
        grant(
            REFERENCE,
            ("marketing", "support"),
            event_id="g1",
            evidence=evidence,
            personal_data={"full_name": NAME, "email": EMAIL, "phone": PHONE},
        ),
        withdraw(
            REFERENCE,
            event_id="w1",
            occurred_at="2025-03-02T10:00:00+05:00",
            reason="identity proven by passport AB1234567",
        ),
        fact(
            "request.received",
            REFERENCE,
            event_id="r1",
            request_id="REQ-1",
            kind="erasure",
            occurred_at="2025-03-03T10:00:00+05:00",
        ),
        grant("other-person", event_id="g2", personal_data={"full_name": "Other Person"}),
    ]
    outcomes = ledger.record([parse_fact(f) for f in facts])
    assert all(isinstance(o, Receipt) for o in outcomes)
    sid = ledger.sid("demo", REFERENCE)
    before = subject_trail(ledger, "demo", sid)
    assert before is not None and before["subject"] == REFERENCE
    assert before["facts"][0]["personal_data"]["personal_data"]["full_name"] == NAME
    ledger.close()
    with contextlib.closing(sqlite3.connect(settings.keystore_path)) as keys:
        (wrapped,) = keys.execute(
            "SELECT wrapped FROM data_keys WHERE sid=?", (sid.hex,)
        ).fetchone()
    assert files_containing(settings.data_dir, wrapped) == ["keys.db"]

    erased = cli(
        settings.data_dir,
        "erase",
        REFERENCE,
        "--tenant",
        "demo",
        "--ground",
        "subject_request",
        "--request-id",
        "REQ-1",
    )
    assert erased.returncode == 0, erased.stderr

    for needle in [*PERSONAL, wrapped]:
        data = needle if isinstance(needle, bytes) else needle.encode()
        assert files_containing(settings.data_dir, data) == [], "personal data survived erasure"

    verified = cli(settings.data_dir, "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    assert orjson.loads(verified.stdout)["ok"] is True

    trail = orjson.loads(
        cli(settings.data_dir, "trail", sid.hex, "--sid", "--tenant", "demo", "--json").stdout
    )
    assert trail["erased"] is True and trail["subject"] is None
    assert [f["event_id"] for f in trail["facts"]] == [
        "g1",
        "w1",
        "r1",
        trail["facts"][-1]["event_id"],
    ]
    assert trail["facts"][-1]["type"] == "subject.erased"
    assert trail["facts"][0]["personal_data"] == {"erased": True}
    assert trail["facts"][0]["details"]["purposes"] == ["marketing", "support"]

    # The other subject is untouched.
    ledger = ConsentLedger(settings)
    other = subject_trail(ledger, "demo", ledger.sid("demo", "other-person"))
    assert other is not None and other["subject"] == "other-person"
    # Grants stay refused for the erased pseudonym, even from a fresh process.
    [again] = ledger.record([parse_fact(grant(REFERENCE, event_id="g3"))])
    assert not isinstance(again, Receipt) and again.code.value == "subject_erased"
    ledger.close()
    assert files_containing(settings.data_dir, REFERENCE.encode()) == []
    if settings.backend == "kafka":
        # The log of record never held it in the clear: not in values, keys or headers.
        assert settings.kafka_bootstrap
        records = read_committed(settings.kafka_bootstrap, Topics.of(settings.topic_prefix).ledger)
        assert len(records) >= 6
        for record in records:
            raw = b"".join([record.key or b"", record.value, *(v for _, v in record.headers)])
            for needle in PERSONAL:
                assert needle.encode() not in raw, "personal data in clear on the ledger topic"


def test_erasure_reaches_facts_recorded_after_it(settings: Settings) -> None:
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record(
        [
            parse_fact(grant(REFERENCE, event_id="g1")),
            parse_fact(
                fact(
                    "subject.erased",
                    REFERENCE,
                    ground="court_decision",
                    occurred_at="2025-03-02T10:00:00+05:00",
                )
            ),
        ]
    )
    [w] = ledger.record(
        [
            parse_fact(
                withdraw(
                    REFERENCE,
                    occurred_at="2025-03-03T10:00:00+05:00",
                    evidence={"ip": IP},
                    reason=NAME,
                )
            )
        ]
    )
    assert isinstance(w, Receipt)
    ledger.close()
    assert files_containing(settings.data_dir, IP.encode()) == []
    assert files_containing(settings.data_dir, NAME.encode()) == []


def interrupted_erasure(settings: Settings) -> tuple[ConsentLedger, UUID]:
    """A ledger whose subject's erasure reached the log but whose key survived, as when the
    process stops between the two; and the subject's sid."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}))])
    sid = ledger.sid("demo", REFERENCE)
    original_erase = ledger.keystore.erase_all
    ledger.keystore.erase_all = lambda *a, **k: None  # type: ignore[method-assign]
    ledger.record([parse_fact(fact("subject.erased", REFERENCE, ground="subject_request"))])
    ledger.keystore.erase_all = original_erase  # type: ignore[method-assign]
    assert ledger.keystore.open_keys([sid]), "the simulated crash left the key"
    return ledger, sid


def test_an_interrupted_erasure_is_finished_by_the_next_write(settings: Settings) -> None:
    """The erasure fact reached the log but the key survived (the process stopped between):
    the trail never decrypts it, and the next write for the subject destroys it."""
    ledger, sid = interrupted_erasure(settings)
    trail = subject_trail(ledger, "demo", sid)
    assert trail is not None and trail["facts"][0]["personal_data"] == {"erased": True}
    [w] = ledger.record([parse_fact(withdraw(REFERENCE, occurred_at="2025-03-05T10:00:00+05:00"))])
    assert isinstance(w, Receipt)
    assert ledger.keystore.open_keys([sid]) == {}
    assert ledger.keystore.is_erased(sid)
    ledger.close()


def test_an_interrupted_erasure_finished_with_the_key_store_held_open_records_the_write(
    settings: Settings,
) -> None:
    """The same crash, then the next write for the subject while another process holds the
    key store open. Finishing the erasure deletes the key; overwriting its old page images
    has to wait. That wait raised before the write was recorded, and was answered "recorded,
    but ..." (HTTP 503 `key_store_busy`): a client that trusted it lost the fact."""
    ledger, sid = interrupted_erasure(settings)
    withdrawal = parse_fact(withdraw(REFERENCE, occurred_at="2025-03-05T10:00:00+05:00"))
    with reader_holding(settings.keystore_path):
        [w] = ledger.record([withdrawal])
    assert isinstance(w, Receipt) and not w.duplicate
    assert ledger.keystore.open_keys([sid]) == {}
    assert ledger.keystore.is_erased(sid)
    [again] = ledger.record([withdrawal])
    assert isinstance(again, Receipt) and again.duplicate and again.position == w.position
    ledger.close()


def test_an_interrupted_erasure_is_finished_when_a_ledger_next_opens(settings: Settings) -> None:
    """The same crash, then no write for the subject: opening the ledger finishes it."""
    ledger, sid = interrupted_erasure(settings)
    ledger.close()
    reopened = ConsentLedger(settings)
    assert reopened.keystore.open_keys([sid]) == {}
    assert reopened.keystore.is_erased(sid)
    assert reopened.finish_erasures() == 0  # nothing left to finish
    reopened.close()


def test_a_batch_of_erasures_destroys_every_key_with_the_key_store_held_open(
    settings: Settings,
) -> None:
    """Three erasures in one batch while another process held the key store open: the first
    key's old page images could not be overwritten yet, and that raised before the next key
    was deleted, so the other two people's data stayed readable until something touched
    them again. Every key goes first now; only the overwriting waits, and is reported."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    references = ["er-1", "er-2", "er-3"]
    granted = ledger.record(
        [
            parse_fact(grant(r, event_id=f"g-{r}", personal_data={"full_name": NAME}))
            for r in references
        ]
    )
    assert all(isinstance(g, Receipt) for g in granted)
    sids = [ledger.sid("demo", r) for r in references]
    erasures = [
        parse_fact(fact("subject.erased", r, event_id=f"e-{r}", ground="subject_request"))
        for r in references
    ]
    with reader_holding(settings.keystore_path), pytest.raises(KeyStoreBusyError) as held:
        ledger.record(erasures)
    assert ledger.keystore.open_keys(sids) == {}
    assert all(ledger.keystore.is_erased(sid) for sid in sids)
    # The error carries the batch's receipts and says which facts were the erasures.
    assert isinstance(held.value, ErasureNotOverwritten)
    assert held.value.erasures == {0, 1, 2}
    receipts = held.value.outcomes
    assert all(isinstance(r, Receipt) and not r.duplicate for r in receipts), receipts
    retried = ledger.record(erasures)  # they were recorded: answered as retries
    assert all(isinstance(r, Receipt) and r.duplicate for r in retried), retried
    assert [getattr(r, "position", None) for r in retried] == [
        getattr(r, "position", None) for r in receipts
    ]
    ledger.close()


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_record_answers_every_fact_of_a_batch_whose_erasure_the_key_store_held_up(
    settings: Settings,
) -> None:
    """`consent-ledger record` of a file with an erasure, the key store held open: the batch
    is recorded, so its receipts are printed (they were not), the rest of the file is
    recorded too, and the command ends with the key store's state (exit 6)."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}))])
    sid = ledger.sid("demo", REFERENCE)
    ledger.close()
    lines = [
        fact("subject.erased", REFERENCE, event_id=f"e{i}", ground="subject_request")
        if i == 1
        else grant(f"cli-{i}", event_id=f"cli-{i}")
        for i in range(1500)  # two batches: the erasure in the first
    ]
    source = settings.data_dir.parent / "facts.jsonl"
    source.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    with reader_holding(settings.keystore_path):
        out = cli(settings.data_dir, "record", str(source))
    assert out.returncode == 6, out.stderr
    assert out.stderr.startswith("consent-ledger: key store busy: "), out.stderr
    answers = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [a["index"] for a in answers] == list(range(1500))
    assert all("receipt" in a and not a["receipt"]["duplicate"] for a in answers)
    reopened = ConsentLedger(settings)
    assert reopened.keystore.open_keys([sid]) == {}
    assert len(reopened.ledger_recorder.find_facts("demo", ["e1", "cli-1499"])) == 2
    reopened.close()


def test_a_bulk_erasure_with_the_key_store_held_open_says_whom_it_erased(
    settings: Settings,
) -> None:
    """`tenants erase-subjects` (and `retention --erase`, through the same loop) while
    another process held the key store open: every subject is erased and reported, then the
    key store's state ends the command (exit 6). It said only that line: not whom it had
    erased, nor whom it refused."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    references = ["bulk-1", "bulk-2"]
    ledger.record([parse_fact(grant(r, personal_data={"full_name": NAME})) for r in references])
    sids = [ledger.sid("demo", r) for r in references]
    ledger.close()
    with reader_holding(settings.keystore_path):
        out = cli(
            settings.data_dir,
            *("tenants", "erase-subjects", "demo", "--ground", "court_decision"),
            *("--confirm", "demo"),
        )
    assert out.returncode == 6, out.stderr
    assert out.stdout.splitlines() == [
        "erased 2 subjects of tenant 'demo' (ground court_decision): data keys destroyed"
    ]
    assert out.stderr.startswith("consent-ledger: key store busy: "), out.stderr
    reopened = ConsentLedger(settings)
    assert reopened.keystore.open_keys(sids) == {}
    reopened.close()


def test_publishing_an_erasure_with_the_key_store_held_open_over_http(settings: Settings) -> None:
    """Through the service's writer process (the error and the batch's outcomes cross its
    pipe): the request that carries the erasure is told 503 `key_store_busy`, its facts are
    recorded (and counted on /metrics), and a retry gets their first receipts."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant(r, event_id=f"g-{r}")) for r in ("http-1", "http-2")])
    ledger.close()
    api_keys = ApiKeys(keys_path(settings))
    headers = {"Authorization": f"Bearer {api_keys.create('demo', {'publisher'})[1]}"}
    api_keys.close()

    def erasure(reference: str) -> dict[str, object]:
        body = fact("subject.erased", reference, event_id=f"e-{reference}", ground="court_decision")
        del body["tenant"]
        return body

    later = grant("http-3", event_id="g-http-3")
    del later["tenant"]
    with TestClient(create_app(settings)) as client:
        assert client.app.state.service.writer_process is not None  # type: ignore[attr-defined]
        with reader_holding(settings.keystore_path):
            single = client.post("/v1/facts", json=erasure("http-1"), headers=headers)
            batch = client.post(
                "/v1/facts:batch", json={"facts": [later, erasure("http-2")]}, headers=headers
            )
        assert single.status_code == 503 and single.json()["code"] == "key_store_busy"
        assert batch.status_code == 503 and batch.json()["code"] == "key_store_busy"
        # Their three facts were recorded, and /metrics counts them (it counted none).
        assert "\nledger_facts_accepted_total 3\n" in client.get("/metrics").text
        again = client.post("/v1/facts", json=erasure("http-1"), headers=headers)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        retried = client.post(
            "/v1/facts:batch", json={"facts": [later, erasure("http-2")]}, headers=headers
        )
        assert retried.status_code == 200, retried.text
        assert [r["status"] for r in retried.json()["results"]] == [200, 200]
    reopened = ConsentLedger(settings)
    sids = [reopened.sid("demo", r) for r in ("http-1", "http-2")]
    assert reopened.keystore.open_keys(sids) == {}
    reopened.close()


def test_a_key_store_restored_from_before_an_erasure_loses_the_key_again(
    backend_settings: Settings,
) -> None:
    """Restoring `keys.db` from a backup brings back the keys of everyone erased since. The
    log (in Kafka mode the topic, which no backup rolls back) still holds their erasures, and
    the next ledger to open destroys those keys again. Embedded, the log is one written before
    the ledger listed its erasures (the table is dropped), so the list is rebuilt from its
    events; in Kafka mode the replica is gone too (a new machine) and rebuilt from the topic."""
    settings = backend_settings
    if settings.backend == "kafka":
        KAFKA_ENV[settings.data_dir] = kafka_env(settings)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record(
        [
            parse_fact(grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME})),
            parse_fact(grant("kept", event_id="g2", personal_data={"full_name": "Kept Person"})),
        ]
    )
    sid, kept = ledger.sid("demo", REFERENCE), ledger.sid("demo", "kept")
    ledger.close()
    backup = settings.keystore_path.read_bytes()  # closed: the WAL is checkpointed away
    with contextlib.closing(sqlite3.connect(settings.keystore_path)) as keys:
        (wrapped,) = keys.execute(
            "SELECT wrapped FROM data_keys WHERE sid=?", (sid.hex,)
        ).fetchone()
    erased = cli(
        settings.data_dir, "erase", REFERENCE, "--tenant", "demo", "--ground", "consent_withdrawn"
    )
    assert erased.returncode == 0, erased.stderr
    assert files_containing(settings.data_dir, wrapped) == []

    _remove_sqlite(settings.keystore_path)
    settings.keystore_path.write_bytes(backup)
    if settings.backend == "kafka":
        _remove_sqlite(settings.log_path)
    else:
        with contextlib.closing(sqlite3.connect(settings.log_path)) as log, log:
            log.execute("DROP TABLE stored_events_erasures")
    assert files_containing(settings.data_dir, wrapped) == ["keys.db"]

    trail = cli(settings.data_dir, "trail", REFERENCE, "--tenant", "demo", "--json")
    assert trail.returncode == 0, trail.stderr
    assert orjson.loads(trail.stdout)["erased"] is True
    assert files_containing(settings.data_dir, wrapped) == []
    reopened = ConsentLedger(settings)
    assert reopened.keystore.is_erased(sid)
    assert list(reopened.keystore.open_keys([sid, kept])) == [kept]
    reopened.close()


def test_a_log_restored_from_before_an_erasure_takes_no_new_grant_of_the_erased(
    settings: Settings,
) -> None:
    """`ledger.db` alone restored from a backup taken before an erasure: the key store still
    lists the subject as erased. A grant with personal data was refused (no key to seal it
    with) and one without was recorded, a consent given after the person was erased. Both
    are refused now; a withdrawal is still recorded, as after any erasure. So is a first
    fact of a subject the backup never held (granted and erased after it was taken)."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant(REFERENCE, event_id="g1", personal_data={"full_name": NAME}))])
    ledger.close()
    backup = settings.log_path.read_bytes()  # closed: the WAL is checkpointed away
    erased = cli(
        settings.data_dir, "erase", REFERENCE, "--tenant", "demo", "--ground", "subject_request"
    )
    assert erased.returncode == 0, erased.stderr
    after = ConsentLedger(settings)
    assert isinstance(after.record([parse_fact(grant(PHONE, event_id="p1"))])[0], Receipt)
    after.close()
    erased = cli(
        settings.data_dir, "erase", PHONE, "--tenant", "demo", "--ground", "subject_request"
    )
    assert erased.returncode == 0, erased.stderr
    _remove_sqlite(settings.log_path)
    settings.log_path.write_bytes(backup)

    reopened = ConsentLedger(settings)
    later = "2025-03-02T10:00:00+05:00"
    outcomes = reopened.record(
        [
            parse_fact(grant(REFERENCE, event_id="g2", occurred_at=later)),
            parse_fact(
                grant(REFERENCE, event_id="g3", occurred_at=later, personal_data={"email": "e"})
            ),
            parse_fact(withdraw(REFERENCE, event_id="w1", occurred_at=later)),
        ]
    )
    refusals = [o.code for o in outcomes[:2] if not isinstance(o, Receipt)]
    assert refusals == [Code.SUBJECT_ERASED] * 2, outcomes
    assert isinstance(outcomes[2], Receipt)
    never_held = reopened.record(
        [
            parse_fact(grant(PHONE, event_id="p2", occurred_at=later)),
            parse_fact(
                grant(PHONE, event_id="p3", occurred_at=later, personal_data={"email": "e"})
            ),
            parse_fact(request(PHONE, "r1", "information", later, event_id="p4")),
        ]
    )
    assert [getattr(o, "code", o) for o in never_held] == [Code.SUBJECT_ERASED] * 3
    sid = reopened.sid("demo", REFERENCE)
    trail = subject_trail(reopened, "demo", sid)
    assert trail is not None
    assert [f["type"] for f in trail["facts"]] == [
        "consent.granted",
        "consent.withdrawn",
    ]
    reopened.close()


def test_an_erasure_the_restored_log_lost_is_named_and_recorded_again(
    settings: Settings,
) -> None:
    """`ledger.db` alone restored from before two erasures: the key store destroyed the keys,
    the log forgot the erasures. The trail called the person "(key missing: not erased)" and
    `verify` said nothing. Now the trail says the key was erased, `verify` and GET
    /v1/verify name the erasures to record again (the route, its caller's tenant's only),
    and `erase --sid` and the HTTP erasure record each at the instant its key went."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.create_tenant("other")
    ledger.record(
        [
            parse_fact(grant(REFERENCE, event_id="g1", personal_data={"email": EMAIL})),
            parse_fact(grant(PHONE, event_id="g2")),
        ]
    )
    sid, by_http = ledger.sid("demo", REFERENCE), ledger.sid("demo", PHONE)
    ledger.close()
    backup = settings.log_path.read_bytes()  # closed: the WAL is checkpointed away
    erased_at = {}
    for reference, subject in ((REFERENCE, sid), (PHONE, by_http)):
        erased = cli(
            settings.data_dir, "erase", reference, "--tenant", "demo", "--ground", "subject_request"
        )
        assert erased.returncode == 0, erased.stderr
        trail_then = orjson.loads(
            cli(settings.data_dir, "trail", reference, "--tenant", "demo", "--json").stdout
        )
        erased_at[subject] = trail_then["erased_at"]
    _remove_sqlite(settings.log_path)
    settings.log_path.write_bytes(backup)

    lost = [
        {"tenant": "demo", "sid": s.hex, "key_erased_at": erased_at[s]}
        for s in sorted((sid, by_http))
    ]
    checked = cli(settings.data_dir, "verify")
    assert checked.returncode == 0, checked.stderr  # the log itself is intact
    assert "2 subjects were erased in the key store but the log holds no erasure" in (
        checked.stderr
    )
    assert f"tenant 'demo' sid {sid.hex}: key erased at {erased_at[sid]}" in checked.stderr
    answer = orjson.loads(cli(settings.data_dir, "verify", "--json").stdout)
    assert answer["erasures_not_in_log"] == lost
    assert answer["subjects_without_key"] == 0
    other = cli(settings.data_dir, "verify", "--tenant", "other", "--json")
    assert other.returncode == 0 and "warning" not in other.stderr, other.stderr
    assert orjson.loads(other.stdout)["erasures_not_in_log"] == []
    unknown = cli(settings.data_dir, "verify", "--tenant", "nosuch")
    assert (unknown.returncode, unknown.stderr.strip()) == (3, "consent-ledger: no such tenant")
    keys = ApiKeys(keys_path(settings))
    admin = {"Authorization": f"Bearer {keys.create('demo', {'admin'})[1]}"}
    stranger = {"Authorization": f"Bearer {keys.create('other', {'compliance'})[1]}"}
    keys.close()
    server, base = serve(settings)  # says it at start, and serves
    try:
        verified = httpx.get(f"{base}/v1/verify", headers=admin, timeout=30).json()
        assert (verified["ok"], verified["erasures_not_in_log"]) == (True, lost)
        elsewhere = httpx.get(f"{base}/v1/verify", headers=stranger, timeout=30).json()
        assert (elsewhere["erasures_not_in_log"], elsewhere["subjects_without_key"]) == ([], 0)
        recorded = httpx.post(
            f"{base}/v1/subjects/{by_http.hex}/erasure",
            headers=admin,
            json={"ground": "subject_request"},
            timeout=30,
        )
        assert recorded.status_code == 201, recorded.text
    finally:
        server.terminate()
    said = server.communicate(timeout=60)[0].decode()
    assert "serve: warning: 2 subjects were erased in the key store but the log" in said, said
    trail = orjson.loads(
        cli(settings.data_dir, "trail", by_http.hex, "--sid", "--tenant", "demo", "--json").stdout
    )
    assert (trail["erased"], trail["erased_at"]) == (True, erased_at[by_http])
    assert trail["facts"][-1]["occurred_at"] == erased_at[by_http]

    trail = orjson.loads(
        cli(settings.data_dir, "trail", sid.hex, "--sid", "--tenant", "demo", "--json").stdout
    )
    assert trail["erased"] is False  # only an erasure in the log says erased
    assert [f["personal_data"] for f in trail["facts"]] == [{"key_erased": True}]
    table = cli(settings.data_dir, "trail", sid.hex, "--sid", "--tenant", "demo").stdout
    assert "(key erased, erasure not in the log)" in table and "not erased" not in table
    report = orjson.loads(
        cli(settings.data_dir, "report", sid.hex, "--sid", "--tenant", "demo", "--json").stdout
    )
    assert (report["personal_data"], report["personal_data_unreadable"]) == ({}, False)
    assert report["personal_data_key_erased"] is True
    text = cli(settings.data_dir, "report", sid.hex, "--sid", "--tenant", "demo").stdout
    assert "DESTROYED: the key store erased this subject's key" in text

    again = cli(
        settings.data_dir,
        *("erase", sid.hex, "--sid", "--tenant", "demo", "--ground", "subject_request"),
    )
    assert again.returncode == 0, again.stderr
    assert f"destroyed at {erased_at[sid]} by an erasure the log did not hold" in again.stdout
    trail = orjson.loads(
        cli(settings.data_dir, "trail", sid.hex, "--sid", "--tenant", "demo", "--json").stdout
    )
    assert (trail["erased"], trail["erased_at"]) == (True, erased_at[sid])
    report = orjson.loads(
        cli(settings.data_dir, "report", sid.hex, "--sid", "--tenant", "demo", "--json").stdout
    )
    assert (report["erased"], report["personal_data_key_erased"]) == (True, False)
    assert trail["facts"][-1]["occurred_at"] == erased_at[sid]
    assert [f["personal_data"] for f in trail["facts"]] == [{"erased": True}, None]
    checked = cli(settings.data_dir, "verify", "--json")
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr
    assert orjson.loads(checked.stdout)["erasures_not_in_log"] == []


def test_a_tenants_erasure_records_an_erasure_the_restored_log_lost_when_its_key_went(
    settings: Settings,
) -> None:
    """`tenants erase-subjects` after `ledger.db` alone was restored from before an erasure:
    the subject is erased again, at the instant its key was destroyed (as `erase --sid`
    does), not at the moment of the bulk erasure; the others at that moment."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.record([parse_fact(grant(REFERENCE, event_id="g1")), parse_fact(grant(PHONE))])
    sid, other = ledger.sid("demo", REFERENCE), ledger.sid("demo", PHONE)
    ledger.close()
    backup = settings.log_path.read_bytes()
    erased = cli(
        settings.data_dir, "erase", REFERENCE, "--tenant", "demo", "--ground", "subject_request"
    )
    assert erased.returncode == 0, erased.stderr
    key_erased_at = orjson.loads(
        cli(settings.data_dir, "trail", REFERENCE, "--tenant", "demo", "--json").stdout
    )["erased_at"]
    _remove_sqlite(settings.log_path)
    settings.log_path.write_bytes(backup)
    _remove_sqlite(settings.views_path)  # ahead of the restored log: built again from it

    everyone = cli(
        settings.data_dir,
        *("tenants", "erase-subjects", "demo", "--ground", "court_decision", "--confirm", "demo"),
    )
    assert everyone.returncode == 0, everyone.stderr
    assert "erased 2 subjects of tenant 'demo'" in everyone.stdout
    at = {}
    for subject in (sid, other):
        trail = orjson.loads(
            cli(
                settings.data_dir, "trail", subject.hex, "--sid", "--tenant", "demo", "--json"
            ).stdout
        )
        assert trail["erased"] is True
        at[subject] = trail["erased_at"]
    assert at[sid] == key_erased_at
    assert at[other] > key_erased_at  # erased now, by this command
    assert (
        orjson.loads(cli(settings.data_dir, "verify", "--json").stdout)["erasures_not_in_log"] == []
    )


def test_the_recorder_knows_the_erasure_events_by_their_topics() -> None:
    from eventsourcing.utils import get_topic

    from ledger.recorder import ERASURE_TOPICS
    from ledger.subject import Subject

    assert (
        get_topic(Subject.SubjectErased),
        get_topic(Subject.FirstSubjectErased),
    ) == ERASURE_TOPICS
