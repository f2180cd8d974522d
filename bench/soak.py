"""A `serve` under sustained publishing: its resident memory over time, as an operator sees it.

`python -m bench memory` counts what the consent views' cache holds in Python objects; this
runs the real service (writer process, uvicorn) on a fresh data directory and publishes new
subjects' grants in batches from a few connections for minutes, asking for a page of who had
consent now and then (which brings the server's views up to date with the log, as every
question does), and samples the resident size of the server and of its writer process. A
bound that holds shows as a level line once the views' cache is full; growth without end
would be a leak. The baseline is the same server's size once started, before any request.
The resident size adds to the cache SQLite's page caches (up to 64 MiB per pooled
connection) and the allocator's slack. Not part of `make bench`: it measures memory, and
takes minutes to reach the bound (`--views-cache` lowers it to reach it sooner).

With `--kafka` it soaks Kafka mode's long-running process instead: `consent-ledger worker`
(the intake writer and the consent views in one process) on a broker of its own
(deploy/kafka/broker.sh, or KAFKA_BOOTSTRAP), with new subjects' grants published to the
intake topic at `--rate` facts a second, and the ledger topic's offsets since the worker
started (its facts, and one marker per transaction) counted beside the worker's resident
size, so that a worker falling behind shows too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from api.app import keys_path
from api.keys import ApiKeys
from bench.http import exchange, free_port, parent_pid, request, start
from bench.kafka import broker, key_of
from ledger.application import ConsentLedger
from ledger.policy import SEED_POLICY_VERSION
from ledger.settings import Settings, SettingsError

PURPOSES = ["service_provision", "support", "marketing"]
QUESTION_EVERY = 20  # requests: one page of who had consent among them


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def children(pid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and parent_pid(e) == pid]


def grant(i: int) -> dict[str, Any]:
    """A new subject's grant (over HTTP the tenant comes from the key)."""
    return {
        "event_id": f"soak-{i}",
        "type": "consent.granted",
        "subject": f"soak-contact-{i}",
        "occurred_at": "2025-06-01T10:00:00+05:00",
        "source": "bench",
        "policy_version": SEED_POLICY_VERSION,
        "purposes": PURPOSES,
        "personal_data": {"full_name": f"Karimov Aziz {i}"},
    }


def batch(first: int, size: int) -> bytes:
    return orjson.dumps({"facts": [grant(i) for i in range(first, first + size)]})


def question(key: str) -> bytes:
    return (
        "GET /v1/purposes/marketing/subjects?as_of=2025-07-01T00:00:00Z HTTP/1.1\r\n"
        f"Host: bench\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()


async def load(
    port: int, key: str, seconds: float, size: int, connections: int, sample: Any
) -> tuple[int, dict[int, int]]:
    """Publish until `seconds` have passed, calling `sample(facts)` as it goes; returns the
    facts published and the statuses seen."""
    published = itertools.count(step=size)
    requests = itertools.count()
    statuses: dict[int, int] = {}
    end = time.monotonic() + seconds
    done = [0]

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < end:
            if next(requests) % QUESTION_EVERY == QUESTION_EVERY - 1:
                status = await exchange(reader, writer, question(key))
            else:
                first = next(published)
                status = await exchange(
                    reader, writer, request("/v1/facts:batch", batch(first, size), key)
                )
                if status == 200:
                    done[0] += size
            statuses[status] = statuses.get(status, 0) + 1
            sample(done[0])
        writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return done[0], statuses


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=600, help="how long to publish")
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument("--batch", type=int, default=100, help="facts per batch")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--kafka", action="store_true", help="soak `consent-ledger worker` in Kafka mode instead"
    )
    parser.add_argument(
        "--rate", type=int, default=2000, help="with --kafka: facts published a second"
    )
    parser.add_argument(
        "--views-cache", type=int, help="LEDGER_VIEWS_CACHE_FACTS for the server (default: its)"
    )
    parser.add_argument(
        "--sqlite-memory", type=int, help="LEDGER_SQLITE_MEMORY_MIB for the server (default: its)"
    )
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        parser.error("the soak reads resident sizes from /proc")
    if args.seconds <= 0 or args.every <= 0 or args.connections < 1:
        parser.error("--seconds and --every must be positive, --connections at least 1")
    if not 1 <= args.batch <= 1000:
        parser.error("--batch must be from 1 to 1000 (the service's batch limit)")
    if args.rate < 1:
        parser.error("--rate must be at least 1")
    bounds: dict[str, str] = {}
    for option, name, value in (
        ("--views-cache", "LEDGER_VIEWS_CACHE_FACTS", args.views_cache),
        ("--sqlite-memory", "LEDGER_SQLITE_MEMORY_MIB", args.sqlite_memory),
    ):
        if value is not None:
            try:
                Settings.from_env({name: str(value)})
            except SettingsError as error:
                parser.error(f"{option}: {error}")
            bounds[name] = str(value)
    if args.kafka:
        soak_worker(args, bounds)
    else:
        soak_serve(args, bounds)


def soak_serve(args: argparse.Namespace, bounds: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data")
        ConsentLedger(settings).init_demo()
        store = ApiKeys(keys_path(settings))
        key = store.create("demo", {"publisher", "compliance"})[1]
        store.close()
        port = free_port()
        env = {**os.environ, "LEDGER_DATA_DIR": str(settings.data_dir), **bounds}
        server_settings = Settings.from_env(env)
        bound = server_settings.views_cache_facts
        serve = [sys.executable, "-m", "ledger.cli", "serve", "--port", str(port)]
        server = start(serve, env, port)
        try:
            pid = server.pid
            writers = children(pid)
            print(
                f"serve under sustained publishing on {platform.node()} (Python "
                f"{platform.python_version()}): {args.connections} connections, batches of "
                f"{args.batch} new subjects' grants of {len(PURPOSES)} purposes, one page of "
                f"who had consent in {QUESTION_EVERY} requests; LEDGER_VIEWS_CACHE_FACTS "
                f"{bound:,}, LEDGER_SQLITE_MEMORY_MIB {server_settings.sqlite_memory_mib}",
                flush=True,
            )
            print(f"{'seconds':>7} {'facts':>10} {'server MiB':>10} {'writer MiB':>10}")

            def row(elapsed: float, facts: int) -> None:
                writer = sum(rss_mib(w) for w in writers)
                print(f"{elapsed:>7.0f} {facts:>10,} {rss_mib(pid):>10} {writer:>10}", flush=True)

            row(0, 0)  # the baseline: started, nothing asked yet
            started = time.monotonic()
            due = [started + args.every]

            def sample(facts: int) -> None:
                now = time.monotonic()
                if now >= due[0]:
                    due[0] = now + args.every
                    row(now - started, facts)

            facts, statuses = asyncio.run(
                load(port, key, args.seconds, args.batch, args.connections, sample)
            )
            row(time.monotonic() - started, facts)
            print(f"statuses: {dict(sorted(statuses.items()))}")
        finally:
            server.terminate()
            server.wait()


# Publishing a tenth of a second's facts at a time keeps the schedule within that of the rate.
PUBLISH_EVERY_S = 0.1


def soak_worker(args: argparse.Namespace, bounds: dict[str, str]) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from ledger.kafka.names import Topics

    with tempfile.TemporaryDirectory() as tmp, broker(Path(tmp)) as bootstrap:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            backend="kafka",
            kafka_bootstrap=bootstrap,
            topic_prefix=f"soak-{uuid.uuid4().hex[:6]}",
        )
        ledger = ConsentLedger(settings)
        ledger.init_demo()
        ledger.close()
        topics = Topics.of(settings.topic_prefix)
        env = {
            **os.environ,
            "LEDGER_DATA_DIR": str(settings.data_dir),
            "LEDGER_BACKEND": "kafka",
            "KAFKA_BOOTSTRAP": bootstrap,
            "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
            **bounds,
        }
        worker_settings = Settings.from_env(env)
        with running_worker(env, Path(tmp) / "worker.log") as worker:
            print(
                f"worker under sustained intake on {platform.node()} (Python "
                f"{platform.python_version()}, broker on the same machine): new subjects' "
                f"grants of {len(PURPOSES)} purposes published at {args.rate:,}/s; "
                f"LEDGER_VIEWS_CACHE_FACTS {worker_settings.views_cache_facts:,}, "
                f"LEDGER_SQLITE_MEMORY_MIB {worker_settings.sqlite_memory_mib}",
                flush=True,
            )
            print(f"{'seconds':>7} {'published':>10} {'ledger offsets':>14} {'worker MiB':>10}")
            counter = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
            ledger_tps = [
                TopicPartition(topics.ledger, p)
                for p in counter.partitions_for_topic(topics.ledger) or ()
            ]
            at_start = sum(counter.end_offsets(ledger_tps).values())

            def row(elapsed: float, published: int) -> None:
                # Records the worker committed to the ledger topic since it started: its
                # facts, and the transactions' markers, which take an offset each.
                written = sum(counter.end_offsets(ledger_tps).values()) - at_start
                print(
                    f"{elapsed:>7.0f} {published:>10,} {written:>14,} {rss_mib(worker.pid):>10}",
                    flush=True,
                )

            producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
            row(0, 0)  # the baseline: consuming, nothing published yet
            started = time.monotonic()
            due = started + args.every
            published = 0
            while (now := time.monotonic()) < started + args.seconds:
                for i in range(published, int((now - started) * args.rate)):
                    fact = {**grant(i), "tenant": "demo"}
                    producer.send(topics.intake, key=key_of(fact), value=orjson.dumps(fact))
                    published = i + 1
                if now >= due:
                    due = now + args.every
                    row(now - started, published)
                time.sleep(PUBLISH_EVERY_S)  # the load generator's schedule
            producer.flush()
            producer.close()
            row(time.monotonic() - started, published)
            counter.close()
        # The worker's own account, said as it stopped: what it accepted and refused.
        print(worker.said)


class Worker:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.said = ""  # its closing lines, once stopped


@contextmanager
def running_worker(env: dict[str, str], log: Path) -> Iterator[Worker]:
    """`consent-ledger worker`, once it consumes; stopped by SIGTERM, as an operator stops it,
    and its closing lines kept (its JSON log goes to `log`, printed if it fails)."""
    command = [sys.executable, "-m", "ledger.cli", "worker"]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    assert process.stdout is not None
    worker = Worker(process.pid)
    try:
        if not process.stdout.readline().startswith("worker: consuming"):
            raise RuntimeError("the worker did not start:\n" + log.read_text()[-2000:])
        yield worker
    finally:
        process.terminate()
        said, _ = process.communicate(timeout=120)
        worker.said = said.strip()
        if process.returncode != 0:  # why is in its log, not in its closing lines
            raise RuntimeError(
                f"the worker exited {process.returncode}:\n" + log.read_text()[-2000:]
            )
