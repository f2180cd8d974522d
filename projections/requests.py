"""The register of subject requests (§7.1): every request a tenant received, its deadline,
and whether it was answered in time.

A regulator or an auditor asks for the register, not for what is due this week: each
request with when it came, when it was due and why then, when it was closed and how. Its
deadline follows the same rule as the due list (`deadline`), so the two never disagree.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson

from ledger.policy import PolicyVersion, version_in_force
from ledger.vocabulary import REQUEST_STATES
from projections.store import ConsentViews, parse_utc, utc
from projections.trail import text_cell

RequestState = Literal["open", "overdue", "closed", "closed_late"]
RequestKind = Literal["information", "rectification", "erasure", "withdrawal", "objection"]
# The route's choices, spelled out for the OpenAPI document: the vocabulary's (a test holds
# them to it).


class BadCursor(ValueError):
    """A cursor that is not the `next` of an earlier page."""


def deadline(
    kind: str,
    received: datetime,
    due_at: datetime | None,
    policies: Mapping[str, PolicyVersion],
    request_days: int,
    request_days_by_kind: Mapping[str, int],
) -> tuple[datetime, str, str | None]:
    """When a request is due, where that came from (`request`, `policy`, `settings`) and the
    policy version that set it.

    The request's own `due_at` first; else the days the tenant's policy version in force at
    its receipt promises for its kind (what the tenant told its subjects); else the
    deployment's days for its kind, else its days for any request.
    """
    if due_at is not None:
        return due_at, "request", None
    in_force = version_in_force(policies, received)
    promised = in_force.request_due_days.get(kind) if in_force is not None else None
    if in_force is not None and promised is not None:
        return received + timedelta(days=promised), "policy", in_force.version
    days = request_days_by_kind.get(kind, request_days)
    return received + timedelta(days=days), "settings", None


def deadline_of(
    row: Any,
    policies: Mapping[str, PolicyVersion],
    request_days: int,
    request_days_by_kind: Mapping[str, int],
) -> tuple[datetime, datetime, str, str | None]:
    """A `view_requests` row's receipt, and its deadline as `deadline` gives it."""
    received = parse_utc(row["received_at"])
    assert received is not None
    due = parse_utc(row["due_at"])
    return received, *deadline(
        row["kind"], received, due, policies, request_days, request_days_by_kind
    )


def request_entry(
    row: Any, received: datetime, due: datetime, source: str, version: str | None
) -> dict[str, Any]:
    """A request as the register and the due list name it."""
    return {
        "sid": row["sid"],
        "request_id": row["request_id"],
        "kind": row["kind"],
        "received_at": received.isoformat(),
        "due_at": due.isoformat(),
        "due_from": source,
        "policy_version": version,
    }


def request_register(
    views: ConsentViews,
    tenant: str,
    now: datetime,
    *,
    policies: Mapping[str, PolicyVersion],
    request_days: int,
    request_days_by_kind: Mapping[str, int],
    state: str | None = None,
    kind: str | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
    cursor: str | None = None,
    limit: int = 1000,
) -> dict[str, Any]:
    """The tenant's requests received in [`received_from`, `received_to`), of `kind` if
    given, in the order received; `state` keeps those in one state: `open` (not closed, not
    yet due), `overdue` (not closed, past due), `closed` (closed by its deadline),
    `closed_late`. `counts` counts each state over the same period and kind, whatever the
    page. `limit` a page; `next` is the cursor of the page after, null on the last."""
    after = _cursor_key(cursor) if cursor is not None else None
    sql = (
        "SELECT sid, request_id, kind, received_at, due_at, closed_at, outcome "
        "FROM view_requests WHERE tenant=?"
    )
    params: list[Any] = [tenant]
    if kind is not None:
        sql += " AND kind=?"
        params.append(kind)
    if received_from is not None:
        sql += " AND received_at>=?"
        params.append(utc(received_from))
    if received_to is not None:
        sql += " AND received_at<?"
        params.append(utc(received_to))
    sql += " ORDER BY received_at, sid, request_id"
    counts = dict.fromkeys(REQUEST_STATES, 0)
    page: list[dict[str, Any]] = []
    last: tuple[str, str, str] | None = None
    more = False
    for row in views.rows(sql, tuple(params)):
        received, due, source, version = deadline_of(
            row, policies, request_days, request_days_by_kind
        )
        closed = parse_utc(row["closed_at"])
        if closed is None:
            now_state = "overdue" if due <= now else "open"
        else:
            now_state = "closed_late" if closed > due else "closed"
        counts[now_state] += 1
        if state is not None and now_state != state:
            continue
        key = (row["received_at"], row["sid"], row["request_id"])
        if after is not None and key <= after:
            continue
        if len(page) == limit:
            more = True
            continue
        page.append(
            {
                **request_entry(row, received, due, source, version),
                "closed_at": closed.isoformat() if closed else None,
                "outcome": row["outcome"],
                "state": now_state,
            }
        )
        last = key
    return {
        "tenant": tenant,
        "as_of": now.isoformat(),
        "state": state,
        "kind": kind,
        "received_from": received_from.isoformat() if received_from else None,
        "received_to": received_to.isoformat() if received_to else None,
        "counts": counts,
        "requests": page,
        "next": _cursor_of(last) if more and last is not None else None,
    }


def open_request_counts(
    views: ConsentViews,
    now: datetime,
    policies_of: Callable[[str], Mapping[str, PolicyVersion]],
    request_days: int,
    request_days_by_kind: Mapping[str, int],
) -> dict[str, int]:
    """The requests not closed yet, all tenants together: how many are `open` (not yet due)
    and how many `overdue`, each by its tenant's deadlines (for /metrics, to alert on).

    Not by tenant: /metrics is served without a key, and a tenant's name and its count of
    overdue requests are for that tenant's keys alone (`GET /v1/requests`).
    """
    counts = {"open": 0, "overdue": 0}
    catalogues: dict[str, Mapping[str, PolicyVersion]] = {}
    for row in views.rows(
        "SELECT tenant, sid, request_id, kind, received_at, due_at FROM view_requests "
        "WHERE closed_at IS NULL"
    ):
        tenant = row["tenant"]
        if tenant not in catalogues:
            catalogues[tenant] = policies_of(tenant)
        _, due, _, _ = deadline_of(row, catalogues[tenant], request_days, request_days_by_kind)
        counts["overdue" if due <= now else "open"] += 1
    return counts


_COLUMNS = (
    "sid",
    "request_id",
    "kind",
    "received_at",
    "due_at",
    "due_from",
    "policy_version",
    "closed_at",
    "outcome",
    "state",
)


def register_csv(register: dict[str, Any]) -> str:
    """A page of the register as CSV, one request per row, for the auditor's spreadsheet;
    the publisher's `request_id` and `policy_version` made spreadsheet-safe as in the CSV trail."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_COLUMNS)
    for r in register["requests"]:
        row = {
            **r,
            "request_id": text_cell(r["request_id"]),
            "policy_version": text_cell(r["policy_version"]) or None,
        }
        writer.writerow(["" if row[c] is None else row[c] for c in _COLUMNS])
    return out.getvalue()


def _cursor_of(key: tuple[str, str, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def _cursor_key(cursor: str) -> tuple[str, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = orjson.loads(raw)
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        raise BadCursor from None
    if not (isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)):
        raise BadCursor
    return key[0], key[1], key[2]
