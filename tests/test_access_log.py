"""The HTTP access log: who read or erased which subject's data, and what they were told.

Against the real app (FastAPI's test client over the real routes and stores), the real
`consent-ledger accesses` process and the SQLite file itself.
"""

from __future__ import annotations

import contextlib
import logging
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
from tests.facts import grant

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
    assert over_http.json() == {"tenant": "demo", "sid": sid, "accesses": accesses[:5]}
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
