"""The answer to a subject's information request: what is held about them and done with it.

On both backends (the report reads the trail and the consent state each backend serves), the
real CLI process, and the HTTP route through the real app.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from ledger.settings import Settings
from projections.report import subject_report
from tests.cli_support import run
from tests.facts import fact, grant, withdraw

PERSON = "report.person@example.uz"
NAME, OLD_EMAIL, NEW_EMAIL, IP = "Karimova Nilufar", "old@example.uz", "new@example.uz", "84.54.1.9"


def history() -> list[dict[str, Any]]:
    return [
        grant(
            PERSON,
            ("marketing", "support"),
            occurred_at="2025-03-01T10:00:00+05:00",
            source="signup-form",
            channel="web_form",
            personal_data={"full_name": NAME, "email": OLD_EMAIL},
            evidence={"ip": IP, "form_id": "signup"},
        ),
        fact(
            "transfer.recorded",
            PERSON,
            occurred_at="2025-03-02T10:00:00+05:00",
            source="billing",
            recipient={"name": "Payments Ltd", "country": "KZ"},
            categories=["full_name"],
            ground="contract_performance",
            cross_border=True,
        ),
        fact(
            "request.received",
            PERSON,
            occurred_at="2025-03-03T10:00:00+05:00",
            source="dpo-console",
            request_id="REQ-1",
            kind="rectification",
        ),
        fact(
            "subject.rectified",
            PERSON,
            occurred_at="2025-03-04T10:00:00+05:00",
            source="crm",
            personal_data={"email": NEW_EMAIL},
            request_id="REQ-1",
        ),
        fact(
            "request.closed",
            PERSON,
            occurred_at="2025-03-04T11:00:00+05:00",
            source="dpo-console",
            request_id="REQ-1",
            outcome="fulfilled",
        ),
        fact(
            "request.received",
            PERSON,
            occurred_at="2025-03-05T10:00:00+05:00",
            source="dpo-console",
            request_id="REQ-2",
            kind="information",
        ),
        withdraw(PERSON, ("marketing",), occurred_at="2025-03-06T10:00:00+05:00", source="crm"),
        fact(
            "complaint.lodged",
            PERSON,
            occurred_at="2025-03-07T10:00:00+05:00",
            source="dpo-console",
            authority="Personal Data Inspection",
            reference="PDI-2025-17",
        ),
    ]


def test_a_report_tells_what_is_held_why_on_what_basis_and_who_received_it(
    backend_ledger: ConsentLedger,
) -> None:
    ledger = backend_ledger
    outcomes = ledger.record([parse_fact(f) for f in history()])
    assert all(isinstance(o, Receipt) for o in outcomes), outcomes
    sid = ledger.sid("demo", PERSON)
    report = subject_report(ledger, "demo", sid)
    assert report is not None
    assert (report["subject"], report["erased"]) == (PERSON, False)
    assert report["operators"] == [{"name": "MEGABITE-CRM LLC", "tin": "309519699"}]
    # The rectification is applied: the data held now, not the first values.
    assert report["personal_data"] == {"full_name": NAME, "email": NEW_EMAIL}
    assert report["collected_with"] == [
        {
            "occurred_at": "2025-03-01T10:00:00+05:00",
            "source": "signup-form",
            "channel": "web_form",
            "evidence": {"ip": IP, "form_id": "signup"},
        }
    ]
    by_purpose = {c["purpose"]: c for c in report["consents"]}
    assert set(by_purpose) == {"marketing", "support"}  # never granted: not listed
    marketing, support = by_purpose["marketing"], by_purpose["support"]
    assert (marketing["state"], marketing["since"]) == ("withdrawn", "2025-03-06T10:00:00+05:00")
    # A withdrawn consent still says on which terms it was given.
    assert (marketing["granted_under"], marketing["legal_basis"]) == ("crmpro-1.0", "consent")
    assert (support["state"], support["legal_basis"]) == ("granted", "contract")
    assert support["categories"] == ["full_name", "email", "phone", "user_provided"]
    assert report["policy_in_force"]["policy_version"] == "crmpro-1.0"
    assert set(report["policy_in_force"]["purposes"]) >= {"legal_compliance", "contract"}
    assert report["transfers"] == [
        {
            "occurred_at": "2025-03-02T10:00:00+05:00",
            "recipient": {"name": "Payments Ltd", "country": "KZ"},
            "categories": ["full_name"],
            "ground": "contract_performance",
            "cross_border": True,
        }
    ]
    assert report["requests"] == [
        {
            "request_id": "REQ-1",
            "kind": "rectification",
            "received_at": "2025-03-03T10:00:00+05:00",
            "due_at": "2025-04-02T10:00:00+05:00",  # the settings' 30 days
            "closed_at": "2025-03-04T11:00:00+05:00",
            "outcome": "fulfilled",
        },
        {
            "request_id": "REQ-2",
            "kind": "information",
            "received_at": "2025-03-05T10:00:00+05:00",
            "due_at": "2025-04-04T10:00:00+05:00",
            "closed_at": None,
            "outcome": None,
        },
    ]
    assert report["complaints"] == [
        {
            "occurred_at": "2025-03-07T10:00:00+05:00",
            "authority": "Personal Data Inspection",
            "reference": "PDI-2025-17",
        }
    ]
    assert [s["source"] for s in report["sources"]] == [
        "billing",
        "crm",
        "dpo-console",
        "signup-form",
    ]
    assert subject_report(ledger, "acme", sid) is None  # another tenant's: no such subject

    # After erasure: the facts are still accounted for, the personal data is nowhere.
    erased = ledger.record([parse_fact(fact("subject.erased", PERSON, ground="subject_request"))])
    assert isinstance(erased[0], Receipt)
    after = subject_report(ledger, "demo", sid)
    assert after is not None
    assert (after["erased"], after["subject"], after["personal_data"]) == (True, None, None)
    assert after["collected_with"] == [] and len(after["requests"]) == 2
    text = orjson.dumps(after).decode()
    assert not any(value in text for value in (PERSON, NAME, OLD_EMAIL, NEW_EMAIL, IP))


def test_the_report_from_the_command_line_and_over_http(data: Path) -> None:
    stored = run(data, "record", stdin=orjson.dumps(history()).decode())
    assert stored.returncode == 0, stored.stdout
    as_json = run(data, "report", PERSON, "--tenant", "demo", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = orjson.loads(as_json.stdout)
    assert report["personal_data"]["email"] == NEW_EMAIL
    text = run(data, "report", report["sid"], "--sid", "--tenant", "demo")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert f"  email: {NEW_EMAIL}" in lines
    assert any(line.startswith("  marketing: withdrawn since 2025-03-06") for line in lines)
    assert any(
        "Payments Ltd (KZ), full_name on contract_performance; cross-border" in line
        for line in lines
    )
    assert (
        "  REQ-1 (rectification) received 2025-03-03T10:00:00+05:00: fulfilled "
        "2025-03-04T11:00:00+05:00" in lines
    )
    assert (
        "  REQ-2 (information) received 2025-03-05T10:00:00+05:00: open, due "
        "2025-04-04T10:00:00+05:00" in lines
    )
    missing = run(data, "report", "nobody@example.uz", "--tenant", "demo")
    assert (missing.returncode, missing.stderr.strip()) == (
        3,
        "consent-ledger: no such subject in this tenant",
    )


def test_the_report_over_http_is_the_ledgers_answer(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
        ledger.record([parse_fact(f) for f in history()])
        sid = ledger.sid("demo", PERSON)
        expected = subject_report(ledger, "demo", sid)
    assert expected is not None
    with contextlib.closing(ApiKeys(keys_path(settings))) as api_keys:
        key = api_keys.create("demo", {"compliance"})[1]
    with TestClient(create_app(settings)) as client:
        got = client.get(
            f"/v1/subjects/{sid.hex}/report", headers={"Authorization": f"Bearer {key}"}
        )
    assert got.status_code == 200, got.text
    answer = got.json()
    assert {**answer, "as_of": None} == {**expected, "as_of": None}
