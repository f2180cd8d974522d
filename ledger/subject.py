"""A data subject as one tenant knows them, and the rules every fact about them must keep.

The subject is addressed by `sid` (a keyed pseudonym); the reference the publisher used, and
all other personal data, live only in sealed (`pii`) fields encrypted with the subject's key.
Each method checks its rule and either records one fact or raises `FactRejected` having
recorded nothing.
"""

from __future__ import annotations

import copy
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import event
from eventsourcing.utils import get_topic

from ledger.chained import ChainedAggregate, new_event
from ledger.consent import (
    ConsentEntry,
    Correction,
    PurposeState,
    consent_at,
    entries_as_corrected,
    entries_as_known,
    in_force,
)
from ledger.envelope import Fact
from ledger.errors import Code, FactRejected
from ledger.policy import PolicyVersion

CONSENT_FACTS = ("consent.granted", "consent.withdrawn")


class Subject(ChainedAggregate):
    class Registered(ChainedAggregate.Created):
        tenant: str
        pii: str | None  # the publisher's reference for the person, sealed

    @event(Registered)
    def __init__(self, id: UUID, tenant: str, pii: str | None) -> None:
        self._start(tenant)

    def _start(self, tenant: str) -> None:
        self.tenant = tenant
        self.fact_types: dict[str, str] = {}
        self.entries: list[ConsentEntry] = []
        self.corrections: list[Correction] = []
        self.requests: dict[str, dict[str, Any]] = {}
        self.erased_at: datetime | None = None
        self.erasure_recorded_at: datetime | None = None
        # Each purpose's deciding entry after the last fact in valid time, as known now, and
        # that fact's time (None: rebuilt when next asked, after a correction). Most facts
        # come after every fact of the subject before them, and this answers what is in
        # force then without folding the subject's whole history: a withdrawal's check was
        # that fold, and a subject granting and withdrawing 20,000 times took 34 s to record
        # (9 s for 10,000: quadratic; 2026-12-04). Kept from the first entry on: built when
        # first asked instead, the embedded write path took 0.6% more instructions a fact.
        self._deciding_last: dict[str, ConsentEntry] | None = {}
        self._last_occurred_at: datetime | None = None
        # Per purpose, the entries as known now in valid time (occurred_at, then seq): what
        # was in force at any instant is one bisection a purpose. Built when first asked of
        # an instant before the last fact (a late withdrawal or transfer), for a withdrawal's
        # correction, or after a correction, then kept as entries and corrections are
        # applied. Each of those was a fold of the subject's whole history: 5,000 late
        # withdrawals of a subject of 5,000 grants took 37 s to record, 5,000 corrections of
        # its withdrawals 56 s (`python -m bench ingest`, "grants first", 2026-12-04). Not
        # kept from the first entry on: its lists cost the write path 0.7% more instructions
        # a fact (`python -m bench instructions`), and every cached subject memory.
        self._timelines: dict[str, list[ConsentEntry]] | None = None
        # The grants and withdrawals as known now, by event id (`entries_as_known`): built
        # when a rule first asks, then kept as entries and corrections are applied. Folded
        # anew for each correction, 5,000 corrections of a subject of 20,000 facts took 28 s
        # to record (2026-12-04).
        self._known: dict[str, ConsentEntry] | None = None
        # The voided ones, as the trail shows them (a later correction may still change
        # one), built and kept with `_known`: a correction of a voided grant is checked
        # against it, and finding it by a scan of the entries and corrections made each such
        # correction cost the subject's whole history.
        self._voided: dict[str, ConsentEntry] = {}

    @classmethod
    def unregistered(cls, id: UUID, tenant: str) -> Subject:
        """A subject no fact has registered yet, at version 0, with no event.

        The rules run against it like any other subject; its first accepted fact registers
        it (see `trigger_event`), so a new subject costs one event, not a registration and a
        fact. A refused first fact leaves nothing to record.
        """
        subject = cls.__new__(cls)
        subject.__base_init__(id, 0, datetime.now(UTC))
        subject._start(tenant)
        return subject

    def __deepcopy__(self, memo: dict[int, Any]) -> Subject:
        """A reader's copy (`ConsentLedger.subject`), which the next batch's changes to the
        cached subject must not reach: its own containers, sharing what never changes once
        made (entries and corrections, immutable tuples; the last event). Deep, the copy
        took a third of `tenants export`'s time (7.8 of 25.0 s for 20,000 subjects, under
        cProfile, 2026-12-04). tests/test_rules.py holds it apart from the subject."""
        copied = copy.copy(self)
        copied.fact_types = dict(self.fact_types)
        copied.entries = list(self.entries)
        copied.corrections = list(self.corrections)
        copied.requests = {request: dict(state) for request, state in self.requests.items()}
        copied._pending_events = list(self._pending_events)
        if self._deciding_last is not None:
            copied._deciding_last = dict(self._deciding_last)
        if self._timelines is not None:
            copied._timelines = {p: list(line) for p, line in self._timelines.items()}
        if self._known is not None:
            copied._known = dict(self._known)
        copied._voided = dict(self._voided)
        return copied

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        if self.version:
            super().trigger_event(event_class, **kwargs)
            return
        # The first fact: one event that both registers the subject and states the fact.
        first: Any = _FIRST.get(event_class)
        if first is None:
            raise AssertionError(f"{event_class.__name__} cannot be a subject's first fact")
        # What the library's `_create` does once its id and topic checks are passed (the id
        # is this subject's, the topic this class's): build the created event, then register
        # this subject with it (`_register`: what the event's mutate would make of a new one).
        self._register(
            new_event(
                first,
                {
                    "originator_topic": _TOPIC,
                    "originator_id": self.id,
                    "originator_version": self.INITIAL_VERSION,
                    "timestamp": first.create_timestamp(),
                    "tenant": self.tenant,
                    **kwargs,
                },
            )
        )

    def _register(self, created: Any) -> None:
        """What `created.mutate(None)` makes of a new aggregate, made of this one, which the
        caller holds, with `created` kept pending.

        The library's `CanInitAggregate.mutate` gives a new object the event's id, version
        and timestamp (`__base_init__`), runs `__init__` with the event's fields, then the
        event's `apply` (a fact's also points the chain's head at it, which is all that
        `ChainedAggregate.Created.mutate` adds). Done here step by step on this object, that
        took 2 us where the library's generic path (resolving the topic, filtering the
        event's fields for each init) took 12 us, and two facts in three name a new subject
        (timeit, 2026-12-01). tests/test_events.py holds it to `created.mutate(None)`.
        """
        self.__base_init__(created.originator_id, created.originator_version, created.timestamp)
        self._start(created.tenant)
        created.apply(self)
        self._pending_events.append(created)

    @property
    def erased(self) -> bool:
        return self.erasure_recorded_at is not None

    # ---- facts -------------------------------------------------------------------------

    class ConsentGranted(ChainedAggregate.Fact):
        fact_type = "consent.granted"
        pii: str | None
        policy_version: str
        operator: dict[str, str]  # the controller the person consented to (name, TIN)
        purposes: tuple[str, ...]
        categories: tuple[str, ...]
        expires_at: datetime | None
        third_party_transfer: bool
        cross_border_transfer: bool
        publication: bool

        def apply_fact(self, aggregate: Any) -> None:
            aggregate.add_entry(
                ConsentEntry(
                    event_id=self.event_id,
                    kind="grant",
                    seq=self.originator_version,
                    recorded_at=self.timestamp,
                    occurred_at=self.occurred_at,
                    purposes=self.purposes,
                    categories=self.categories,
                    expires_at=self.expires_at,
                    policy_version=self.policy_version,
                    third_party_transfer=self.third_party_transfer,
                    cross_border_transfer=self.cross_border_transfer,
                    publication=self.publication,
                )
            )

    class ConsentWithdrawn(ChainedAggregate.Fact):
        fact_type = "consent.withdrawn"
        pii: str | None
        purposes: tuple[str, ...]
        all_purposes: bool

        def apply_fact(self, aggregate: Any) -> None:
            aggregate.add_entry(
                ConsentEntry(
                    event_id=self.event_id,
                    kind="withdrawal",
                    seq=self.originator_version,
                    recorded_at=self.timestamp,
                    occurred_at=self.occurred_at,
                    purposes=self.purposes,
                )
            )

    class ConsentCorrected(ChainedAggregate.Fact):
        fact_type = "consent.corrected"
        pii: str | None
        corrects: str
        void: bool
        changes: dict[str, Any]

        def apply_fact(self, aggregate: Any) -> None:
            changes = {k: tuple(v) if isinstance(v, list) else v for k, v in self.changes.items()}
            aggregate.add_correction(
                Correction(self.event_id, self.timestamp, self.corrects, self.void, changes)
            )

    class SubjectRectified(ChainedAggregate.Fact):
        fact_type = "subject.rectified"
        pii: str | None
        request_id: str | None

    class SubjectErased(ChainedAggregate.Fact):
        fact_type = "subject.erased"
        pii: str | None
        ground: str
        request_id: str | None

        def apply_fact(self, aggregate: Any) -> None:
            if aggregate.erasure_recorded_at is None:
                aggregate.erased_at = self.occurred_at
                aggregate.erasure_recorded_at = self.timestamp

    class TransferRecorded(ChainedAggregate.Fact):
        fact_type = "transfer.recorded"
        pii: str | None
        recipient: dict[str, str]
        categories: tuple[str, ...]
        ground: str
        cross_border: bool

    class RequestReceived(ChainedAggregate.Fact):
        fact_type = "request.received"
        pii: str | None
        request_id: str
        kind: str
        due_at: datetime | None

        def apply_fact(self, aggregate: Any) -> None:
            aggregate.requests[self.request_id] = {
                "kind": self.kind,
                "received_at": self.occurred_at,
                "due_at": self.due_at,
                "outcome": None,
            }

    class RequestClosed(ChainedAggregate.Fact):
        fact_type = "request.closed"
        pii: str | None
        request_id: str
        outcome: str

        def apply_fact(self, aggregate: Any) -> None:
            aggregate.requests[self.request_id]["outcome"] = self.outcome

    class ComplaintLodged(ChainedAggregate.Fact):
        fact_type = "complaint.lodged"
        pii: str | None
        authority: str
        reference: str
        request_id: str | None

    # ---- a subject's first fact --------------------------------------------------------
    # Each registers the subject and states the fact in one event: `pii` seals the
    # publisher's reference ("subject") together with the fact's own personal data. A
    # withdrawal, a correction or a request's closing is never first: its rule needs a fact
    # before it. Logs written before these existed hold a Registered event and then the fact.

    class FirstConsentGranted(Registered, ConsentGranted):
        pass

    class FirstSubjectRectified(Registered, SubjectRectified):
        pass

    class FirstSubjectErased(Registered, SubjectErased):
        pass

    class FirstTransferRecorded(Registered, TransferRecorded):
        pass

    class FirstRequestReceived(Registered, RequestReceived):
        pass

    class FirstComplaintLodged(Registered, ComplaintLodged):
        pass

    # ---- rules -------------------------------------------------------------------------

    def record(self, fact: Fact, pii: str | None, policies: Mapping[str, PolicyVersion]) -> None:
        """Check `fact` against this subject's rules and record it, or raise FactRejected."""
        handler = _HANDLERS[fact.type]
        handler(self, fact, pii, policies)

    def _common(self, fact: Fact, pii: str | None) -> dict[str, Any]:
        return {
            "event_id": fact.event_id,
            "occurred_at": fact.occurred_at,
            "source": fact.source,
            "channel": fact.channel,
            "prev_hash": self.head_hash,
            "pii": pii,
        }

    def _grant(self, fact: Fact, pii: str | None, policies: Mapping[str, PolicyVersion]) -> None:
        body = fact.body
        if self.erased:
            raise FactRejected(
                Code.SUBJECT_ERASED, "the subject was erased; no new consent can be recorded"
            )
        policy = _policy(policies, body["policy_version"], fact.occurred_at)
        purposes = tuple(body["purposes"])
        _check_purposes(policy, purposes)
        categories = tuple(body["categories"]) or policy.categories_of(purposes)
        _check_categories(policy, purposes, categories)
        expires_at = body["expires_at"]
        if expires_at is not None and expires_at <= fact.occurred_at:
            raise FactRejected(
                Code.EXPIRY_BEFORE_GRANT, "expires_at must be after occurred_at", "expires_at"
            )
        self.trigger_event(
            self.ConsentGranted,
            **self._common(fact, pii),
            policy_version=policy.version,
            operator={"name": policy.operator_name, "tin": policy.operator_tin},
            purposes=purposes,
            categories=categories,
            expires_at=expires_at,
            third_party_transfer=body["third_party_transfer"],
            cross_border_transfer=body["cross_border_transfer"],
            publication=body["publication"],
        )

    def _withdraw(self, fact: Fact, pii: str | None, _: Mapping[str, PolicyVersion]) -> None:
        granted = self.grants_in_force(fact.occurred_at)
        requested = fact.body["purposes"]
        all_purposes = requested == ["*"]
        if all_purposes:
            if not granted:
                raise FactRejected(
                    Code.PURPOSE_NOT_IN_FORCE,
                    "no purpose was in force at occurred_at, so nothing can be withdrawn",
                    "purposes",
                )
            purposes = tuple(sorted(granted))
        else:
            _check_in_force(granted, requested, "occurred_at", "purposes")
            purposes = tuple(requested)
        self.trigger_event(
            self.ConsentWithdrawn,
            **self._common(fact, pii),
            purposes=purposes,
            all_purposes=all_purposes,
        )

    def _correct(self, fact: Fact, pii: str | None, policies: Mapping[str, PolicyVersion]) -> None:
        body = fact.body
        target_type = self.fact_types.get(body["corrects"])
        if target_type is None:
            raise FactRejected(
                Code.CORRECTION_TARGET_UNKNOWN,
                "the subject has no fact with the event id named in 'corrects'",
                "corrects",
            )
        if target_type not in CONSENT_FACTS:
            raise FactRejected(
                Code.CORRECTION_TARGET_NOT_CONSENT,
                "only consent.granted and consent.withdrawn facts can be corrected",
                "corrects",
            )
        changes = dict(body["changes"])
        if changes:
            known = self._known_by_id()
            current = known.get(body["corrects"])
            if current is None:
                # Voided by an earlier correction. Checked all the same against the fact with
                # every later correction applied, as the trail shows it: against the fact as
                # recorded, a voided grant whose expiry was corrected was refused a change of
                # its time that fitted the corrected expiry.
                current = self._voided[body["corrects"]]
            if current.kind == "withdrawal":
                extra = set(changes) - {"occurred_at", "purposes"}
                if extra:
                    raise FactRejected(
                        Code.INVALID_FIELD,
                        "a withdrawal's correction may change only occurred_at and purposes",
                        "changes",
                    )
                if current.event_id in known:  # a voided withdrawal withdraws nothing
                    # As corrected, it withdraws only what was in force at its time, as the
                    # withdrawal itself had to (checked without it): one corrected to an
                    # unknown purpose was answered as that purpose withdrawn, and one moved
                    # before its grant withdrew nothing.
                    _check_in_force(
                        self.grants_in_force(
                            changes.get("occurred_at", current.occurred_at), leaving_out=current
                        ),
                        changes.get("purposes", current.purposes),
                        "the withdrawal's corrected time",
                        "changes",
                    )
            else:
                occurred_at = changes.get("occurred_at", current.occurred_at)
                version = changes.get("policy_version", current.policy_version)
                policy = _policy(policies, version, occurred_at)
                purposes = tuple(changes.get("purposes", current.purposes))
                _check_purposes(policy, purposes)
                _check_categories(
                    policy, purposes, tuple(changes.get("categories", current.categories))
                )
                expires_at = changes.get("expires_at", current.expires_at)
                if expires_at is not None and expires_at <= occurred_at:
                    raise FactRejected(
                        Code.EXPIRY_BEFORE_GRANT, "expires_at must be after occurred_at", "changes"
                    )
        self.trigger_event(
            self.ConsentCorrected,
            **self._common(fact, pii),
            corrects=body["corrects"],
            void=body["void"],
            changes=changes,
        )

    def _rectify(self, fact: Fact, pii: str | None, _: Mapping[str, PolicyVersion]) -> None:
        if self.erased:
            raise FactRejected(
                Code.SUBJECT_ERASED, "the subject was erased; there is no data left to rectify"
            )
        self.trigger_event(
            self.SubjectRectified, **self._common(fact, pii), request_id=fact.body["request_id"]
        )

    def _erase(self, fact: Fact, pii: str | None, _: Mapping[str, PolicyVersion]) -> None:
        self.trigger_event(
            self.SubjectErased,
            **self._common(fact, pii),
            ground=fact.body["ground"],
            request_id=fact.body["request_id"],
        )

    def _transfer(self, fact: Fact, pii: str | None, _: Mapping[str, PolicyVersion]) -> None:
        body = fact.body
        if body["ground"] == "explicit_consent":
            allowed: set[str] = set()
            for grant in self.grants_in_force(fact.occurred_at).values():
                if grant.third_party_transfer and (
                    grant.cross_border_transfer or not body["cross_border"]
                ):
                    allowed.update(grant.categories)
            missing = [c for c in body["categories"] if c not in allowed]
            if missing:
                raise FactRejected(
                    Code.TRANSFER_WITHOUT_CONSENT,
                    "no consent in force at occurred_at allowed this transfer of "
                    f"{', '.join(missing)}",
                    "categories",
                )
        self.trigger_event(
            self.TransferRecorded,
            **self._common(fact, pii),
            recipient=body["recipient"],
            categories=tuple(body["categories"]),
            ground=body["ground"],
            cross_border=body["cross_border"],
        )

    def _receive_request(self, fact: Fact, pii: str | None, _: Mapping[str, PolicyVersion]) -> None:
        body = fact.body
        if body["request_id"] in self.requests:
            raise FactRejected(
                Code.REQUEST_EXISTS,
                "a request with this request_id was already received",
                "request_id",
            )
        if body["due_at"] is not None and body["due_at"] < fact.occurred_at:
            # Such a request was overdue before it was received (due at that very instant,
            # it is overdue from then, as the due list says).
            raise FactRejected(
                Code.REQUEST_DUE_BEFORE_RECEIVED, "due_at is before occurred_at", "due_at"
            )
        self.trigger_event(
            self.RequestReceived,
            **self._common(fact, pii),
            request_id=body["request_id"],
            kind=body["kind"],
            due_at=body["due_at"],
        )

    def _close_request(self, fact: Fact, pii: str | None, _: Mapping[str, PolicyVersion]) -> None:
        request = self.requests.get(fact.body["request_id"])
        if request is None:
            raise FactRejected(
                Code.UNKNOWN_REQUEST, "no request with this request_id was received", "request_id"
            )
        if request["outcome"] is not None:
            raise FactRejected(
                Code.REQUEST_ALREADY_CLOSED, "this request was already closed", "request_id"
            )
        if fact.occurred_at < request["received_at"]:
            # The register would show it answered before it was asked.
            raise FactRejected(
                Code.REQUEST_CLOSED_BEFORE_RECEIVED,
                "occurred_at is before the request was received",
                "occurred_at",
            )
        self.trigger_event(
            self.RequestClosed,
            **self._common(fact, pii),
            request_id=fact.body["request_id"],
            outcome=fact.body["outcome"],
        )

    def _lodge_complaint(self, fact: Fact, pii: str | None, _: Mapping[str, PolicyVersion]) -> None:
        body = fact.body
        if body["request_id"] is not None and body["request_id"] not in self.requests:
            raise FactRejected(
                Code.UNKNOWN_REQUEST, "no request with this request_id was received", "request_id"
            )
        self.trigger_event(
            self.ComplaintLodged,
            **self._common(fact, pii),
            authority=body["authority"],
            reference=body["reference"],
            request_id=body["request_id"],
        )

    # ---- questions ---------------------------------------------------------------------

    def add_entry(self, entry: ConsentEntry) -> None:
        self.entries.append(entry)
        if self._known is not None:
            self._known[entry.event_id] = entry
        # No correction recorded so far names it (one names a fact already recorded, and
        # event ids are unique), so it is known as recorded. Recorded last, it follows every
        # entry of the same valid time (`seq` breaks ties).
        at = entry.occurred_at
        timelines = self._timelines
        if timelines is not None:
            for purpose in entry.purposes:
                timeline = timelines.setdefault(purpose, [])
                if not timeline or timeline[-1].occurred_at <= at:
                    timeline.append(entry)
                else:
                    timeline.insert(bisect_right(timeline, at, key=_occurred_at), entry)
        deciding = self._deciding_last
        if deciding is None:
            return
        for purpose in entry.purposes:
            current = deciding.get(purpose)
            if current is None or current.occurred_at <= at:
                deciding[purpose] = entry
        if self._last_occurred_at is None or at > self._last_occurred_at:
            self._last_occurred_at = at

    def add_correction(self, correction: Correction) -> None:
        self.corrections.append(correction)
        known = self._known
        if known is None:  # the entry it names, as known, is not at hand
            self._timelines = self._deciding_last = None
            return
        # As `entries_as_known` applies it: the entry it names is recorded before it (a
        # correction names a fact already recorded), and one voided stays voided.
        target = known.get(correction.corrects)
        if target is None:  # voided before: only how the trail shows it changes
            voided = self._voided.get(correction.corrects)
            if voided is not None and not correction.void:
                self._voided[correction.corrects] = voided._replace(**correction.changes)
            return
        changed = None if correction.void else target._replace(**correction.changes)
        if changed is None:
            del known[correction.corrects]
            self._voided[correction.corrects] = target._replace(void=True)
        else:
            known[correction.corrects] = changed
        timelines = self._timelines
        if timelines is None:
            self._deciding_last = None  # it may move, void, narrow or widen any entry
            return
        # Taken out of each of its purposes' timelines, and the changed entry slotted into
        # each of its own.
        for purpose in target.purposes:
            timeline = timelines[purpose]
            del timeline[bisect_left(timeline, _order(target), key=_order)]
        if changed is not None:
            for purpose in changed.purposes:
                timeline = timelines.setdefault(purpose, [])
                timeline.insert(bisect_right(timeline, _order(changed), key=_order), changed)
        self._deciding_from(timelines)

    def _known_by_id(self) -> dict[str, ConsentEntry]:
        if self._known is None:
            corrected = entries_as_corrected(self.entries, self.corrections)
            self._known = {k: e for k, e in corrected.items() if not e.void}
            self._voided = {k: e for k, e in corrected.items() if e.void}
        return self._known

    def _timelines_built(self) -> dict[str, list[ConsentEntry]]:
        timelines = self._timelines
        if timelines is None:
            timelines = self._timelines = {}
            for entry in sorted(self._known_by_id().values(), key=_order):
                for purpose in entry.purposes:
                    timelines.setdefault(purpose, []).append(entry)
        return timelines

    def _deciding_from(self, timelines: dict[str, list[ConsentEntry]]) -> None:
        """The kept state after the last fact, as `deciding_entries` at that fact's time."""
        self._deciding_last = {p: timeline[-1] for p, timeline in timelines.items() if timeline}
        self._last_occurred_at = max(
            (entry.occurred_at for entry in self._deciding_last.values()), default=None
        )

    def grants_in_force(
        self, at: datetime, leaving_out: ConsentEntry | None = None
    ) -> dict[str, ConsentEntry]:
        """Purpose -> the grant in force at `at`, as known now: `grants_in_force` over
        `known_entries()` (but `leaving_out`, which a withdrawal's correction is checked
        without), answered from the kept state when `at` is after every entry, else from
        each purpose's timeline."""
        if self._deciding_last is None:
            self._deciding_from(self._timelines_built())
        assert self._deciding_last is not None
        last = self._last_occurred_at
        if leaving_out is None and (last is None or at >= last):
            return in_force(self._deciding_last, at)
        deciding: dict[str, ConsentEntry] = {}
        for purpose, timeline in self._timelines_built().items():
            i = bisect_right(timeline, at, key=_occurred_at)
            if leaving_out is not None:
                while i and timeline[i - 1].event_id == leaving_out.event_id:
                    i -= 1
            if i:
                deciding[purpose] = timeline[i - 1]
        return in_force(deciding, at)

    def known_entries(self, known_at: datetime | None = None) -> list[ConsentEntry]:
        if known_at is None:
            return list(self._known_by_id().values())
        return entries_as_known(self.entries, self.corrections, known_at)

    def consent_at(self, at: datetime, known_at: datetime | None = None) -> dict[str, PurposeState]:
        return consent_at(self.entries, self.corrections, at, known_at)


def _policy(
    policies: Mapping[str, PolicyVersion], version: str | None, at: datetime
) -> PolicyVersion:
    policy = policies.get(version or "")
    if policy is None:
        raise FactRejected(
            Code.UNKNOWN_POLICY_VERSION,
            "the tenant has published no such policy version",
            "policy_version",
        )
    if policy.effective_at > at:
        raise FactRejected(
            Code.POLICY_NOT_IN_EFFECT,
            f"policy version {policy.version!r} takes effect only at "
            f"{policy.effective_at.isoformat()}",
            "policy_version",
        )
    return policy


def _check_in_force(
    in_force: Mapping[str, ConsentEntry], purposes: Iterable[str], when: str, field: str
) -> None:
    """A withdrawal withdraws only purposes in force at its time (`when`, as the refusal
    says it)."""
    for purpose in purposes:
        if purpose not in in_force:
            raise FactRejected(
                Code.PURPOSE_NOT_IN_FORCE, f"purpose {purpose!r} was not in force at {when}", field
            )


def _check_purposes(policy: PolicyVersion, purposes: tuple[str, ...]) -> None:
    for purpose in purposes:
        if purpose not in policy.purposes:
            raise FactRejected(
                Code.UNKNOWN_PURPOSE,
                f"purpose {purpose!r} is not in policy version {policy.version!r}",
                "purposes",
            )


def _check_categories(
    policy: PolicyVersion, purposes: tuple[str, ...], categories: tuple[str, ...]
) -> None:
    covered = set(policy.categories_of(purposes))
    for category in categories:
        if category not in covered:
            raise FactRejected(
                Code.UNKNOWN_CATEGORY,
                f"category {category!r} is not a category of the granted purposes "
                f"in policy version {policy.version!r}",
                "categories",
            )


_TOPIC = get_topic(Subject)

_FIRST: dict[type, type[Subject.Registered]] = {
    Subject.ConsentGranted: Subject.FirstConsentGranted,
    Subject.SubjectRectified: Subject.FirstSubjectRectified,
    Subject.SubjectErased: Subject.FirstSubjectErased,
    Subject.TransferRecorded: Subject.FirstTransferRecorded,
    Subject.RequestReceived: Subject.FirstRequestReceived,
    Subject.ComplaintLodged: Subject.FirstComplaintLodged,
}

_HANDLERS = {
    "consent.granted": Subject._grant,
    "consent.withdrawn": Subject._withdraw,
    "consent.corrected": Subject._correct,
    "subject.rectified": Subject._rectify,
    "subject.erased": Subject._erase,
    "transfer.recorded": Subject._transfer,
    "request.received": Subject._receive_request,
    "request.closed": Subject._close_request,
    "complaint.lodged": Subject._lodge_complaint,
}


def _order(entry: ConsentEntry) -> tuple[datetime, int]:
    return entry.occurred_at, entry.seq


def _occurred_at(entry: ConsentEntry) -> datetime:
    return entry.occurred_at
