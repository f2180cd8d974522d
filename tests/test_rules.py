"""Every rule refuses with its own code and records nothing; allowed facts are recorded."""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest

from ledger.application import ConsentLedger
from ledger.chained import ChainedAggregate
from ledger.envelope import Fact, Received, parse_fact
from ledger.errors import Code, FactRejected
from ledger.policy import SEED_POLICY_VERSION
from ledger.receipt import Receipt
from ledger.settings import Settings
from ledger.subject import Subject
from projections.trail import subject_trail
from tests.facts import closed, erase, fact, grant, policy, request, withdraw


@pytest.fixture
def ledger(backend_ledger: ConsentLedger) -> ConsentLedger:
    """Every rule, on the embedded log and on the Kafka log."""
    return backend_ledger


def record(ledger: ConsentLedger, *facts: dict[str, Any]) -> list[Receipt | FactRejected]:
    return ledger.record([parse_fact(f) for f in facts])


def accepted(ledger: ConsentLedger, *facts: dict[str, Any]) -> list[Receipt]:
    outcomes = record(ledger, *facts)
    for outcome in outcomes:
        assert isinstance(outcome, Receipt), outcome
    return outcomes  # type: ignore[return-value]


def assert_refused(ledger: ConsentLedger, bad: dict[str, Any], code: Code) -> FactRejected:
    before = ledger.ledger_recorder.head()
    indexed = ledger.ledger_recorder.find_facts(bad["tenant"], [bad["event_id"]])
    [outcome] = record(ledger, bad)
    assert isinstance(outcome, FactRejected), outcome
    assert outcome.code is code
    assert ledger.ledger_recorder.head() == before, "a refused fact changed the log"
    assert ledger.ledger_recorder.find_facts(bad["tenant"], [bad["event_id"]]) == indexed
    return outcome


def test_a_policy_carries_no_evidence(ledger: ConsentLedger) -> None:
    """Evidence is personal data, sealed by its subject's key, and a policy has no subject.
    Refused as the fact is read, as the published schema says; and by the tenant, for a
    fact that reached it without being read (the domain's own invariant)."""
    for evidence in ({}, {"ip": "203.0.113.7"}):
        with pytest.raises(FactRejected) as refused:
            parse_fact(policy("v-ev", evidence=evidence))
        assert (refused.value.code, refused.value.field) == (Code.UNKNOWN_FIELD, "evidence")
    unread = parse_fact(policy("v-ev"))._replace(evidence={"ip": "203.0.113.7"})
    before = ledger.ledger_recorder.head()
    [outcome] = ledger.record([unread])
    assert isinstance(outcome, FactRejected) and outcome.code is Code.UNKNOWN_FIELD, outcome
    assert ledger.ledger_recorder.head() == before
    assert parse_fact(policy("v-ev", evidence=None)).evidence is None


def test_unknown_tenant(ledger: ConsentLedger) -> None:
    assert_refused(ledger, grant(tenant="nobody"), Code.UNKNOWN_TENANT)


def test_unknown_policy_version(ledger: ConsentLedger) -> None:
    assert_refused(ledger, grant(policy_version="9.9"), Code.UNKNOWN_POLICY_VERSION)


def test_unknown_purpose(ledger: ConsentLedger) -> None:
    assert_refused(ledger, grant(purposes=("marketing", "lottery")), Code.UNKNOWN_PURPOSE)


def test_unknown_category(ledger: ConsentLedger) -> None:
    assert_refused(ledger, grant(categories=["biometrics"]), Code.UNKNOWN_CATEGORY)
    # A category of the policy that the granted purposes do not cover is refused too.
    assert_refused(
        ledger, grant(purposes=("marketing",), categories=["cookies"]), Code.UNKNOWN_CATEGORY
    )


def test_policy_not_yet_in_effect(ledger: ConsentLedger) -> None:
    assert_refused(
        ledger, grant(occurred_at="2019-12-31T23:59:59+05:00"), Code.POLICY_NOT_IN_EFFECT
    )


def policy_v2(purpose: str, retention_days: int) -> dict[str, Any]:
    """Version 2.0 of the demo tenant's policy, in effect from 2026, naming one purpose."""
    return fact(
        "policy.published",
        None,
        policy_version="2.0",
        effective_at="2026-01-01T00:00:00+05:00",
        language="uz",
        text="v2",
        operator={"name": "MEGABITE-CRM LLC", "tin": "309519699"},
        purposes={
            purpose: {
                "legal_basis": "consent",
                "categories": ["email"],
                "retention_days": retention_days,
            }
        },
    )


def test_policy_published_later_takes_effect_at_its_instant(ledger: ConsentLedger) -> None:
    policy = policy_v2("marketing", 365)
    accepted(ledger, policy)
    assert_refused(
        ledger,
        grant(policy_version="2.0", occurred_at="2025-12-31T23:00:00+05:00"),
        Code.POLICY_NOT_IN_EFFECT,
    )
    accepted(ledger, grant(policy_version="2.0", occurred_at="2026-01-02T00:00:00+05:00"))
    assert_refused(ledger, dict(policy, event_id="again", text="other"), Code.POLICY_VERSION_EXISTS)


def test_a_tenant_names_the_purposes_of_every_policy_version(ledger: ConsentLedger) -> None:
    """What the compliance queries refuse a purpose by: named by no version, never granted."""
    before = ledger.tenant("demo")
    assert before is not None
    assert before.names_purpose("marketing") and not before.names_purpose("surveys")
    accepted(ledger, policy_v2("surveys", 90))
    after = ledger.tenant("demo")
    assert after is not None
    assert after.names_purpose("surveys") and after.names_purpose("marketing")
    assert not after.names_purpose("Marketing")


def test_withdrawal_of_purpose_not_in_force(ledger: ConsentLedger) -> None:
    accepted(ledger, grant(purposes=("marketing",), occurred_at="2025-03-01T10:00:00+05:00"))
    assert_refused(ledger, withdraw(purposes=("support",)), Code.PURPOSE_NOT_IN_FORCE)
    # Before the grant occurred, marketing was not in force either.
    assert_refused(
        ledger, withdraw(occurred_at="2025-02-01T10:00:00+05:00"), Code.PURPOSE_NOT_IN_FORCE
    )
    accepted(ledger, withdraw(occurred_at="2025-03-02T10:00:00+05:00"))
    assert_refused(
        ledger,
        withdraw(purposes=("*",), occurred_at="2025-03-03T10:00:00+05:00"),
        Code.PURPOSE_NOT_IN_FORCE,
    )


def test_withdrawal_of_expired_purpose_is_refused(ledger: ConsentLedger) -> None:
    accepted(ledger, grant(expires_at="2025-03-05T10:00:00+05:00"))
    assert_refused(
        ledger, withdraw(occurred_at="2025-03-06T10:00:00+05:00"), Code.PURPOSE_NOT_IN_FORCE
    )
    assert_refused(
        ledger,
        grant(subject="c2", expires_at="2025-03-01T09:00:00+05:00"),
        Code.EXPIRY_BEFORE_GRANT,
    )


def test_correction_of_missing_fact(ledger: ConsentLedger) -> None:
    accepted(ledger, grant())
    assert_refused(
        ledger,
        fact("consent.corrected", corrects="no-such-fact", reason="typo", void=True),
        Code.CORRECTION_TARGET_UNKNOWN,
    )


def test_correction_of_another_subjects_fact(ledger: ConsentLedger) -> None:
    accepted(ledger, grant(subject="contact-1", event_id="g-1"), grant(subject="contact-2"))
    assert_refused(
        ledger,
        fact("consent.corrected", subject="contact-2", corrects="g-1", reason="x", void=True),
        Code.CORRECTION_TARGET_OTHER_SUBJECT,
    )


def test_correction_of_a_non_consent_fact(ledger: ConsentLedger) -> None:
    accepted(
        ledger,
        grant(),
        fact("request.received", request_id="R1", kind="information", event_id="r-1"),
    )
    assert_refused(
        ledger,
        fact("consent.corrected", corrects="r-1", reason="x", void=True),
        Code.CORRECTION_TARGET_NOT_CONSENT,
    )


def test_transfer_on_explicit_consent_needs_consent_in_force(ledger: ConsentLedger) -> None:
    transfer: dict[str, Any] = dict(
        recipient={"name": "Click LLC", "country": "UZ"},
        categories=["email"],
        ground="explicit_consent",
    )
    accepted(ledger, grant(third_party_transfer=False))
    assert_refused(ledger, fact("transfer.recorded", **transfer), Code.TRANSFER_WITHOUT_CONSENT)
    accepted(
        ledger,
        grant(subject="c2", third_party_transfer=True, occurred_at="2025-03-01T10:00:00+05:00"),
    )
    # Before the grant occurred there was no consent: checked at the transfer's own instant.
    assert_refused(
        ledger,
        fact(
            "transfer.recorded", subject="c2", occurred_at="2025-02-01T10:00:00+05:00", **transfer
        ),
        Code.TRANSFER_WITHOUT_CONSENT,
    )
    accepted(
        ledger,
        fact(
            "transfer.recorded", subject="c2", occurred_at="2025-03-02T10:00:00+05:00", **transfer
        ),
    )
    # Cross-border needs cross-border consent; other grounds need none.
    assert_refused(
        ledger,
        fact("transfer.recorded", subject="c2", cross_border=True, **transfer),
        Code.TRANSFER_WITHOUT_CONSENT,
    )
    accepted(
        ledger,
        fact(
            "transfer.recorded",
            subject="c3",
            recipient={"name": "Tax", "country": "UZ"},
            categories=["full_name"],
            ground="legal_requirement",
        ),
    )


def test_grant_after_erasure_is_refused_withdrawal_and_objection_kept(
    ledger: ConsentLedger,
) -> None:
    accepted(
        ledger,
        grant(purposes=("marketing", "support")),
        erase(occurred_at="2025-03-05T10:00:00+05:00"),
    )
    assert_refused(ledger, grant(occurred_at="2025-03-06T10:00:00+05:00"), Code.SUBJECT_ERASED)
    # Even a late grant (occurred before the erasure) cannot bring the data back.
    assert_refused(ledger, grant(occurred_at="2025-03-02T10:00:00+05:00"), Code.SUBJECT_ERASED)
    assert_refused(
        ledger, fact("subject.rectified", personal_data={"email": "x@y.uz"}), Code.SUBJECT_ERASED
    )
    [w] = accepted(
        ledger,
        withdraw(
            occurred_at="2025-03-06T10:00:00+05:00", evidence={"ip": "10.1.1.1"}, reason="stop"
        ),
    )
    [o] = accepted(
        ledger,
        fact(
            "request.received",
            request_id="OBJ-1",
            kind="objection",
            occurred_at="2025-03-07T10:00:00+05:00",
        ),
    )
    assert w.sid == o.sid


def test_occurred_at_more_than_five_minutes_ahead(ledger: ConsentLedger) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    late = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    assert_refused(ledger, grant(occurred_at=late), Code.OCCURRED_IN_FUTURE)
    accepted(ledger, grant(occurred_at=soon))


def test_a_correction_may_move_a_fact_no_further_ahead_than_a_fact_may_be(
    ledger: ConsentLedger,
) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    late = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    accepted(ledger, grant(event_id="g-ahead"), withdraw(event_id="w-ahead"))
    for moved in ("g-ahead", "w-ahead"):
        to_late = {"occurred_at": late}
        refused = fact("consent.corrected", corrects=moved, reason="x", changes=to_late)
        assert_refused(ledger, refused, Code.OCCURRED_IN_FUTURE)
    to_soon = {"occurred_at": soon}
    accepted(ledger, fact("consent.corrected", corrects="w-ahead", reason="x", changes=to_soon))


def test_a_withdrawal_as_corrected_withdraws_only_what_was_in_force(
    ledger: ConsentLedger,
) -> None:
    """Each was recorded: a withdrawal corrected to a purpose no policy names was then
    answered as that purpose withdrawn, and one moved before its grant withdrew nothing."""
    march = "2025-03-01T10:00:00+05:00"
    accepted(
        ledger,
        grant(event_id="g-w", occurred_at=march, purposes=("marketing", "support")),
        withdraw(event_id="w-w", occurred_at="2025-04-01T10:00:00+05:00", purposes=("marketing",)),
    )

    def corrected(event_id: str, **changes: Any) -> dict[str, Any]:
        return fact(
            "consent.corrected", event_id=event_id, corrects="w-w", reason="x", changes=changes
        )

    for refused in (
        corrected("x-1", occurred_at="2025-02-01T10:00:00+05:00"),  # before the grant
        corrected("x-2", purposes=["lottery"]),  # no policy names it
        corrected("x-3", purposes=["service_improvement"]),  # never granted
        corrected("x-4", purposes=["support"], occurred_at="2025-02-01T10:00:00+05:00"),
    ):
        assert_refused(ledger, refused, Code.PURPOSE_NOT_IN_FORCE)
    # Its own effect is left out: moved later, what it withdrew was still in force then.
    accepted(ledger, corrected("x-5", occurred_at="2025-05-01T10:00:00+05:00"))
    accepted(ledger, corrected("x-6", purposes=["marketing", "support"]))
    states = ledger.subject("demo", ledger.sid("demo", "contact-1")).consent_at(  # type: ignore[union-attr]
        datetime(2025, 6, 1, tzinfo=UTC)
    )
    assert {p: states[p].state for p in ("marketing", "support")} == {
        "marketing": "withdrawn",
        "support": "withdrawn",
    }
    # A voided withdrawal withdraws nothing, wherever it is moved.
    accepted(ledger, fact("consent.corrected", corrects="w-w", reason="x", void=True))
    accepted(ledger, corrected("x-7", occurred_at="2025-02-01T10:00:00+05:00"))


def test_same_event_id_same_content_returns_first_receipt(ledger: ConsentLedger) -> None:
    first = grant(event_id="idem-1")
    [receipt] = accepted(ledger, first)
    head = ledger.ledger_recorder.head()
    [again] = accepted(ledger, dict(first))
    assert again.duplicate and not receipt.duplicate
    assert (again.position, again.hash, again.recorded_at, again.sid) == (
        receipt.position,
        receipt.hash,
        receipt.recorded_at,
        receipt.sid,
    )
    assert ledger.ledger_recorder.head() == head


def test_same_event_id_other_content_conflicts(ledger: ConsentLedger) -> None:
    accepted(ledger, grant(event_id="idem-2"))
    assert_refused(ledger, grant(event_id="idem-2", purposes=("support",)), Code.EVENT_ID_CONFLICT)
    # The same id under another tenant is another fact.
    ledger.create_tenant("acme")
    assert_refused(ledger, grant(event_id="idem-2", tenant="acme"), Code.UNKNOWN_POLICY_VERSION)


def test_duplicates_inside_one_batch(ledger: ConsentLedger) -> None:
    one = grant(event_id="b-1")
    outcomes = record(ledger, one, dict(one), dict(one, purposes=["support"]))
    assert isinstance(outcomes[0], Receipt) and isinstance(outcomes[1], Receipt)
    assert outcomes[1].duplicate and outcomes[1].position == outcomes[0].position
    assert isinstance(outcomes[2], FactRejected) and outcomes[2].code is Code.EVENT_ID_CONFLICT


def test_late_fact_is_checked_at_its_own_instant(ledger: ConsentLedger) -> None:
    accepted(
        ledger,
        grant(occurred_at="2025-03-10T10:00:00+05:00"),
        withdraw(occurred_at="2025-03-20T10:00:00+05:00"),
    )
    # Recorded later, occurred in between: marketing was in force then.
    accepted(
        ledger,
        fact(
            "transfer.recorded",
            occurred_at="2025-03-15T10:00:00+05:00",
            recipient={"name": "Partner", "country": "UZ"},
            categories=["email"],
            ground="contract_performance",
        ),
    )
    # A late withdrawal inside the granted window is allowed and changes the past.
    accepted(ledger, withdraw(occurred_at="2025-03-12T10:00:00+05:00"))
    sid = ledger.sid("demo", "contact-1")
    subject = ledger.subject("demo", sid)
    assert subject is not None
    at = datetime.fromisoformat("2025-03-13T10:00:00+05:00")
    assert subject.consent_at(at)["marketing"].state == "withdrawn"


def test_withdrawals_sent_after_all_their_grants_are_checked_at_their_own_instants(
    ledger: ConsentLedger,
) -> None:
    """A history migrated as all its grants, then its withdrawals, then corrections: each
    is late, checked against the purpose's timeline as the subject keeps it from the first
    late fact on (slotted in, moved by corrections), as a fold of the history would."""

    def day(d: int, hour: int = 10) -> str:
        return f"2025-03-{d:02d}T{hour:02d}:00:00+05:00"

    def corrected(target: str, **fields: Any) -> dict[str, Any]:
        return fact("consent.corrected", corrects=target, reason="migrated wrong", **fields)

    accepted(ledger, *(grant(event_id=f"g{d}", occurred_at=day(d)) for d in (1, 3, 5, 7)))
    accepted(ledger, corrected("g7", changes={"expires_at": day(9)}))
    accepted(
        ledger,
        withdraw(event_id="w6", occurred_at=day(6)),  # the first late fact
        withdraw(event_id="w2", occurred_at=day(2)),  # before it in valid time
    )
    for d in (2, 6):  # withdrawn an hour before
        assert_refused(ledger, withdraw(occurred_at=day(d, 11)), Code.PURPOSE_NOT_IN_FORCE)
    accepted(ledger, withdraw(event_id="w4", occurred_at=day(4)))
    assert_refused(ledger, withdraw(occurred_at=day(4, 11)), Code.PURPOSE_NOT_IN_FORCE)
    # The grant of the 5th moved past the withdrawal of the 6th: marketing is withdrawn
    # from the 4th to the 6th at noon, and in force after.
    accepted(ledger, corrected("g5", changes={"occurred_at": day(6, 12)}))
    assert_refused(ledger, withdraw(occurred_at=day(5, 11)), Code.PURPOSE_NOT_IN_FORCE)
    accepted(ledger, withdraw(event_id="w6-13", occurred_at=day(6, 13)))
    # A withdrawal's correction is checked without itself: moved two hours later, what it
    # withdrew (the grant of the 3rd) was in force then.
    accepted(ledger, corrected("w4", changes={"occurred_at": day(4, 12)}))
    # The withdrawal of the 2nd moved after the grant of the 3rd: in force on the 2nd again.
    accepted(ledger, corrected("w2", changes={"occurred_at": day(3, 12)}))
    accepted(ledger, withdraw(event_id="w2-11", occurred_at=day(2, 11)))
    assert_refused(ledger, withdraw(occurred_at=day(3, 13)), Code.PURPOSE_NOT_IN_FORCE)
    # The last grant voided: after the last fact, the withdrawal of the 6th decides.
    accepted(ledger, corrected("g7", void=True))
    assert_refused(ledger, withdraw(occurred_at=day(8)), Code.PURPOSE_NOT_IN_FORCE)


def test_requests_open_and_close_once(ledger: ConsentLedger) -> None:
    accepted(ledger, fact("request.received", request_id="R-1", kind="erasure"))
    assert_refused(
        ledger, fact("request.received", request_id="R-1", kind="erasure"), Code.REQUEST_EXISTS
    )
    assert_refused(
        ledger, fact("request.closed", request_id="R-2", outcome="fulfilled"), Code.UNKNOWN_REQUEST
    )
    accepted(
        ledger,
        fact("request.closed", request_id="R-1", outcome="refused", reason="identity not proven"),
    )
    assert_refused(
        ledger,
        fact("request.closed", request_id="R-1", outcome="fulfilled"),
        Code.REQUEST_ALREADY_CLOSED,
    )
    # A complaint names the request it is about, if any: one received, closed or not.
    assert_refused(
        ledger,
        fact("complaint.lodged", authority="Agency", reference="C-1", request_id="R-2"),
        Code.UNKNOWN_REQUEST,
    )
    accepted(
        ledger, fact("complaint.lodged", authority="Agency", reference="C-1", request_id="R-1")
    )
    accepted(ledger, fact("complaint.lodged", authority="Agency", reference="C-2"))


def test_a_request_is_due_after_it_is_received_and_closed_no_earlier(
    ledger: ConsentLedger,
) -> None:
    """Both were recorded: a request due a month before it came was overdue at once, and a
    closing dated a month before the request showed it answered before it was asked."""
    received = "2025-03-01T10:00:00+05:00"
    assert_refused(
        ledger,
        request("contact-1", "R-due", "information", received, due_at="2025-02-01T10:00:00Z"),
        Code.REQUEST_DUE_BEFORE_RECEIVED,
    )
    # Due at the very instant it came: overdue from then, as the due list says.
    accepted(ledger, request("contact-1", "R-due", "information", received, due_at=received))
    assert_refused(
        ledger,
        closed("contact-1", "R-due", "fulfilled", "2025-02-01T10:00:00+05:00"),
        Code.REQUEST_CLOSED_BEFORE_RECEIVED,
    )
    accepted(ledger, closed("contact-1", "R-due", "fulfilled", received))  # at once: allowed


def test_a_refused_first_fact_creates_no_subject(ledger: ConsentLedger) -> None:
    assert_refused(ledger, grant(subject="never-seen", purposes=("lottery",)), Code.UNKNOWN_PURPOSE)
    assert ledger.subject("demo", ledger.sid("demo", "never-seen")) is None


@pytest.mark.parametrize(
    "changes,code",
    [
        ({"purposes": ["lottery"]}, Code.UNKNOWN_PURPOSE),
        ({"policy_version": "nope"}, Code.UNKNOWN_POLICY_VERSION),
        ({"occurred_at": "2019-01-01T00:00:00+05:00"}, Code.POLICY_NOT_IN_EFFECT),
        ({"expires_at": "2025-01-01T00:00:00+05:00"}, Code.EXPIRY_BEFORE_GRANT),
        # Moved to 2999, a grant was recorded as in force from then.
        ({"occurred_at": "2999-01-01T00:00:00Z"}, Code.OCCURRED_IN_FUTURE),
    ],
)
def test_amendments_keep_the_grant_rules(
    ledger: ConsentLedger, changes: dict[str, Any], code: Code
) -> None:
    accepted(ledger, grant(event_id="g-amend"))
    refused = assert_refused(
        ledger, fact("consent.corrected", corrects="g-amend", reason="fix", changes=changes), code
    )
    if code is Code.OCCURRED_IN_FUTURE:  # the one member at fault, named by its path
        assert refused.field == "changes.occurred_at"


def test_seed_policy_version_is_the_demo_default(ledger: ConsentLedger) -> None:
    tenant = ledger.tenant("demo")
    assert tenant is not None
    policy = tenant.policies[SEED_POLICY_VERSION]
    assert set(policy.purposes) == {
        "service_provision",
        "contract",
        "support",
        "service_improvement",
        "marketing",
        "legal_compliance",
    }
    assert policy.purposes["marketing"].legal_basis == "consent"
    assert policy.operator_tin == "309519699"


def test_a_grant_records_what_a_consent_document_must_say(ledger: ConsentLedger) -> None:
    """Operator (name, TIN), purposes, categories, duration, transfer and publication flags and
    the policy version in clear; the person's full name sealed."""
    accepted(
        ledger,
        grant(
            "doc-1",
            ("marketing",),
            expires_at="2026-03-01T10:00:00+05:00",
            cross_border_transfer=True,
            publication=True,
            personal_data={"full_name": "Yusupova Malika"},
        ),
    )
    sid = ledger.sid("demo", "doc-1")
    granted = list(ledger.events.get(sid))[-1]
    state = vars(granted)
    assert state["operator"] == {"name": "MEGABITE-CRM LLC", "tin": "309519699"}
    assert state["purposes"] == ("marketing",)
    assert state["categories"] == ("full_name", "email", "phone")
    assert state["expires_at"].isoformat() == "2026-03-01T10:00:00+05:00"
    assert (
        state["third_party_transfer"],
        state["cross_border_transfer"],
        state["publication"],
    ) == (
        False,
        True,
        True,
    )
    assert state["policy_version"] == SEED_POLICY_VERSION
    assert "Yusupova" not in str(state)
    # The subject's first fact seals the publisher's reference with the fact's personal data.
    assert ledger.open_pii(sid, state["pii"]) == {
        "subject": "doc-1",
        "personal_data": {"full_name": "Yusupova Malika"},
    }


FIRST_FACTS: dict[str, dict[str, Any]] = {
    "consent.granted": grant(subject="first", evidence={"ip": "10.0.0.1"}),
    "subject.rectified": fact("subject.rectified", "first", personal_data={"email": "x@y.uz"}),
    "subject.erased": erase("first"),
    "transfer.recorded": fact(
        "transfer.recorded",
        "first",
        recipient={"name": "Tax", "country": "UZ"},
        categories=["full_name"],
        ground="legal_requirement",
    ),
    "request.received": fact("request.received", "first", request_id="R1", kind="information"),
    "complaint.lodged": fact(
        "complaint.lodged", "first", authority="Personal data inspection", reference="C-1"
    ),
}


@pytest.mark.parametrize("type_", sorted(FIRST_FACTS))
def test_a_new_subjects_first_fact_registers_it_in_one_event(
    ledger: ConsentLedger, type_: str
) -> None:
    """One event both registers the subject and states the fact; the reference is sealed in
    it, so the trail still names the person while the key exists."""
    [receipt] = accepted(ledger, FIRST_FACTS[type_])
    sid = ledger.sid("demo", "first")
    [event] = ledger.events.get(sid)
    assert isinstance(event, Subject.Registered) and isinstance(event, ChainedAggregate.Fact)
    assert event.fact_type == type_
    assert event.originator_version == 1 and event.prev_hash == ""
    trail = subject_trail(ledger, "demo", sid)
    assert trail is not None and [f["event_id"] for f in trail["facts"]] == [receipt.event_id]
    assert trail["subject"] == (None if type_ == "subject.erased" else "first")


# Each fact whose rule needs a fact before it, and how it is refused as a subject's first.
_REFUSAL = {
    "consent.withdrawn": Code.PURPOSE_NOT_IN_FORCE,
    "consent.corrected": Code.CORRECTION_TARGET_UNKNOWN,
    "request.closed": Code.UNKNOWN_REQUEST,
}


@pytest.mark.parametrize(
    "first",
    [
        withdraw(subject="never-seen"),
        fact("consent.corrected", "never-seen", corrects="g-x", reason="x", void=True),
        fact("request.closed", "never-seen", request_id="R9", outcome="fulfilled"),
    ],
    ids=["withdrawal", "correction", "request-closed"],
)
def test_a_fact_that_needs_one_before_it_registers_nobody(
    ledger: ConsentLedger, first: dict[str, Any]
) -> None:
    assert_refused(ledger, first, _REFUSAL[first["type"]])
    assert list(ledger.events.get(ledger.sid("demo", "never-seen"))) == []


def test_each_receipt_names_its_own_fact_in_the_log(ledger: ConsentLedger) -> None:
    """A batch's receipts, one per fact, each name where that fact is: its position (in Kafka
    mode its partition and offset) and its hash, as the log's own index has them."""
    facts = [grant("pos-a"), grant("pos-b"), withdraw("pos-a"), grant("pos-c"), grant("pos-b")]
    receipts = accepted(ledger, *facts)
    index = ledger.ledger_recorder.find_facts("demo", [f["event_id"] for f in facts])
    where = ledger.ledger_recorder.log_coordinates([row.position for row in index.values()])
    for f, receipt in zip(facts, receipts, strict=True):
        row = index[f["event_id"]]
        assert receipt.hash == row.hash
        assert receipt.sid == row.originator_id.hex == ledger.sid("demo", f["subject"]).hex
        if where:  # Kafka: the receipt names the ledger topic, not the writer's replica
            assert (receipt.partition, receipt.position) == where[row.position]
        else:
            assert receipt.position == row.position
    assert len({(r.partition, r.position) for r in receipts}) == len(facts)


def test_received_facts_are_parsed_where_recorded_each_refusal_in_its_place(
    ledger: ConsentLedger,
) -> None:
    """What the HTTP service's writer records: facts sent as the bytes received, parsed by
    the writer. One that does not parse is refused in its own place, with the code parsing
    it alone gives, and the others are recorded as if it had not been sent."""
    good = grant("rcv-subject", event_id="rcv-1")
    later = withdraw("rcv-subject", event_id="rcv-2", occurred_at="2025-03-01T11:00:00+05:00")
    items: list[Fact | Received] = [
        Received(orjson.dumps(good), None),
        Received(b"{not json", "demo"),
        parse_fact(later),
        Received(orjson.dumps({**grant("rcv-other"), "tenant": "other"}), "demo"),
    ]
    outcomes = ledger.record_received(items)
    assert [type(o) for o in outcomes] == [Receipt, FactRejected, Receipt, FactRejected]
    assert isinstance(outcomes[1], FactRejected) and outcomes[1].code is Code.INVALID_JSON
    assert isinstance(outcomes[3], FactRejected) and outcomes[3].code is Code.TENANT_MISMATCH
    assert isinstance(outcomes[0], Receipt) and outcomes[0].sid is not None
    trail = subject_trail(ledger, "demo", UUID(hex=outcomes[0].sid))
    assert trail is not None and [f["event_id"] for f in trail["facts"]] == ["rcv-1", "rcv-2"]
    assert ledger.record_received([Received(orjson.dumps(good), "demo")]) == [
        outcomes[0]._replace(duplicate=True)
    ]


def test_a_reader_s_copy_of_a_subject_keeps_what_it_was_while_the_writer_goes_on(
    ledger: ConsentLedger,
) -> None:
    """`ConsentLedger.subject` hands out a copy: the cached subject is changed by the next
    batch before it commits. The copy owns every mutable container (a new attribute of one
    fails here until the copy takes it), so nothing the writer does next reaches it: not a
    new entry, a correction moving an entry in its purposes' timelines, a request closed in
    place, a void, an erasure."""

    def moved(event_id: str, corrects: str, to: str) -> dict[str, Any]:
        return fact(
            "consent.corrected",
            "c-copy",
            event_id=event_id,
            corrects=corrects,
            reason="moved",
            changes={"occurred_at": to},
        )

    accepted(
        ledger,
        grant("c-copy", event_id="cg-1", occurred_at="2025-01-10T10:00:00+05:00"),
        grant("c-copy", event_id="cg-2", occurred_at="2025-01-12T10:00:00+05:00"),
        # Late, so the subject keeps each purpose's timeline; then its entries as known.
        withdraw("c-copy", event_id="cw-1", occurred_at="2025-01-11T10:00:00+05:00"),
        moved("cc-1", "cw-1", "2025-01-11T11:00:00+05:00"),
        request("c-copy", "rq-1", "information", "2025-01-13T10:00:00+05:00"),
    )
    sid = ledger.sid("demo", "c-copy")
    copied = ledger.subject("demo", sid)
    assert copied is not None
    assert copied._timelines is not None and copied._known is not None
    cached = ledger.load_subjects([sid])[sid]
    for name, value in vars(cached).items():
        if isinstance(value, dict | list | set | bytearray):
            assert vars(copied)[name] is not value and vars(copied)[name] == value, name
    before = {name: copy.deepcopy(value) for name, value in vars(copied).items()}
    accepted(
        ledger,
        grant("c-copy", event_id="cg-3", occurred_at="2025-01-14T10:00:00+05:00"),
        moved("cc-2", "cg-2", "2025-01-09T10:00:00+05:00"),
        fact(
            "consent.corrected", "c-copy", event_id="cc-3", corrects="cg-1", reason="x", void=True
        ),
        closed("c-copy", "rq-1", "fulfilled", "2025-01-15T10:00:00+05:00"),
        erase("c-copy", event_id="ce-1", occurred_at="2025-01-16T10:00:00+05:00"),
    )
    assert ledger.load_subjects([sid])[sid].erased
    assert vars(copied) == before


def test_the_writer_keeps_in_memory_only_as_many_subjects_facts_as_its_bound(
    tmp_path: Path,
) -> None:
    """LEDGER_AGGREGATE_CACHE_FACTS bounds the facts of the subjects the writer keeps between
    batches (by their events), not only their number: past it the least recently written
    are dropped, and read back from the log, whole and right, when next written to."""
    settings = Settings(data_dir=tmp_path / "data", aggregate_cache_facts=50)
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()

        def history(subject: str, facts: int) -> list[dict[str, Any]]:
            start = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
            return [
                (grant if i % 2 == 0 else withdraw)(
                    subject,
                    event_id=f"{subject}-{i}",
                    occurred_at=(start + timedelta(hours=i)).isoformat(),
                )
                for i in range(facts)
            ]

        for subject in ("c-a", "c-b", "c-c"):
            accepted(ledger, *history(subject, 20))
        sids = {s: ledger.sid("demo", s) for s in ("c-a", "c-b", "c-c")}
        assert list(ledger._subjects) == [sids["c-b"], sids["c-c"]]  # 40 facts of 50
        assert ledger._cached_facts == 40
        # The first, dropped, is read back: its next withdrawal is checked against its
        # whole history (its last fact withdrew marketing, so this one is refused).
        assert_refused(
            ledger,
            withdraw("c-a", event_id="c-a-again", occurred_at="2025-01-08T10:00:00+05:00"),
            Code.PURPOSE_NOT_IN_FORCE,
        )
        accepted(ledger, grant("c-a", event_id="c-a-20", occurred_at="2025-01-08T10:00:00+05:00"))
        assert list(ledger._subjects) == [sids["c-c"], sids["c-a"]]
        assert ledger._cached_facts == 41
        # One subject larger than the bound alone is never kept.
        accepted(ledger, *history("c-long", 60))
        assert (
            sids["c-a"] in ledger._subjects and ledger.sid("demo", "c-long") not in ledger._subjects
        )
        # One kept, then grown past the bound by a batch: dropped, its facts no longer
        # counted, and read back whole when next written to.
        assert list(ledger._subjects) == [sids["c-c"], sids["c-a"]]
        accepted(ledger, *history("c-c", 52)[20:])
        assert list(ledger._subjects) == [sids["c-a"]]
        assert ledger._cached_facts == 21
        assert_refused(  # its last fact withdrew marketing
            ledger,
            withdraw("c-c", event_id="c-c-again", occurred_at="2025-01-09T10:00:00+05:00"),
            Code.PURPOSE_NOT_IN_FORCE,
        )
