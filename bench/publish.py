"""`consent-ledger publish --wait` fed one fact at a time through a pipe, as a service that
writes a fact and waits for its answer uses it, next to the raw kafka-python round trip that
any exactly-once answer on this client costs, in the same run.

Rows:
- ledger: `consent-ledger publish --wait 60 -` (its own process) with `consent-ledger worker
  --no-projections` (another) on fresh topics; each fact is timed from its line written to
  the command's stdin to its answer read from stdout, the next written only after that;
- raw round trip: a kafka-python producer (acks all) sends the same fact to a source topic,
  the raw consume-transform-produce loop (`bench.raw_loop`, its own process, the intake
  writer's consumer and producer settings) copies it in a transaction with its offsets, and a
  read_committed consumer of the sink sees it; timed from the send to the sight, one at a
  time. What the ledger adds to it is the command's reading of the outcome (the writer
  group's offsets, the rejected topic, the ledger topic for the receipt) and the writer's own
  work.

The command's first answer also pays for starting Python and the command's first contacts
with the broker, so it is shown apart; the raw side's first is its first transaction's
lookups. The two take turns in `--rounds` rounds, each on topics of its own.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from bench.ingest import mixed_stream
from bench.kafka import (
    PARTITIONS,
    broker,
    key_of,
    raw_topics,
    reader_from_the_end,
    summary,
    worker_ledger,
)

# How long either side may take over one fact before the benchmark gives up.
ANSWER_TIMEOUT_S = 60.0


def ledger_round(root: Path, bootstrap: str, facts: list[dict[str, Any]], name: str) -> list[float]:
    """Milliseconds from each fact written to the command's stdin to its answer."""
    _, env = worker_ledger(root, bootstrap, name)
    worker = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "worker", "--no-projections"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert worker.stdout is not None
    worker.stdout.readline()  # it owns its partitions and its producer
    command = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "publish", "--wait", f"{ANSWER_TIMEOUT_S:g}", "-"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert command.stdin is not None and command.stdout is not None
    times: list[float] = []
    try:
        for i, fact in enumerate(facts):
            t0 = time.perf_counter()
            command.stdin.write(orjson.dumps(fact) + b"\n")
            command.stdin.flush()
            answer = command.stdout.readline()  # the command's answer: the synchronisation
            times.append((time.perf_counter() - t0) * 1000)
            said = orjson.loads(answer)
            if "receipt" not in said:
                raise RuntimeError(f"fact {i} was not recorded: {said}")
        command.stdin.close()
        if command.wait(timeout=ANSWER_TIMEOUT_S) != 0:
            raise RuntimeError(f"publish exited {command.returncode}")
    finally:
        command.kill()
        command.wait()
        command.stdout.close()
        assert command.stderr is not None
        command.stderr.close()
        worker.terminate()
        worker.communicate(timeout=ANSWER_TIMEOUT_S)
    return times


def raw_round(bootstrap: str, facts: list[dict[str, Any]]) -> list[float]:
    """Milliseconds from each fact sent to the source topic to its copy seen on the sink."""
    _, source, sink = raw_topics(bootstrap, "bench-raw-publish")
    loop = subprocess.Popen(
        [sys.executable, "-m", "bench.raw_loop", bootstrap, source, sink],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert loop.stdout is not None
    loop.stdout.readline()  # "ready"
    reader = reader_from_the_end(bootstrap, sink, PARTITIONS)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    times: list[float] = []
    try:
        for fact in facts:
            value = orjson.dumps(fact)
            t0 = time.perf_counter()
            producer.send(source, key=key_of(fact), value=value).get(timeout=ANSWER_TIMEOUT_S)
            deadline = time.monotonic() + ANSWER_TIMEOUT_S
            seen = False
            while not seen:
                if time.monotonic() > deadline:
                    raise RuntimeError("the raw loop did not copy a fact in time")
                for batch in reader.poll(timeout_ms=100).values():
                    seen = seen or any(r.value == value for r in batch)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        producer.close()
        reader.close()
        loop.terminate()
        loop.communicate(timeout=ANSWER_TIMEOUT_S)
    return times


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench publish", description=__doc__)
    parser.add_argument("--facts", type=int, default=40, help="facts, one at a time, per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="the ledger and the raw round trip take turns"
    )
    args = parser.parse_args(argv)
    if args.facts < 2 or args.rounds < 1:
        parser.error("--facts must be at least 2 and --rounds at least 1")
    facts = mixed_stream(args.facts)
    firsts: dict[str, list[float]] = {"ledger": [], "raw": []}
    rest: dict[str, list[float]] = {"ledger": [], "raw": []}
    by_round: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with broker(root) as bootstrap:
            for r in range(args.rounds):
                order = ("raw", "ledger") if r % 2 == 0 else ("ledger", "raw")
                line = []
                for which in order:
                    if which == "raw":
                        times = raw_round(bootstrap, facts)
                    else:
                        times = ledger_round(root, bootstrap, facts, f"publish-{r}")
                    firsts[which].append(times[0])
                    rest[which] += times[1:]
                    _, p50, p99, _ = summary(times[1:])
                    line.append(f"{which} {times[0]:.0f}, {p50:.0f}/{p99:.0f}")
                by_round.append(" | ".join(line))
    print(
        f"publish fact by fact on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}, broker, worker and command on the same machine)"
    )
    print(f"{'what':<46} {'first ms':>9} {'then p50':>9} {'p99':>7} {'max':>7}  facts")
    for which, name in (
        ("ledger", "consent-ledger publish --wait, a pipe"),
        ("raw", "raw send -> raw loop -> read_committed"),
    ):
        n, p50, p99, worst = summary(rest[which])
        first = sorted(firsts[which])[len(firsts[which]) // 2]
        print(f"{name:<46} {first:>9.0f} {p50:>9.1f} {p99:>7.1f} {worst:>7.1f}  {n}")
    print("  round by round (first, then p50/p99 ms): " + "; ".join(by_round))
    ledger_p50, raw_p50 = summary(rest["ledger"])[1], summary(rest["raw"])[1]
    print(
        f"a fact's answer after the first, p50: ledger {ledger_p50:.0f} ms, raw round trip "
        f"{raw_p50:.0f} ms ({ledger_p50 / raw_p50:.1f} times)"
    )
