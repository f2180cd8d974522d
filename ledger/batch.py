"""One batch of facts through the rules: checked in order, then appended in one transaction.

A batch behaves exactly like the same facts sent one at a time: each fact is checked against
the state that the facts before it (in this batch too) produced. Only the append is shared.
"""

from __future__ import annotations

import copy
import heapq
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.chain import MAPPER
from ledger.clock import follow_log
from ledger.codec import isoformat
from ledger.envelope import Fact
from ledger.errors import Code, FactRejected
from ledger.keystore import KeyStoreBusyError, seal
from ledger.receipt import ErasureNotOverwritten, Outcome, Receipt
from ledger.recorder import FactKey
from ledger.subject import Subject
from ledger.tenant import Tenant, tenant_id

_log = logging.getLogger("consent_ledger.ledger")

if TYPE_CHECKING:
    from ledger.application import ConsentLedger


class FactBatch:
    """One attempt at recording a batch: checks in order, then one append."""

    def __init__(
        self,
        ledger: ConsentLedger,
        facts: Sequence[Fact],
        sids: Sequence[UUID] | None = None,
        refused: Mapping[int, FactRejected] | None = None,
    ) -> None:
        self.ledger = ledger
        self.facts = facts
        self.outcomes: list[Outcome | None] = [None] * len(facts)
        self.refused = refused or {}
        self.now = datetime.now(UTC)
        self.horizon = self.now + timedelta(seconds=ledger.settings.max_future_skew_s)
        self.tenants: dict[str, Tenant | None] = {}
        self.tenant_copies: set[str] = set()  # tenants this batch changes (own copies)
        self.subjects: dict[UUID, Subject] = {}
        self.fresh: set[UUID] = set()  # subjects first seen in this batch
        self.new_keys: dict[UUID, bytes] = {}
        self.keys: dict[UUID, AESGCM] = {}
        self.fact_keys: dict[tuple[UUID, int], FactKey] = {}
        self.accepted: dict[int, tuple[UUID, int, str | None]] = {}  # index -> (id, version, sid)
        self.in_batch: dict[tuple[str, str], tuple[int, str, UUID | None]] = {}
        self.duplicates_of: dict[int, int] = {}  # index -> index of the same fact in the batch
        self.erased: dict[int, tuple[UUID, datetime]] = {}  # index -> (sid, erased at)
        self.digests = [ledger.keystore.digest(f.canonical()) for f in facts]
        self.sids: list[UUID | None] = (
            list(sids)
            if sids is not None
            else [
                ledger.keystore.sid(f.tenant, f.subject) if f.subject is not None else None
                for f in facts
            ]
        )
        self.by_sid = sids is not None
        self.committed = False
        wanted = {s for s in self.sids if s is not None}
        tenant_ids = {name: tenant_id(name) for name in {f.tenant for f in facts}}
        self.existing, versions, last_recorded = ledger.ledger_recorder.batch_reads(
            self._event_ids(), [*wanted, *tenant_ids.values()]
        )
        follow_log(last_recorded)  # another process may have appended since this one did
        # Each tenant's version in the same snapshot: a cached tenant at it is current.
        self.tenant_versions = {name: versions.get(tid) for name, tid in tenant_ids.items()}
        self.keys = ledger.keystore.open_keys(wanted)
        self.erased_keys = ledger.keystore.erased_among(wanted - set(self.keys))
        self.subjects.update(ledger.load_subjects(wanted, versions))
        unfinished: list[tuple[UUID, datetime]] = []
        for sid, subject in self.subjects.items():
            if subject.erased and sid in self.keys:
                # The erasure reached the log but the process stopped before the key was
                # destroyed: finish it now, before anything else touches this subject.
                assert subject.erased_at is not None
                unfinished.append((sid, subject.erased_at))
                del self.keys[sid]
        try:
            ledger.keystore.erase_all(unfinished)
        except KeyStoreBusyError:
            # The keys are deleted; only their old page images wait in the WAL for the next
            # erasure (as when a ledger opens). Raised here, before anything of the batch
            # was recorded, it was answered "recorded, but ..." for facts never recorded.
            _log.warning("finished %d erasures; the key store's WAL is held", len(unfinished))

    def _event_ids(self) -> dict[str, list[str]]:
        """The event ids the checks ask about, by tenant: each fact's, and what it corrects."""
        by_tenant: dict[str, list[str]] = {}
        for fact in self.facts:
            by_tenant.setdefault(fact.tenant, []).append(fact.event_id)
            if fact.type == "consent.corrected":
                by_tenant[fact.tenant].append(fact.body["corrects"])
        return by_tenant

    def _tenant(self, name: str, *, to_change: bool = False) -> Tenant | None:
        """Read-only use shares the ledger's cached tenant; a change works on this batch's copy."""
        if name not in self.tenants:
            version = self.tenant_versions.get(name)
            self.tenants[name] = (
                None if version is None else self.ledger.tenant(name, shared=True, version=version)
            )
        tenant = self.tenants[name]
        if to_change and tenant is not None and name not in self.tenant_copies:
            tenant = self.tenants[name] = copy.deepcopy(tenant)
            self.tenant_copies.add(name)
        return tenant

    def _subject(self, tenant: str, sid: UUID) -> Subject:
        subject = self.subjects.get(sid)
        if subject is None and self.by_sid:
            raise FactRejected(Code.UNKNOWN_SUBJECT, "no such subject")
        if subject is None:
            # The pseudonym key binds the tenant into the sid, so a sid never names a subject
            # of another tenant; unknown means new.
            key = self._key(sid)
            if key is None:
                # The key store remembers an erasure the log does not (a restored log):
                # the pseudonym stays erased.
                raise FactRejected(Code.SUBJECT_ERASED, "the subject was erased")
            subject = Subject.unregistered(sid, tenant)
            self.fresh.add(sid)
            self.subjects[sid] = subject
        if subject.tenant != tenant:
            raise FactRejected(Code.UNKNOWN_SUBJECT, "no such subject")
        return subject

    def _key(self, sid: UUID) -> AESGCM | None:
        key = self.keys.get(sid)
        if key is None and sid not in self.erased_keys:
            raw = AESGCM.generate_key(256)
            self.new_keys[sid] = raw
            key = self.keys[sid] = AESGCM(raw)
        return key

    def check_all(self) -> None:
        for index, fact in enumerate(self.facts):
            if index in self.refused:  # by the log itself on an earlier attempt: as if unsent
                self.outcomes[index] = self.refused[index]
                continue
            try:
                self._check(index, fact)
            except FactRejected as rejected:
                self.outcomes[index] = rejected

    def _check(self, index: int, fact: Fact) -> None:
        if fact.occurred_at > self.horizon:
            raise FactRejected(
                Code.OCCURRED_IN_FUTURE,
                "occurred_at is more than "
                f"{self.ledger.settings.max_future_skew_s} s ahead of the ledger's clock",
                "occurred_at",
            )
        moved_to = (
            fact.body.get("changes", {}).get("occurred_at")
            if fact.type == "consent.corrected"
            else None
        )
        if moved_to is not None and moved_to > self.horizon:
            # A correction says when the fact really happened: no more in the future than
            # a fact itself may say (one moved to 2999 was recorded, its consent in force
            # from then).
            raise FactRejected(
                Code.OCCURRED_IN_FUTURE,
                "changes.occurred_at is more than "
                f"{self.ledger.settings.max_future_skew_s} s ahead of the ledger's clock",
                "changes.occurred_at",
            )
        tenant = self._tenant(fact.tenant)
        if tenant is None:
            raise FactRejected(Code.UNKNOWN_TENANT, "no such tenant", "tenant")
        digest = self.digests[index]
        known = self.existing.get((fact.tenant, fact.event_id))
        if known is not None:
            if known.digest != digest:
                raise FactRejected(
                    Code.EVENT_ID_CONFLICT,
                    "this event_id was already recorded with other content",
                    "event_id",
                )
            assert known.recorded_at is not None
            self.outcomes[index] = Receipt(
                event_id=fact.event_id,
                sid=None if fact.subject is None else known.originator_id.hex,
                position=known.position,
                recorded_at=known.recorded_at,
                hash=known.hash,
                duplicate=True,
            )
            return
        earlier = self.in_batch.get((fact.tenant, fact.event_id))
        if earlier is not None:
            if earlier[1] != digest:
                raise FactRejected(
                    Code.EVENT_ID_CONFLICT,
                    "this event_id was already recorded with other content",
                    "event_id",
                )
            self.duplicates_of[index] = earlier[0]
            return

        if fact.type == "policy.published":
            tenant = self._tenant(fact.tenant, to_change=True)
            assert tenant is not None
            tenant.publish_policy(fact)
            aggregate: Tenant | Subject = tenant
            sid = None
        else:
            sid = self.sids[index]
            assert sid is not None and fact.subject is not None
            new_here = sid not in self.subjects
            subject = self._subject(fact.tenant, sid)
            if fact.type == "consent.granted" and not subject.erased and sid in self.erased_keys:
                # The key store lists an erasure the log does not hold (a log restored from a
                # backup taken before it): a grant after erasure is refused all the same. One
                # with personal data was (no key to seal with); one without was recorded.
                raise FactRejected(
                    Code.SUBJECT_ERASED, "the subject was erased; no new consent can be recorded"
                )
            pii = self._seal(subject, fact)
            try:
                subject.record(fact, pii, tenant.policies)
            except FactRejected as rejected:
                if new_here:
                    # A subject is registered by its first accepted fact, not by a refused
                    # one: the registration's recorded_at must not precede what the ledger
                    # actually learned.
                    del self.subjects[sid]
                    self.fresh.discard(sid)
                if rejected.code is Code.CORRECTION_TARGET_UNKNOWN and self._known_elsewhere(
                    fact.tenant, fact.body["corrects"], sid
                ):
                    raise FactRejected(
                        Code.CORRECTION_TARGET_OTHER_SUBJECT,
                        "the fact named in 'corrects' belongs to another subject",
                        "corrects",
                    ) from None
                raise
            aggregate = subject
            if fact.type == "subject.erased":
                self.erased[index] = (sid, fact.occurred_at)
                self.keys.pop(sid, None)
        event = aggregate.pending_events[-1]
        self.fact_keys[(aggregate.id, event.originator_version)] = FactKey(
            fact.tenant, fact.event_id, digest, isoformat(event.timestamp)
        )
        self.accepted[index] = (aggregate.id, event.originator_version, sid.hex if sid else None)
        self.in_batch[(fact.tenant, fact.event_id)] = (index, digest, sid)

    def _seal(self, subject: Subject, fact: Fact) -> str | None:
        content: dict[str, Any] = {}
        if not subject.version:
            # The first fact registers the subject: the reference is sealed with it.
            content["subject"] = fact.subject
        if fact.evidence is not None:
            content["evidence"] = fact.evidence
        for field in ("personal_data", "reason"):
            if fact.body.get(field) is not None:
                content[field] = fact.body[field]
        if not content or subject.erased:
            # After erasure there is no key to seal with, and personal data is never stored
            # in the clear: the fact is kept, its personal data is not.
            return None
        key = self._key(subject.id)
        if key is None:
            raise FactRejected(Code.SUBJECT_ERASED, "the subject was erased")
        return seal(key, subject.id, content)

    def _known_elsewhere(self, tenant: str, event_id: str, sid: UUID) -> bool:
        known = self.existing.get((tenant, event_id))
        if known is not None:
            return known.originator_id != sid
        earlier = self.in_batch.get((tenant, event_id))
        return earlier is not None and earlier[2] != sid

    def index_of(self, aggregate_id: UUID, version: int) -> int | None:
        """Which fact of the batch became this event, if one did."""
        for index, (agg_id, agg_version, _) in self.accepted.items():
            if agg_id == aggregate_id and agg_version == version:
                return index
        return None

    def commit(self, extra: Any = None) -> list[Outcome]:
        """Append the accepted facts; `extra` rides in the same log transaction (see record)."""
        aggregates: list[Tenant | Subject] = [
            t for t in self.tenants.values() if t is not None and t.pending_events
        ]
        accepted_ids = {agg_id for agg_id, _, _ in self.accepted.values()}
        for sid, subject in self.subjects.items():
            if sid in self.fresh and sid not in accepted_ids:
                continue  # every fact about this new subject was refused: record nothing
            if subject.pending_events:
                aggregates.append(subject)
        used_keys = {sid: key for sid, key in self.new_keys.items() if sid in accepted_ids}
        # (aggregate, version) -> (position, hash of the stored bytes), from the hashes the
        # mapper and the recorder already computed for this batch
        positions: dict[tuple[UUID, int], tuple[int, str]] = {}
        if aggregates:
            self.ledger.keystore.add_keys(used_keys)
            # In the order they were stamped (each aggregate's in its own order, which is the
            # same): the log's order is then the order of transaction time within a batch
            # too, so a position's `recorded_at` is the latest of every fact up to it. Taken
            # aggregate by aggregate, a batch's last position held an earlier stamp than
            # facts before it, and what the views knew at a position was not the instant
            # of its fact (`projections.queries.who_had_consent_page`).
            events = list(heapq.merge(*(a.collect_events() for a in aggregates), key=_stamped_at))
            put_kwargs: dict[str, Any] = {"facts": self.fact_keys}
            if extra is not None:
                put_kwargs["intake"] = extra
            # What the library's EventStore.put does, without the Notification and Recording
            # it makes of every event only to hand back ids this loop reads off directly.
            stored = [MAPPER.to_stored_event(event) for event in events]
            ids = self.ledger.ledger_recorder.insert_events(stored, **put_kwargs)
            assert ids is not None  # the ledger's recorders are application recorders
            self.committed = True
            for event, s, position in zip(events, stored, ids, strict=True):
                positions[(event.originator_id, event.originator_version)] = (
                    position,
                    MAPPER.hash_of_stored(s.originator_id, s.originator_version, s.topic, s.state),
                )
            for aggregate in aggregates:
                # The next fact's prev_hash is the hash just computed from the stored bytes.
                aggregate._head_hash = positions[(aggregate.id, aggregate.version)][1]
            self.ledger.remember([a for a in aggregates if isinstance(a, Subject)])
            MAPPER.forget()
        elif extra is not None:
            self.ledger.ledger_recorder.commit_extra(extra)
        self.committed = True
        for i, (agg_id, version, sid_hex) in self.accepted.items():
            position, digest = positions[(agg_id, version)]
            self.outcomes[i] = Receipt(
                event_id=self.facts[i].event_id,
                sid=sid_hex,
                position=position,
                recorded_at=self.fact_keys[(agg_id, version)].recorded_at,
                hash=digest,
            )
        for i, first in self.duplicates_of.items():
            receipt = self.outcomes[first]
            assert isinstance(receipt, Receipt)
            self.outcomes[i] = Receipt(**{**receipt.as_dict(), "duplicate": True})
        assert all(o is not None for o in self.outcomes)
        outcomes = [o for o in self.outcomes if o is not None]
        try:
            self.ledger.keystore.erase_all(list(self.erased.values()))
        except KeyStoreBusyError as busy:
            raise ErasureNotOverwritten(str(busy), outcomes, frozenset(self.erased)) from None
        return outcomes


def _stamped_at(event: Any) -> datetime:
    return cast(datetime, event.timestamp)
