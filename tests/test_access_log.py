"""The HTTP access log: who read or erased which subject's data, and what they were told.

Against the real app (FastAPI's test client over the real routes and stores), the real
`consent-ledger accesses` process and the SQLite file itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import orjson
import pytest
from fastapi.testclient import TestClient

from api.access_log import AccessLog
from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.settings import Settings
from tests.cli_support import run
from tests.facts import fact, grant

REFERENCE = "access.person@example.uz"


def test_reads_and_erasures_of_a_subject_are_recorded_with_their_key_and_answer(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
    with contextlib.closing(ApiKeys(keys_path(settings))) as api_keys:
        ids, keys = {}, {}
        for role in ("publisher", "compliance", "admin"):
            ids[role], keys[role] = api_keys.create("demo", {role})

    def auth(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[role]}"}

    with TestClient(create_app(settings)) as client:
        body = {k: v for k, v in grant(REFERENCE).items() if k != "tenant"}
        sid = client.post("/v1/facts", json=body, headers=auth("publisher")).json()["sid"]
        # A sid the routes also take in capitals with hyphens: served, so recorded as the sid.
        spelled = {"consents": sid, "trail": str(UUID(hex=sid)).upper(), "evidence": sid}
        for route, given in spelled.items():
            got = client.get(f"/v1/subjects/{given}/{route}", headers=auth("compliance"))
            assert got.status_code == 200, got.text
        refused = client.get(f"/v1/subjects/{sid}/trail", headers=auth("publisher"))
        assert refused.status_code == 403
        nobody = client.get(f"/v1/subjects/{'0' * 32}/trail", headers=auth("compliance"))
        assert nobody.status_code == 404
        # Not a sid: a URL may carry anything, and only sids are written.
        client.get(f"/v1/subjects/{REFERENCE}/trail", headers=auth("compliance"))
        client.get(f"/v1/subjects/{sid}/trail")  # no key: no one to record
        erased = client.post(
            f"/v1/subjects/{sid}/erasure", json={"ground": "subject_request"}, headers=auth("admin")
        )
        assert erased.status_code == 201

        over_http = client.get(f"/v1/subjects/{sid}/accesses", headers=auth("compliance"))
        assert over_http.status_code == 200, over_http.text
        assert (
            client.get(f"/v1/subjects/{sid}/accesses", headers=auth("publisher")).status_code == 403
        )

    with contextlib.closing(AccessLog(settings.access_log_path)) as log:
        accesses = log.of_subject("demo", sid)
        assert log.of_subject("demo", "0" * 32)[0]["status"] == 404
        assert log.of_subject("acme", sid) == []
    assert [(a["key_id"], a["method"], a["route"], a["status"]) for a in accesses] == [
        (ids["compliance"], "GET", "/v1/subjects/{sid}/consents", 200),
        (ids["compliance"], "GET", "/v1/subjects/{sid}/trail", 200),
        (ids["compliance"], "GET", "/v1/subjects/{sid}/evidence", 200),
        (ids["publisher"], "GET", "/v1/subjects/{sid}/trail", 403),
        (ids["admin"], "POST", "/v1/subjects/{sid}/erasure", 201),
        (ids["compliance"], "GET", "/v1/subjects/{sid}/accesses", 200),
        (ids["publisher"], "GET", "/v1/subjects/{sid}/accesses", 403),
    ]
    # Each request is recorded as it completes: the list read over HTTP ends before it.
    assert over_http.json() == {
        "tenant": "demo",
        "sid": sid,
        "accesses": accesses[:5],
        "kept_days": None,
    }
    stored = b"".join(p.read_bytes() for p in settings.data_dir.glob("access.db*"))
    assert REFERENCE.encode() not in stored and sid.encode() in stored

    # The same, from the command line, by the person's reference (after the erasure too).
    listed = run(settings.data_dir, "accesses", REFERENCE, "--tenant", "demo", "--json")
    assert listed.returncode == 0, listed.stderr
    assert orjson.loads(listed.stdout)["accesses"] == accesses
    table = run(settings.data_dir, "accesses", sid, "--sid", "--tenant", "demo")
    assert table.stdout.startswith(f"accesses to subject {sid} of tenant 'demo' over HTTP: 7")
    # A backup keeps it.
    backed_up = run(settings.data_dir, "backup", "--into", str(tmp_path / "backup"))
    assert backed_up.returncode == 0 and "access.db" in backed_up.stdout, backed_up.stderr
    with contextlib.closing(AccessLog(tmp_path / "backup" / "access.db")) as copy:
        assert copy.of_subject("demo", sid) == accesses


def test_an_access_that_cannot_be_recorded_does_not_undo_the_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The access log's database failing under the running service (here closed, so every
    write raises, as a full disk or a failed mount would make them): the reader still gets
    the answer, and the gap is logged."""
    settings = Settings(data_dir=tmp_path / "data")
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
    with contextlib.closing(ApiKeys(keys_path(settings))) as api_keys:
        key = api_keys.create("demo", {"admin"})[1]
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        body = {k: v for k, v in grant(REFERENCE).items() if k != "tenant"}
        sid = client.post("/v1/facts", json=body, headers=headers).json()["sid"]
        service = client.app.state.service  # type: ignore[attr-defined]
        service.access.close()
        with caplog.at_level(logging.ERROR, logger="consent_ledger.http"):
            got = client.get(f"/v1/subjects/{sid}/trail", headers=headers)
        assert got.status_code == 200
    assert any(r.getMessage() == "access not recorded" for r in caplog.records)


def _demo_with_keys(settings: Settings) -> dict[str, dict[str, str]]:
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
    with contextlib.closing(ApiKeys(keys_path(settings))) as api_keys:
        return {
            role: {"Authorization": f"Bearer {api_keys.create('demo', {role})[1]}"}
            for role in ("publisher", "compliance", "admin")
        }


def test_answers_that_name_many_subjects_record_each_subject_they_named(tmp_path: Path) -> None:
    """The campaign check, who had consent, the due list, the request register, a resolved
    reference and a receipt looked up by event id each disclose subjects without a sid in
    their path: each subject named is
    recorded, once a request, under the route; a refused request names no one and records
    nothing."""
    settings = Settings(data_dir=tmp_path / "data")
    auth = _demo_with_keys(settings)
    people = ["bulk.one@example.uz", "bulk.two@example.uz"]
    stranger = "never.granted@example.uz"
    with TestClient(create_app(settings)) as client:
        sids, event_ids = [], []
        for person in people:
            body = {k: v for k, v in grant(person).items() if k != "tenant"}
            event_ids.append(body["event_id"])
            sids.append(
                client.post("/v1/facts", json=body, headers=auth["publisher"]).json()["sid"]
            )
        asked = fact(
            "request.received",
            people[1],
            request_id="r-1",
            kind="information",
            occurred_at=datetime.now(UTC).isoformat(),
        )
        del asked["tenant"]
        assert client.post("/v1/facts", json=asked, headers=auth["publisher"]).status_code == 201
        at = "2025-06-01T00:00:00Z"
        check = {"purpose": "marketing", "at": at, "subjects": [people[0], stranger, people[0]]}
        # Refused before any answer: no one is named, nothing recorded.
        refused = [
            client.post("/v1/consents:check", json=check, headers=auth["publisher"]),
            client.post(
                "/v1/consents:check",
                json={**check, "purpose": "astrology"},
                headers=auth["compliance"],
            ),
        ]
        assert [r.status_code for r in refused] == [403, 422]
        assert client.post("/v1/consents:check", json=check, headers=auth["compliance"]).is_success
        first = sorted(sids)[0]
        page = client.get(
            "/v1/purposes/marketing/subjects",
            params={"as_of": at, "limit": 1},
            headers=auth["compliance"],
        )
        assert page.json()["sids"] == [first]
        due = client.get("/v1/due", params={"within_days": 31}, headers=auth["admin"]).json()
        assert [r["sid"] for r in due["requests"]] == [sids[1]]
        register = client.get("/v1/requests", headers=auth["compliance"]).json()
        assert [r["sid"] for r in register["requests"]] == [sids[1]]
        resolved = client.post(
            "/v1/subjects:resolve", json={"subject": people[1]}, headers=auth["publisher"]
        )
        assert resolved.json() == {"sid": sids[1]}
        stranger_sid = client.post(
            "/v1/subjects:resolve", json={"subject": stranger}, headers=auth["compliance"]
        ).json()["sid"]
        looked_up = client.post(
            "/v1/facts:lookup",
            json={"event_ids": [event_ids[1], "never-sent"]},
            headers=auth["publisher"],
        )
        assert looked_up.json()["results"][0]["receipt"]["sid"] == sids[1]

    def seen(sid: str) -> list[tuple[str, str, int]]:
        with contextlib.closing(AccessLog(settings.access_log_path)) as log:
            return [(a["method"], a["route"], a["status"]) for a in log.of_subject("demo", sid)]

    check_row = ("POST", "/v1/consents:check", 200)
    who_row = ("GET", "/v1/purposes/{purpose}/subjects", 200)
    resolve_row = ("POST", "/v1/subjects:resolve", 200)
    assert seen(sids[0]) == [check_row] + ([who_row] if first == sids[0] else [])
    assert seen(sids[1]) == ([who_row] if first == sids[1] else []) + [
        ("GET", "/v1/due", 200),
        ("GET", "/v1/requests", 200),
        resolve_row,
        ("POST", "/v1/facts:lookup", 200),
    ]
    assert seen(stranger_sid) == [check_row, resolve_row]
    stored = b"".join(p.read_bytes() for p in settings.data_dir.glob("access.db*"))
    assert not any(p.encode() in stored for p in [*people, stranger])


def test_accesses_older_than_the_kept_days_are_deleted_at_start_and_as_the_service_runs(
    tmp_path: Path,
) -> None:
    """LEDGER_ACCESS_LOG_DAYS: an access past it is gone when the service starts and, while
    it runs, once it records again; younger ones stay; the answer says how long is kept."""
    settings = replace(Settings(data_dir=tmp_path / "data"), access_log_days=30)
    auth = _demo_with_keys(settings)
    now = datetime.now(UTC)
    for name, days in {"a": 31, "b": 29}.items():
        then = itertools.repeat(now - timedelta(days=days)).__next__
        with contextlib.closing(AccessLog(settings.access_log_path, clock=then)) as log:
            log.record_many(
                "demo", ["0" * 32], f"key-{name}", "GET", "/v1/subjects/{sid}/trail", 200
            )

    def kept() -> list[str]:
        with contextlib.closing(AccessLog(settings.access_log_path)) as log:
            return [a["key_id"] for a in log.of_subject("demo", "0" * 32)]

    with TestClient(create_app(settings)) as client:
        assert kept() == ["key-b"]  # as it started, before recording anything
        body = {k: v for k, v in grant(REFERENCE).items() if k != "tenant"}
        sid = client.post("/v1/facts", json=body, headers=auth["publisher"]).json()["sid"]
        assert client.get(f"/v1/subjects/{sid}/trail", headers=auth["compliance"]).is_success
        listed = client.get(f"/v1/subjects/{sid}/accesses", headers=auth["compliance"]).json()
    assert listed["kept_days"] == 30 and len(listed["accesses"]) == 1
    assert kept() == ["key-b"]
    # The command line reads the same setting, and says it (as JSON, the route's answer).
    told = run(
        settings.data_dir,
        "accesses",
        REFERENCE,
        "--tenant",
        "demo",
        "--json",
        LEDGER_ACCESS_LOG_DAYS="30",
    )
    assert orjson.loads(told.stdout)["kept_days"] == 30, told.stderr
    told = run(
        settings.data_dir, "accesses", REFERENCE, "--tenant", "demo", LEDGER_ACCESS_LOG_DAYS="30"
    )
    assert told.stdout.splitlines()[0].endswith(": 2 (the last 30 days are kept)"), told.stdout

    # A running service: its clock passes the next access's age, and its next record prunes.
    clock = [now]
    with contextlib.closing(
        AccessLog(settings.access_log_path, keep_days=30, clock=lambda: clock[0])
    ) as log:
        log.prune()
        clock[0] = now + timedelta(days=2)  # key-b is 31 days old now
        log.record_many("demo", ["1" * 32], "key-c", "GET", "/v1/subjects/{sid}/trail", 200)
        assert [a["key_id"] for a in log.of_subject("demo", "0" * 32)] == []
        assert [a["key_id"] for a in log.of_subject("demo", "1" * 32)] == ["key-c"]


def test_pruning_deletes_a_backlog_in_bounded_batches(tmp_path: Path) -> None:
    """A backlog larger than one pruning's batch: each record deletes one more batch until
    none is left; `prune` deletes all of it."""
    from api import access_log

    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    path = tmp_path / "access.db"
    with contextlib.closing(AccessLog(path, clock=lambda: old)) as log:
        log.record_many(
            "demo",
            [f"{i:032x}" for i in range(2 * access_log.PRUNE_BATCH + 7)],
            "k",
            "POST",
            "/v1/consents:check",
            200,
        )

    def left() -> int:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT COUNT(*) FROM accesses").fetchone()[0])

    with contextlib.closing(AccessLog(path, keep_days=30, clock=lambda: now)) as log:
        log.record_many("demo", ["f" * 32], "k", "GET", "/v1/subjects/{sid}/trail", 200)
        assert left() == access_log.PRUNE_BATCH + 7 + 1
        log.record_many("demo", ["f" * 32], "k", "GET", "/v1/subjects/{sid}/trail", 200)
        assert left() == 7 + 2
        log.record_many("demo", ["f" * 32], "k", "GET", "/v1/subjects/{sid}/trail", 200)
        assert left() == 3
    with contextlib.closing(AccessLog(path, clock=lambda: old)) as log:
        log.record_many(
            "demo",
            [f"{i:032x}" for i in range(access_log.PRUNE_BATCH + 1)],
            "k",
            "POST",
            "/v1/consents:check",
            200,
        )
    with contextlib.closing(AccessLog(path, keep_days=30, clock=lambda: now)) as log:
        assert log.prune() == access_log.PRUNE_BATCH + 1
    assert left() == 3


def test_an_access_log_moved_under_the_service_records_where_the_command_reads(
    tmp_path: Path,
) -> None:
    """`consent-ledger accesses` reads the file at the path: a log moved away while the
    server ran took every access from then on where no one would look."""
    settings = Settings(data_dir=tmp_path / "data")
    keys = _demo_with_keys(settings)
    away = tmp_path / "away"
    away.mkdir()
    with TestClient(create_app(settings)) as client:
        body = {k: v for k, v in grant(REFERENCE).items() if k != "tenant"}
        sid = client.post("/v1/facts", json=body, headers=keys["publisher"]).json()["sid"]
        assert client.get(f"/v1/subjects/{sid}/trail", headers=keys["compliance"]).is_success
        for path in settings.data_dir.glob("access.db*"):
            path.rename(away / path.name)
        assert client.get(f"/v1/subjects/{sid}/consents", headers=keys["compliance"]).is_success
        listed = client.get(f"/v1/subjects/{sid}/accesses", headers=keys["compliance"])
    assert [a["route"] for a in listed.json()["accesses"]] == ["/v1/subjects/{sid}/consents"]
    with contextlib.closing(AccessLog(settings.access_log_path)) as log:
        assert [a["route"] for a in log.of_subject("demo", sid)] == [
            "/v1/subjects/{sid}/consents",
            "/v1/subjects/{sid}/accesses",
        ]
    with contextlib.closing(AccessLog(away / "access.db")) as moved:  # what it held stays
        assert [a["route"] for a in moved.of_subject("demo", sid)] == ["/v1/subjects/{sid}/trail"]
