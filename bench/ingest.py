"""Embedded ingest: facts/s through the whole write path, next to what the parts underneath
can do on the same machine in the same run.

Rows:
- ledger: parse + validate + seal personal data (AES-256-GCM) + rules + chain + append, through
  `ConsentLedger.record`, on a mixed stream (new subjects' grants and later facts of known ones);
- plain eventsourcing: the library's Application on the same SQLite module saving a minimal
  aggregate (one created event with a payload of similar size), with its own JSON transcoder;
- raw sqlite3: `executemany` of rows shaped like stored events of similar size.
Each at 1,000 per commit and at one per commit.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.policy import SEED_POLICY_VERSION
from ledger.settings import Settings

TASHKENT = timezone(timedelta(hours=5))


def mixed_stream(facts: int) -> list[dict[str, Any]]:
    """Two facts in three are new subjects' grants; the third withdraws marketing of one."""
    start = datetime(2025, 1, 6, 9, 0, tzinfo=TASHKENT)
    out: list[dict[str, Any]] = []
    subjects = 0
    while len(out) < facts:
        for _ in range(2):
            i = subjects
            subjects += 1
            out.append(
                {
                    "event_id": f"g-{i}",
                    "type": "consent.granted",
                    "tenant": "demo",
                    "subject": f"crm-contact-{i:07d}",
                    "occurred_at": (start + timedelta(seconds=i)).isoformat(),
                    "source": "signup-form",
                    "channel": "web_form",
                    "evidence": {
                        "ip": f"84.54.{i % 256}.{i % 253 + 1}",
                        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
                        "form_id": "signup",
                        "locale": "uz-UZ",
                    },
                    "policy_version": SEED_POLICY_VERSION,
                    "purposes": ["service_provision", "support", "marketing"],
                    "personal_data": {
                        "full_name": f"Karimov Aziz {i}",
                        "email": f"aziz.karimov{i}@example.uz",
                        "phone": f"+99890{i % 10_000_000:07d}",
                    },
                }
            )
        j = subjects - 2
        out.append(
            {
                "event_id": f"w-{j}",
                "type": "consent.withdrawn",
                "tenant": "demo",
                "subject": f"crm-contact-{j:07d}",
                "occurred_at": (start + timedelta(days=3, seconds=j)).isoformat(),
                "source": "email-unsubscribe",
                "channel": "email",
                "purposes": ["marketing"],
            }
        )
    return out[:facts]


def timed(work: Callable[[], int]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = work()
    return n, time.perf_counter() - t0


def bench_ledger(root: Path, stream: list[dict[str, Any]], batch: int) -> tuple[int, float, int]:
    ledger = ConsentLedger(Settings(data_dir=root / f"ledger-{batch}"))
    ledger.init_demo()
    before = ledger.ledger_recorder.head()[0]

    def work() -> int:
        for i in range(0, len(stream), batch):
            outcomes = ledger.record([parse_fact(f) for f in stream[i : i + batch]])
            assert all(not isinstance(o, Exception) for o in outcomes)
        return len(stream)

    n, seconds = timed(work)
    events = ledger.ledger_recorder.head()[0] - before
    ledger.close()
    return n, seconds, events


def bench_ledger_known(root: Path, facts: int) -> tuple[int, float]:
    """Steady state: every fact is about a subject the ledger already knows."""
    ledger = ConsentLedger(Settings(data_dir=root / "ledger-known", aggregate_cache=facts))
    ledger.init_demo()
    first = [f for f in mixed_stream(facts * 3 // 2) if f["type"] == "consent.granted"][:facts]
    for i in range(0, len(first), 1000):
        ledger.record([parse_fact(f) for f in first[i : i + 1000]])
    later = [
        {
            **f,
            "event_id": f"later-{f['event_id']}",
            "occurred_at": f["occurred_at"].replace("2025-01-", "2025-02-"),
            "purposes": ["service_improvement"],
        }
        for f in first
    ]

    def work() -> int:
        for i in range(0, len(later), 1000):
            outcomes = ledger.record([parse_fact(f) for f in later[i : i + 1000]])
            assert all(not isinstance(o, Exception) for o in outcomes)
        return len(later)

    result = timed(work)
    ledger.close()
    return result


def phases(root: Path, stream: list[dict[str, Any]]) -> dict[str, float]:
    """Microseconds per fact in each phase of a batch (the same work as `record`)."""
    from ledger.batch import FactBatch

    ledger = ConsentLedger(Settings(data_dir=root / "ledger-phases"))
    ledger.init_demo()
    inserts = 0.0
    insert_events = ledger.ledger_recorder.insert_events

    def timed_insert(*args: Any, **kwargs: Any) -> Any:
        nonlocal inserts
        t = time.perf_counter()
        result = insert_events(*args, **kwargs)
        inserts += time.perf_counter() - t
        return result

    ledger.ledger_recorder.insert_events = timed_insert  # type: ignore[method-assign]
    spent = {"parse": 0.0, "set-up": 0.0, "rules+sealing": 0.0, "append": 0.0}
    for i in range(0, len(stream), 1000):
        t0 = time.perf_counter()
        facts = [parse_fact(f) for f in stream[i : i + 1000]]
        t1 = time.perf_counter()
        batch = FactBatch(ledger, facts)
        t2 = time.perf_counter()
        batch.check_all()
        t3 = time.perf_counter()
        batch.commit()
        t4 = time.perf_counter()
        for name, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            spent[name] += seconds
    spent["(of append: SQLite inserts)"] = inserts
    ledger.close()
    return {name: seconds / len(stream) * 1e6 for name, seconds in spent.items()}


class Minimal(Aggregate):
    @event("Registered")
    def __init__(self, payload: str) -> None:
        self.payload = payload


def bench_eventsourcing(root: Path, count: int, batch: int, payload: int) -> tuple[int, float]:
    app: Application[Any] = Application(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(root / f"es-{batch}.db"),
        }
    )
    body = "x" * payload

    def work() -> int:
        for _ in range(0, count, batch):
            app.save(*[Minimal(body) for _ in range(batch)])
        return count

    result = timed(work)
    app.close()
    return result


def bench_sqlite(root: Path, count: int, batch: int, payload: int) -> tuple[int, float]:
    db = sqlite3.connect(root / f"raw-{batch}.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE events (originator_id TEXT, originator_version INTEGER, topic TEXT, "
        "state BLOB, PRIMARY KEY (originator_id, originator_version))"
    )
    state = os.urandom(payload)

    def work() -> int:
        for _ in range(0, count, batch):
            rows = [(uuid4().hex, 1, "bench:Minimal.Registered", state) for _ in range(batch)]
            db.execute("BEGIN")
            db.executemany("INSERT INTO events VALUES (?,?,?,?)", rows)
            db.execute("COMMIT")
        return count

    result = timed(work)
    db.close()
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--facts", type=int, default=30_000, help="facts in the batched runs")
    parser.add_argument("--single", type=int, default=2_000, help="facts one per commit")
    parser.add_argument("--phases", action="store_true", help="also time each phase of a batch")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stream = mixed_stream(args.facts)
        single_stream = mixed_stream(args.single)
        rows: list[tuple[str, int, float, str]] = []

        n, s, events = bench_ledger(root, stream, 1000)
        ledger_batched = n / s
        rows.append(("ledger record(), 1,000 per commit", n, s, f"{events} log events"))
        db = sqlite3.connect(root / "ledger-1000" / "ledger.db")
        (avg,) = db.execute("SELECT AVG(LENGTH(state)) FROM stored_events").fetchone()
        db.close()
        payload = int(avg)

        n, s = bench_ledger_known(root, args.facts)
        rows.append(("ledger record(), known subjects, 1,000/commit", n, s, f"{n} log events"))
        n, s = bench_eventsourcing(root, args.facts, 1000, payload)
        es_batched = n / s
        rows.append(("plain eventsourcing, 1,000 per save", n, s, f"{payload} B payload"))
        n, s = bench_sqlite(root, args.facts, 1000, payload)
        rows.append(("raw sqlite3 executemany, 1,000 per commit", n, s, f"{payload} B rows"))

        split = phases(root, stream) if args.phases else {}
        n, s, events = bench_ledger(root, single_stream, 1)
        ledger_single = n / s
        rows.append(("ledger record(), 1 per commit", n, s, f"{events} log events"))
        n, s = bench_eventsourcing(root, args.single, 1, payload)
        es_single = n / s
        rows.append(("plain eventsourcing, 1 per save", n, s, ""))
        n, s = bench_sqlite(root, args.single, 1, payload)
        rows.append(("raw sqlite3, 1 row per commit", n, s, ""))

    print(
        f"embedded ingest on {platform.node()} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version})"
    )
    print(f"{'what':<44} {'facts':>7} {'seconds':>8} {'per second':>11}  note")
    for name, n, s, note in rows:
        print(f"{name:<44} {n:>7} {s:>8.2f} {n / s:>11,.0f}  {note}")
    if split:
        print(
            "ledger, microseconds per fact by phase (1,000 per batch): "
            + ", ".join(f"{name} {us:.0f}" for name, us in split.items())
        )
    print(
        f"ledger / plain eventsourcing: {ledger_batched / es_batched:.2f} in batches, "
        f"{ledger_single / es_single:.2f} one per commit "
        "(target: at least 0.50 in batches, and 50,000 facts/s)"
    )
