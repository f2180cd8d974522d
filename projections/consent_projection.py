"""The consent projection: from subject facts in the log to the consent views.

For every grant, withdrawal or correction it works out how that subject's granted intervals
(as known after the fact) change, and records the difference bitemporally: intervals no
longer true are closed at the fact's `recorded_at` (`known_to`), new ones open there
(`known_from`). So the question "who had consent at T, as we knew it at K" is one indexed
range query. The change is found from the fact's neighbours in its purposes' timelines
(`_follow`, `_late`, `_corrected`), so a fact costs the same however long the subject's
history; recomputing the purposes' whole timelines (the general path) gives the same rows.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from ledger.chained import ChainedAggregate
from ledger.codec import isoformat
from ledger.consent import (
    ConsentEntry,
    Correction,
    GrantedInterval,
    entries_as_known,
    granted_intervals,
)
from ledger.subject import Subject
from projections.store import ConsentViews, ViewChanges, parse_utc, utc

_T = TypeVar("_T")

# purpose, valid_from, valid_to, event_id, ends_by (`expiry`, `fact` or None), policy_version:
# an interval whose end keeps its instant but changes its reason (a voided fact leaves the
# expiry ending it), or whose grant's version alone is corrected, is a change to record.
IntervalKey = tuple[str, str, str | None, str, str | None, str | None]


@dataclass(slots=True)
class SubjectView:
    tenant: str
    entries: list[ConsentEntry] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)
    open_intervals: set[IntervalKey] = field(default_factory=set)
    # Grants and withdrawals as known after the last fact processed, corrections applied.
    known: dict[str, ConsentEntry] = field(default_factory=dict)
    # Per purpose, the entry of `known` last in valid time (occurred_at, then seq), for the
    # in-order case of `ConsentProjection._apply`. Empty while `known` is not: to be built
    # from it (a subject read back from the store, or corrected by the general path).
    latest: dict[str, ConsentEntry] = field(default_factory=dict)
    # Per purpose, its entries of `known` in valid time, for late facts and corrections
    # (`_late`, `_corrected`): built at the first of them, then kept. None until then, which
    # spares the subjects whose facts all come in order. References to `known`'s own: 8 B
    # an entry and purpose, not counted by `cache_units`.
    timelines: dict[str, list[ConsentEntry]] | None = None


class ConsentProjection(Projection[ConsentViews]):
    name = "consent"
    # How many facts (grants, withdrawals, corrections) the cached subjects may hold in all,
    # each subject counting as one more (`LEDGER_VIEWS_CACHE_FACTS`); past it, the subjects
    # least recently written to are dropped. Counted in subjects, as it once was, a cache's
    # memory grew with each subject's history: 1.2 GiB at the benchmark's million facts, and
    # without a bound as subjects gathered facts. Counted in facts alone, it held 1.6 to 2.1
    # KiB a fact where each subject had one (most people consent once), 0.74 KiB where each
    # had ten: a subject's own state (its containers, the intervals it holds open) costs
    # about what its facts do (`python -m bench memory`).
    cache_facts = 1_200_000
    # Whether facts take the local paths (`_follow`, `_late`, `_corrected`); off, every fact
    # recomputes its purposes' intervals. Both write the same rows, which property tests
    # check.
    follow_in_order = True

    def __init__(self, view: ConsentViews, *, cache_facts: int | None = None) -> None:
        super().__init__(view)
        if cache_facts is not None:
            self.cache_facts = cache_facts
        # Subjects' view state as committed at `_positions`, so consecutive pages do not
        # reload every subject's history. Dropped when the committed position is not the one
        # this object last wrote (another writer) or when a page fails.
        self._cache: OrderedDict[str, SubjectView] = OrderedDict()  # least recent first
        self._cached_units = 0
        # Per tracking name (one per log, or per ledger partition in Kafka mode).
        self._positions: dict[str, int] = {}
        # Whether the view's position was found within the log (`projections.runner`).
        self.log_checked = False

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """The library's per-event entry point: a batch of one."""
        after = self.view.max_tracking_id(tracking.application_name)
        self.process_batch([domain_event], tracking, after=after)

    def process_batch(
        self,
        events: Iterable[DomainEventProtocol[UUID]],
        tracking: Tracking,
        *,
        after: int | None,
        mark: tuple[int, str] | None = None,
    ) -> None:
        """Apply events in log order and commit the views with `tracking` in one transaction.

        `after` is the view's position the events were read from (None: the beginning); if
        the view has moved since, nothing is written and ViewMovedOn says to read again.
        `mark`: the position and hash of the last fact read (`ConsentViews.log_mark`).
        """
        self.process_read([(events, tracking, after, mark)])

    def process_read(
        self,
        pages: Sequence[
            tuple[
                Iterable[DomainEventProtocol[UUID]],
                Tracking,
                int | None,
                tuple[int, str] | None,
            ]
        ],
    ) -> None:
        """`process_batch` for pages of several logs (the ledger topic's partitions, whose
        subjects are apart) read together: committed in one transaction, each with its
        (tracking, after, mark)."""
        read = [(list(events), tracking, after, mark) for events, tracking, after, mark in pages]
        if any(
            self.view.max_tracking_id(t.application_name) != self._positions.get(t.application_name)
            for _, t, _, _ in read
        ):
            self._drop_cache()
        sids = {
            e.originator_id.hex
            for events, *_ in read
            for e in events
            if isinstance(e, _SUBJECT_EVENTS)
        }
        state: dict[str, SubjectView] = {}
        for sid in sids:
            cached = self._cache.pop(sid, None)
            if cached is not None:
                self._cached_units -= cache_units(cached)
                state[sid] = cached
        state.update(self._load(sorted(sids - set(state))))
        changes = ViewChanges()
        try:
            for events, *_ in read:
                for event in events:
                    if isinstance(event, _SUBJECT_EVENTS):
                        self._apply(event, state, changes)
            self.view.apply_read(changes, [(t, after, mark) for _, t, after, mark in read])
        except BaseException:
            self._drop_cache()
            self._positions.clear()
            raise
        for _, tracking, _, _ in read:
            self._positions[tracking.application_name] = tracking.notification_id
        cache = self._cache
        for sid, view in state.items():
            cache[sid] = view
            self._cached_units += cache_units(view)
        while self._cached_units > self.cache_facts and cache:
            self._cached_units -= cache_units(cache.popitem(last=False)[1])

    def cache_held(self) -> tuple[int, int]:
        """The subjects cached and the units they count (`cache_units`) against `cache_facts`."""
        return len(self._cache), self._cached_units

    def _drop_cache(self) -> None:
        self._cache.clear()
        self._cached_units = 0

    def project_histories(self, events: Iterable[DomainEventProtocol[UUID]]) -> None:
        """Whole histories of subjects new to the view, each in version order, written
        without a log position (`projections.rebuild` positions the store when complete).

        A subject's rows depend only on its own facts, so a whole history folds in memory:
        an interval opened and closed within it is written once, closed.
        """
        state: dict[str, SubjectView] = {}
        changes = ViewChanges()
        for event in events:
            if isinstance(event, _SUBJECT_EVENTS):
                self._apply(event, state, changes)
        self.view.write(changes)

    def _load(self, sids: list[str]) -> dict[str, SubjectView]:
        views: dict[str, SubjectView] = {}
        for row in self.view.rows_in(
            "SELECT sid, tenant FROM view_subjects WHERE sid IN ({})", sids, tuples=True
        ):
            views[row[0]] = SubjectView(tenant=shared(row[1]))
        for row in self.view.rows_in("SELECT * FROM view_entries WHERE sid IN ({})", sids):
            views[row["sid"]].entries.append(entry_from_row(row))
        for row in self.view.rows_in(
            "SELECT * FROM view_corrections WHERE sid IN ({}) ORDER BY seq", sids
        ):
            views[row["sid"]].corrections.append(correction_from_row(row))
        for row in self.view.rows_in(
            "SELECT sid, purpose, valid_from, valid_to, event_id, ends_by, policy_version "
            "FROM view_intervals WHERE sid IN ({}) AND known_to IS NULL",
            sids,
            tuples=True,
        ):
            views[row[0]].open_intervals.add(
                (shared(row[1]), row[2], row[3], row[4], shared(row[5]), shared(row[6]))
            )
        for view in views.values():
            view.known = {e.event_id: e for e in entries_as_known(view.entries, view.corrections)}
        return views

    def _apply(self, event: Any, state: dict[str, SubjectView], changes: ViewChanges) -> None:
        sid = event.originator_id.hex
        recorded = event.timestamp
        if isinstance(event, Subject.Registered):
            state[sid] = SubjectView(tenant=shared(event.tenant))
            changes.subjects.append((sid, event.tenant, utc(recorded)))
            if not isinstance(event, ChainedAggregate.Fact):
                return  # a registration of its own (logs written before first facts)
        view = state[sid]
        if isinstance(event, _CONSENT_FACTS):
            # Grants and withdrawals are nearly every fact: tested first.
            entry = _entry(event, recorded)
            known_from = utc(recorded)
            if not view.latest and view.known:  # emptied by a correction, or not yet built
                view.latest = _latest_of(view.known.values())
            view.entries.append(entry)
            view.known[entry.event_id] = entry
            purposes = entry.purposes
            affected = set(purposes)
            changes.entries.append(entry_row(sid, entry, known_from))
            if self.follow_in_order:
                latest = view.latest
                at = entry.occurred_at
                if len(affected) == len(purposes):
                    for p in purposes:
                        last = latest.get(p)
                        if last is not None and not last.occurred_at < at:
                            break
                    else:
                        _follow(view, sid, entry, known_from, changes)
                        return
                    _late(view, sid, entry, known_from, changes)
                    return
                view.timelines = None  # a purpose named twice: the general path, below
                for p in affected:  # a new fact's seq is the subject's highest: it wins ties
                    if p not in latest or latest[p].occurred_at <= at:
                        latest[p] = entry
        elif isinstance(event, Subject.ConsentCorrected):
            correction = Correction(
                event.event_id,
                recorded,
                event.corrects,
                event.void,
                {k: tuple(v) if isinstance(v, list) else v for k, v in event.changes.items()},
            )
            view.corrections.append(correction)
            changes.corrections.append(correction_row(sid, event.originator_version, correction))
            target = view.known.get(correction.corrects)
            if target is None:
                return  # the target was voided before: nothing left to change
            changed = None if correction.void else target._replace(**correction.changes)
            if self.follow_in_order and _distinct(target) and _distinct(changed):
                timelines = _timelines(view)  # as known before the correction
                _set_known(view, target, changed)
                _corrected(view, sid, target, changed, timelines, utc(recorded), changes)
                return
            _set_known(view, target, changed)
            view.latest, view.timelines = {}, None  # built again when next needed
            affected = set(target.purposes) | set(changed.purposes if changed else ())
        else:
            _other_fact(event, view, sid, utc(recorded), changes)
            return
        # Only the purposes this fact touches can change; the rest keep their intervals.
        touched = [e for e in view.known.values() if affected.intersection(e.purposes)]
        now_true = {_key(i): i for i in granted_intervals(touched) if i.purpose in affected}
        still_open = {key for key in view.open_intervals if key[0] in affected}
        view.open_intervals -= still_open
        for key in still_open - set(now_true):
            changes.close_interval(utc(recorded), sid, key[0], key[1], key[2], key[3])
        for key in set(now_true) - still_open:
            interval = now_true[key]
            changes.open_interval(
                [
                    view.tenant,
                    interval.purpose,
                    sid,
                    key[1],
                    key[2],
                    utc(recorded),
                    None,
                    key[3],
                    interval.policy_version,
                    key[4],
                ]
            )
        view.open_intervals |= set(now_true)


def cache_units(view: SubjectView) -> int:
    """What a cached subject counts against `cache_facts`: its facts, and itself as one."""
    return 1 + len(view.entries) + len(view.corrections)


def _other_fact(
    event: Any, view: SubjectView, sid: str, recorded: str, changes: ViewChanges
) -> None:
    """Erasures and subject requests: rows of their own, no consent interval changes."""
    if isinstance(event, Subject.SubjectErased):
        changes.erasures.append((utc(event.occurred_at), recorded, sid))
    elif isinstance(event, Subject.RequestReceived):
        changes.requests.append(
            (
                sid,
                event.request_id,
                view.tenant,
                event.kind,
                utc(event.occurred_at),
                utc(event.due_at) if event.due_at else None,
            )
        )
    elif isinstance(event, Subject.RequestClosed):
        changes.closed_requests.append(
            (utc(event.occurred_at), event.outcome, sid, event.request_id)
        )


def _follow(
    view: SubjectView, sid: str, entry: ConsentEntry, known_from: str, changes: ViewChanges
) -> None:
    """The intervals' change when `entry` comes after every entry of its purposes in valid
    time, as corrected (`view.known`): publishers send facts in the order they happen, so
    this is nearly every fact, and it is local. Each purpose's last grant now ends
    at this entry (unless it expired first) and a grant opens its own interval; every earlier
    interval stays as it was. The general path (`granted_intervals` over the purposes' whole
    timelines) gives the same rows; the property tests run both, on in-order and late facts.
    """
    at = entry.occurred_at
    at_utc = utc(at)
    timelines = view.timelines
    for purpose in entry.purposes:
        before = view.latest.get(purpose)
        view.latest[purpose] = entry
        if timelines is not None:
            timelines.setdefault(purpose, []).append(entry)
        if before is not None and before.kind == "grant":
            expires = before.expires_at
            # An expiry at this very instant ends the grant by this fact, as in
            # granted_intervals: the fact decides from that instant on.
            if expires is None or expires >= at:
                start = utc(before.occurred_at)
                old: IntervalKey = (
                    purpose,
                    start,
                    None if expires is None else utc(expires),
                    before.event_id,
                    None if expires is None else "expiry",
                    before.policy_version,
                )
                new: IntervalKey = (
                    purpose,
                    start,
                    at_utc,
                    before.event_id,
                    "fact",
                    before.policy_version,
                )
                changes.close_interval(known_from, sid, *old[:4])
                view.open_intervals.discard(old)
                view.open_intervals.add(new)
                changes.open_interval(
                    [
                        *(view.tenant, purpose, sid, start, new[2], known_from, None, new[3]),
                        *(before.policy_version, "fact"),
                    ]
                )
        if entry.kind == "grant":
            end = None if entry.expires_at is None else utc(entry.expires_at)
            key: IntervalKey = (
                purpose,
                at_utc,
                end,
                entry.event_id,
                None if end is None else "expiry",
                entry.policy_version,
            )
            view.open_intervals.add(key)
            changes.open_interval(
                [
                    *(view.tenant, purpose, sid, key[1], end, known_from, None, entry.event_id),
                    *(entry.policy_version, key[4]),
                ]
            )


def _latest_of(known: Iterable[ConsentEntry]) -> dict[str, ConsentEntry]:
    """Per purpose, the entry last in valid time (occurred_at, then seq)."""
    latest: dict[str, ConsentEntry] = {}
    for entry in sorted(known, key=_order):
        latest.update(dict.fromkeys(entry.purposes, entry))
    return latest


def _distinct(entry: ConsentEntry | None) -> bool:
    """Whether each of the entry's purposes is named once (the parser makes them so; a log
    of older code may hold one named twice, which the general path takes)."""
    return entry is None or len(set(entry.purposes)) == len(entry.purposes)


def _set_known(view: SubjectView, target: ConsentEntry, changed: ConsentEntry | None) -> None:
    if changed is None:
        del view.known[target.event_id]
    else:
        view.known[target.event_id] = changed


def _timelines(
    view: SubjectView, leaving_out: ConsentEntry | None = None
) -> dict[str, list[ConsentEntry]]:
    """Per purpose, the entries of `view.known` in valid time (but `leaving_out`), built
    when first needed and then kept by the local paths."""
    if view.timelines is None:
        view.timelines = {}
        for known in sorted(view.known.values(), key=_order):
            if known is not leaving_out:
                for purpose in known.purposes:
                    view.timelines.setdefault(purpose, []).append(known)
    return view.timelines


def _corrected(
    view: SubjectView,
    sid: str,
    target: ConsentEntry,
    changed: ConsentEntry | None,
    timelines: dict[str, list[ConsentEntry]],
    known_from: str,
    changes: ViewChanges,
) -> None:
    """The intervals' change when a correction voids `target` (`changed` None) or makes it
    `changed`: the entry taken out of its purposes' timelines and the changed one slotted
    in where it now belongs, each step changing only its neighbours' intervals, as in
    `_late`. Recomputing the purposes' whole timelines took 9 ms a correction in a subject
    of 5,000 facts (2026-12-04); the general path still does, and the property tests hold
    the two to the same rows.
    """
    closed: set[IntervalKey] = set()
    opened: set[IntervalKey] = set()

    def step(was: set[IntervalKey], now: set[IntervalKey]) -> None:
        for key in was - now:
            if key in opened:
                opened.discard(key)
            else:
                closed.add(key)
        for key in now - was:
            if key in closed:
                closed.discard(key)
            else:
                opened.add(key)

    for purpose in target.purposes:
        timeline = timelines[purpose]
        j = bisect_left(timeline, _order(target), key=_order)
        before = timeline[j - 1] if j else None
        after = timeline[j + 1] if j + 1 < len(timeline) else None
        del timeline[j]
        step(
            _intervals(purpose, (before, target), (target, after)),
            _intervals(purpose, (before, after)),
        )
    for purpose in changed.purposes if changed is not None else ():
        assert changed is not None
        timeline = timelines.setdefault(purpose, [])
        i = bisect_left(timeline, _order(changed), key=_order)
        before = timeline[i - 1] if i else None
        after = timeline[i] if i < len(timeline) else None
        timeline.insert(i, changed)
        step(
            _intervals(purpose, (before, after)),
            _intervals(purpose, (before, changed), (changed, after)),
        )
    view.latest = {purpose: timeline[-1] for purpose, timeline in timelines.items() if timeline}
    for key in closed:
        changes.close_interval(known_from, sid, *key[:4])
        view.open_intervals.discard(key)
    for key in opened:
        changes.open_interval(
            [
                *(view.tenant, key[0], sid, key[1], key[2], known_from, None, key[3]),
                *(key[5], key[4]),
            ]
        )
        view.open_intervals.add(key)


def _order(entry: ConsentEntry) -> tuple[datetime, int]:
    return entry.occurred_at, entry.seq


def _late(
    view: SubjectView, sid: str, entry: ConsentEntry, known_from: str, changes: ViewChanges
) -> None:
    """The intervals' change when `entry` comes before some entry of its purposes in valid
    time, as corrected (`view.known`). A grant's interval depends only on the
    grant and the entry after it in its purpose's timeline (`granted_intervals`), so
    slotting `entry` in changes at most two: the entry before it now ends at it, and its own
    ends where that one did. Recomputing the purposes' whole timelines for each late fact
    instead made a history sent newest first quadratic: 10,000 grants of one subject took
    43 s to project (2026-12-04), and the views waited on them.
    """
    at = entry.occurred_at
    timelines = _timelines(view, leaving_out=entry)  # already in `known`
    for purpose in entry.purposes:
        timeline = timelines.setdefault(purpose, [])
        # The entry is the subject's last recorded, so it follows those of its own instant.
        i = bisect_right(timeline, at, key=_occurred_at)
        before = timeline[i - 1] if i else None
        after = timeline[i] if i < len(timeline) else None
        timeline.insert(i, entry)
        if after is None:
            view.latest[purpose] = entry
        was = _intervals(purpose, (before, after))
        now = _intervals(purpose, (before, entry), (entry, after))
        for key in was - now:
            changes.close_interval(known_from, sid, *key[:4])
            view.open_intervals.discard(key)
        for key in now - was:
            changes.open_interval(
                [
                    *(view.tenant, purpose, sid, key[1], key[2], known_from, None, key[3]),
                    *(key[5], key[4]),
                ]
            )
            view.open_intervals.add(key)


def _occurred_at(entry: ConsentEntry) -> datetime:
    return entry.occurred_at


def _intervals(
    purpose: str, *pairs: tuple[ConsentEntry | None, ConsentEntry | None]
) -> set[IntervalKey]:
    """The intervals `granted_intervals` gives each pair's entry for `purpose` when the
    pair's other comes next in the purpose's timeline (None: the end of it)."""
    out: set[IntervalKey] = set()
    for entry, following in pairs:
        if entry is None or entry.kind != "grant":
            continue
        if following is not None and following.occurred_at == entry.occurred_at:
            continue  # superseded at the same instant: never in force
        end = None if following is None else following.occurred_at
        ends_by = None if following is None else "fact"
        if entry.expires_at is not None and (end is None or entry.expires_at < end):
            end, ends_by = entry.expires_at, "expiry"
        out.add(
            (
                purpose,
                utc(entry.occurred_at),
                None if end is None else utc(end),
                entry.event_id,
                ends_by,
                entry.policy_version,
            )
        )
    return out


def _entry(event: Any, recorded: datetime) -> ConsentEntry:
    if isinstance(event, Subject.ConsentWithdrawn):
        return ConsentEntry(
            event_id=event.event_id,
            kind="withdrawal",
            seq=event.originator_version,
            recorded_at=recorded,
            occurred_at=event.occurred_at,
            purposes=shared_tuple(event.purposes),
        )
    return ConsentEntry(
        event_id=event.event_id,
        kind="grant",
        seq=event.originator_version,
        recorded_at=recorded,
        occurred_at=event.occurred_at,
        purposes=shared_tuple(event.purposes),
        categories=shared_tuple(event.categories),
        expires_at=event.expires_at,
        policy_version=shared(event.policy_version),
        third_party_transfer=event.third_party_transfer,
        cross_border_transfer=event.cross_border_transfer,
        publication=event.publication,
    )


# Purposes, categories, policy versions and tenants come from the tenants' catalogues: a
# handful of values that fact after fact repeats. Decoded per fact, each was an object of
# its own, held for as long as the subject's view state is cached: 1.1 million strings and
# tuples of 58 bytes on average for 200,000 facts, about a third of the cache's memory.
# Shared, they cost a dictionary lookup a fact. Bounded in case a catalogue is not small.
_SHARED: dict[Any, Any] = {}
_SHARED_LIMIT = 100_000


def shared(value: _T) -> _T:
    """The one object equal to `value` that view state holds (strings, None)."""
    if value is None:
        return value
    found = _SHARED.get(value)
    if found is None:
        if len(_SHARED) >= _SHARED_LIMIT:
            _SHARED.clear()
        found = _SHARED[value] = value
    return found


def shared_tuple(values: Iterable[str]) -> tuple[str, ...]:
    """The one tuple of these strings, itself of shared strings, that view state holds."""
    key = tuple(values)
    found = _SHARED.get(key)
    if found is None:
        found = shared(tuple(shared(v) for v in key))
    return found


_CONSENT_FACTS = (Subject.ConsentGranted, Subject.ConsentWithdrawn)

_SUBJECT_EVENTS = (
    Subject.Registered,
    Subject.ConsentGranted,
    Subject.ConsentWithdrawn,
    Subject.ConsentCorrected,
    Subject.SubjectErased,
    Subject.RequestReceived,
    Subject.RequestClosed,
)


def _key(interval: GrantedInterval) -> IntervalKey:
    return (
        interval.purpose,
        utc(interval.start),
        utc(interval.end) if interval.end is not None else None,
        interval.event_id,
        None if interval.end is None else "expiry" if interval.expires else "fact",
        interval.policy_version,
    )


def entry_row(sid: str, e: ConsentEntry, recorded_at: str) -> tuple[Any, ...]:
    """`recorded_at`: `utc(e.recorded_at)`, which the caller has already."""
    return (
        sid,
        e.event_id,
        e.kind,
        e.seq,
        recorded_at,
        isoformat(e.occurred_at),
        _json_list(e.purposes),
        _json_list(e.categories),
        isoformat(e.expires_at) if e.expires_at else None,
        e.policy_version,
        int(e.third_party_transfer),
        int(e.cross_border_transfer),
        int(e.publication),
    )


_JSON_LISTS: dict[tuple[str, ...], str] = {}


def _json_list(values: tuple[str, ...]) -> str:
    """The JSON text of a tuple of purposes or categories. A catalogue has few, and every
    entry row writes two, so each is encoded once (at most a few thousand are kept)."""
    text = _JSON_LISTS.get(values)
    if text is None:
        text = orjson.dumps(values).decode()
        if len(_JSON_LISTS) < 4096:
            _JSON_LISTS[values] = text
    return text


def entry_from_row(row: Any) -> ConsentEntry:
    """A `SELECT *` row of view_entries, as a plain tuple or a sqlite3.Row: read by position
    (entry_row's order), which both allow and which costs no lookup by name."""
    return ConsentEntry(
        event_id=row[1],
        kind=row[2],
        seq=row[3],
        recorded_at=_required(row[4]),
        occurred_at=_required(row[5]),
        purposes=shared_tuple(orjson.loads(row[6])),
        categories=shared_tuple(orjson.loads(row[7])),
        expires_at=parse_utc(row[8]),
        policy_version=shared(row[9]),
        third_party_transfer=bool(row[10]),
        cross_border_transfer=bool(row[11]),
        publication=bool(row[12]),
    )


def correction_row(sid: str, seq: int, c: Correction) -> tuple[Any, ...]:
    changes = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in c.changes.items()}
    return (
        sid,
        c.event_id,
        seq,
        utc(c.recorded_at),
        c.corrects,
        int(c.void),
        orjson.dumps(changes).decode(),
    )


def correction_from_row(row: Any) -> Correction:
    changes: dict[str, Any] = {}
    for key, value in orjson.loads(row["changes"]).items():
        if key in ("occurred_at", "expires_at"):
            changes[key] = parse_utc(value)
        elif isinstance(value, list):
            changes[key] = tuple(value)
        else:
            changes[key] = value
    return Correction(
        row["event_id"], _required(row["recorded_at"]), row["corrects"], bool(row["void"]), changes
    )


def _required(text: str) -> Any:
    value = parse_utc(text)
    assert value is not None
    return value
