"""The application service: turns publishers' facts into recorded facts, or into refusals.

Every write goes through `record`, one batch at a time: each fact is checked against the
tenant's policies and the subject's rules in order (so a batch behaves exactly like the same
facts sent one by one), personal data is sealed with the subject's key, and all accepted facts
are appended in one transaction of the library's event store.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.persistence import IntegrityError, Mapper, Transcoder
from eventsourcing.utils import get_topic

from ledger.chain import MAPPER, stored_hash
from ledger.clock import follow_log
from ledger.codec import TRANSCODER
from ledger.envelope import Fact, Item, Received, parse_fact, parse_fact_bytes
from ledger.erasure_journal import ErasureJournalError
from ledger.errors import Code, FactRejected
from ledger.file_identity import OpenedFile, refuse_if_moved
from ledger.keystore import (
    ErasedSubjectError,
    KeyStore,
    KeyStoreBusyError,
    LogMissing,
    NotTheLogsKeyStore,
    load_master_key,
    unseal_if_ours,
)
from ledger.policy import DEMO_TENANT, seed_policy_fact
from ledger.receipt import ErasureNotOverwritten, Outcome, Receipt
from ledger.recorder import LedgerSQLiteRecorder
from ledger.settings import Settings, ensure_dir
from ledger.sql import bound_sqlite_memory
from ledger.storage import RecordTooLarge, storage_failure
from ledger.subject import Subject
from ledger.tenant import Tenant, tenant_id

_log = logging.getLogger("consent_ledger.ledger")
RECORD_KEY_ENV = "RECORD_MAC_KEY"  # internal: from the settings to the persistence module


def persistence_env(settings: Settings, keystore: KeyStore) -> dict[str, str]:
    """The `eventsourcing` environment for the configured backend."""
    ensure_dir(settings.data_dir)
    common = {
        "SQLITE_DBNAME": str(settings.log_path),
        "SQLITE_LOCK_TIMEOUT": "30",
        "AGGREGATE_CACHE_MAXSIZE": str(settings.aggregate_cache),
        "IS_SNAPSHOTTING_ENABLED": "n",
    }
    if settings.backend == "kafka":
        # The Kafka module: the ledger topic is the log; SQLite holds the writer's replica.
        return {
            **common,
            "PERSISTENCE_MODULE": os.environ.get(
                "PERSISTENCE_MODULE", "ledger.kafka.factory:KafkaFactory"
            ),
            "KAFKA_BOOTSTRAP": settings.bootstrap(),
            **kafka_security_env(settings),
            "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
            "LEDGER_PARTITIONS": str(settings.partitions),
            "LEDGER_REPLICATION": str(settings.replication),
            "LEDGER_MIN_INSYNC": str(settings.min_insync),
            "LEDGER_REJECTED_RETENTION_MS": str(settings.rejected_retention_ms),
            # Kept in the key store (see KeyStore.record_key); it authenticates every record
            # on the ledger topic (see ledger.kafka.records).
            RECORD_KEY_ENV: keystore.record_key().hex(),
        }
    return {
        **common,
        # The library's SQLite module with a working statement cache (ledger.sqlite_factory).
        "PERSISTENCE_MODULE": os.environ.get(
            "PERSISTENCE_MODULE", "ledger.sqlite_factory:LedgerSQLiteFactory"
        ),
        "APPLICATION_RECORDER_TOPIC": "ledger.recorder:LedgerSQLiteRecorder",
    }


def kafka_security_env(settings: Settings) -> dict[str, str]:
    """The settings' KAFKA_SECURITY_PROTOCOL and the rest, as the Kafka module reads them
    again (`ledger.kafka.factory`): settings made in code, not from the environment, would
    otherwise lose them on the way."""
    values = {
        "KAFKA_SECURITY_PROTOCOL": settings.kafka_security_protocol,
        "KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
        "KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
        "KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
        "KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
        "KAFKA_SASL_OAUTH_TOKEN_FILE": settings.kafka_sasl_oauth_token_file,
    }
    return {name: str(value) for name, value in values.items() if value is not None}


class ConsentLedger(Application[UUID]):
    name = "ConsentLedger"

    def __init__(self, settings: Settings, keystore: KeyStore | None = None) -> None:
        self.settings = settings
        bound_sqlite_memory(settings.sqlite_memory_mib)
        self.keystore = keystore or KeyStore(
            settings.keystore_path, load_master_key(settings), settings.erasure_journal
        )
        try:
            if (
                settings.backend == "embedded"
                and not settings.log_path.exists()
                and self.keystore.holds_subjects()
            ):
                # Every subject's key is made for a fact in the log, and the log file is made
                # (with its tenants and policies) before any: no file means it was lost. In
                # Kafka mode the file is a replica the topic refills.
                raise LogMissing(
                    str(settings.log_path),
                    str(settings.keystore_path),
                    kafka=self.keystore.served_kafka(),
                )
            super().__init__(env=persistence_env(settings, self.keystore))
        except BaseException:
            if keystore is None:
                self.keystore.close()
            raise
        assert isinstance(self.recorder, LedgerSQLiteRecorder)
        self.ledger_recorder: LedgerSQLiteRecorder = self.recorder
        firsts = self.ledger_recorder.first_subjects()
        if firsts and not any(self.keystore.holds(first) for first in firsts):
            # keys.db lost, or another directory's: its pseudonym key would give everyone a
            # new sid (their history split in two) and no seal would open. The log's first
            # subject tells: its key (or its erasure) is in every key store of this log, one
            # restored from an older backup too (keys are stored before their facts, never
            # deleted but by an erasure, which stays recorded here). In Kafka mode, the subject
            # recorded first is the first of its ledger partition: one of `firsts`.
            empty = not self.keystore.holds_subjects()
            super().close()
            if keystore is None:
                self.keystore.close()
            raise NotTheLogsKeyStore(str(settings.keystore_path), empty=empty)
        # Subjects kept in memory between batches; always brought up to date before use.
        self._subjects: OrderedDict[UUID, Subject] = OrderedDict()
        # Each cached subject's version when last remembered (its events: about its facts),
        # and their sum. Bounded by subjects alone, a cache of 10,000 subjects with 200
        # facts each would hold about 1.2 GB (0.6 KiB a fact, 2026-12-04).
        self._subject_sizes: dict[UUID, int] = {}
        self._cached_facts = 0
        # One batch at a time per process: a batch mutates cached subjects until it commits.
        self.lock = threading.RLock()
        # The files a write must find where they were opened (`ledger.file_identity`): the
        # key store, and the log unless it is a replica the Kafka topic refills.
        self.opened_files = [OpenedFile(settings.keystore_path)]
        if not self.ledger_recorder.log_is_elsewhere:
            self.opened_files.insert(0, OpenedFile(settings.log_path))
        follow_log(self.ledger_recorder.last_recorded_at())  # transaction time goes on from it
        try:
            self.finish_erasures()
        except ErasureJournalError:  # a journal this ledger cannot trust: said in one line
            super().close()
            if keystore is None:
                self.keystore.close()
            raise

    def finish_erasures(self) -> int:
        """Destroy the data keys of subjects the log says were erased; how many there were.

        An erasure commits its fact, then deletes the key. A key store can still hold the key
        of an erased subject: the process stopped between the two, or the key store was
        restored from a backup taken before the erasure (in Kafka mode the topic keeps every
        erasure, so a restored `keys.db` would otherwise bring erased people's data back).
        Run whenever a ledger opens: the log's list of erasures is one small table
        (`LedgerSQLiteRecorder.erased_subjects`), compared with the key store's in one query.
        """
        try:
            journalled = self.keystore.replay_journal()
        except KeyStoreBusyError:
            journalled = 0  # destroyed; only their old page images wait in the WAL
        # What `restore` reports: the erasures a restored key store had lost.
        self.erasures_from_journal = journalled
        if journalled:
            _log.warning("applied %d erasures of the erasure journal", journalled)
        erased = self.ledger_recorder.erased_subjects()
        unfinished = set(erased) - self.keystore.erased_among(erased) if erased else set()
        if not unfinished:
            return 0
        with self.lock:
            subjects = self.load_subjects(unfinished)
        erasures = []
        for sid in sorted(unfinished):
            subject = subjects.get(sid)
            erased_at = subject.erased_at if subject is not None else None
            erasures.append((sid, erased_at or datetime.now(UTC)))
        # Busy: the keys are deleted, only their page images wait in the WAL for the next
        # erasure or start to truncate it.
        with contextlib.suppress(KeyStoreBusyError):
            self.keystore.erase_all(erasures)
        _log.warning("finished %d erasures the key store had not applied", len(unfinished))
        return len(unfinished)

    def subjects_without_key(self, tenant: str | None = None) -> int:
        """How many subjects of the log (of `tenant`, if given) the key store holds neither
        a key of nor an erasure: a `keys.db` restored from before they were recorded, their
        sealed personal data unreadable until the newer key store is found."""
        held = self.keystore.subjects_held()
        return len(self.ledger_recorder.subjects(tenant) - held)

    def erasures_not_in_log(self, tenant: str | None = None) -> list[tuple[str, UUID, datetime]]:
        """The subjects of the log whose key the key store destroyed in an erasure the log
        does not hold: (tenant, sid, when the key was destroyed), in sid order.

        The other way round from `finish_erasures`, and not finished here: a `ledger.db`
        restored from a backup taken before an erasure lost its fact (its ground, its
        request), which only a person can state again (`consent-ledger erase --sid`). Until
        then the subject's consent reads as the log says and its data as destroyed. With
        `tenant`, that tenant's only (what its compliance officers may see).

        Two small lists compared, as `finish_erasures` does (no read of the log's facts),
        so that `serve` can say it at every start: every erasure of the key store came
        from one in the log, so they differ only after such a restore.
        """
        destroyed = self.keystore.erasures()
        lost = {UUID(sid) for sid in destroyed} - set(self.ledger_recorder.erased_subjects())
        if not lost:
            return []
        with self.lock:
            subjects = self.load_subjects(lost)  # those the log holds no fact of are not lost
        return [
            (subjects[sid].tenant, sid, datetime.fromisoformat(destroyed[sid.hex]))
            for sid in sorted(lost)
            if sid in subjects and tenant in (None, subjects[sid].tenant)
        ]

    def construct_transcoder(self) -> Transcoder:
        return TRANSCODER

    def construct_mapper(self) -> Mapper[UUID]:
        return MAPPER

    def close(self) -> None:
        super().close()
        self.keystore.close()

    # ---- tenants -----------------------------------------------------------------------

    def tenant(
        self, name: str, *, shared: bool = False, version: int | None = None
    ) -> Tenant | None:
        """The tenant; with `shared`, the cached object itself, which the caller must not change.

        The library copies a cached aggregate on every read to protect its cache; a tenant
        holds the whole policy catalogue, so that copy was a quarter of a one-fact write.
        With `version` (read by the caller in its own snapshot), a cached tenant at that
        version is used as it is, without the library's fast-forward read.
        """
        cache = self.repository.cache
        if shared and version is not None and cache is not None:
            with contextlib.suppress(KeyError):
                cached = cache.get(tenant_id(name))
                if isinstance(cached, Tenant) and cached.version == version:
                    return cached
        try:
            tenant: object = self.repository.get(tenant_id(name), deepcopy_from_cache=not shared)
        except AggregateNotFoundError:
            return None
        assert isinstance(tenant, Tenant)
        return tenant

    def tenant_names(self, page: int = 1000) -> list[str]:
        """Every tenant registered, in the order registered.

        The library's notification log filtered by the registration's topic: the log has no
        index on topics, so this reads the whole of it, as an operator's command may.
        """
        topic = get_topic(Tenant.Registered)
        names: list[str] = []
        start = 1
        while True:
            batch = self.recorder.select_notifications(start, page, topics=[topic])
            for notification in batch:
                registered = self.mapper.to_domain_event(notification)
                assert isinstance(registered, Tenant.Registered)
                names.append(registered.name)
            if len(batch) < page:
                return names
            start = batch[-1].id + 1

    def create_tenant(self, name: str) -> Tenant:
        """A tenant's name is what every one of its facts carries, so it is held to the
        envelope's rule for `tenant` (1 to 64 characters), and it is printed in tables and
        log lines and keys Kafka records: no control characters, no blank name."""
        if not 1 <= len(name) <= 64 or name != name.strip() or not name.isprintable():
            # Nor spaces at either end: "acme " would be a tenant apart from "acme", each
            # publisher's facts refused by the other's name.
            raise FactRejected(
                Code.INVALID_FIELD,
                "a tenant name is 1 to 64 printable characters, with no space at either end",
                "tenant",
            )
        if self.tenant(name) is not None:
            raise FactRejected(Code.TENANT_EXISTS, "a tenant with this name exists", "tenant")
        refuse_if_moved(self.opened_files)
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

    def record_received(self, items: Sequence[Item]) -> list[Outcome]:
        """`record`, for facts some of which still have to be parsed, or were already
        refused; one outcome per item, in order.

        An item that does not parse is refused in its place (as `parse_fact_bytes` refuses
        it), an item already refused keeps its place, and the facts are recorded as one
        batch, as if the others had not been sent. The HTTP service's writer records this
        way: single publishes as the bytes received, a batch's items parsed or refused.
        """
        parsed: list[Fact | FactRejected] = []
        for item in items:
            if isinstance(item, Received):
                try:
                    parsed.append(parse_fact_bytes(item.data, item.tenant))
                except FactRejected as rejected:
                    parsed.append(rejected)
            else:
                parsed.append(item)
        facts = [p for p in parsed if isinstance(p, Fact)]
        if len(facts) == len(parsed):
            return self.record(facts)
        places = [i for i, p in enumerate(parsed) if isinstance(p, Fact)]
        try:
            recorded = iter(self.record(facts) if facts else [])
        except ErasureNotOverwritten as busy:
            # Its outcomes and erasures counted among the facts; the caller's are the items'.
            outcomes = iter(busy.outcomes)
            busy.outcomes = [p if isinstance(p, FactRejected) else next(outcomes) for p in parsed]
            busy.erasures = frozenset(places[i] for i in busy.erasures)
            raise
        return [p if isinstance(p, FactRejected) else next(recorded) for p in parsed]

    def record(
        self,
        facts: Sequence[Fact],
        sids: Sequence[UUID] | None = None,
        *,
        with_refusals: Callable[[Sequence[Outcome | None]], Any] | None = None,
    ) -> list[Outcome]:
        """Check and record a batch; one outcome per fact, in order.

        `sids` addresses existing subjects by pseudonym when the caller does not hold their
        reference (an erasure requested by sid); such a fact's `subject` is not used.

        `with_refusals` sees the refusals (accepted facts are still None) before anything is
        written and returns what the log's transaction must carry besides the facts; the
        Kafka intake writer uses it to commit its rejects and offsets atomically with the
        appends. The domain does not look inside it.

        Raises `StorageUnavailable` when the storage failed (a full disk, a locked file):
        retrying the same facts is safe (see ledger.storage).
        """
        with self.lock:
            try:
                refuse_if_moved(self.opened_files)
                return self._record_batch(facts, sids, with_refusals)
            except Exception as error:
                # A full disk or a locked file says nothing about the facts: the caller is
                # told to retry, not that the ledger has a bug (see ledger.storage).
                failure = storage_failure(error)
                if failure is None:
                    raise
                raise failure from error

    def _record_batch(
        self,
        facts: Sequence[Fact],
        sids: Sequence[UUID] | None,
        with_refusals: Callable[[Sequence[Outcome | None]], Any] | None,
    ) -> list[Outcome]:
        from ledger.batch import FactBatch

        refused: dict[int, FactRejected] = {}
        attempts = 0
        while True:
            batch = FactBatch(self, facts, sids, refused)
            try:
                batch.check_all()
                extra = with_refusals(batch.outcomes) if with_refusals else None
                return self._located(batch.commit(extra))
            except ErasureNotOverwritten as busy:
                busy.outcomes = self._located(busy.outcomes)
                raise
            except RecordTooLarge as too_large:
                # Nothing was sent or committed. The log cannot hold this fact: it is refused
                # and the batch checked again without it, as if it had not been sent (each
                # round refuses one fact, so this ends).
                index = batch.index_of(too_large.aggregate_id, too_large.version)
                if index is None:
                    raise
                refused[index] = FactRejected(
                    Code.OVERSIZE,
                    f"the fact's record ({too_large.size} bytes) is larger than the log of "
                    f"record takes ({too_large.limit} bytes: {too_large.limited_by})",
                )
            except (IntegrityError, sqlite3.IntegrityError, ErasedSubjectError):
                # Another process wrote the same subject (or tenant, or key) first.
                # Nothing of this attempt was committed; reload and check every fact again.
                attempts += 1
                if attempts == 5:
                    raise
            finally:
                if not batch.committed:
                    self.forget(batch.subjects)

    def _located(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Receipts name the position in the log of record (in Kafka mode: partition, offset)."""
        positions = [o.position for o in outcomes if isinstance(o, Receipt)]
        found = self.ledger_recorder.log_coordinates(positions) if positions else {}
        if not found:
            return outcomes
        located: list[Outcome] = []
        for outcome in outcomes:
            if isinstance(outcome, Receipt) and outcome.position in found:
                partition, offset = found[outcome.position]
                outcome = outcome._replace(position=offset, partition=partition)
            located.append(outcome)
        return located

    def receipts(self, tenant: str, event_ids: Sequence[str]) -> dict[str, Receipt]:
        """The receipts of the facts of `tenant` recorded under these event ids, as they
        were first given (`duplicate` false), by event id; an event id not recorded (or
        another tenant's, indistinguishable) is not among them.

        A publisher that lost its answers (its process died, a connection broke) learns
        which facts landed without sending them again, and a Kafka publisher, which gets no
        answer at all, reconciles its event ids with the log.
        """
        found = self.ledger_recorder.find_facts(tenant, list(dict.fromkeys(event_ids)))
        of_tenant = tenant_id(tenant)
        receipts = [
            Receipt(
                event_id=event_id,
                # A policy is the tenant's, not a subject's: no sid, as its receipt has none.
                sid=None if indexed.originator_id == of_tenant else indexed.originator_id.hex,
                position=indexed.position,
                recorded_at=indexed.recorded_at,
                hash=indexed.hash,
            )
            for event_id, indexed in found.items()
            if indexed.recorded_at is not None  # a fact indexed with its event id has one
        ]
        return {r.event_id: r for r in self._located(list(receipts)) if isinstance(r, Receipt)}

    def forget(self, sids: Collection[UUID]) -> None:
        """Drop subjects from memory (after a failed append they hold unsaved events)."""
        for sid in sids:
            self._subjects.pop(sid, None)
            self._cached_facts -= self._subject_sizes.pop(sid, 0)
        if self.repository.cache is not None:
            self.repository.cache.cache.clear()
        MAPPER.forget()

    def remember(self, subjects: Collection[Subject]) -> None:
        """Keep `subjects` as the most recently used, within both bounds of the cache: the
        number of subjects and the facts they hold (each subject counted by its version when
        remembered: when loaded, and after each commit that changed it)."""
        cache, sizes, settings = self._subjects, self._subject_sizes, self.settings
        for subject in subjects:
            sid, version = subject.id, subject.version
            if version > settings.aggregate_cache_facts:
                # Larger than the bound alone: kept, it would push out every other.
                if sid in sizes:
                    del cache[sid]
                    self._cached_facts -= sizes.pop(sid)
                continue
            cache[sid] = subject
            cache.move_to_end(sid)
            self._cached_facts += version - sizes.get(sid, 0)
            sizes[sid] = version
        while cache and (
            len(cache) > settings.aggregate_cache
            or self._cached_facts > settings.aggregate_cache_facts
        ):
            sid, _ = cache.popitem(last=False)
            self._cached_facts -= sizes.pop(sid)

    def load_subjects(
        self, sids: Collection[UUID], versions: Mapping[UUID, int] | None = None
    ) -> dict[UUID, Subject]:
        """Known subjects among `sids`: from memory if still current, else from the log.

        One query checks the versions of those in memory and one loads the rest, so a batch
        of a thousand facts costs two reads, not a thousand. With `versions` (the current
        version of every one of `sids` that exists, read by the caller), the first query is
        the caller's and subjects without a version are known to be new.
        """
        found: dict[UUID, Subject] = {}
        missing: list[UUID] = []
        current: Mapping[UUID, int] = {}
        if versions is not None:
            current = versions
        elif cached := [sid for sid in sids if sid in self._subjects]:
            current = self.ledger_recorder.versions_of(cached)
        for sid in sids:
            subject = self._subjects.get(sid)
            if subject is not None and current.get(sid) == subject.version:
                found[sid] = subject
            elif versions is None or sid in versions:
                missing.append(sid)
        for sid, stored in self.ledger_recorder.select_events_of(missing).items():
            aggregate = project_aggregate(None, map(MAPPER.to_domain_event, stored))
            if isinstance(aggregate, Subject):
                aggregate._head_hash = stored_hash(stored[-1])
                found[sid] = aggregate
        self.remember(found.values())
        return found

    # ---- reading -----------------------------------------------------------------------

    def sid(self, tenant: str, subject: str) -> UUID:
        return self.keystore.sid(tenant, subject)

    def subject(self, tenant: str, sid: UUID) -> Subject | None:
        """The subject, or None when unknown or of another tenant (indistinguishable).

        A copy: the cached aggregate is mutated by the next batch (in another thread, for
        the HTTP service) before that batch commits, and a reader must never see that.
        """
        with self.lock:
            subject = self.load_subjects([sid]).get(sid)
            if subject is None or subject.tenant != tenant:
                return None
            return copy.deepcopy(subject)

    def occurred_at_of(self, tenant: str, event_id: str, sid: UUID) -> datetime | None:
        """When a fact this subject already has under `event_id` occurred, or None.

        A command that builds its fact at "now" (an erasure from the CLI or the HTTP route)
        repeats a retry with the first attempt's instant, so that the same `event_id` is
        answered with the first receipt instead of a conflict over a later `occurred_at`.
        """
        existing, _, _ = self.ledger_recorder.batch_reads({tenant: [event_id]}, [])
        known = existing.get((tenant, event_id))
        if known is None or known.originator_id != sid:
            return None
        for stored in self.ledger_recorder.select_events_of([sid]).get(sid, []):
            if stored.originator_version == known.originator_version:
                occurred = getattr(self.mapper.to_domain_event(stored), "occurred_at", None)
                return occurred if isinstance(occurred, datetime) else None
        return None

    def lost_erasure_at(self, subject: Subject) -> datetime | None:
        """When the key store destroyed this subject's key in an erasure the log does not
        hold (`erasures_not_in_log`), or None. An erasure recorded again (the CLI's `erase`
        or the HTTP route) occurred then, not at the moment a person noticed the loss."""
        return None if subject.erased_at else self.keystore.erased_at(subject.id)

    def open_pii(self, sid: UUID, sealed: str | None) -> dict[str, Any] | None:
        """Decrypt a sealed field; None once the subject's key is destroyed."""
        if sealed is None or self.keystore.is_erased(sid):
            return None
        key = self.keystore.open_keys([sid]).get(sid)
        if key is None:
            return None
        return unseal_if_ours(key, sid, sealed)
