"""Questions answered from the consent views: consent at an instant as known at another, who
had consent for a purpose, and which of a list of recipients did not and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger.consent import EXPIRED, GRANTED, NONE, WITHDRAWN, PurposeState, consent_at
from projections.consent_projection import correction_from_row, entry_from_row
from projections.store import ConsentViews, parse_utc, utc

FAR_FUTURE = "9999-12-31T23:59:59.999999+00:00"


def consents_at(
    views: ConsentViews, tenant: str, sid: str, at: datetime, known_at: datetime | None = None
) -> dict[str, PurposeState] | None:
    """Consent per purpose of one subject, or None if the tenant has no such subject."""
    rows = views.rows("SELECT tenant FROM view_subjects WHERE sid=?", (sid,))
    if not rows or rows[0][0] != tenant:
        return None
    entries = [
        entry_from_row(r) for r in views.rows("SELECT * FROM view_entries WHERE sid=?", (sid,))
    ]
    corrections = [
        correction_from_row(r)
        for r in views.rows("SELECT * FROM view_corrections WHERE sid=? ORDER BY seq", (sid,))
    ]
    return consent_at(entries, corrections, at, known_at)


def who_had_consent(
    views: ConsentViews,
    tenant: str,
    purpose: str,
    at: datetime,
    known_at: datetime | None = None,
    *,
    after: str = "",
    limit: int = 1000,
) -> list[str]:
    """Sids with `purpose` granted at `at` as known at `known_at`, in sid order, after `after`.

    Erased subjects are left out from their erasure on: their data can no longer be used.
    """
    t, k = utc(at), utc(known_at) if known_at else FAR_FUTURE
    rows = views.rows(
        "SELECT DISTINCT i.sid FROM view_intervals i JOIN view_subjects s ON s.sid = i.sid "
        "WHERE i.tenant=? AND i.purpose=? AND i.valid_from<=? "
        "AND (i.valid_to IS NULL OR i.valid_to>?) AND i.known_from<=? "
        "AND (i.known_to IS NULL OR i.known_to>?) AND i.sid>? "
        "AND NOT (s.erasure_recorded_at IS NOT NULL AND s.erasure_recorded_at<=? "
        "AND s.erased_at<=?) ORDER BY i.sid LIMIT ?",
        (tenant, purpose, t, t, k, k, after, k, t, limit),
    )
    return [r[0] for r in rows]


@dataclass(frozen=True)
class CheckResult:
    sid: str
    consent: bool
    reason: str  # granted, never_granted, withdrawn, expired, erased, unknown_subject
    since: datetime | None
    event_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "consent": self.consent,
            "reason": self.reason,
            "since": self.since.isoformat() if self.since else None,
            "event_id": self.event_id,
        }


def check_recipients(
    views: ConsentViews,
    tenant: str,
    purpose: str,
    at: datetime,
    sids: Sequence[str],
    known_at: datetime | None = None,
) -> list[CheckResult]:
    """For a campaign's recipients: who had consent for `purpose` at `at`, and why not."""
    subjects = {
        r["sid"]: r
        for r in views.rows_in("SELECT * FROM view_subjects WHERE sid IN ({})", list(sids))
    }
    entries: dict[str, list[Any]] = {}
    for r in views.rows_in("SELECT * FROM view_entries WHERE sid IN ({})", list(sids)):
        entries.setdefault(r["sid"], []).append(entry_from_row(r))
    corrections: dict[str, list[Any]] = {}
    for r in views.rows_in(
        "SELECT * FROM view_corrections WHERE sid IN ({}) ORDER BY seq", list(sids)
    ):
        corrections.setdefault(r["sid"], []).append(correction_from_row(r))
    k = known_at or datetime.now(UTC)
    out: list[CheckResult] = []
    for sid in sids:
        subject = subjects.get(sid)
        if subject is None or subject["tenant"] != tenant or subject["registered_at"] > utc(k):
            out.append(CheckResult(sid, False, "unknown_subject", None, None))
            continue
        erased_at = parse_utc(subject["erased_at"])
        erasure_known = parse_utc(subject["erasure_recorded_at"])
        if erased_at and erasure_known and erased_at <= at and erasure_known <= k:
            out.append(CheckResult(sid, False, "erased", erased_at, None))
            continue
        state = consent_at(entries.get(sid, []), corrections.get(sid, []), at, known_at).get(
            purpose
        )
        if state is None or state.state == NONE:
            out.append(CheckResult(sid, False, "never_granted", None, None))
        elif state.state == GRANTED:
            out.append(CheckResult(sid, True, "granted", state.since, state.event_id))
        elif state.state in (WITHDRAWN, EXPIRED):
            out.append(CheckResult(sid, False, state.state, state.since, state.event_id))
    return out
