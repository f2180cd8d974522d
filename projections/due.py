"""What is due: subject requests near or past their deadline, consents about to expire, and
personal data kept past its purpose's retention (§6.3: as long as the purpose needs)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ledger.policy import PolicyVersion
from projections.requests import deadline_of, request_entry
from projections.store import ConsentViews, parse_utc, utc


def due_list(
    views: ConsentViews,
    tenant: str,
    now: datetime,
    *,
    within: timedelta,
    request_days: int,
    policies: Mapping[str, PolicyVersion],
    request_days_by_kind: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A request without its own `due_at` is due the days after it was received that the
    tenant's policy version in force then gives its kind (`request_due_days`, what the
    tenant promised its subjects), else those `request_days_by_kind` gives it
    (LEDGER_REQUEST_DUE_DAYS_BY_KIND), else `request_days` (projections.requests.deadline).
    Each says where its deadline came from (`due_from`: `request`, `policy` with its
    `policy_version`, or `settings`).

    Retention counts from the end of the last grant of a purpose (withdrawal or expiry) to
    the longest retention any published policy version gives that purpose; subjects already
    erased are not listed.
    """
    horizon = now + within
    requests = []
    for row in views.rows(
        "SELECT sid, request_id, kind, received_at, due_at FROM view_requests "
        "WHERE tenant=? AND closed_at IS NULL ORDER BY received_at, sid",
        (tenant,),
    ):
        received, due, source, version = deadline_of(
            row, policies, request_days, request_days_by_kind or {}
        )
        if due <= horizon:
            entry = request_entry(row, received, due, source, version)
            requests.append({**entry, "overdue": due <= now})

    expiring = []
    for row in views.rows(
        "SELECT i.sid, i.purpose, i.valid_to, i.event_id FROM view_intervals i "
        "JOIN view_entries e ON e.sid = i.sid AND e.event_id = i.event_id "
        "JOIN view_subjects s ON s.sid = i.sid "
        "WHERE i.tenant=? AND i.known_to IS NULL AND i.valid_to IS NOT NULL "
        "AND i.valid_to>? AND i.valid_to<=? AND e.expires_at IS NOT NULL "
        "AND s.erased_at IS NULL ORDER BY i.valid_to, i.sid, i.purpose",
        (tenant, utc(now), utc(horizon)),
    ):
        expiring.append(
            {"sid": row[0], "purpose": row[1], "expires_at": row[2], "event_id": row[3]}
        )

    past = past_retention(views, tenant, now, policies)
    return {
        "tenant": tenant,
        "as_of": now.isoformat(),
        "within_days": within.days,
        "requests": requests,
        "expiring_consents": expiring,
        "past_retention": past,
        "erasable": erasable_past_retention(views, tenant, now, policies, past=past),
    }


def past_retention(
    views: ConsentViews, tenant: str, now: datetime, policies: Mapping[str, PolicyVersion]
) -> list[dict[str, Any]]:
    """Each (subject, purpose) whose consent ended longer ago than the purpose's retention,
    by purpose, then sid; subjects already erased are not listed."""
    retention: dict[str, int] = {}
    for policy in policies.values():
        for purpose, terms in policy.purposes.items():
            if terms.retention_days is not None:
                retention[purpose] = max(retention.get(purpose, 0), terms.retention_days)
    past = []
    for purpose, days in sorted(retention.items()):
        try:
            cutoff = utc(now - timedelta(days=days))
        except OverflowError:  # a policy recorded before retentions were bounded
            continue  # reaches back past year 1: nothing is past it yet
        for row in views.rows(
            "SELECT i.sid, MAX(i.valid_to) AS ended FROM view_intervals i "
            "JOIN view_subjects s ON s.sid = i.sid "
            "WHERE i.tenant=? AND i.purpose=? AND i.known_to IS NULL AND s.erased_at IS NULL "
            "GROUP BY i.sid HAVING COUNT(*) = COUNT(i.valid_to) AND MAX(i.valid_to)<=? "
            "ORDER BY i.sid",
            (tenant, purpose, cutoff),
        ):
            ended = parse_utc(row["ended"])
            assert ended is not None
            past.append(
                {
                    "sid": row["sid"],
                    "purpose": purpose,
                    "consent_ended_at": ended.isoformat(),
                    "retention_days": days,
                    "due_since": (ended + timedelta(days=days)).isoformat(),
                }
            )
    return past


def erasable_past_retention(
    views: ConsentViews,
    tenant: str,
    now: datetime,
    policies: Mapping[str, PolicyVersion],
    *,
    past: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The subjects whose personal data no purpose keeps any longer, in sid order: every
    purpose they ever consented to (as known now) is past its retention.

    Erasure destroys all of a subject's personal data, so one purpose past retention is not
    enough while another still holds it. Not listed: a subject with any purpose whose
    retention no policy version bounds (kept "as long as the purpose needs", §6.3), and one
    with a subject request still open (a request being answered needs the data it asks
    about). The ledger knows purposes through consent only: processing on a contract or a
    legal obligation that no consent fact records is for whoever runs the erasure to weigh.
    `past` is `past_retention`'s answer for the same instant, when the caller has it.
    """
    by_sid: dict[str, list[dict[str, Any]]] = {}
    for item in past_retention(views, tenant, now, policies) if past is None else past:
        by_sid.setdefault(item["sid"], []).append(item)
    if not by_sid:
        return []
    sids = sorted(by_sid)
    purposes: dict[str, set[str]] = {}
    for sid, purpose in views.rows_in(
        "SELECT DISTINCT sid, purpose FROM view_intervals "
        "WHERE sid IN ({}) AND tenant=? AND known_to IS NULL",
        sids,
        (tenant,),
        tuples=True,
    ):
        purposes.setdefault(sid, set()).add(purpose)
    asking = {
        row[0]
        for row in views.rows_in(
            "SELECT sid FROM view_requests WHERE sid IN ({}) AND tenant=? AND closed_at IS NULL",
            sids,
            (tenant,),
            tuples=True,
        )
    }
    erasable = []
    for sid in sids:
        items = by_sid[sid]
        if sid in asking or purposes.get(sid) != {i["purpose"] for i in items}:
            continue
        erasable.append(
            {
                "sid": sid,
                "purposes": sorted(i["purpose"] for i in items),
                "due_since": max(i["due_since"] for i in items),
            }
        )
    return erasable
