"""The application service: turns publishers' facts into recorded facts, or into refusals.

Every write goes through `record`, one batch at a time: each fact is checked against the
tenant's policies and the subject's rules in order (so a batch behaves exactly like the same
facts sent one by one), personal data is sealed with the subject's key, and all accepted facts
are appended in one transaction of the library's event store.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, Transcoder

from ledger.codec import TRANSCODER
from ledger.envelope import Fact, parse_fact
from ledger.errors import Code, FactRejected
from ledger.keystore import ErasedSubjectError, KeyStore, load_master_key, seal, unseal
from ledger.policy import DEMO_TENANT, seed_policy_fact
from ledger.recorder import FactKey, IndexedFact, LedgerSQLiteRecorder
from ledger.settings import Settings, SettingsError
from ledger.subject import Subject
from ledger.tenant import Tenant, tenant_id


@dataclass(frozen=True)
class Receipt:
    """Proof of acceptance, returned again unchanged for a retry of the same fact."""

    event_id: str
    sid: str | None
    position: int
    recorded_at: str
    hash: str
    duplicate: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "sid": self.sid,
            "position": self.position,
            "recorded_at": self.recorded_at,
            "hash": self.hash,
            "duplicate": self.duplicate,
        }


Outcome = Receipt | FactRejected


def persistence_env(settings: Settings) -> dict[str, str]:
    """The `eventsourcing` environment for the configured backend."""
    if settings.backend != "embedded":
        raise SettingsError("LEDGER_BACKEND=kafka is not available in this version yet")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "PERSISTENCE_MODULE": os.environ.get("PERSISTENCE_MODULE", "eventsourcing.sqlite"),
        "SQLITE_DBNAME": str(settings.log_path),
        "SQLITE_LOCK_TIMEOUT": "30",
        "APPLICATION_RECORDER_TOPIC": "ledger.recorder:LedgerSQLiteRecorder",
        "AGGREGATE_CACHE_MAXSIZE": str(settings.aggregate_cache),
        "IS_SNAPSHOTTING_ENABLED": "n",
    }


class ConsentLedger(Application[UUID]):
    name = "ConsentLedger"

    def __init__(self, settings: Settings, keystore: KeyStore | None = None) -> None:
        self.settings = settings
        super().__init__(env=persistence_env(settings))
        self.keystore = keystore or KeyStore(settings.keystore_path, load_master_key(settings))
        assert isinstance(self.recorder, LedgerSQLiteRecorder)
        self.ledger_recorder: LedgerSQLiteRecorder = self.recorder

    def construct_transcoder(self) -> Transcoder:
        return TRANSCODER

    def close(self) -> None:
        super().close()
        self.keystore.close()

    # ---- tenants -----------------------------------------------------------------------

    def tenant(self, name: str) -> Tenant | None:
        try:
            tenant: object = self.repository.get(tenant_id(name))
        except AggregateNotFoundError:
            return None
        assert isinstance(tenant, Tenant)
        return tenant

    def create_tenant(self, name: str) -> Tenant:
        if self.tenant(name) is not None:
            raise FactRejected(Code.TENANT_EXISTS, "a tenant with this name exists", "tenant")
        tenant = Tenant.register(name)
        try:
            self.save(tenant)
        except IntegrityError:
            raise FactRejected(
                Code.TENANT_EXISTS, "a tenant with this name exists", "tenant"
            ) from None
        return tenant

    def init_demo(self) -> None:
        """The demo tenant with the seed policy; safe to run again."""
        if self.tenant(DEMO_TENANT) is None:
            self.create_tenant(DEMO_TENANT)
        outcome = self.record([parse_fact(seed_policy_fact())])[0]
        if isinstance(outcome, FactRejected):
            raise outcome

    # ---- writing -----------------------------------------------------------------------

    def record(self, facts: Sequence[Fact]) -> list[Outcome]:
        """Check and record a batch; one outcome per fact, in order."""
        for _attempt in range(5):
            try:
                return self._record_batch(facts)
            except (IntegrityError, sqlite3.IntegrityError, ErasedSubjectError):
                # Another process wrote the same subject (or tenant, or key) first. Nothing
                # of this attempt was committed; reload and check every fact again.
                if self.repository.cache is not None:
                    self.repository.cache.cache.clear()
        return self._record_batch(facts)

    def _record_batch(self, facts: Sequence[Fact]) -> list[Outcome]:
        batch = _Batch(self, facts)
        batch.check_all()
        return batch.commit()

    # ---- reading -----------------------------------------------------------------------

    def sid(self, tenant: str, subject: str) -> UUID:
        return self.keystore.sid(tenant, subject)

    def subject(self, tenant: str, sid: UUID) -> Subject | None:
        """The subject, or None when unknown or of another tenant (indistinguishable)."""
        try:
            subject: object = self.repository.get(sid)
        except AggregateNotFoundError:
            return None
        if not isinstance(subject, Subject) or subject.tenant != tenant:
            return None
        return subject

    def open_pii(self, sid: UUID, sealed: str | None) -> dict[str, Any] | None:
        """Decrypt a sealed field; None once the subject's key is destroyed."""
        if sealed is None:
            return None
        key = self.keystore.open_keys([sid]).get(sid)
        if key is None:
            return None
        return unseal(key, sid, sealed)


class _Batch:
    """One attempt at recording a batch: checks in order, then one append."""

    def __init__(self, ledger: ConsentLedger, facts: Sequence[Fact]) -> None:
        self.ledger = ledger
        self.facts = facts
        self.outcomes: list[Outcome | None] = [None] * len(facts)
        self.now = datetime.now(UTC)
        self.horizon = self.now + timedelta(seconds=ledger.settings.max_future_skew_s)
        self.tenants: dict[str, Tenant | None] = {}
        self.subjects: dict[UUID, Subject] = {}
        self.fresh: set[UUID] = set()  # subjects first seen in this batch
        self.new_keys: dict[UUID, bytes] = {}
        self.keys: dict[UUID, AESGCM] = {}
        self.fact_keys: dict[tuple[UUID, int], FactKey] = {}
        self.accepted: dict[int, tuple[UUID, int, str | None]] = {}  # index -> (id, version, sid)
        self.in_batch: dict[tuple[str, str], tuple[int, str, UUID | None]] = {}
        self.duplicates_of: dict[int, int] = {}  # index -> index of the same fact in the batch
        self.erased: list[tuple[UUID, datetime]] = []
        self.digests = [ledger.keystore.digest(f.canonical()) for f in facts]
        self.sids: list[UUID | None] = [
            ledger.keystore.sid(f.tenant, f.subject) if f.subject is not None else None
            for f in facts
        ]
        self.existing = self._find_existing()
        self.keys = ledger.keystore.open_keys({s for s in self.sids if s is not None})

    def _find_existing(self) -> dict[tuple[str, str], IndexedFact]:
        by_tenant: dict[str, list[str]] = {}
        for fact in self.facts:
            by_tenant.setdefault(fact.tenant, []).append(fact.event_id)
            if fact.type == "consent.corrected":
                by_tenant[fact.tenant].append(fact.body["corrects"])
        found: dict[tuple[str, str], IndexedFact] = {}
        for tenant, ids in by_tenant.items():
            for event_id, indexed in self.ledger.ledger_recorder.find_facts(tenant, ids).items():
                found[(tenant, event_id)] = indexed
        return found

    def _tenant(self, name: str) -> Tenant | None:
        if name not in self.tenants:
            self.tenants[name] = self.ledger.tenant(name)
        return self.tenants[name]

    def _subject(self, tenant: str, sid: UUID, reference: str) -> Subject:
        subject = self.subjects.get(sid)
        if subject is None:
            loaded = self.ledger.subject(tenant, sid)
            if loaded is None:
                # The pseudonym key binds the tenant into the sid, so a sid of another tenant
                # cannot collide here; unknown means new.
                key = self._key(sid)
                assert key is not None
                subject = Subject(id=sid, tenant=tenant, pii=seal(key, sid, {"subject": reference}))
                self.fresh.add(sid)
            else:
                subject = loaded
            self.subjects[sid] = subject
        return subject

    def _key(self, sid: UUID) -> AESGCM | None:
        key = self.keys.get(sid)
        if key is None and not self.ledger.keystore.is_erased(sid):
            raw = AESGCM.generate_key(256)
            self.new_keys[sid] = raw
            key = self.keys[sid] = AESGCM(raw)
        return key

    def check_all(self) -> None:
        for index, fact in enumerate(self.facts):
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
            tenant.publish_policy(fact)
            aggregate: Tenant | Subject = tenant
            sid = None
        else:
            sid = self.sids[index]
            assert sid is not None and fact.subject is not None
            subject = self._subject(fact.tenant, sid, fact.subject)
            pii = self._seal(subject, fact)
            try:
                subject.record(fact, pii, tenant.policies)
            except FactRejected as rejected:
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
                self.erased.append((sid, fact.occurred_at))
                self.keys.pop(sid, None)
        event = aggregate.pending_events[-1]
        self.fact_keys[(aggregate.id, event.originator_version)] = FactKey(
            fact.tenant, fact.event_id, digest, event.timestamp.isoformat()
        )
        self.accepted[index] = (aggregate.id, event.originator_version, sid.hex if sid else None)
        self.in_batch[(fact.tenant, fact.event_id)] = (index, digest, sid)

    def _seal(self, subject: Subject, fact: Fact) -> str | None:
        content: dict[str, Any] = {}
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
        assert key is not None
        return seal(key, subject.id, content)

    def _known_elsewhere(self, tenant: str, event_id: str, sid: UUID) -> bool:
        known = self.existing.get((tenant, event_id))
        if known is not None:
            return known.originator_id != sid
        earlier = self.in_batch.get((tenant, event_id))
        return earlier is not None and earlier[2] != sid

    def commit(self) -> list[Outcome]:
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
        positions: dict[tuple[UUID, int], int] = {}
        if aggregates:
            self.ledger.keystore.add_keys(used_keys)
            recordings = self.ledger.save(*aggregates, facts=self.fact_keys)
            for recording in recordings:
                event = recording.domain_event
                positions[(event.originator_id, event.originator_version)] = (
                    recording.notification.id
                )
        index = self.ledger.ledger_recorder.index_at(list(positions.values()))
        for sid, erased_at in self.erased:
            self.ledger.keystore.erase(sid, erased_at)
        for i, (agg_id, version, sid_hex) in self.accepted.items():
            position = positions[(agg_id, version)]
            row = index[position]
            assert row.recorded_at is not None
            self.outcomes[i] = Receipt(
                event_id=self.facts[i].event_id,
                sid=sid_hex,
                position=position,
                recorded_at=row.recorded_at,
                hash=row.hash,
            )
        for i, first in self.duplicates_of.items():
            receipt = self.outcomes[first]
            assert isinstance(receipt, Receipt)
            self.outcomes[i] = Receipt(**{**receipt.as_dict(), "duplicate": True})
        assert all(o is not None for o in self.outcomes)
        return [o for o in self.outcomes if o is not None]
