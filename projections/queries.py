"""Questions answered from the consent views: consent at an instant as known at another, who
had consent for a purpose, and which of a list of recipients did not and why."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from ledger.codec import isoformat
from ledger.consent import EXPIRED, WITHDRAWN, PurposeState, consent_at
from projections.consent_projection import correction_from_row, entry_from_row
from projections.cursors import BadCursor, cursor_instant, decode_cursor, encode_cursor
from projections.store import ConsentViews, ViewReads, in_one_state, parse_utc, utc

FAR_FUTURE = "9999-12-31T23:59:59.999999+00:00"


@in_one_state
def consents_at(
    views: ViewReads, tenant: str, sid: str, at: datetime, known_at: datetime | None = None
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
    views: ViewReads,
    tenant: str,
    purpose: str,
    at: datetime,
    known_at: datetime | None = None,
    *,
    after: str = "",
    limit: int = 1000,
    policy_version: str | None = None,
) -> list[str]:
    """Sids with `purpose` granted at `at` as known at `known_at`, in sid order, after `after`.

    Erased subjects are left out from their erasure on: their data can no longer be used.
    With `policy_version`, only those whose consent in force was given under that version
    (as corrected): after a policy changes (§9), who has not consented under the new one.

    No DISTINCT: as known at any one instant, a subject's intervals for a purpose do not
    overlap (each grant's ends where the next fact of the purpose begins), so a subject has
    at most one row in force at `at`, and the index gives the rows in sid order already.
    As known now (no `known_at`) the rows in force are those never closed (`known_to IS
    NULL`), which a partial index holds apart from the history, so the question does not
    walk past every superseded interval.
    """
    t = utc(at)
    version = () if policy_version is None else (policy_version,)
    if known_at is None:
        params: tuple[Any, ...] = (tenant, purpose, t, t, *version, after, FAR_FUTURE, t, limit)
        sql = WHO_HAD_CONSENT_NOW
    else:
        k = utc(known_at)
        params = (tenant, purpose, t, t, k, k, *version, after, k, t, limit)
        sql = WHO_HAD_CONSENT
    if version:
        sql = sql.replace(" AND i.sid>? ", " AND i.policy_version=? AND i.sid>? ")
    return [r[0] for r in views.rows(sql, params, tuples=True)]


@in_one_state
def who_had_consent_page(
    views: ViewReads,
    tenant: str,
    purpose: str,
    at: datetime | None,
    known_at: datetime | None,
    *,
    cursor: str | None,
    limit: int,
    policy_version: str | None,
    now: datetime,
    recorded_through: Callable[[ViewReads], datetime | None] | None = None,
) -> dict[str, Any]:
    """A page of who had consent: the answer of `GET /v1/purposes/{purpose}/subjects` and of
    `consent-ledger who`.

    The first page answers for `at` (default `now`) as known at `known_at` (default: as
    known now), and its `next` holds its last sid with that instant, the moment it was
    known at, the purpose and the policy version. Every page after it answers that same
    question.

    Asked as known now, the moment is the `recorded_at` of the last fact the views held
    when the first page was read (`recorded_through` gives it for a state of the views,
    read with the page in one snapshot; in Kafka mode from their position in each ledger
    partition): the writer stamps facts in the order it commits them, so the pages after
    answer exactly what the first page read. Without it the moment is `now`, read after the
    views were brought up to date: a fact stamped before it but committed after the first
    page was read (a batch the writer was committing) would be counted by the later pages
    only.

    Its pages used to hold a sid alone: a list paged through without `as_of` moved its instant
    with each page, so a person who withdrew while a campaign's list was fetched was listed by
    the pages before and left out by those after, and a late withdrawal recorded meanwhile
    changed the pages after it only. A cursor given with another instant, moment, purpose or
    version is refused (BadCursor); a sid, the cursor before these, is still a place to go on
    from, answered for the instants given with it.
    """
    after = ""
    if cursor is not None and is_sid(cursor):
        after = cursor
    elif cursor is not None:
        state = decode_cursor(cursor)
        if type(state) is not dict or set(state) != {"after", "as_of", "known_at", "of"}:
            raise BadCursor
        if not is_sid(state["after"]) or state["of"] != [purpose, policy_version]:
            raise BadCursor
        pinned_at, pinned_known = (
            _as_written(state["as_of"]),
            _as_written(state["known_at"]),
        )
        if (at is not None and at != pinned_at) or (
            known_at is not None and known_at != pinned_known
        ):
            raise BadCursor
        after, at, known_at = state["after"], pinned_at, pinned_known
    at = now if at is None else at
    # One more than the page, to know whether another follows: a full last page used to
    # give a `next` whose page was empty.
    sids = who_had_consent(
        views,
        tenant,
        purpose,
        at,
        known_at,
        after=after,
        limit=limit + 1,
        policy_version=policy_version,
    )
    moment = known_at or now
    if known_at is None and recorded_through is not None:
        moment = recorded_through(views) or moment  # the state the page was read from
    following = None
    if len(sids) > limit:
        del sids[limit:]
        pin = {
            "after": sids[-1],
            "as_of": at.isoformat(),
            "known_at": moment.isoformat(),
            "of": [purpose, policy_version],
        }
        following = encode_cursor(pin)
    return {
        "purpose": purpose,
        "as_of": at.isoformat(),
        "known_at": known_at.isoformat() if known_at else None,
        "policy_version": policy_version,
        "sids": sids,
        "next": following,
    }


def is_sid(value: Any) -> bool:
    """Whether `value` is a sid as the views hold it: 32 lower-case hex digits."""
    return type(value) is str and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _as_written(text: Any) -> datetime:
    """A cursor's instant with the offset its first page was asked in (checked as every
    cursor's instant is: `cursor_instant`), so that its pages say it as that page did."""
    cursor_instant(text)
    return datetime.fromisoformat(text)


def consent_summary(
    views: ConsentViews, tenant: str, purpose: str, at: datetime, known_at: datetime | None = None
) -> dict[str, Any]:
    """How many subjects had consent for `purpose` at `at` as known at `known_at`, and under
    which policy version each was given: after a new version (§9), how many are still on an
    old one. The same subjects `who_had_consent` lists, counted, not named."""
    t = utc(at)
    if known_at is None:
        params: tuple[Any, ...] = (tenant, purpose, t, t, "", FAR_FUTURE, t)
        sql = WHO_HAD_CONSENT_NOW
    else:
        k = utc(known_at)
        params = (tenant, purpose, t, t, k, k, "", k, t)
        sql = WHO_HAD_CONSENT
    sql = sql.replace("SELECT i.sid FROM", "SELECT i.policy_version, COUNT(*) FROM").replace(
        " ORDER BY i.sid LIMIT ?", " GROUP BY i.policy_version ORDER BY i.policy_version"
    )
    by_version = {str(v): n for v, n in views.rows(sql, params, tuples=True)}
    return {
        "purpose": purpose,
        "as_of": at.isoformat(),
        "known_at": known_at.isoformat() if known_at else None,
        "with_consent": sum(by_version.values()),
        "by_policy_version": by_version,
    }


# Parameters: known at, valid at.
_NOT_ERASED = (
    "NOT EXISTS (SELECT 1 FROM view_erasures e WHERE e.sid = i.sid "
    "AND e.recorded_at<=? AND e.erased_at<=?)"
)
WHO_HAD_CONSENT_NOW = (
    "SELECT i.sid FROM view_intervals i "
    "WHERE i.tenant=? AND i.purpose=? AND i.known_to IS NULL AND i.valid_from<=? "
    "AND (i.valid_to IS NULL OR i.valid_to>?) AND i.sid>? "
    f"AND {_NOT_ERASED} ORDER BY i.sid LIMIT ?"
)
WHO_HAD_CONSENT = (
    "SELECT i.sid FROM view_intervals i "
    "WHERE i.tenant=? AND i.purpose=? AND i.valid_from<=? "
    "AND (i.valid_to IS NULL OR i.valid_to>?) AND i.known_from<=? "
    "AND (i.known_to IS NULL OR i.known_to>?) AND i.sid>? "
    f"AND {_NOT_ERASED} ORDER BY i.sid LIMIT ?"
)


# A campaign's recipients' granted intervals that began by an instant (the IN list's place,
# then the parameters), as known now and as known at a past instant.
INTERVALS_NOW = (
    "SELECT sid, valid_from, valid_to, ends_by, event_id FROM view_intervals "
    "WHERE tenant=? AND purpose=? AND sid IN ({}) AND known_to IS NULL AND valid_from<=?"
)
INTERVALS_KNOWN_AT = (
    "SELECT sid, valid_from, valid_to, ends_by, event_id FROM view_intervals "
    "WHERE sid IN ({}) AND purpose=? AND valid_from<=? "
    "AND known_from<=? AND (known_to IS NULL OR known_to>?)"
)


class CheckResult(NamedTuple):
    """One recipient's answer. A tuple, not a dataclass: a campaign makes one per recipient,
    and a frozen dataclass takes over twice as long to build."""

    sid: str
    consent: bool
    reason: str  # granted, never_granted, withdrawn, expired, erased, unknown_subject
    since: datetime | None  # when the consent began, or when it ended
    event_id: str | None  # the grant behind the answer (in force, withdrawn or expired)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "consent": self.consent,
            "reason": self.reason,
            "since": isoformat(self.since) if self.since else None,
            "event_id": self.event_id,
        }


@in_one_state
def check_recipients(
    views: ViewReads,
    tenant: str,
    purpose: str,
    at: datetime,
    sids: Sequence[str],
    known_at: datetime | None = None,
) -> list[CheckResult]:
    """For a campaign's recipients: who had consent for `purpose` at `at`, and why not.

    Who had consent comes from the granted intervals in one indexed query; only recipients
    without consent have their facts folded, to say why.
    """
    t, kk = utc(at), utc(known_at) if known_at else FAR_FUTURE
    k = known_at or datetime.now(UTC)
    known_then = utc(k)
    # In key order, so each chunk of the IN list reads neighbouring index pages.
    ordered = sorted(set(sids))
    # Only the recipients the intervals cannot answer alone: no subject of this tenant as
    # known then, or a subject erased at some time. A usual recipient (most of any campaign)
    # makes no row here, so its subject is looked up but never turned into Python objects.
    unusual = {
        r[0]: r
        for r in views.rows_in(
            "WITH recipient(sid) AS (VALUES {}) "
            "SELECT recipient.sid, s.tenant, s.registered_at, s.erasure_recorded_at "
            "FROM recipient LEFT JOIN view_subjects s ON s.sid = recipient.sid "
            "WHERE s.sid IS NULL OR s.tenant != ? OR s.registered_at > ? "
            "OR s.erasure_recorded_at IS NOT NULL",
            ordered,
            (tenant, known_then),
            tuples=True,
            placeholder="(?)",
        )
    }
    # Every granted interval that began by `at`, as known then, in one indexed read (rows come
    # in index order: by sid, then valid_from). One still open at `at` means consent; for
    # the rest, the last one that began (the first of equals) ended by expiry or by a later
    # fact (a withdrawal); none at all means never granted.
    granted: dict[str, Any] = {}
    ended: dict[str, Any] = {}
    # As known now, only intervals never closed count, and a partial index holds just those
    # (`view_intervals_now`); as known at a past instant, the by-subject index has them all.
    before: tuple[Any, ...]
    after: tuple[Any, ...]
    if known_at is None:
        sql, before, after = INTERVALS_NOW, (tenant, purpose), (t,)
    else:
        sql, before, after = INTERVALS_KNOWN_AT, (), (purpose, t, kk, kk)
    # Rows are read by position (sid, valid_from, valid_to, ends_by, event_id): by name costs
    # a lookup per field, and this loop sees every recipient's intervals.
    for r in views.rows_in(sql, ordered, after, tuples=True, before=before):
        sid, valid_to = r[0], r[2]
        if valid_to is None or valid_to > t:
            granted[sid] = r  # the latest that began
        elif (last := ended.get(sid)) is None or r[1] > last[1]:
            ended[sid] = r
    lacking = [sid for sid in sids if sid not in granted]
    # The intervals cannot tell two cases, so these recipients have their facts folded: no
    # interval at all (never granted, or granted and withdrawn at the same instant), and a
    # last interval that ended by expiry (a withdrawal after the expiry and by `at` is then
    # the deciding fact, and the answer is "withdrawn", as `consents_at` says).
    unexplained = sorted({sid for sid in lacking if sid not in ended or ended[sid][3] == "expiry"})
    corrections: dict[str, list[Any]] = {}
    for r in views.rows_in(
        "SELECT * FROM view_corrections WHERE sid IN ({}) ORDER BY seq", unexplained
    ):
        corrections.setdefault(r["sid"], []).append(correction_from_row(r))
    entries: dict[str, list[Any]] = {}
    # A correction may move an entry into the purpose or in time: those subjects keep every
    # entry. For the others only an entry naming the purpose (SQLite finds its JSON text),
    # by `at`, and not before the grant whose expiry ended the last interval can decide:
    # that grant is among them and sorts after every entry that occurred before it. An
    # entry keeps the offset its fact was stated in, so its instant is compared parsed.
    for r in views.rows_in("SELECT * FROM view_entries WHERE sid IN ({})", sorted(corrections)):
        entries.setdefault(r[0], []).append(entry_from_row(r))
    instant = datetime.fromisoformat
    for r in views.rows_in(
        "SELECT * FROM view_entries WHERE sid IN ({}) AND instr(purposes, ?) > 0",
        [sid for sid in unexplained if sid not in corrections],
        (orjson.dumps(purpose).decode(),),
        tuples=True,
    ):
        occurred, expired = instant(r[5]), ended.get(r[0])
        if occurred <= at and (expired is None or occurred >= instant(expired[1])):
            entries.setdefault(r[0], []).append(entry_from_row(r))
    erasures: dict[str, datetime] = {}
    for r in views.rows_in(
        "SELECT sid, MIN(erased_at) FROM view_erasures WHERE sid IN ({}) "
        "AND erased_at<=? AND recorded_at<=? GROUP BY sid",
        sorted(sid for sid, r in unusual.items() if r[3] is not None),
        (t, known_then),
        tuples=True,
    ):
        erased_at = parse_utc(r[1])
        assert erased_at is not None
        erasures[r[0]] = erased_at
    out: list[CheckResult] = []
    # One pass over every recipient: the lookups and the parse are bound once, outside it.
    add, unusual_of, erasure_of = out.append, unusual.get, erasures.get
    granted_of, ended_of = granted.get, ended.get
    for sid in sids:
        subject = unusual_of(sid)
        if subject is not None:
            # No row (tenant None), another tenant's, or registered after `known_at`.
            if subject[1] != tenant or subject[2] > known_then:
                add(CheckResult(sid, False, "unknown_subject", None, None))
                continue
            erased_at = erasure_of(sid)
            if erased_at is not None:
                add(CheckResult(sid, False, "erased", erased_at, None))
                continue
        interval = granted_of(sid)
        if interval is not None:
            add(CheckResult(sid, True, "granted", instant(interval[1]), interval[4]))
            continue
        last = ended_of(sid)
        if last is not None and last[3] != "expiry":
            add(CheckResult(sid, False, WITHDRAWN, instant(last[2]), last[4]))
            continue
        folded = consent_at(entries.get(sid, []), corrections.get(sid, []), at, known_at)
        state = folded.get(purpose)
        if state is not None and state.state == WITHDRAWN:
            add(CheckResult(sid, False, WITHDRAWN, state.since, None))
        elif last is not None:
            add(CheckResult(sid, False, EXPIRED, instant(last[2]), last[4]))
        else:
            add(CheckResult(sid, False, "never_granted", None, None))
    return out


def check_report(
    purpose: str, at: datetime, known_at: datetime | None, results: Sequence[CheckResult]
) -> dict[str, Any]:
    """The answer to a campaign check, the same for the CLI and HTTP: only who lacked consent
    is listed (by position in the given list and sid), with the reason."""
    lacking = [dict(r.as_dict(), index=i) for i, r in enumerate(results) if not r.consent]
    return {
        "purpose": purpose,
        "at": at.isoformat(),
        "known_at": known_at.isoformat() if known_at else None,
        "checked": len(results),
        "with_consent": len(results) - len(lacking),
        "without_consent": lacking,
    }
