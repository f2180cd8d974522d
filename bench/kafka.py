"""Kafka mode: the intake writer and the ledger's readers, next to raw kafka-python doing the
same movement of bytes on the same broker in the same run.

Rows:
- intake writer: consume the intake topic (read_committed), parse, check the rules, seal
  personal data, chain, append to the ledger topic and commit the intake offsets, one Kafka
  transaction per batch of 500;
- raw consume-transform-produce: kafka-python consuming the same intake records and copying
  each value to another topic, the intake offsets sent in the same transaction per 500 — the
  floor of any exactly-once intake on this client;
- ledger record() in Kafka mode, 1,000 per transaction (the writer without the intake side);
- raw transactional producer: the same number of records of the ledger's size, 1,000 per
  transaction;
- replica rebuild (the writer taking ownership on an empty replica) and the projection
  replay from the ledger topic, next to a raw read_committed scan of that topic;
- end to end at `--rate` facts/s: from the moment a fact is due to be published to a
  read_committed reader seeing it, through the raw loop (`bench.raw_loop`, its own process)
  and through `consent-ledger worker`, with the same schedule, publisher (lingering 5 ms, as
  Kafka 4's Java producer does by default) and reader, taking turns in `--latency-rounds`
  rounds (each round's pair is printed, and the percentiles of all rounds together);
- idle for `--idle-seconds`: the CPU `consent-ledger worker` (with its projections) and the
  raw loop's process spend a second with nothing published, and the broker's for each.

After a warm-up (`--warm-up` facts through each of the three, untimed: the broker's JVM
compiles and sizes its heap meanwhile), the intake writer and the two raw loops take turns
in `--rounds` rounds, each round its own topics and a stream of its own (`--facts` split
between the rounds), so that a change in the machine's speed during the run falls on all
three alike, as `bench ingest` does commit by commit; run one after another, the ratio of
the same code moved from 0.60 to 0.47 within an hour (2026-12-01, bench/RESULTS.md).

Below the rows, the CPU each of the three spent a record over its timed rounds: this
process's (every thread: the writer or the loop, and kafka-python's network threads) and the
broker's (unless KAFKA_BOOTSTRAP names a broker this run did not start). The writer runs on
one interpreter, whose lock lets one thread run Python at a time: a process busy about a
second per second of its rounds is bound by its own CPU, not by waiting for the broker.

The broker is the one deploy/kafka/broker.sh starts (or KAFKA_BOOTSTRAP), on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from bench.ingest import mixed_stream
from bench.raw_loop import copy_in_one_transaction
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.kafka.intake import IntakeWriter, wait_until_consumed
from ledger.kafka.names import Topics
from ledger.kafka.publish import intake_key
from ledger.kafka.recorder import PRODUCER_TUNING, KafkaLedgerRecorder
from ledger.kafka.records import FIELDS_HEADER
from ledger.settings import Settings
from projections.consent_projection import ConsentProjection
from projections.rebuild import kafka_workers, rebuild
from projections.runner import catch_up
from projections.store import ConsentViews

BROKER = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "broker.sh"

# The process id of the broker this run started, by its bootstrap address (`broker_cpu`).
_BROKER_PIDS: dict[str, int] = {}


@contextmanager
def broker(root: Path) -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    run_dir = root / "broker"
    out = subprocess.run(
        [str(BROKER), "start", str(run_dir)], capture_output=True, text=True, check=True
    )
    bootstrap = out.stdout.strip().splitlines()[-1]
    _BROKER_PIDS[bootstrap] = int((run_dir / "broker.pid").read_text())
    try:
        yield bootstrap
    finally:
        _BROKER_PIDS.pop(bootstrap, None)
        subprocess.run([str(BROKER), "stop", str(run_dir)], check=False)


def broker_cpu(bootstrap: str) -> float | None:
    """CPU seconds (user and system) the broker at `bootstrap` has spent, if this run
    started it (its /proc entry); None for one named by KAFKA_BOOTSTRAP."""
    pid = _BROKER_PIDS.get(bootstrap)
    return None if pid is None else process_cpu(pid)


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user and system, every thread) process `pid` has spent; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Spent:
    """CPU seconds spent over timed parts: this process's (every thread) and the broker's
    (None once one part could not read it)."""

    own: float = 0.0
    broker: float | None = 0.0


def cpu_of(spent: Spent, records: int, seconds: float) -> str:
    """`spent` a record, and this process's CPU seconds a second, as the summary says them."""
    broker = "not measured" if spent.broker is None else f"{spent.broker / records * 1e6:.0f}"
    return f"{spent.own / records * 1e6:.0f} | {broker} us, {spent.own / seconds:.2f}"


@contextmanager
def cpu_into(spent: Spent | None, bootstrap: str) -> Iterator[None]:
    """Add the CPU spent inside to `spent` (nothing if it is None)."""
    if spent is None:
        yield
        return
    own, brokers = time.process_time(), broker_cpu(bootstrap)
    yield
    spent.own += time.process_time() - own
    after = broker_cpu(bootstrap)
    if brokers is None or after is None or spent.broker is None:
        spent.broker = None
    else:
        spent.broker += after - brokers


PARTITIONS = 3  # of every topic of the benchmark
# The latency run's publisher lingers 5 ms, the Java client's default since Kafka 4.0
# (KIP-1030), not kafka-python's 0: one produce request per fact, 2,000 a second, had the load
# generator and the broker take CPU from the worker on the 2 cores they share. Four runs
# taking turns gave the ledger worker a p99 of 376-585 ms and p50 184-291 ms with 0, against
# 204-474 and 75-105 ms with 5; the raw loop's p99 106-126 against 97-149 ms (2026-12-01, the
# code of ce0d8f7). The linger is inside every timed latency.
PUBLISHER_LINGER_MS = 5
# The latency run's publisher wakes this often and sends every fact due by then (at 2,000
# facts/s, about ten), rather than sleeping until each is due: 2,000 wake-ups a second took
# about a tenth of a core from the 2 that the worker and the broker share with it (three runs
# taking turns at ce0d8f7: the load generator's process at 53-67% of a core against 42-56%;
# the ledger worker's p99 194-277 against 159-219 ms). Each fact is timed from when it was due.
PUBLISH_EVERY_S = 0.005


def settings_for(root: Path, bootstrap: str, name: str) -> Settings:
    return Settings(
        data_dir=root / name,
        backend="kafka",
        kafka_bootstrap=bootstrap,
        topic_prefix=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        partitions=PARTITIONS,
    )


# The publishing service's own secret (see intake_key): one per run.
PUBLISHER_SECRET = os.urandom(32)


def key_of(fact: dict[str, Any]) -> bytes:
    return intake_key(PUBLISHER_SECRET, fact["tenant"], fact["subject"])


def publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Keyed as a publisher keeps one person's facts in order, without the reference."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for value in values:
        producer.send(topic, key=key_of(orjson.loads(value)), value=value)
    producer.flush()
    producer.close()


def ends(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    out: dict[TopicPartition, int] = consumer.end_offsets(tps)
    consumer.close()
    return out


def bench_intake(
    root: Path,
    bootstrap: str,
    stream: list[bytes],
    name: str = "intake",
    spent: Spent | None = None,
) -> tuple[int, float]:
    settings = settings_for(root, bootstrap, name)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    topics = Topics.of(settings.topic_prefix)
    publish(bootstrap, topics.intake, stream)
    writer = IntakeWriter(ledger, batch=500)
    writer.start()
    until = ends(bootstrap, topics.intake)
    with cpu_into(spent, bootstrap):
        t0 = time.perf_counter()
        wait_until_consumed(writer, until, 600)
        seconds = time.perf_counter() - t0
    assert writer.stats.accepted == len(stream), writer.stats
    writer.close()
    ledger.close()
    return len(stream), seconds


DEFAULT_PRODUCER: dict[str, object] = {"enable_idempotence": True, "acks": "all"}


def raw_topics(bootstrap: str, name: str) -> tuple[str, str, str]:
    """A fresh prefix and its source and sink topics, created, for a raw loop."""
    prefix = f"{name}-{uuid.uuid4().hex[:6]}"
    source, sink = f"{prefix}.in", f"{prefix}.out"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        {t: {"num_partitions": PARTITIONS, "replication_factor": 1} for t in (source, sink)},
        wait_for_metadata=True,
    )
    admin.close()
    return prefix, source, sink


def bench_raw_ctp(
    bootstrap: str,
    stream: list[bytes],
    producer_settings: dict[str, object],
    spent: Spent | None = None,
) -> tuple[int, float]:
    prefix, source, sink = raw_topics(bootstrap, "bench-raw")
    publish(bootstrap, source, stream)
    group = f"{prefix}-group"
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    tps = [TopicPartition(source, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"{prefix}-tx",
        **producer_settings,
    )
    producer.init_transactions()
    with cpu_into(spent, bootstrap):
        t0 = time.perf_counter()
        done = 0
        while done < len(stream):
            polled = consumer.poll(timeout_ms=500, max_records=500)
            records = [r for batch in polled.values() for r in batch]
            done += copy_in_one_transaction(records, sink, consumer, producer)
        seconds = time.perf_counter() - t0
    producer.close()
    consumer.close()
    return done, seconds


def bench_record(
    root: Path, bootstrap: str, facts: list[dict[str, Any]]
) -> tuple[int, float, Settings]:
    settings = settings_for(root, bootstrap, "record")
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    t0 = time.perf_counter()
    for i in range(0, len(facts), 1000):
        outcomes = ledger.record([parse_fact(f) for f in facts[i : i + 1000]])
        assert all(not isinstance(o, Exception) for o in outcomes)
    seconds = time.perf_counter() - t0
    ledger.close()
    return len(facts), seconds, settings


def bench_raw_producer(bootstrap: str, count: int, size: int) -> tuple[int, float]:
    topic = f"bench-rawp-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        {topic: {"num_partitions": PARTITIONS, "replication_factor": 1}}, wait_for_metadata=True
    )
    admin.close()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"{topic}-tx",
        **PRODUCER_TUNING,
    )
    producer.init_transactions()
    value = b"x" * size
    t0 = time.perf_counter()
    for i in range(0, count, 1000):
        producer.begin_transaction()
        for j in range(i, min(count, i + 1000)):
            producer.send(topic, key=f"demo/{j:032x}".encode(), value=value)
        producer.commit_transaction()
    seconds = time.perf_counter() - t0
    producer.close()
    return count, seconds


def bench_raw_scan(bootstrap: str, topic: str) -> tuple[int, float]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    n = 0
    t0 = time.perf_counter()
    while any(consumer.position(tp) < end[tp] for tp in tps):
        for batch in consumer.poll(timeout_ms=500, max_records=5000).values():
            n += sum(len(r.value) > 0 for r in batch)
    seconds = time.perf_counter() - t0
    consumer.close()
    return n, seconds


def bench_rebuild(settings: Settings) -> tuple[int, float]:
    replica = settings.log_path
    replica.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{replica}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    ledger = ConsentLedger(settings)  # catches the empty replica up from the partitions
    seconds = time.perf_counter() - t0
    n = ledger.ledger_recorder.head()[0]
    ledger.close()
    return n, seconds


def bench_fill(root: Path, settings: Settings) -> tuple[int, float]:
    """An empty views store filled from the replica, subject by subject, as the service's
    first question over a long log fills it (`projections.views.fill_by_replay`)."""
    ledger = ConsentLedger(settings)
    t0 = time.perf_counter()
    n = rebuild(ledger, root / "filled-views.db", from_replica=True)
    seconds = time.perf_counter() - t0
    ledger.close()
    return n, seconds


def bench_inquiry_replay(root: Path, settings: Settings) -> tuple[int, float, int]:
    """`consent-ledger replay`: a fresh store caught up from the ledger topic, its partitions
    shared among processes (`projections.rebuild.partition_workers`); also returns how many
    processes."""
    ledger = ConsentLedger(settings)
    recorder = ledger.ledger_recorder
    assert isinstance(recorder, KafkaLedgerRecorder)
    partitions = recorder.link.partitions
    processes = kafka_workers(sum(recorder.positions().values()), partitions)  # as rebuild
    t0 = time.perf_counter()
    n = rebuild(ledger, root / "inquiry" / "views.db")
    seconds = time.perf_counter() - t0
    ledger.close()
    return n, seconds, processes


def bench_replay(root: Path, settings: Settings) -> tuple[int, float]:
    ledger = ConsentLedger(settings)
    views = ConsentViews.open(root / "replay-views.db")
    t0 = time.perf_counter()
    n = catch_up(ledger, ConsentProjection(view=views))
    seconds = time.perf_counter() - t0
    views.close()
    ledger.close()
    return n, seconds


Latency = tuple[int, float, float, float]  # facts timed, p50, p99, max (ms)
# The first facts of each latency run, published and waited for but not timed: the first
# transactions look up coordinators and metadata.
LATENCY_WARM_UP = 1000


def summary(latencies: list[float]) -> Latency:
    """How many, p50, p99 and the worst of these latencies (ms)."""
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return len(ordered), pct(0.50), pct(0.99), ordered[-1]


def worker_ledger(root: Path, bootstrap: str, name: str) -> tuple[Settings, dict[str, str]]:
    """A fresh Kafka-mode ledger with the demo tenant, and the environment a
    `consent-ledger worker` process runs on it with."""
    settings = settings_for(root, bootstrap, name)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    env = {
        **os.environ,
        "LEDGER_BACKEND": "kafka",
        "KAFKA_BOOTSTRAP": bootstrap,
        "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "LEDGER_DATA_DIR": str(settings.data_dir),
    }
    return settings, env


def bench_latency(
    root: Path,
    bootstrap: str,
    facts: list[dict[str, Any]],
    rate: int,
    warm: int = LATENCY_WARM_UP,
    name: str = "latency",
) -> tuple[list[float], str]:
    """Publish at `rate` facts/s to a worker process; time each fact from send to committed.

    The worker is the real `consent-ledger worker` (its own process, as deployed); this
    process publishes on a fixed schedule and reads the ledger topic with read_committed,
    so a fact counts as arrived when a reader can see it.
    """
    settings, env = worker_ledger(root, bootstrap, name)
    topics = Topics.of(settings.topic_prefix)
    worker = [sys.executable, "-m", "ledger.cli", "worker", "--no-projections"]

    def event_id(record: Any) -> str | None:
        for key, value in record.headers or []:
            if key == FIELDS_HEADER:
                return str(orjson.loads(value)["event_id"])
        return None

    flow = (topics.intake, topics.ledger, settings.partitions)
    return timed_flow(bootstrap, worker, env, flow, event_id, facts, rate, warm)


def bench_raw_latency(
    bootstrap: str, facts: list[dict[str, Any]], rate: int, warm: int = LATENCY_WARM_UP
) -> list[float]:
    """The same schedule and reader through the raw consume-transform-produce loop
    (`bench.raw_loop`, a process of its own), on topics of the ledger's partition count:
    the latency Kafka, the client and this machine give before the ledger adds its own."""
    _, source, sink = raw_topics(bootstrap, "bench-raw-latency")
    worker = [sys.executable, "-m", "bench.raw_loop", bootstrap, source, sink]

    def event_id(record: Any) -> str | None:
        return str(orjson.loads(record.value)["event_id"])

    flow = (source, sink, PARTITIONS)
    return timed_flow(bootstrap, worker, dict(os.environ), flow, event_id, facts, rate, warm)[0]


# After its first line, a process is given this long before its idle CPU is metered: the
# worker's projections catch up with the facts `init_demo` wrote, and the first fetches of
# each consumer find their coordinators and positions.
IDLE_SETTLE_S = 2.0


@dataclass
class Idle:
    """CPU seconds a second over an idle spell: the process's, and the broker's (None when
    this run did not start the broker)."""

    own: float
    broker: float | None


def idle_cpu(bootstrap: str, command: list[str], env: dict[str, str], seconds: float) -> Idle:
    """Start `command` (it prints a line once it consumes), let it settle, then meter its CPU
    and the broker's over `seconds` with nothing published; stop it with SIGTERM."""
    import signal

    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    try:
        process.stdout.readline()
        time.sleep(IDLE_SETTLE_S)
        own, broker = process_cpu(process.pid), broker_cpu(bootstrap)
        time.sleep(seconds)
        own_after, broker_after = process_cpu(process.pid), broker_cpu(bootstrap)
        # An exited process not yet waited for still has its /proc entry: ask, not read.
        stopped = process.poll()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert stopped is None, f"{command[2]} exited while idle (status {stopped})"
    assert own is not None and own_after is not None
    return Idle(
        (own_after - own) / seconds,
        None if broker is None or broker_after is None else (broker_after - broker) / seconds,
    )


def bench_idle(root: Path, bootstrap: str, seconds: float) -> tuple[Idle, Idle]:
    """What `consent-ledger worker` (its intake writer and its projections, as deployed) and
    the raw loop process spend with nothing to do, and the broker's CPU for each.

    A worker waits for facts most of its life, and what it and the broker spend meanwhile is
    paid around the clock. Until cb1959a (2026-12-07) the intake consumer asked the broker
    for records every 20 ms: the idle writer spent about 0.09 s of CPU a second, and the
    broker 0.16 for it (a throwaway probe, the writer's `step` in a loop for 20 s, twice)."""
    _, env = worker_ledger(root, bootstrap, "idle")
    worker = idle_cpu(bootstrap, [sys.executable, "-m", "ledger.cli", "worker"], env, seconds)
    _, source, sink = raw_topics(bootstrap, "bench-raw-idle")
    raw = idle_cpu(
        bootstrap,
        [sys.executable, "-m", "bench.raw_loop", bootstrap, source, sink],
        dict(os.environ),
        seconds,
    )
    return worker, raw


def idle_of(idle: Idle) -> str:
    broker = "not measured" if idle.broker is None else f"{idle.broker:.3f}"
    return f"{idle.own:.3f} | {broker}"


def reader_from_the_end(bootstrap: str, topic: str, partitions: int) -> KafkaConsumer:
    """A read_committed consumer of every partition of `topic`, positioned at its end now:
    what the latency runs time a record's arrival with."""
    reader = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    reader.assign(tps)
    reader.seek_to_end(*tps)
    for tp in tps:
        reader.position(tp)
    return reader


def timed_flow(
    bootstrap: str,
    worker_command: list[str],
    env: dict[str, str],
    flow: tuple[str, str, int],
    event_id: Callable[[Any], str | None],
    facts: list[dict[str, Any]],
    rate: int,
    warm: int,
) -> tuple[list[float], str]:
    """Start the worker (it prints a line once it consumes), publish `facts` to the flow's
    source on a fixed schedule, the first `warm` unmeasured, and time each from when it was
    due to be sent to the moment a read_committed reader of the sink sees it."""
    import signal
    import threading

    source, sink, partitions = flow
    worker = subprocess.Popen(
        worker_command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert worker.stdout is not None
    worker.stdout.readline()  # once it owns its partitions and its producer
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    reader = reader_from_the_end(bootstrap, sink, partitions)
    measured = len(facts) - warm
    done = threading.Event()
    started = threading.Event()  # the measured schedule has begun

    def read() -> None:
        while not done.is_set():
            for batch in reader.poll(timeout_ms=100).values():
                now = time.time()
                for record in batch:
                    found = event_id(record)
                    if found is not None:
                        arrived[found] = now
            if started.is_set() and len(arrived) >= measured:
                done.set()

    thread = threading.Thread(target=read)
    thread.start()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=PUBLISHER_LINGER_MS)
    # Warm-up, not measured: the first transactions look up coordinators and metadata.
    warmup, facts = facts[:warm], facts[warm:]
    for fact in warmup:
        producer.send(source, key=key_of(fact), value=orjson.dumps(fact))
    producer.flush()
    deadline = time.monotonic() + 120
    while len(arrived) < len(warmup) and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting on the reader thread's count, polled
    arrived.clear()
    started.set()
    records = [(f["event_id"], key_of(f), orjson.dumps(f)) for f in facts]
    start = time.time()
    i = 0
    while i < len(records):
        due_now = min(len(records), int((time.time() - start) * rate) + 1)
        for event, key, value in records[i:due_now]:
            # Timed from when it was due, not from when it went: a late send counts against
            # the flow, never for it.
            sent[event] = start + i / rate
            producer.send(source, key=key, value=value)
            i += 1
        if i < len(records):
            # the load generator's schedule, not a synchronisation
            time.sleep(max(PUBLISH_EVERY_S, start + i / rate - time.time()))
    producer.flush()
    done.wait(timeout=120)
    done.set()
    thread.join()
    producer.close()
    reader.close()
    worker.send_signal(signal.SIGTERM)
    said, _ = worker.communicate(timeout=60)
    latencies = [(arrived[e] - sent[e]) * 1000 for e in sent if e in arrived]
    assert len(latencies) == len(facts), f"{len(facts) - len(latencies)} facts never arrived"
    return latencies, said.strip()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench kafka", description=__doc__)
    parser.add_argument("--facts", type=int, default=20_000, help="facts through each path")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="the intake writer and the raw loops take turns in this many rounds",
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=2_000,
        help="facts each of the three takes once, untimed, before the rounds (0: none)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="how long an idle worker and an idle raw loop have their CPU metered (0: not)",
    )
    parser.add_argument("--rate", type=int, default=2_000, help="offered rate, latency run")
    parser.add_argument(
        "--latency-facts",
        type=int,
        default=8_000,
        help="facts through each latency run (the first 1,000 warm up, not timed)",
    )
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=3,
        help="the raw loop and the ledger worker take turns in this many latency runs each",
    )
    args = parser.parse_args(argv)
    if args.latency_rounds < 1 or args.latency_facts <= LATENCY_WARM_UP:
        parser.error(
            f"--latency-rounds must be at least 1 and --latency-facts more than {LATENCY_WARM_UP}"
        )
    facts = mixed_stream(args.facts)
    stream = [orjson.dumps(f) for f in facts]
    rows: list[tuple[str, int, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with broker(root) as bootstrap:
            # Round by round, the three in turn, each round a fresh ledger and topics and a
            # stream of its own (a round's withdrawals name subjects its own grants made).
            part = [orjson.dumps(f) for f in mixed_stream(max(1, args.facts // args.rounds))]
            # A fresh broker's JVM compiles its produce, fetch and transaction paths, and
            # grows its heap with concurrent collections, over its first seconds of work:
            # its compiler threads took 45 us a record and its collector threads 89 during
            # the writer's first 20,000 facts (after 5,000 untimed), then 25 and 3 during the
            # next 20,000 (a throwaway probe reading the broker's threads' CPU, 2026-12-06),
            # all of it on the 2 cores the writer uses. The first round's intake met the
            # cold broker; each path now takes a stream once first.
            if args.warm_up > 0:
                warm = [orjson.dumps(f) for f in mixed_stream(args.warm_up)]
                bench_intake(root, bootstrap, warm, "warm-up")
                bench_raw_ctp(bootstrap, warm, PRODUCER_TUNING)
                bench_raw_ctp(bootstrap, warm, DEFAULT_PRODUCER)
            counts = {"intake": 0, "tuned": 0, "default": 0}
            seconds = {"intake": 0.0, "tuned": 0.0, "default": 0.0}
            cpu = {"intake": Spent(), "tuned": Spent(), "default": Spent()}
            for r in range(args.rounds):
                for kind, (n, s) in (
                    (
                        "intake",
                        bench_intake(root, bootstrap, part, f"intake-{r}", cpu["intake"]),
                    ),
                    ("tuned", bench_raw_ctp(bootstrap, part, PRODUCER_TUNING, cpu["tuned"])),
                    (
                        "default",
                        bench_raw_ctp(bootstrap, part, DEFAULT_PRODUCER, cpu["default"]),
                    ),
                ):
                    counts[kind] += n
                    seconds[kind] += s
            n, n2, n3 = counts["intake"], counts["tuned"], counts["default"]
            s, s2, s3 = seconds["intake"], seconds["tuned"], seconds["default"]
            intake, raw_ctp, raw_default = n / s, n2 / s2, n3 / s3
            rows.append(("intake writer, 500 per transaction", n, s, "rules, sealing, chain, EOS"))
            rows.append(
                ("raw consume-transform-produce, 500/txn", n2, s2, "writer's producer settings")
            )
            rows.append(
                ("raw consume-transform-produce, defaults", n3, s3, "kafka-python defaults")
            )
            n, s, settings = bench_record(root, bootstrap, facts)
            record = n / s
            rows.append(("ledger record(), Kafka mode, 1,000/txn", n, s, "no intake side"))
            replica = ConsentLedger(settings)
            events = replica.ledger_recorder.head()[0]
            replica.close()
            avg = sum(len(v) for v in stream) // len(stream)
            n, s = bench_raw_producer(bootstrap, events, avg)
            raw_producer = n / s
            rows.append(("raw transactional producer, 1,000/txn", n, s, f"{avg} B values"))
            n, s = bench_rebuild(settings)
            rows.append(("replica rebuild from the ledger topic", n, s, "writer taking ownership"))
            n, s = bench_replay(root, settings)
            replay = n / s
            rows.append(("projection replay from the ledger topic", n, s, "read_committed"))
            n, s, processes = bench_inquiry_replay(root, settings)
            inquiry = n / s
            rows.append(
                ("consent-ledger replay from the ledger topic", n, s, f"{processes} processes")
            )
            n, s = bench_fill(root, settings)
            fill = n / s
            rows.append(("views filled from the replica", n, s, "subject by subject"))
            n, s = bench_raw_scan(bootstrap, Topics.of(settings.topic_prefix).ledger)
            scan = n / s
            rows.append(("raw read_committed scan of that topic", n, s, "kafka-python consumer"))
            # The raw loop and the ledger worker take turns, the one that goes first
            # alternating from round to round: the latency moves with the machine's load
            # even more than the rates do, within a minute (the machine's slower moments fell
            # on one and not the other when each ran once, 2026-12-01 22:50, RESULTS.md),
            # so each round's pair shares its moment and the rounds pool into one figure.
            pairs: list[tuple[Latency, Latency]] = []
            raw_all: list[float] = []
            worker_all: list[float] = []
            worker_said = ""
            latency_stream = mixed_stream(args.latency_facts)
            for r in range(args.latency_rounds):
                measured: dict[str, list[float]] = {}
                order = ("raw", "worker") if r % 2 == 0 else ("worker", "raw")
                for which in order:
                    if which == "raw":
                        measured[which] = bench_raw_latency(bootstrap, latency_stream, args.rate)
                    else:
                        measured[which], worker_said = bench_latency(
                            root, bootstrap, latency_stream, args.rate, name=f"latency-{r}"
                        )
                raw_all += measured["raw"]
                worker_all += measured["worker"]
                pairs.append((summary(measured["raw"]), summary(measured["worker"])))
            raw_latency, latency = summary(raw_all), summary(worker_all)
            idle = bench_idle(root, bootstrap, args.idle_seconds) if args.idle_seconds else None
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"Kafka mode on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}, broker and client on the same machine)"
    )
    print(f"{'what':<44} {'records':>7} {'seconds':>8} {'per second':>11}  note")
    for name, n, s, note in rows:
        print(f"{name:<44} {n:>7} {s:>8.2f} {n / s:>11,.0f}  {note}")
    for name, (n, p50, p99, worst) in (
        ("raw consume-transform-produce loop", raw_latency),
        ("ledger worker", latency),
    ):
        print(
            f"end to end at {args.rate:,} facts/s offered, {name} ({n:,} facts in "
            f"{len(pairs)} runs, publisher lingering {PUBLISHER_LINGER_MS} ms -> worker "
            f"process -> read_committed reader): p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
            f"max {worst:.0f} ms"
        )
    print(
        "  run by run, raw loop | ledger worker (p50/p99 ms, taking turns): "
        + "; ".join(
            f"{raw[1]:.0f}/{raw[2]:.0f} | {worker[1]:.0f}/{worker[2]:.0f}" for raw, worker in pairs
        )
    )
    # What `consent-ledger worker` says of its batches when stopped, warm-up included.
    print(
        f"ledger worker in its last end-to-end run, as it reported: {worker_said.splitlines()[-1]}"
    )
    print(
        f"end to end p99, ledger worker: {latency[2]:.0f} ms (target: under 250 ms at 2,000 "
        f"facts/s); raw loop {raw_latency[2]:.0f} ms"
    )
    if idle is not None:
        worker_idle, raw_idle = idle
        print(
            f"idle for {args.idle_seconds:g} s, CPU seconds a second, the process | the broker: "
            f"ledger worker with its projections {idle_of(worker_idle)}; raw "
            f"consume-transform-produce loop {idle_of(raw_idle)}"
        )
    print(
        "CPU a record over the timed rounds, this process (every thread) | the broker, and "
        "this process's CPU seconds a second: "
        + "; ".join(
            f"{label} {cpu_of(cpu[kind], counts[kind], seconds[kind])}"
            for label, kind in (
                ("intake writer", "intake"),
                ("raw loop, writer's settings", "tuned"),
                ("raw loop, defaults", "default"),
            )
        )
    )
    print(
        f"intake writer / raw loop with the same producer settings: {intake / raw_ctp:.2f}, "
        f"/ raw loop with kafka-python defaults: {intake / raw_default:.2f} "
        "(target: at least 0.50, and 10,000 facts/s)"
    )
    print(
        f"intake writer / raw consume-transform-produce: {intake / raw_ctp:.2f}; "
        f"record() / raw producer: {record / raw_producer:.2f}; "
        f"projection replay / raw scan: {replay / scan:.2f}; inquiry replay / raw scan: "
        f"{inquiry / scan:.2f}; views filled from the replica / raw scan: {fill / scan:.2f}"
    )
