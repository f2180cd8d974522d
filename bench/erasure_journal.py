"""What the erasure journal (`LEDGER_ERASURE_JOURNAL`) costs, next to the same work without it
in the same run.

- An erasure: `ConsentLedger.record` of one erasure per call (`--single` of them), then of
  `--batch` erasures in one call, on a ledger without the journal (the baseline) and on one
  with it: the journal's line is one more fsync'd append per call.
- Opening: what every command and process does with the key store as it opens, beside a
  journal of `--journalled` erasures: read on from the point the key store remembers (every
  open but the first), and the whole journal read (a journal new to the store, or replaced);
  the baseline is the key store opened without a journal, and the journal's bytes read
  without being checked.

Run on its own (`python -m bench journal`): no issue target names these times.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.keystore import KeyStore
from ledger.settings import Settings


def _fact(kind: str, subject: str, event_id: str) -> dict[str, Any]:
    fact: dict[str, Any] = {
        "event_id": event_id,
        "type": kind,
        "tenant": "demo",
        "subject": subject,
        "occurred_at": "2025-03-01T10:00:00+05:00",
        "source": "bench",
    }
    if kind == "consent.granted":
        fact.update(channel="web_form", policy_version="crmpro-1.0", purposes=["marketing"])
    else:
        fact["ground"] = "subject_request"
    return fact


def erasures(root: Path, journal: Path | None, single: int, batch: int) -> tuple[float, float]:
    """Seconds per erasure: one per `record()` call, and in one call of `batch`."""
    ledger = ConsentLedger(Settings(data_dir=root, erasure_journal=journal))
    try:
        ledger.init_demo()
        people = [f"bench-person-{i}" for i in range(single + batch)]
        ledger.record([parse_fact(_fact("consent.granted", p, f"g-{p}")) for p in people])
        started = time.perf_counter()
        for p in people[:single]:
            ledger.record([parse_fact(_fact("subject.erased", p, f"x-{p}"))])
        one = (time.perf_counter() - started) / single
        started = time.perf_counter()
        ledger.record([parse_fact(_fact("subject.erased", p, f"x-{p}")) for p in people[single:]])
        return one, (time.perf_counter() - started) / batch
    finally:
        ledger.close()


def opening(root: Path, journalled: int, rounds: int) -> dict[str, float]:
    """Median seconds of each way of opening the key store beside the journal."""
    master, store, journal = os.urandom(32), root / "keys.db", root / "erasures.jsonl"
    keys = KeyStore(store, master, journal)
    sids = [uuid.uuid4() for _ in range(journalled)]
    keys.add_keys({sid: os.urandom(32) for sid in sids})
    keys.erase_all([(sid, datetime.now(UTC)) for sid in sids])
    keys.replay_journal()
    keys.close()

    def plain() -> None:
        KeyStore(store, master).close()

    def read_on() -> None:
        keys = KeyStore(store, master, journal)
        keys.replay_journal()
        keys.close()

    def read_whole() -> None:
        with sqlite3.connect(store) as db:  # the point forgotten: the whole journal read
            db.execute("DELETE FROM meta WHERE name='erasure_journal_applied'")
        db.close()
        read_on()

    def raw() -> None:
        journal.read_bytes()

    ways: dict[str, Callable[[], None]] = {
        "plain": plain,
        "read on": read_on,
        "read whole": read_whole,
        "raw": raw,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):  # in turns, so that the machine's drift reaches each alike
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench journal", description=__doc__)
    parser.add_argument("--single", type=int, default=300, help="erasures, one per call")
    parser.add_argument("--batch", type=int, default=700, help="erasures in one call")
    parser.add_argument("--journalled", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        without = erasures(root / "without", None, args.single, args.batch)
        (root / "journal").mkdir()
        with_journal = erasures(
            root / "with", root / "journal" / "erasures.jsonl", args.single, args.batch
        )
        (root / "open").mkdir()
        opened = opening(root / "open", args.journalled, args.rounds)
    print(
        f"the erasure journal on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}): {args.single} erasures one per call, {args.batch} in "
        f"one call; a journal of {args.journalled:,} erasures"
    )
    print(f"{'what':<58} {'ms':>10}")
    rows = [
        ("erasure, one per record(), no journal", without[0]),
        ("erasure, one per record(), journal", with_journal[0]),
        (f"erasure in a call of {args.batch}, no journal (each)", without[1]),
        (f"erasure in a call of {args.batch}, journal (each)", with_journal[1]),
        ("key store opened, no journal", opened["plain"]),
        ("key store opened, journal read on from its point", opened["read on"]),
        ("key store opened, journal read whole", opened["read whole"]),
        ("the journal's bytes read, unchecked", opened["raw"]),
    ]
    for what, seconds in rows:
        print(f"{what:<58} {seconds * 1000:>10.3f}")
    print(
        f"journal / no journal: one erasure per call {with_journal[0] / without[0]:.2f}, "
        f"in a call {with_journal[1] / without[1]:.2f}; opening read on / without "
        f"{opened['read on'] / opened['plain']:.2f}"
    )
