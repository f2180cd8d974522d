"""The register of subject requests (§7.1): every request a tenant received, its deadline,
and whether it was answered in time.

A regulator or an auditor asks for the register, not for what is due this week: each
request with when it came, when it was due and why then, when it was closed and how. Its
deadline follows the same rule as the due list (`deadline`), so the two never disagree.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from ledger.policy import PolicyVersion, version_in_force
from ledger.vocabulary import REQUEST_KINDS, REQUEST_STATES
from projections.cursors import BadCursor, cursor_instant, decode_cursor, encode_cursor
from projections.store import ConsentViews, ViewReads, in_one_state, parse_utc, utc
from projections.trail import text_cell

RequestState = Literal["open", "overdue", "closed", "closed_late"]
RequestKind = Literal["information", "rectification", "erasure", "withdrawal", "objection"]
# The route's choices, spelled out for the OpenAPI document: the vocabulary's (a test holds
# them to it).


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


@in_one_state
def request_register(
    views: ViewReads,
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
    page. `limit` a page; `next` is the cursor of the page after, null on the last.

    Counting reads every request of the period, so only the first page counts: its `next`
    holds its instant, its counts and its filters, and the pages after answer as of that
    instant with those counts, each reading from where the page before ended (in SQL, by
    the index in the register's order) until it has `limit` requests. Each page counted
    and read the whole period before: at 100,000 requests the 99 pages of 1,000 after the
    first took 68 to 78 s, and now 1.0 to 1.1 s (`python -m bench register`, 2026-12-04).
    Pinned, a request falling due between two pages cannot be listed as open on one and
    counted overdue on another. A cursor given with other filters than its first page's is
    refused.
    """
    filters = [kind, _iso(received_from), _iso(received_to)]
    pinned = _cursor_state(cursor) if cursor is not None else None
    if pinned is not None and pinned.filters is not None and pinned.filters != filters:
        raise BadCursor
    if pinned is not None and pinned.as_of is not None:
        now = pinned.as_of
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
    pinned_counts = pinned.counts if pinned is not None else None
    counting = pinned_counts is None
    after = pinned.after if pinned is not None else None
    rows = (
        views.rows(sql + _ORDER, tuple(params))
        if counting
        else rows_after(views, sql, params, after, limit + 1 if state is None else _CHUNK)
    )
    counts = dict.fromkeys(REQUEST_STATES, 0) if pinned_counts is None else dict(pinned_counts)
    page: list[dict[str, Any]] = []
    last: tuple[str, str, str] | None = None
    more = False
    for row in rows:
        received, due, source, version = deadline_of(
            row, policies, request_days, request_days_by_kind
        )
        closed = parse_utc(row["closed_at"])
        if closed is None:
            now_state = "overdue" if due <= now else "open"
        else:
            now_state = "closed_late" if closed > due else "closed"
        if counting:
            counts[now_state] += 1
        if state is not None and now_state != state:
            continue
        key = (row["received_at"], row["sid"], row["request_id"])
        if after is not None and key <= after:
            continue
        if len(page) == limit:
            more = True
            if counting:
                continue
            break
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
        "next": _cursor_of(last, now, counts, filters) if more and last is not None else None,
    }


_ORDER = " ORDER BY received_at, sid, request_id"
# Requests read at a time by a page after the first that keeps one state: enough that a
# state most requests are in fills a page in a read or two.
_CHUNK = 2000


def rows_after(
    views: ViewReads,
    sql: str,
    params: Sequence[Any],
    after: tuple[str, str, str] | None,
    chunk: int,
) -> Iterator[Any]:
    """The rows of `sql` (a SELECT of view_requests and its WHERE, without an order) after
    `after` in the register's order, read `chunk` at a time by an index in that order, for
    as long as the caller takes them."""
    while True:
        keyset = " AND (received_at, sid, request_id) > (?, ?, ?)" if after is not None else ""
        rows = views.rows(f"{sql}{keyset}{_ORDER} LIMIT ?", (*params, *(after or ()), chunk))
        yield from rows
        if len(rows) < chunk:
            return
        last = rows[-1]
        after = (last["received_at"], last["sid"], last["request_id"])


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

    Counted in SQL over ranges of the index of open requests, not request by request (which
    took 207 to 211 ms of every scrape at 33,334 open requests, holding the interpreter the
    whole time, and now 13 to 14 ms: `python -m bench register`, 2026-12-04). A request with
    its own `due_at` is overdue once that is past; one without is due a number of days after
    its receipt that is the same for every request of its kind received while one policy
    version was in force (`deadline`), so it is overdue if received at or before `now` less
    those days.
    """
    counts = {"open": 0, "overdue": 0}
    with views.snapshot() as then:
        for tenant, total in then.rows(
            "SELECT tenant, COUNT(*) FROM view_requests WHERE closed_at IS NULL GROUP BY tenant",
            tuples=True,
        ):
            [(overdue,)] = then.rows(
                "SELECT COUNT(*) FROM view_requests WHERE closed_at IS NULL AND tenant=? "
                "AND due_at IS NOT NULL AND due_at<=?",
                (tenant, utc(now)),
                tuples=True,
            )
            policies = policies_of(tenant)
            for start, end, in_force in _periods(policies):
                # The request kinds (the envelope admits no other), by their days.
                by_days: dict[int, list[str]] = {}
                for kind in sorted(REQUEST_KINDS):
                    promised = in_force.request_due_days.get(kind) if in_force else None
                    days = (
                        promised
                        if promised is not None
                        else request_days_by_kind.get(kind, request_days)
                    )
                    by_days.setdefault(days, []).append(kind)
                for days, kinds in by_days.items():
                    try:
                        latest = utc(now - timedelta(days=days))
                    except OverflowError:  # due after the calendar's end: none overdue
                        continue
                    # By the index of open requests, named: with no statistics SQLite
                    # took the register's index of every request for the range of receipt
                    # and read each one's row from the table (133 ms for 100,000 requests,
                    # a throwaway EXPLAIN of 2026-12-04, against 2 ms for 20,000 by an index
                    # of open requests alone).
                    sql = (
                        "SELECT COUNT(*) FROM view_requests INDEXED BY view_requests_open_in_order "
                        "WHERE closed_at IS NULL AND tenant=? AND due_at IS NULL AND kind IN "
                        f"({','.join('?' * len(kinds))}) AND received_at<=?"
                    )
                    params: list[Any] = [tenant, *kinds, latest]
                    if start is not None:
                        sql += " AND received_at>=?"
                        params.append(start)
                    if end is not None:
                        sql += " AND received_at<?"
                        params.append(end)
                    overdue += then.rows(sql, params, tuples=True)[0][0]
            counts["overdue"] += overdue
            counts["open"] += total - overdue
    return counts


def _periods(
    policies: Mapping[str, PolicyVersion],
) -> list[tuple[str | None, str | None, PolicyVersion | None]]:
    """[start, end) of receipt (stored UTC text; None: unbounded) and the policy version in
    force throughout, as `version_in_force` finds it, covering all time: none before the
    first, and of versions taking effect at once the later published."""
    taking_effect: dict[datetime, PolicyVersion] = {}
    for version in sorted(policies.values(), key=lambda p: p.effective_at):  # stable
        taking_effect[version.effective_at] = version  # the later published stays
    starts = [utc(at) for at in taking_effect]
    periods: list[tuple[str | None, str | None, PolicyVersion | None]] = [
        (None, starts[0] if starts else None, None)
    ]
    for i, version in enumerate(taking_effect.values()):
        periods.append((starts[i], starts[i + 1] if i + 1 < len(starts) else None, version))
    return periods


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


class _Pinned(NamedTuple):
    """What a cursor holds: where the page before ended and, unless the cursor is of the
    form made before 2026-12-04 (the key alone), the first page's instant, counts and
    filters."""

    after: tuple[str, str, str]
    as_of: datetime | None
    counts: dict[str, int] | None
    filters: list[str | None] | None


def _iso(instant: datetime | None) -> str | None:
    return None if instant is None else utc(instant)


def _cursor_of(
    key: tuple[str, str, str], as_of: datetime, counts: dict[str, int], filters: list[str | None]
) -> str:
    return encode_cursor({"after": list(key), "as_of": utc(as_of), "counts": counts, "of": filters})


def _cursor_state(cursor: str) -> _Pinned:
    state = decode_cursor(cursor)
    if isinstance(state, list):  # a cursor of before 2026-12-04: the pages after count again
        return _Pinned(_key(state), None, None, None)
    if not isinstance(state, dict) or set(state) != {"after", "as_of", "counts", "of"}:
        raise BadCursor
    counts, filters = state["counts"], state["of"]
    if not (
        isinstance(counts, dict)
        and set(counts) == set(REQUEST_STATES)
        and all(type(n) is int and n >= 0 for n in counts.values())
        and isinstance(filters, list)
        and len(filters) == 3
        and all(f is None or isinstance(f, str) for f in filters)
    ):
        raise BadCursor
    return _Pinned(_key(state["after"]), cursor_instant(state["as_of"]), counts, filters)


def _key(key: Any) -> tuple[str, str, str]:
    if not (isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)):
        raise BadCursor
    return key[0], key[1], key[2]
