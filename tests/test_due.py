"""The due list: request deadlines, expiring consents, data kept past retention."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.policy import PolicyVersion
from ledger.receipt import Receipt
from projections.due import due_list
from projections.views import Views
from tests.facts import fact, grant, withdraw

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def at(days: float) -> str:
    return (NOW + timedelta(days=days)).isoformat()


def due_at(
    views: Views, now: datetime, days: int, policies: Mapping[str, PolicyVersion]
) -> dict[str, Any]:
    """The demo tenant's due list, looking `days` ahead (requests due 30 days after receipt)."""
    return due_list(
        views.store, "demo", now, within=timedelta(days=days), request_days=30, policies=policies
    )


def test_due_list(ledger: ConsentLedger) -> None:
    policy = fact(
        "policy.published",
        None,
        policy_version="2.0",
        effective_at="2025-01-01T00:00:00+05:00",
        occurred_at="2025-01-01T00:00:00+05:00",
        language="uz",
        text="v2",
        operator={"name": "MEGABITE-CRM LLC", "tin": "309519699"},
        purposes={
            "marketing": {"legal_basis": "consent", "categories": ["email"], "retention_days": 30}
        },
    )
    facts = [
        policy,
        fact("request.received", "r-soon", request_id="A", kind="information", occurred_at=at(-25)),
        fact(
            "request.received",
            "r-late",
            request_id="B",
            kind="erasure",
            occurred_at=at(-10),
            due_at=at(-1),
        ),
        fact("request.received", "r-far", request_id="C", kind="objection", occurred_at=at(-1)),
        fact("request.received", "r-done", request_id="D", kind="information", occurred_at=at(-40)),
        fact("request.closed", "r-done", request_id="D", outcome="fulfilled", occurred_at=at(-35)),
        grant("expiring", occurred_at=at(-100), expires_at=at(3)),
        grant("lasting", occurred_at=at(-100), expires_at=at(30)),
        grant("kept", policy_version="2.0", occurred_at=at(-100)),
        withdraw("kept", occurred_at=at(-40)),
        grant("recent", policy_version="2.0", occurred_at=at(-100)),
        withdraw("recent", occurred_at=at(-10)),
        grant("erased", policy_version="2.0", occurred_at=at(-100)),
        withdraw("erased", occurred_at=at(-40)),
        fact("subject.erased", "erased", ground="consent_withdrawn", occurred_at=at(-39)),
    ]
    # The ledger refuses facts ahead of its clock, and these are dated around NOW (2025).
    outcomes = ledger.record([parse_fact(f) for f in facts])
    assert all(isinstance(o, Receipt) for o in outcomes), outcomes
    views = Views(ledger)
    views.refresh()
    tenant = ledger.tenant("demo")
    assert tenant is not None
    report = due_at(views, NOW, 7, tenant.policies)
    views.close()
    sid = {name: ledger.sid("demo", name).hex for name in ("r-soon", "r-late", "expiring", "kept")}
    assert [(r["request_id"], r["overdue"]) for r in report["requests"]] == [
        ("A", False),
        ("B", True),
    ]
    assert report["requests"][0]["sid"] == sid["r-soon"]
    assert [(e["sid"], e["purpose"]) for e in report["expiring_consents"]] == [
        (sid["expiring"], "marketing")
    ]
    assert [(p["sid"], p["purpose"]) for p in report["past_retention"]] == [
        (sid["kept"], "marketing")
    ]


def test_a_retention_reaching_past_the_calendar_lists_nothing(ledger: ConsentLedger) -> None:
    """A policy recorded before retentions were bounded (36,500 days) may hold any number:
    the due list reads it as nothing past retention yet, for its whole tenant, rather than
    failing on the date arithmetic."""
    tenant = ledger.tenant("demo")
    assert tenant is not None
    [seed] = tenant.policies.values()
    views = Views(ledger)
    views.refresh()
    for days, now in ((10**12, NOW), (36_500, datetime(50, 1, 1, tzinfo=UTC))):
        terms = {p: replace(t, retention_days=days) for p, t in seed.purposes.items()}
        report = due_at(views, now, 3650, {"old": replace(seed, purposes=terms)})
        assert report["past_retention"] == []
    views.close()
