"""Random streams of valid and invalid facts, replayed against the ledger and against a plain
reference model written independently of `ledger.consent` and `ledger.subject`
(tests/histories.py).

The model predicts each fact's outcome (receipt, duplicate, or the refusal code) and folds the
facts it accepted; the ledger must agree on every outcome and on every subject's consent
per purpose at many instants, whatever the batch boundaries.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger.application import ConsentLedger
from ledger.consent import entries_as_known, grants_in_force
from ledger.envelope import parse_fact
from ledger.errors import FactRejected
from ledger.receipt import Receipt
from ledger.settings import Settings
from ledger.subject import Subject
from tests.examples import examples
from tests.histories import (
    BASE,
    PURPOSES,
    SUBJECTS,
    Reference,
    hours,
    in_batches,
    init_ledger,
    operations,
)
from tests.kafka_support import kafka_settings

histories = {
    "ops": operations(),
    "cuts": st.lists(st.integers(min_value=1, max_value=6), min_size=30, max_size=30),
    "instants": st.lists(hours, min_size=8, max_size=8),
}


def _fact(event_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "tenant": "demo",
        "subject": "s0",
        "source": "prop",
        "type": kind,
        "occurred_at": BASE.isoformat(),
        **fields,
    }


def _grant(event_id: str) -> dict[str, Any]:
    return _fact(
        event_id,
        "consent.granted",
        policy_version="crmpro-1.0",
        purposes=["marketing"],
        third_party_transfer=False,
        cross_border_transfer=False,
    )


# Found by a deeper search (3,000 examples): voiding a withdrawal whose purpose a later
# withdrawal at the same instant withdrew again. Voiding withdraws nothing, so it is accepted;
# the reference had refused it as if the void withdrew the purpose a second time.
VOID_OF_A_WITHDRAWAL_WITHDRAWN_AGAIN = [
    _grant("e0"),
    _fact("e1", "consent.withdrawn", purposes=["*"]),
    _grant("e2"),
    _fact("e3", "consent.withdrawn", purposes=["marketing"]),
    _fact("e4", "consent.corrected", corrects="e1", reason="recorded in error", void=True),
]


# Found by a deeper search (3,000 examples): a voided grant's expiry corrected, then its time.
# A correction is checked against the fact as corrected so far, voided or not (the trail shows
# every correction); the ledger had checked a voided one's against the fact as recorded, and
# refused the second as expiring before its grant.
def _correction_of_e0(event_id: str, field: str, hours: int) -> dict[str, Any]:
    at = (BASE + timedelta(hours=hours)).isoformat()
    return _fact(event_id, "consent.corrected", corrects="e0", reason=field, changes={field: at})


CORRECTIONS_OF_A_VOIDED_GRANT = [
    {**_grant("e0"), "expires_at": (BASE + timedelta(hours=1)).isoformat()},
    _fact("e1", "consent.corrected", corrects="e0", reason="recorded in error", void=True),
    _correction_of_e0("e2", "expires_at", 2),
    _correction_of_e0("e3", "occurred_at", 1),
]


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**histories)
@example(ops=VOID_OF_A_WITHDRAWAL_WITHDRAWN_AGAIN, cuts=[1] * 30, instants=[0, 1] * 4)
@example(ops=CORRECTIONS_OF_A_VOIDED_GRANT, cuts=[1] * 30, instants=[0, 1] * 4)
def test_ledger_agrees_with_reference(
    ops: list[dict[str, Any]], cuts: list[int], instants: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        agrees_with_reference(Settings(data_dir=Path(tmp)), ops, cuts, instants)


@pytest.mark.kafka
@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**histories)
@example(ops=VOID_OF_A_WITHDRAWAL_WITHDRAWN_AGAIN, cuts=[1] * 30, instants=[0, 1] * 4)
def test_kafka_ledger_agrees_with_reference(
    kafka_bootstrap: str, ops: list[dict[str, Any]], cuts: list[int], instants: list[int]
) -> None:
    """The same rules on the Kafka log (fewer examples: each one is a fresh set of topics)."""
    with tempfile.TemporaryDirectory() as tmp:
        agrees_with_reference(kafka_settings(Path(tmp), kafka_bootstrap), ops, cuts, instants)


def agrees_with_reference(
    ledger_settings: Settings, ops: list[dict[str, Any]], cuts: list[int], instants: list[int]
) -> None:
    reference = Reference()
    ledger = ConsentLedger(ledger_settings)
    try:
        init_ledger(ledger)
        for batch in in_batches(ops, cuts):
            outcomes = ledger.record([parse_fact(f) for f in batch])
            for f, outcome in zip(batch, outcomes, strict=True):
                expected = reference.apply(f)
                got = (
                    outcome.code.value
                    if isinstance(outcome, FactRejected)
                    else "duplicate"
                    if outcome.duplicate
                    else "accepted"
                )
                assert got == expected, (f, got, expected)
                assert isinstance(outcome, Receipt) or expected not in ("accepted", "duplicate")
        for subject in SUBJECTS:
            aggregate = ledger.subject("demo", ledger.sid("demo", subject))
            if aggregate is not None:
                in_force_agrees_with_fold(aggregate, instants)
            for h in instants:
                t = BASE + timedelta(hours=h)
                states = aggregate.consent_at(t) if aggregate else {}
                for purpose in PURPOSES:
                    got = states[purpose].state if purpose in states else "none"
                    assert got == reference.state(subject, purpose, t), (subject, purpose, h)
                    if got == "granted":
                        version = reference.version(subject, purpose, t)
                        assert states[purpose].policy_version == version, (subject, purpose, h)
    finally:
        ledger.close()


def in_force_agrees_with_fold(aggregate: Subject, instants: list[int]) -> None:
    """What the subject keeps to check its rules (its entries as corrected, the grants in
    force after its last fact) is what folding its whole history gives: its entries as
    known, and the grants in force at each instant asked, at each of its facts' own, and
    long after them all."""
    known = entries_as_known(aggregate.entries, aggregate.corrections)
    assert aggregate.known_entries() == known
    ats = [BASE + timedelta(hours=h) for h in instants]
    for t in [*ats, *(e.occurred_at for e in known), BASE + timedelta(days=3650)]:
        assert aggregate.grants_in_force(t) == grants_in_force(known, t), t
