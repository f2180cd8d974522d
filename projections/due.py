"""What is due: subject requests near or past their deadline, consents about to expire, and
personal data kept past its purpose's retention (§6.3: as long as the purpose needs).

Data past retention stays listed until the subject is erased, for every purpose whose
retention passed, so over the years that list grows with the tenant: 10,000 subjects gave
14,161 rows and 2.5 MB of JSON in 0.34 s (a throwaway script, 2026-12-04). The due list is
paged on request (`limit`, then the `next` cursor), each list read from where the page
before left it, in SQL where the list is not bounded by the window or the open requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ledger.policy import PolicyVersion
from projections.cursors import (
    MAX_CURSOR_DAYS,
    BadCursor,
    cursor_instant,
    decode_cursor,
    encode_cursor,
)
from projections.requests import deadline_of, request_entry, rows_after
from projections.store import ViewReads, in_one_state, parse_utc, utc

LISTS = ("requests", "expiring_consents", "past_retention", "erasable")
# The requests not closed yet, by the index of them in received order (named: without
# statistics SQLite may take the register's index of every request).
OPEN_REQUESTS = (
    "SELECT sid, request_id, kind, received_at, due_at FROM view_requests "
    "INDEXED BY view_requests_open_in_order WHERE tenant=? AND closed_at IS NULL"
)
REQUESTS_CHUNK = 10_000  # open requests read at a time for a whole list
_DONE: Any = "done"  # in a cursor: a list the pages before gave to its end
# The furthest the due list looks ahead (the route's and CLI's bound): within what a
# cursor's instant is checked for (`cursor_instant`).
MAX_WITHIN_DAYS = MAX_CURSOR_DAYS
# The purposes each of a chunk of subjects consented to (erasable ones have every one past
# retention). `+tenant`: not a column for an index to search. With `tenant=?` SQLite chose
# the index of open intervals by tenant and read every one of the tenant's for each chunk
# of sids, which made the erasable subjects quadratic: 32 s of the due list of 100,000
# subjects (1.8 s of it data past retention), where a chunk of 500 sids took 87 ms that way
# and 4.7 ms through the index by subject (a throwaway script, 2026-12-04).
PURPOSES_OF_SUBJECTS = (
    "SELECT DISTINCT sid, purpose FROM view_intervals "
    "WHERE sid IN ({}) AND +tenant=? AND known_to IS NULL"
)
# Subjects past retention read at a time while looking for a page of erasable ones.
ERASABLE_CHUNK = 1000


@in_one_state
def due_list(
    views: ViewReads,
    tenant: str,
    now: datetime,
    *,
    within: timedelta,
    request_days: int,
    policies: Mapping[str, PolicyVersion],
    request_days_by_kind: Mapping[str, int] | None = None,
    limit: int | None = None,
    cursor: str | None = None,
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

    With `limit` (or a `cursor`), each list holds at most `limit` items (1,000 if only a
    cursor is given), from where the page of the `cursor` left it; `next` is the cursor of
    the page after while any list has more, null on the last. The cursor holds the first
    page's instant (`as_of`), so every page answers for that instant, not for a moment that
    moves between pages. Without either, every list is whole and `next` null.
    """
    at = _cursor_state(cursor) if cursor is not None else None
    if at is not None:
        now = at["as_of"]
        limit = 1000 if limit is None else limit
    horizon = now + within
    keys: dict[str, Any] = {}

    after = _after(at, "requests", 3)
    requests: list[dict[str, Any]] = []
    request_keys: list[list[str]] = []
    if after is not _DONE:
        # Read on from the cursor by the index of open requests in received order, a page
        # at a time: in that order nearly every one read is due (past its deadline, or
        # within the window), all but those received in the last days, so a page reads
        # about its own length. Every page read and judged every open request before: at
        # 33,334 overdue ones the 34 pages of 1,000 took 6.9 s, and now 0.23 s (`python -m
        # bench register`, 2026-12-04).
        for row in rows_after(
            views,
            OPEN_REQUESTS,
            (tenant,),
            after,
            REQUESTS_CHUNK if limit is None else limit + 1,
        ):
            key = [row["received_at"], row["sid"], row["request_id"]]
            received, due, source, version = deadline_of(
                row, policies, request_days, request_days_by_kind or {}
            )
            if due <= horizon:
                entry = request_entry(row, received, due, source, version)
                requests.append({**entry, "overdue": due <= now})
                request_keys.append(key)
                if limit is not None and len(requests) > limit:
                    break
    keys["requests"] = _paged(requests, limit, request_keys)

    after = _after(at, "expiring_consents", 3)
    expiring: list[dict[str, Any]] = []
    expiring_keys: list[list[str]] = []
    if after is not _DONE:
        sql = (
            "SELECT i.sid, i.purpose, i.valid_to, i.event_id FROM view_intervals i "
            "JOIN view_entries e ON e.sid = i.sid AND e.event_id = i.event_id "
            "JOIN view_subjects s ON s.sid = i.sid "
            "WHERE i.tenant=? AND i.known_to IS NULL AND i.valid_to IS NOT NULL "
            "AND i.valid_to>? AND i.valid_to<=? AND e.expires_at IS NOT NULL "
            "AND s.erased_at IS NULL"
        )
        params: list[Any] = [tenant, utc(now), utc(horizon)]
        if after is not None:
            sql += " AND (i.valid_to, i.sid, i.purpose) > (?, ?, ?)"
            params.extend(after)
        sql += " ORDER BY i.valid_to, i.sid, i.purpose"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit + 1)
        for row in views.rows(sql, tuple(params)):
            # The stored text (six fractional digits, to compare as text) pages; the answer
            # writes the instant as every other answer does, so the same expiry reads the
            # same here as in the subject's consents and trail.
            expires_at = datetime.fromisoformat(row[2]).isoformat()
            expiring.append(
                {"sid": row[0], "purpose": row[1], "expires_at": expires_at, "event_id": row[3]}
            )
            expiring_keys.append([row[2], row[0], row[1]])
    keys["expiring_consents"] = _paged(expiring, limit, expiring_keys)

    after = _after(at, "past_retention", 2)
    past = (
        []
        if after is _DONE
        else past_retention(views, tenant, now, policies, after=after, limit=limit)
    )
    keys["past_retention"] = _paged(past, limit, [[p["purpose"], p["sid"]] for p in past])

    after = _after(at, "erasable", 1)
    if limit is None:
        erasable = erasable_past_retention(views, tenant, now, policies, past=past)
    elif after is _DONE:
        erasable = []
    else:
        erasable = _erasable_page(views, tenant, now, policies, after, limit)
    keys["erasable"] = _paged(erasable, limit, [[e["sid"]] for e in erasable])

    return {
        "tenant": tenant,
        "as_of": now.isoformat(),
        "within_days": within.days,
        "requests": requests,
        "expiring_consents": expiring,
        "past_retention": past,
        "erasable": erasable,
        "next": _cursor_of(now, keys) if any(k != "done" for k in keys.values()) else None,
    }


def _paged(items: list[dict[str, Any]], limit: int | None, keys: list[list[str]]) -> Any:
    """Trims a list read one past `limit` to the page, and returns where the next page
    starts it: the key of the page's last item (`keys[i]` is item i's), or "done" when
    nothing is left."""
    if limit is None or len(items) <= limit:
        return _DONE
    del items[limit:]
    return keys[limit - 1]


def _after(state: dict[str, Any] | None, name: str, size: int) -> Any:
    """Where a list starts on this page: None at its beginning, `_DONE` past its end."""
    if state is None:
        return None
    key = state[name]
    if key == _DONE:
        return _DONE
    if not (isinstance(key, list) and len(key) == size and all(isinstance(k, str) for k in key)):
        raise BadCursor
    return tuple(key) if size > 1 else key[0]


def _cursor_of(now: datetime, keys: dict[str, Any]) -> str:
    return encode_cursor({"as_of": utc(now), **keys})


def _cursor_state(cursor: str) -> dict[str, Any]:
    state = decode_cursor(cursor)
    if not isinstance(state, dict) or set(state) != {"as_of", *LISTS}:
        raise BadCursor
    state["as_of"] = cursor_instant(state["as_of"])
    return state


@in_one_state
def past_retention(
    views: ViewReads,
    tenant: str,
    now: datetime,
    policies: Mapping[str, PolicyVersion],
    *,
    after: tuple[str, str] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Each (subject, purpose) whose consent ended longer ago than the purpose's retention,
    by purpose, then sid; subjects already erased are not listed. With `after` (a purpose
    and a sid), only those after it; with `limit`, at most `limit` + 1 (so that the caller
    knows whether there are more)."""
    past: list[dict[str, Any]] = []
    for purpose, days in sorted(_retentions(policies).items()):
        if after is not None and purpose < after[0]:
            continue
        left = None if limit is None else limit + 1 - len(past)
        past.extend(
            _past_of(
                views,
                tenant,
                now,
                purpose,
                days,
                after[1] if after and purpose == after[0] else None,
                left,
            )
        )
        if limit is not None and len(past) > limit:
            break
    return past


def _retentions(policies: Mapping[str, PolicyVersion]) -> dict[str, int]:
    """Per purpose, the longest retention any policy version gives it (none: unbounded)."""
    retention: dict[str, int] = {}
    for policy in policies.values():
        for purpose, terms in policy.purposes.items():
            if terms.retention_days is not None:
                retention[purpose] = max(retention.get(purpose, 0), terms.retention_days)
    return retention


def _past_of(
    views: ViewReads,
    tenant: str,
    now: datetime,
    purpose: str,
    days: int,
    after_sid: str | None,
    limit: int | None,
) -> list[dict[str, Any]]:
    """The subjects past `purpose`'s retention of `days`, in sid order (after `after_sid`,
    at most `limit`)."""
    try:
        cutoff = utc(now - timedelta(days=days))
    except OverflowError:  # a policy recorded before retentions were bounded
        return []  # reaches back past year 1: nothing is past it yet
    sql = (
        "SELECT i.sid, MAX(i.valid_to) AS ended FROM view_intervals i "
        "JOIN view_subjects s ON s.sid = i.sid "
        "WHERE i.tenant=? AND i.purpose=? AND i.known_to IS NULL AND s.erased_at IS NULL"
    )
    params: list[Any] = [tenant, purpose]
    if after_sid is not None:
        sql += " AND i.sid>?"
        params.append(after_sid)
    sql += " GROUP BY i.sid HAVING COUNT(*) = COUNT(i.valid_to) AND MAX(i.valid_to)<=? "
    sql += "ORDER BY i.sid"
    params.append(cutoff)
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    past = []
    for row in views.rows(sql, tuple(params)):
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


def _erasable_page(
    views: ViewReads,
    tenant: str,
    now: datetime,
    policies: Mapping[str, PolicyVersion],
    after: str | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to `limit` + 1 erasable subjects after the sid `after`, in sid order, found by
    reading the subjects past retention a chunk at a time rather than all of them.

    Each round reads, for every purpose, the next `ERASABLE_CHUNK` subjects past its
    retention; every purpose has then been read through the lowest last sid among those
    that filled their chunk, so the subjects up to it are judged with all their purposes.
    """
    retention = sorted(_retentions(policies).items())
    found: list[dict[str, Any]] = []
    while True:
        items: list[dict[str, Any]] = []
        bound: str | None = None  # every purpose read through this sid (None: to its end)
        for purpose, days in retention:
            rows = _past_of(views, tenant, now, purpose, days, after, ERASABLE_CHUNK)
            if len(rows) == ERASABLE_CHUNK and (bound is None or rows[-1]["sid"] < bound):
                bound = rows[-1]["sid"]
            items.extend(rows)
        if bound is not None:
            items = [item for item in items if item["sid"] <= bound]
        found.extend(erasable_past_retention(views, tenant, now, policies, past=items))
        if len(found) > limit or bound is None:
            return found
        after = bound


@in_one_state
def erasable_past_retention(
    views: ViewReads,
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
        PURPOSES_OF_SUBJECTS,
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
