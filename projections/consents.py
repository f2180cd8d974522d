"""Consent per purpose of one subject at an instant, as known at another."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ledger.application import ConsentLedger
from ledger.consent import state_of


def subject_consents(
    ledger: ConsentLedger,
    tenant: str,
    sid: UUID,
    as_of: datetime | None = None,
    known_at: datetime | None = None,
) -> dict[str, Any] | None:
    subject = ledger.subject(tenant, sid)
    if subject is None:
        return None
    now = datetime.now(UTC)
    at = as_of or now
    states = subject.consent_at(at, known_at)
    tenant_agg = ledger.tenant(tenant, shared=True)  # read only: no copy of the catalogue
    for policy in tenant_agg.policies.values() if tenant_agg else ():
        for purpose in policy.purposes:
            states.setdefault(purpose, state_of(purpose, None, at))
    erased = (
        subject.erasure_recorded_at is not None
        and subject.erased_at is not None
        and subject.erased_at <= at
        and (known_at is None or subject.erasure_recorded_at <= known_at)
    )
    return {
        "sid": sid.hex,
        "as_of": at.isoformat(),
        "known_at": (known_at or now).isoformat(),
        "erased": erased,
        "purposes": [states[p].as_dict() for p in sorted(states)],
    }
