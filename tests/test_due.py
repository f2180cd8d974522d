"""The due list: request deadlines, expiring consents, data kept past retention."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from ledger.application import ConsentLedger
from ledger.cli.erasure import erase_each
from ledger.envelope import parse_fact
from ledger.policy import PolicyVersion
from ledger.receipt import Receipt
from projections import due
from projections.cursors import BadCursor, encode_cursor
from projections.due import LISTS, due_list, erasable_past_retention
from projections.store import ConsentViews
from projections.views import Views
from tests.facts import fact, grant, policy, request, terms, withdraw

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def at(days: float) -> str:
    return (NOW + timedelta(days=days)).isoformat()


def due_at(
    views: Views,
    now: datetime,
    days: int,
    policies: Mapping[str, PolicyVersion],
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The demo tenant's due list, looking `days` ahead (requests due 30 days after receipt),
    a page of it with `limit` or `cursor`."""
    return due_list(
        views.store,
        "demo",
        now,
        within=timedelta(days=days),
        request_days=30,
        policies=policies,
        limit=limit,
        cursor=cursor,
    )


def requests_due(
    ledger: ConsentLedger, facts: list[dict[str, Any]], by_kind: Mapping[str, int]
) -> list[dict[str, Any]]:
    """The facts recorded, then the requests of the demo tenant's due list 30 days ahead of
    NOW (30 days to answer by default), under the policy versions it published."""
    assert all(isinstance(o, Receipt) for o in ledger.record([parse_fact(f) for f in facts]))
    tenant = ledger.tenant("demo")
    assert tenant is not None
    views = Views(ledger)
    try:
        views.refresh()
        report = due_list(
            views.store,
            "demo",
            NOW,
            within=timedelta(days=30),
            request_days=30,
            policies=tenant.policies,
            request_days_by_kind=by_kind,
        )
    finally:
        views.close()
    requests: list[dict[str, Any]] = report["requests"]
    return requests


def test_due_list(ledger: ConsentLedger) -> None:
    facts = [
        _policy_with_retention(marketing=30),
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
    # Its one purpose past retention: the subject may be erased (`consent-ledger retention`).
    assert report["erasable"] == [
        {"sid": sid["kept"], "purposes": ["marketing"], "due_since": at(-10)}
    ]


def test_requests_without_their_own_deadline_are_due_by_their_kind(
    ledger: ConsentLedger,
) -> None:
    """LEDGER_REQUEST_DUE_DAYS_BY_KIND: an information request due in 10 days, an erasure
    request in the default 30; one that names its own `due_at` keeps it."""
    facts = [
        request("asks", "I", "information", at(-8)),
        request("erases", "E", "erasure", at(-8)),
        request("named", "N", "information", at(-8), due_at=at(20)),
    ]
    due = requests_due(ledger, facts, {"information": 10})
    assert {r["request_id"]: r["due_at"] for r in due} == {
        "I": at(2),
        "E": at(22),
        "N": at(20),
    }


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


def _policy_with_retention(**days: int | None) -> dict[str, Any]:
    return policy(
        "2.0",
        "2023-01-01T00:00:00+05:00",
        {purpose: terms(kept) for purpose, kept in days.items()},
    )


def test_erasable_subjects_are_those_no_purpose_keeps(ledger: ConsentLedger) -> None:
    """Erasure destroys all of a subject's data: one purpose past retention is not enough
    while another keeps it, a purpose without a bounded retention keeps it for good, and
    an open request keeps it until answered."""
    both = ("marketing", "service_improvement")
    facts = [
        _policy_with_retention(marketing=30, service_improvement=365, support=None),
        # Listed: its one purpose ended 40 days ago, 30 are kept.
        grant("gone", policy_version="2.0", occurred_at=at(-100)),
        withdraw("gone", occurred_at=at(-40)),
        # Listed: both purposes past, whichever ended last (-400 + 365 = -35) is the due date.
        grant("both", both, policy_version="2.0", occurred_at=at(-500)),
        withdraw("both", ("service_improvement",), occurred_at=at(-400)),
        withdraw("both", ("marketing",), occurred_at=at(-300)),
        # Not: marketing past, service_improvement ended 40 days ago of its 365.
        grant("mixed", both, policy_version="2.0", occurred_at=at(-100)),
        withdraw("mixed", both, occurred_at=at(-40)),
        # Not: support has no bounded retention.
        grant("unbounded", ("marketing", "support"), policy_version="2.0", occurred_at=at(-100)),
        withdraw("unbounded", ("marketing", "support"), occurred_at=at(-40)),
        # Not: a request open; listed once it is closed.
        grant("asking", policy_version="2.0", occurred_at=at(-100)),
        withdraw("asking", occurred_at=at(-40)),
        fact("request.received", "asking", request_id="Q", kind="information", occurred_at=at(-2)),
        grant("answered", policy_version="2.0", occurred_at=at(-100)),
        withdraw("answered", occurred_at=at(-40)),
        fact("request.received", "answered", request_id="R", kind="erasure", occurred_at=at(-5)),
        fact(
            "request.closed",
            "answered",
            request_id="R",
            outcome="refused",
            reason="contract",
            occurred_at=at(-4),
        ),
        # Not: consent ended 10 days ago; nor one still in force; nor one already erased.
        grant("recent", policy_version="2.0", occurred_at=at(-100)),
        withdraw("recent", occurred_at=at(-10)),
        grant("granted", policy_version="2.0", occurred_at=at(-100)),
        grant("erased", policy_version="2.0", occurred_at=at(-100)),
        withdraw("erased", occurred_at=at(-40)),
        fact("subject.erased", "erased", ground="consent_withdrawn", occurred_at=at(-39)),
    ]
    outcomes = ledger.record([parse_fact(f) for f in facts])
    assert all(isinstance(o, Receipt) for o in outcomes), outcomes
    tenant = ledger.tenant("demo")
    assert tenant is not None
    views = Views(ledger)
    try:
        views.refresh()
        found = erasable_past_retention(views.store, "demo", NOW, tenant.policies)
        later = erasable_past_retention(
            views.store, "demo", NOW + timedelta(days=31), tenant.policies
        )
    finally:
        views.close()
    name = {ledger.sid("demo", s).hex: s for s in ("gone", "both", "answered", "recent")}
    assert [(name[f["sid"]], f["purposes"], f["due_since"]) for f in found] == sorted(
        [
            ("gone", ["marketing"], at(-10)),
            ("both", ["marketing", "service_improvement"], at(-35)),
            ("answered", ["marketing"], at(-10)),
        ],
        key=lambda e: ledger.sid("demo", e[0]).hex,
    )
    # A month on, the recent withdrawal is past its 30 days too.
    assert {name.get(f["sid"]) for f in later} == {"gone", "both", "answered", "recent"}

    # `consent-ledger retention --erase`, cut short and run again, repeats no erasure: the
    # same event ids, at the first attempt's instants, answered with the first receipts.
    sids = [f["sid"] for f in found]
    first, held = erase_each(ledger, "demo", sids, "retention_expired", "retention-expired-")
    again, _ = erase_each(ledger, "demo", sids, "retention_expired", "retention-expired-")
    assert held is None
    assert [o.duplicate for o in first] == [False] * 3
    assert [(o.duplicate, o.position) for o in again] == [(True, o.position) for o in first]


def test_a_request_is_due_when_the_policy_in_force_at_its_receipt_promised(
    ledger: ConsentLedger,
) -> None:
    """A tenant's policy may say within how many days it answers each kind of request
    (`request_due_days`): a request received under it and naming no `due_at` is due then;
    one received before that version took effect, or of a kind it does not name, is due by
    the settings; one naming its own `due_at` keeps it. Each says where its deadline came from."""
    facts = [
        policy("2.0", at(-20), request_due_days={"information": 10, "erasure": 20}),
        request("before", "B", "information", at(-25)),
        request("asks", "I", "information", at(-8)),
        request("at-once", "E", "erasure", at(-20)),  # the instant 2.0 took effect: under 2.0
        request("objects", "O", "objection", at(-8)),
        request("named", "N", "erasure", at(-8), due_at=at(5)),
    ]
    due = requests_due(ledger, facts, {"objection": 15})
    tenant = ledger.tenant("demo")
    assert tenant is not None
    assert tenant.policies["2.0"].request_due_days == {"erasure": 20, "information": 10}
    assert tenant.policies["crmpro-1.0"].request_due_days == {}
    assert {r["request_id"]: (r["due_at"], r["due_from"], r["policy_version"]) for r in due} == {
        "B": (at(5), "settings", None),  # received under crmpro-1.0, which promises nothing
        "I": (at(2), "policy", "2.0"),
        "E": (at(0), "policy", "2.0"),
        "O": (at(7), "settings", None),  # 2.0 names no deadline for objections
        "N": (at(5), "request", None),
    }


def test_the_due_list_s_pages_make_up_the_whole_list(ledger: ConsentLedger) -> None:
    """Paged by `limit`, every list comes back whole and in order across the pages, each
    page holding at most `limit` of each, whatever the chunk erasable subjects are looked
    for in; the pages answer for the first page's instant, however late they are asked."""
    both = ("marketing", "service_improvement")
    facts: list[dict[str, Any]] = [_policy_with_retention(marketing=30, service_improvement=365)]
    for i in range(14):
        s = f"subject-{i}"
        if i % 4 == 0:  # erasable: its one purpose past retention
            facts += [grant(s, policy_version="2.0", occurred_at=at(-100))]
            facts += [withdraw(s, occurred_at=at(-40))]
        elif i % 4 == 1:  # erasable: both purposes past
            facts += [grant(s, both, policy_version="2.0", occurred_at=at(-500))]
            facts += [withdraw(s, ("service_improvement",), occurred_at=at(-400))]
            facts += [withdraw(s, ("marketing",), occurred_at=at(-300))]
        elif i % 4 == 2:  # marketing past, service_improvement kept
            facts += [grant(s, both, policy_version="2.0", occurred_at=at(-100))]
            facts += [withdraw(s, both, occurred_at=at(-40))]
        else:  # erasable: only service_improvement, past
            si = ("service_improvement",)
            facts += [grant(s, si, policy_version="2.0", occurred_at=at(-500))]
            facts += [withdraw(s, si, occurred_at=at(-400))]
        if i % 5 == 0:  # a request due within the week keeps the subject's data
            facts += [
                fact("request.received", s, request_id=f"Q{i}", kind="erasure", occurred_at=at(-25))
            ]
        if i % 2 == 0:
            facts += [grant(f"expiring-{i}", occurred_at=at(-100), expires_at=at(1 + i % 5))]
    # Open requests received before the due ones and due long after the window: a page of
    # requests reads past them, chunk after chunk of its own length (`rows_after`).
    facts += [
        fact(
            "request.received",
            f"waiting-{i}",
            request_id=f"W{i}",
            kind="information",
            occurred_at=at(-60),
            due_at=at(100),
        )
        for i in range(5)
    ]
    outcomes = ledger.record([parse_fact(f) for f in facts])
    assert all(isinstance(o, Receipt) for o in outcomes), outcomes
    tenant = ledger.tenant("demo")
    assert tenant is not None
    views = Views(ledger)
    lists = ("requests", "expiring_consents", "past_retention", "erasable")
    try:
        views.refresh()
        whole = due_at(views, NOW, 7, tenant.policies)
        assert whole["next"] is None
        assert [len(whole[name]) for name in lists] == [3, 7, 18, 9]
        for chunk in (1, 2, 3, 1000):
            for limit in (1, 2, 3, 5, 8, 18, 19):
                with mock.patch.object(due, "ERASABLE_CHUNK", chunk):
                    pages: list[dict[str, Any]] = []
                    cursor = None
                    while True:
                        # Asked later each time: the pages answer for the first's instant.
                        later = NOW + timedelta(days=len(pages) * 40)
                        page = due_at(views, later, 7, tenant.policies, limit, cursor)
                        pages.append(page)
                        assert all(len(page[name]) <= limit for name in lists)
                        assert page["as_of"] == NOW.isoformat()
                        cursor = page["next"]
                        if cursor is None:
                            break
                        assert len(pages) <= 20, "the pages did not end"
                for name in lists:
                    assert [i for p in pages for i in p[name]] == whole[name], (name, limit, chunk)
                biggest = max(len(whole[name]) for name in lists)
                assert len(pages) == max(1, -(-biggest // limit)), (limit, chunk)
    finally:
        views.close()


def made_up(as_of: str, **lists: Any) -> str:
    """A due-list cursor as a page's `next` is made, every list at its end unless given."""
    return encode_cursor({"as_of": as_of, **dict.fromkeys(LISTS, "done"), **lists})


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        made_up("2025-06-01T12:00:00"),  # without an offset
        made_up("9999-12-31T23:59:59+00:00"),  # the window would overflow
        made_up("0001-01-01T00:00:00+05:00"),  # before the calendar's start in UTC
        made_up("2025-06-01T12:00:00+00:00", requests=["a", "b"]),  # a key one part short
    ],
)
def test_a_due_list_cursor_that_is_not_a_page_s_next_is_refused(
    ledger: ConsentLedger, cursor: str
) -> None:
    tenant = ledger.tenant("demo")
    assert tenant is not None
    views = Views(ledger)
    try:
        views.refresh()
        with pytest.raises(BadCursor):
            due_at(views, NOW, 7, tenant.policies, cursor=cursor)
    finally:
        views.close()


def test_a_chunk_of_subjects_purposes_is_read_through_the_index_by_subject(
    tmp_path: Path,
) -> None:
    """Read through the index of open intervals by tenant, each chunk of sids read all the
    tenant's open intervals: the due list of 100,000 subjects took 32 s instead of 4."""
    views = ConsentViews.open(tmp_path / "views.db")
    try:
        plan = views.rows(
            f"EXPLAIN QUERY PLAN {due.PURPOSES_OF_SUBJECTS.format('?,?')}", ("a", "b", "demo")
        )
    finally:
        views.close()
    assert [str(row[3]) for row in plan] == [
        "SEARCH view_intervals USING INDEX view_intervals_by_subject (sid=?)"
    ], plan
