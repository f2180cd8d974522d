"""`make bench` keeps working: each benchmark run at a small size, as a real process.

No figure is judged here (speed is measured by `make bench`, never by a test); what is
checked is that every benchmark still runs to its end and prints the rows and the summary
line the README and bench/RESULTS.md quote, next to its baseline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMALL = {
    "ingest": (
        ["--facts", "2000", "--single", "50", "--grown", "3000"],
        [
            "plain eventsourcing, 1,000 per save",
            "raw sqlite3 executemany",
            "ledger record(), 1,000/commit, at 3,000",
            "plain eventsourcing, 1,000/save, at 3,000",
            "in batches on the grown stores",
            "ledger record(), one subject, 1,000/commit",
            "  then its grants corrected, 1,000/commit",
            "  then voided, 1,000/commit",
            "  then corrected once voided, 1,000/commit",
            "ledger record(), one subject, grants first",
            "  then its withdrawals moved, 1,000/commit",
            "ledger record(), policy versions, 1/commit",
            "ledger / plain eventsourcing:",
        ],
    ),
    "http": (
        ["--requests", "200", "--rounds", "1", "--batches", "2", "--seconds", "1", "--rate", "100"],
        ["bare FastAPI constant, closed loop", "single publish / bare endpoint:"],
    ),
    "kafka": (
        [
            "--facts",
            "500",
            "--rounds",
            "1",
            "--warm-up",
            "100",
            "--rate",
            "500",
            "--latency-facts",
            "1001",
            "--latency-rounds",
            "1",
            "--idle-seconds",
            "1",
        ],
        [
            "raw consume-transform-produce, 500/txn",
            "views filled from the replica",
            "consent-ledger replay from the ledger topic",
            "CPU a record over the timed rounds",
            "idle for 1 s, CPU seconds a second",
            "intake writer / raw loop",
        ],
    ),
    "projections": (
        [
            *("--facts", "3000", "--subjects", "300", "--queries", "20", "--recipients", "100"),
            *("--sqlite-memory", "64"),
        ],
        [
            "LEDGER_SQLITE_MEMORY_MIB 64",
            "as-of, one subject: p99",
            "replay (2 processes) / decode-only scan",
            "catch-up, one subject sent newest first",
            "verify / read and SHA-256 only",
        ],
    ),
    "publish": (
        ["--facts", "3", "--rounds", "1"],
        ["consent-ledger publish --wait, a pipe", "raw send -> raw loop -> read_committed"],
    ),
    "due": (
        ["--facts", "3000", "--subjects", "300", "--limit", "50", "--rounds", "1"],
        ["due list, whole", "due list, pages of 50", "plain sqlite3: open intervals"],
    ),
    "refill": (
        ["--facts", "2000", "--rounds", "1", "--behind", "0.5,0.25"],
        [
            "50% of 2,000 facts unread, filled again",
            "25% of 2,000 facts unread, caught up",
            "Views fills a store again from 1/4 of the log unread",
        ],
    ),
    "refill --kafka": (
        ["--facts", "2000", "--rounds", "1", "--behind", "0.5,0.25"],
        ["50% of 2,000 facts unread, filled again", "25% of 2,000 facts unread, caught up"],
    ),
    "register": (
        ["--requests", "300", "--limit", "50", "--rounds", "1"],
        [
            "register, first page of 50",
            "register, state=overdue, the ",
            "plain sqlite3: the tenant's requests in order",
            "/metrics: open and overdue requests counted",
            "due list, pages of 50",
            "first page / plain query:",
        ],
    ),
    "journal": (
        ["--single", "5", "--batch", "10", "--journalled", "200", "--rounds", "1"],
        [
            "erasure, one per record(), no journal",
            "key store opened, journal read on from its point",
            "the journal's bytes read, unchecked",
            "journal / no journal:",
        ],
    ),
    "lookup": (
        ["--lookups", "5", "--refusals", "20"],
        [
            "ledger, first lookup (file filled)",
            "ledger, one not recorded",
            "raw, a consumer per question (read to end)",
            "raw, a consumer kept (end offsets)",
        ],
    ),
    "memory": (["--facts", "600"], ["decoded events B/fact", "units: what the cache counts"]),
    "soak": (
        [
            *("--seconds", "2", "--every", "1", "--batch", "10", "--connections", "2"),
            *("--sqlite-memory", "32"),
        ],
        ["LEDGER_SQLITE_MEMORY_MIB 32", "server MiB", "statuses: {200:"],
    ),
    "soak --kafka": (
        [*("--seconds", "2", "--every", "1", "--rate", "200", "--views-cache", "1000")],
        ["LEDGER_VIEWS_CACHE_FACTS 1,000", "worker MiB", "worker: stopped; "],
    ),
}
ON_KAFKA = {"kafka", "publish", "lookup", "soak --kafka", "refill --kafka"}


@pytest.mark.parametrize(
    "name",
    # Those on Kafka carry its mark, as every test that needs the broker does.
    [pytest.param(n, marks=pytest.mark.kafka) if n in ON_KAFKA else n for n in SMALL],
)
def test_each_benchmark_runs_to_its_end_beside_its_baseline(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args, rows = SMALL[name]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    if name in ON_KAFKA:
        env["KAFKA_BOOTSTRAP"] = request.getfixturevalue("kafka_bootstrap")
    ran = subprocess.run(
        [sys.executable, "-m", "bench", *name.split(), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    for row in rows:
        assert row in ran.stdout, (row, ran.stdout)
    assert "Traceback" not in ran.stderr, ran.stderr
