"""Replay: the views rebuilt from the log into a fresh store, for an inquiry or a new server.

Catching up applies the log in its order, a page per transaction, because a live store must
always stand at a log position that readers can trust. A fresh store has no readers until it
is complete, so it is built in the order that is cheapest to write: subject by subject, read
through the events table's primary key. Each subject's rows depend only on its own facts, so
its whole history folds in memory and its rows go in once, next to each other in every index,
instead of a page of facts scattering writes over all of them and rewriting intervals that a
later fact closes.

Subjects are independent, so the build is split by range of aggregate id over one process per
core, all writing into the one temporary store (SQLite takes their transactions in turn) and
all reading the log as of the same position. That store is written without a write-ahead log
(see `projections.store._unjournaled`). Decoding and folding, most of replay's work, run
side by side; a log too small to repay starting processes is built in this one.

The store is built under a temporary name and takes its real name only once it is complete
and positioned at the moment of the log it reflects, so a replay that dies leaves nothing
that looks like a store. In Kafka mode the log of record is the ledger topic, read in its own
order per partition: the same temporary store is caught up from it instead, its partitions
shared among processes as the ranges of subjects are (`_by_partition`), but for an empty
store filled on a first question (`from_replica`), which is built subject by subject from
the process's replica of the topic, a file as the embedded log is.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import Tracking

from ledger.application import ConsentLedger
from ledger.bug_report import WITHHELD, SaysNoData, named, report
from ledger.chain import MAPPER
from ledger.failpoints import failpoint
from ledger.fsync import fsync_path
from ledger.recorder import LedgerSQLiteRecorder
from ledger.settings import Settings
from projections.consent_projection import ConsentProjection
from projections.known import KnownAt
from projections.runner import APPLICATION
from projections.store import ConsentViews

if TYPE_CHECKING:
    from ledger.kafka.recorder import KafkaLedgerRecorder, KafkaLink

# Log entries per write transaction: large enough that per-transaction costs vanish, small
# enough that a batch of decoded events stays a few tens of megabytes.
BATCH = 20_000
# Log entries below which the build stays in one process: starting another (a fresh
# interpreter importing the ledger) takes about 0.4 s here, the time of replaying a few
# thousand entries.
PARALLEL_FROM = 50_000
# Offsets of the ledger topic from which a Kafka-mode replay is split over processes: a
# record caught up from the topic costs more than twice a log entry of the embedded build
# (8,000-9,000 a second in one process against about 22,000), so starting a process repays
# itself sooner. At 20,002 offsets `python -m bench kafka` (2026-12-06 11:57 UTC,
# `bench/RESULTS.md`) replayed on 3 processes in 1.62 s, where one process caught the views
# up from the topic in 2.19 s.
KAFKA_PARALLEL_FROM = 20_000
# A cap on processes, well below the 256 ranges that two hex digits of id can make.
MAX_WORKERS = 64

# A fresh interpreter per worker: forking would copy the parent's open SQLite connections and
# its threads' locks, which SQLite and Python both forbid using in the child.
_SPAWN = multiprocessing.get_context("spawn")


def rebuild(
    ledger: ConsentLedger,
    target: Path,
    *,
    known_at: datetime | None = None,
    batch: int = BATCH,
    workers: int | None = None,
    from_replica: bool = False,
) -> int:
    """Build the views of the log at `target` (which must not exist); returns entries read.

    With `known_at`, facts recorded after that instant are left out: the store is what the
    ledger knew then, positioned, like a live store, after every entry it read. `workers`
    is how many processes share the build (default: one per core, for a large enough log;
    caught up from the ledger topic, at most one a partition, `partition_workers`).

    `from_replica` (Kafka mode): built subject by subject from this process's replica of the
    ledger topic (by `workers` processes, each reading the replica's file), positioned where
    the replica stands in each partition, instead of caught up from the topic in its order.
    For filling an empty store, a cache built from a cache that every live read trusts
    already (`kafka_source`: only the records the replica accepted are applied);
    `consent-ledger replay`, an inquiry's rebuild, reads the topic itself.
    """
    if target.exists():
        raise FileExistsError(target)
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be from 1 to {MAX_WORKERS}")
    kafka = ledger.settings.backend == "kafka"
    partial = target.with_name(target.name + ".partial")
    remove_store(partial)
    by_subject = not kafka or from_replica
    # Built subject by subject, the store is only ever written, never read, until complete:
    # its secondary indexes are made once all rows are in (`lay_out`, below). Caught up in
    # log order, it reads its own intervals to close them, and needs them from the start.
    store = ConsentViews.open(partial, indexes=not by_subject, building=True)
    built = False
    try:
        if by_subject:
            read = _by_subject(ledger, store, partial, known_at, batch, workers, replica=kafka)
        else:
            read = _by_partition(ledger, store, partial, known_at, workers)
        # Written batch by batch, each table's and index's pages lie interleaved with every
        # other's in the file, so reading one in key order hops about it. A campaign check
        # reads a tenth of all subjects in key order from the subjects table and the partial
        # interval index: asked of a store the OS had not cached, that took 322 and 46 of its
        # 472 ms, page by page, with the OS unable to read ahead (a throwaway timing of each
        # query at 1,000,000 facts, 2026-12-01). Laid out, each fills a run of pages of its
        # own; the same check then took 117-126 ms (the same timing), and 119-121 ms in
        # `python -m bench projections --cold`. Caught up in log order (Kafka mode), the
        # store kept its indexes up as it went and they stay as they are; only the subjects
        # table is laid out.
        store.lay_out()
        built = True
    finally:
        store.close()
        if not built:
            # Half a store is of no use (the next replay starts it again), and after a full
            # disk it would keep the space the operator needs to free.
            remove_store(partial)
    # Built without a write-ahead log or a journal on the disk (`ConsentViews.open`'s
    # `building`): written with no fsync, so it is flushed here, whole, before its rename.
    if Path(f"{partial}-wal").exists() or Path(f"{partial}-journal").exists():
        raise RuntimeError(f"{partial} kept a write-ahead log or journal after closing")
    remove_store(Path(f"{partial}-shm"))
    fsync_path(partial)
    os.replace(partial, target)
    fsync_path(target.parent)
    return read


def _by_subject(
    ledger: ConsentLedger,
    store: ConsentViews,
    partial: Path,
    known_at: datetime | None,
    batch: int,
    workers: int | None,
    replica: bool = False,
) -> int:
    """The log subject by subject into the store, in ranges of subjects over `workers`
    processes; positioned after the last entry read. With `replica` (Kafka mode), the log is
    this process's replica of the ledger topic, which the workers read as a file (no
    broker), and the store stands in each partition where the replica did, with the mark of
    its last record there."""
    # Where the store will stand in each ledger partition, and the mark of its last record.
    partitions: list[tuple[Tracking, tuple[int, str] | None]] = []
    if replica:
        # Kafka's modules only where Kafka is: an embedded ledger's processes never load them.
        from ledger.kafka.recorder import KafkaLedgerRecorder
        from projections.kafka_source import partition_name

        recorder = ledger.ledger_recorder
        assert isinstance(recorder, KafkaLedgerRecorder)
        upto, positions, marks = recorder.replica_state()
        partitions = [
            (Tracking(partition_name(recorder, APPLICATION, p), offset), marks.get(p))
            for p, offset in sorted(positions.items())
        ]
    else:
        upto = ledger.recorder.max_notification_id() or 0
    if workers is None:
        workers = min(os.cpu_count() or 1, MAX_WORKERS) if upto >= PARALLEL_FROM else 1
    ranges = id_ranges(workers)
    from_id, to_id = ranges[0]
    read = _shared_out(
        [
            (
                _build_part,
                (ledger.settings, partial, upto, lo, hi, known_at, batch, replica),
                f"replay-{lo}",
            )
            for lo, hi in ranges[1:]
        ],
        lambda: _fold(ledger.ledger_recorder, store, upto, from_id, to_id, known_at, batch),
    )
    if replica:
        for tracking, last in partitions:
            store.position_at(tracking, last)
    elif upto:  # an empty log leaves no position, as catching up from it would
        mark = ledger.ledger_recorder.hash_at(upto)
        if mark is None:  # the log gave this position a moment ago: not expected
            raise RuntimeError(f"the log holds no fact at its last position {upto}")
        store.position_at(Tracking(APPLICATION, upto), (upto, mark))
    return read


def _by_partition(
    ledger: ConsentLedger,
    store: ConsentViews,
    partial: Path,
    known_at: datetime | None,
    workers: int | None,
) -> int:
    """Kafka mode: the ledger topic caught up into the store in its order, its partitions
    shared among `workers` processes (at most one a partition), each reading its own from
    the topic to the same ends, taken before any starts. A subject's facts all lie in one
    partition, so the processes fold apart, as the ranges of subjects of an embedded
    replay do; each commits its partitions' positions with their rows."""
    from ledger.kafka.recorder import KafkaLedgerRecorder
    from projections.kafka_source import LedgerTopicReader

    recorder = ledger.ledger_recorder
    assert isinstance(recorder, KafkaLedgerRecorder)
    partitions = list(range(recorder.link.partitions))
    reader = LedgerTopicReader(recorder)
    try:
        ends = reader.ends()
        # Every record before the ends applied by the replica first: the processes consult
        # it for the records it accepted, and one that found it short would catch it up
        # beside another doing the same.
        if any(recorder.positions().get(p, 0) < end for p, end in ends.items()):
            recorder.catch_up(kept=reader.kept())
    finally:
        reader.close()
    short = {p: end for p, end in ends.items() if recorder.positions().get(p, 0) < end}
    if short:  # the replica reads to the end as it begins, past these: not expected
        raise RuntimeError(f"the replica stands before the replay's ends in partitions {short}")
    if workers is None:
        workers = kafka_workers(sum(ends.values()), len(partitions))
    shares = partition_shares(
        {p: ends.get(p, 0) for p in partitions}, min(workers, len(partitions))
    )
    # LEDGER_VIEWS_CACHE_FACTS bounds the memory of the views' catch-up: shared among the
    # processes, each holding a cache of its own, they hold no more together than one would.
    cache = ledger.settings.views_cache_facts // len(shares)
    return _shared_out(
        [
            (
                _read_part,
                (ledger.settings, recorder.link, partial, share, ends, known_at, cache),
                f"replay-partitions-{'-'.join(map(str, share))}",
            )
            for share in shares[1:]
        ],
        lambda: _read_partitions(recorder, store, shares[0], ends, known_at, cache),
    )


def _shared_out(
    workers: list[tuple[Callable[..., None], tuple[Any, ...], str]], own: Callable[[], int]
) -> int:
    """Starts a worker process for each (target, its arguments but the pipe it answers on,
    name), does `own` share meanwhile, and returns the entries all read. A failure anywhere
    stops the rest and fails the replay."""
    started: list[tuple[Any, Connection]] = []
    try:
        for target, args, name in workers:
            receiver, sender = _SPAWN.Pipe(duplex=False)
            process = _SPAWN.Process(target=target, args=(*args, sender), name=name)
            process.start()
            sender.close()
            started.append((process, receiver))
        read = own()
        for process, receiver in started:
            read += _result_of(process, receiver)
    except BaseException:
        for process, _ in started:
            process.terminate()
        raise
    finally:
        for process, receiver in started:
            process.join()
            receiver.close()
    return read


def kafka_workers(offsets: int, partitions: int) -> int:
    """The processes a Kafka-mode replay of `offsets` over `partitions` takes by default."""
    if offsets < KAFKA_PARALLEL_FROM:
        return 1
    return partition_workers(partitions, os.cpu_count() or 1)


def partition_workers(partitions: int, cores: int) -> int:
    """How many processes a long Kafka-mode replay shares its partitions among.

    A partition is read whole by one process, so with more partitions than cores and not a
    multiple of them, one process a core leaves one with a partition more than the others
    to finish alone: 3 partitions on 2 cores gave one process two thirds of the work (a
    throwaway timing at 60,002 offsets, 2026-12-06, three rounds: 7.00-7.70 s in one
    process, 5.86-6.24 s in two, 5.31-5.99 s in three). So, while they are few, one process
    a partition, the cores shared among them by the system; from twice the cores, one a
    core (a partition more for some is then a smaller share of their work)."""
    cores = max(1, min(cores, MAX_WORKERS))
    if partitions <= cores or partitions % cores == 0:
        return min(partitions, cores)
    if partitions < 2 * cores:
        return partitions
    return cores


def partition_shares(ends: dict[int, int], workers: int) -> list[list[int]]:
    """The partitions (with their offsets to read, `ends`) shared among `workers`
    processes, each largest partition to the process with the fewest offsets so far: a
    partition with more records than the others (its subjects' keys hashed there, or
    partitions added to the topic later) does not leave one process finishing alone behind
    two large ones. Equal partitions (empty ones too) go round, one each in turn."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for partition in sorted(ends, key=lambda p: (-ends[p], p)):
        lightest = min(range(workers), key=lambda i: (loads[i], len(shares[i])))
        shares[lightest].append(partition)
        loads[lightest] += ends[partition]
    return [sorted(share) for share in shares]


def _read_partitions(
    recorder: KafkaLedgerRecorder,
    store: ConsentViews,
    partitions: list[int],
    ends: dict[int, int],
    known_at: datetime | None,
    cache_facts: int,
) -> int:
    """Some partitions of the ledger topic caught up into the store, to `ends`."""
    from projections.kafka_source import LedgerTopicReader

    projection = ConsentProjection(view=store, cache_facts=cache_facts)
    known = None if known_at is None else KnownAt(known_at)
    reader = LedgerTopicReader(recorder, partitions=partitions)
    try:
        read = reader.catch_up(MAPPER, projection, APPLICATION, known=known, upto=ends)
    finally:
        reader.close()
    failpoint("replay-part-written")
    return read


def _read_part(
    settings: Settings,
    link: KafkaLink,
    partial: Path,
    partitions: list[int],
    ends: dict[int, int],
    known_at: datetime | None,
    cache_facts: int,
    results: Connection,
) -> None:
    """A worker process: some partitions of the ledger topic into the shared temporary
    store, each record's acceptance read from the replica's file, which the process that
    started it caught up to the ends (so this one never writes it)."""
    from eventsourcing.sqlite import SQLiteDatastore

    from ledger.kafka.clients import secured
    from ledger.kafka.recorder import KafkaLedgerRecorder
    from ledger.runtime import tune

    def work() -> int:
        # The clients' TLS and login, registered for the bootstrap list as the parent's were.
        if secured(settings) != link.bootstrap:
            raise RuntimeError("the settings name another bootstrap list than the replay's")
        datastore = SQLiteDatastore(str(settings.log_path), lock_timeout=30)
        recorder = KafkaLedgerRecorder(datastore, link=link)
        try:
            store = ConsentViews.open(partial, building=True)
            tune()  # spawned, so not tuned like the process that started it
            try:
                return _read_partitions(recorder, store, partitions, ends, known_at, cache_facts)
            finally:
                store.close()
        finally:
            recorder.close()
            datastore.close()

    _answer(results, work)


def id_ranges(parts: int) -> list[tuple[str, str | None]]:
    """`parts` ranges of aggregate ids (stored as lower-case hex) covering every id.

    Subject ids are keyed hashes, so equal ranges of the id space hold about equal shares of
    the log.
    """
    bounds = [f"{i * 256 // parts:02x}" for i in range(1, parts)]
    return list(zip(["", *bounds], [*bounds, None], strict=True))


def _fold(
    recorder: LedgerSQLiteRecorder,
    store: ConsentViews,
    upto: int,
    from_id: str,
    to_id: str | None,
    known_at: datetime | None,
    batch: int,
) -> int:
    """Fold one range of subjects' whole histories into the store; returns entries read."""
    projection = ConsentProjection(view=store)
    known = None if known_at is None else KnownAt(known_at)
    read = 0
    reading = recorder.by_aggregate(batch, upto=upto, from_id=from_id, to_id=to_id)
    with reading as (_, batches):
        for stored in batches:
            events: list[Any] = [MAPPER.to_domain_event(s) for s in stored]
            if known is not None:
                events = [e for e in events if known(e)]
            projection.project_histories(events)
            failpoint("replay-part-written")
            read += len(stored)
    return read


def _build_part(
    settings: Settings,
    partial: Path,
    upto: int,
    from_id: str,
    to_id: str | None,
    known_at: datetime | None,
    batch: int,
    replica: bool,
    results: Connection,
) -> None:
    """A worker process: one range of subjects into the shared temporary store.

    It reads the log's file (the embedded log, or in Kafka mode with `replica` the replica
    of the ledger topic) and nothing else: the process that started it opened the ledger,
    and up to `upto` the file's rows never change. Opening a Kafka-mode ledger here would
    reach for the broker and catch the replica up from a second process.
    """
    from eventsourcing.sqlite import SQLiteDatastore

    from ledger.runtime import tune

    def work() -> int:
        assert replica == (settings.backend == "kafka")
        datastore = SQLiteDatastore(str(settings.log_path), lock_timeout=30)
        try:
            recorder = LedgerSQLiteRecorder(datastore)
            store = ConsentViews.open(partial, indexes=False, building=True)
            tune()  # spawned, so not tuned like the process that started it
            try:
                return _fold(recorder, store, upto, from_id, to_id, known_at, batch)
            finally:
                store.close()
        finally:
            datastore.close()

    _answer(results, work)


class WorkerFailure(SaysNoData):
    """The traceback of a replay worker's exception, raised again by the process that
    started it as its own, as the cause of that; its messages withheld (`ledger.bug_report`),
    so the CLI's report of the replay's failure shows the worker's frames."""


@dataclass(frozen=True)
class _Failed:
    error: BaseException
    traceback: str


def _answer(results: Connection, work: Callable[[], int]) -> None:
    """A worker process's part: sends the entries `work` read, or the exception that ended
    it, which the process that started the worker raises (`_result_of`). A broker gone or a
    full disk in a worker then ends `replay` as in its own process, said in one line (exit
    6), where the worker printed a traceback and the replay failed as a worker that ended."""
    try:
        try:
            read = work()
        except Exception as error:
            failed = _Failed(error, "\n".join(report(error)))
            try:
                # Sent only if the other end can make it again: an exception whose
                # constructor takes other arguments than its message pickles, then fails
                # to unpickle there.
                pickle.loads(pickle.dumps(failed))
            except Exception:  # its name instead (its words may quote a value)
                said = RuntimeError(f"{named(error)} {WITHHELD}")
                failed = _Failed(said, failed.traceback)
            results.send(failed)
        else:
            results.send(read)
    finally:
        results.close()


def _result_of(process: Any, receiver: Connection) -> int:
    """The entries a worker read; a worker that died or failed fails the whole replay."""
    try:
        read = receiver.recv()
    except EOFError:
        process.join()
        raise RuntimeError(
            f"replay worker {process.name} ended without finishing (exit code {process.exitcode})"
        ) from None
    if isinstance(read, _Failed):
        raise read.error from WorkerFailure(f"in replay worker {process.name}:\n{read.traceback}")
    return int(read)


def remove_store(path: Path) -> None:
    """Delete an SQLite file with its write-ahead log and shared-memory index, if there."""
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
