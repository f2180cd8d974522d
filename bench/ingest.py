"""Embedded ingest: facts/s through the whole write path, next to what the parts underneath
can do on the same machine in the same run.

Rows:
- ledger: parse + validate + seal personal data (AES-256-GCM) + rules + chain + append, through
  `ConsentLedger.record`, on a mixed stream (new subjects' grants and later facts of known ones);
- plain eventsourcing: the library's Application on the same SQLite module saving a minimal
  aggregate (one created event with a payload of similar size), with its own JSON transcoder;
- raw sqlite3: `executemany` of rows shaped like stored events of similar size.
Each at 1,000 per commit and at one per commit, the three taking turns commit by commit (see
`interleaved`).
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
from functools import partial
from pathlib import Path
from typing import Any
from uuid import uuid4

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.policy import SEED_POLICY_VERSION, seed_policy_fact
from ledger.settings import Settings

TASHKENT = timezone(timedelta(hours=5))


def mixed_stream(facts: int, first_subject: int = 0) -> list[dict[str, Any]]:
    """Two facts in three are new subjects' grants; the third withdraws marketing of one.
    Subjects are numbered from `first_subject` (a stream that goes on from another)."""
    start = datetime(2025, 1, 6, 9, 0, tzinfo=TASHKENT)
    out: list[dict[str, Any]] = []
    subjects = first_subject
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


class Run:
    """One writer of the comparison, advanced a commit at a time by `interleaved`."""

    steps: int

    def step(self, i: int) -> int:
        """Do the i-th commit's work; return how many facts or events it wrote."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the run holds (outside the timed steps)."""


def interleaved(runs: list[Run]) -> list[tuple[int, float]]:
    """(items, seconds) of each run, timed commit by commit in turns.

    This machine's speed drifts by tens of percent over seconds; runs done one after the
    other then give ratios that move as much. Taking turns commit by commit puts any drift
    on every run alike, so their ratio holds still even when the absolute figures move.
    """
    done = [0] * len(runs)
    spent = [0.0] * len(runs)
    for i in range(max(r.steps for r in runs)):
        for k, run in enumerate(runs):
            if i < run.steps:
                t0 = time.perf_counter()
                done[k] += run.step(i)
                spent[k] += time.perf_counter() - t0
    for run in runs:
        run.close()
    return list(zip(done, spent, strict=True))


class LedgerRun(Run):
    """Facts through `ConsentLedger.record` (parsing included), `batch` per commit."""

    def __init__(self, root: Path, stream: list[dict[str, Any]], batch: int) -> None:
        self.ledger = ConsentLedger(Settings(data_dir=root / f"ledger-{batch}"))
        self.ledger.init_demo()
        self.before = self.ledger.ledger_recorder.head()[0]
        self.stream, self.batch = stream, batch
        self.steps = -(-len(stream) // batch)
        self.events = 0

    def step(self, i: int) -> int:
        chunk = self.stream[i * self.batch : (i + 1) * self.batch]
        outcomes = self.ledger.record([parse_fact(f) for f in chunk])
        assert all(not isinstance(o, Exception) for o in outcomes)
        return len(chunk)

    def close(self) -> None:
        self.events = self.ledger.ledger_recorder.head()[0] - self.before
        self.ledger.close()


class Minimal(Aggregate):
    @event("Registered")
    def __init__(self, payload: str) -> None:
        self.payload = payload


class PlainRun(Run):
    """The library's Application on its SQLite module saving minimal aggregates."""

    def __init__(self, root: Path, count: int, batch: int, payload: int) -> None:
        self.app: Application[Any] = Application(
            env={
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(root / f"es-{batch}.db"),
            }
        )
        self.body = "x" * payload
        self.batch = batch
        self.steps = count // batch

    def step(self, i: int) -> int:
        self.app.save(*[Minimal(self.body) for _ in range(self.batch)])
        return self.batch

    def close(self) -> None:
        self.app.close()


class RawRun(Run):
    """sqlite3 `executemany` of rows shaped like stored events, in WAL mode."""

    def __init__(self, root: Path, count: int, batch: int, payload: int) -> None:
        self.db = sqlite3.connect(root / f"raw-{batch}.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE events (originator_id TEXT, originator_version INTEGER, topic TEXT, "
            "state BLOB, PRIMARY KEY (originator_id, originator_version))"
        )
        self.state = os.urandom(payload)
        self.batch = batch
        self.steps = count // batch

    def step(self, i: int) -> int:
        rows = [(uuid4().hex, 1, "bench:Minimal.Registered", self.state) for _ in range(self.batch)]
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO events VALUES (?,?,?,?)", rows)
        self.db.execute("COMMIT")
        return self.batch

    def close(self) -> None:
        self.db.close()


class Continued(Run):
    """`run`'s steps from `first` on: what it writes after a fill that is not timed."""

    def __init__(self, run: Run, first: int) -> None:
        self.run, self.first = run, first
        self.steps = run.steps - first

    def step(self, i: int) -> int:
        return self.run.step(self.first + i)

    def close(self) -> None:
        self.run.close()


def bench_grown(root: Path, grown: int, facts: int, payload: int) -> list[tuple[int, float]]:
    """The three writers of the batched rows, timed on `facts` more once each store holds
    `grown` (filled untimed, 1,000 per commit).

    A store's rate falls as it grows: the log's key begins with the subject's id, a keyed
    hash and so random, as the baseline's are, and once its index has many more pages than
    a commit has facts, each fact dirties a page of its own (a throwaway probe, 2026-12-06:
    3.4 KB written to the WAL a fact at 160,000 facts). Timed on a grown store, side by side
    in turns as the fresh rows are, the ratio says whether the ledger falls as the library
    does."""
    root = root / "grown"
    per_chunk = 3_000  # two thousand new subjects and a thousand withdrawals
    chunks = grown // per_chunk
    stream = mixed_stream(facts, first_subject=chunks * per_chunk * 2 // 3)
    ledger = LedgerRun(root, stream, 1000)
    for chunk in range(chunks):
        fill = mixed_stream(per_chunk, first_subject=chunk * per_chunk * 2 // 3)
        for i in range(0, per_chunk, 1000):
            outcomes = ledger.ledger.record([parse_fact(f) for f in fill[i : i + 1000]])
            # Every one recorded, as the timed steps check theirs: a refused fill would time
            # a smaller store than the row says.
            assert all(not isinstance(o, Exception) for o in outcomes)
    ledger.before = ledger.ledger.ledger_recorder.head()[0]
    filled = chunks * per_chunk // 1000
    plain = PlainRun(root, filled * 1000 + facts, 1000, payload)
    raw = RawRun(root, filled * 1000 + facts, 1000, payload)
    for run in (plain, raw):
        for i in range(filled):
            run.step(i)
    return interleaved([ledger, Continued(plain, filled), Continued(raw, filled)])


def stored_payload(root: Path, stream: list[dict[str, Any]]) -> int:
    """The ledger's mean stored event size on this stream, for the baselines' rows."""
    run = LedgerRun(root / "payload", stream[:3000], 1000)
    for i in range(run.steps):
        run.step(i)
    run.close()
    db = sqlite3.connect(root / "payload" / "ledger-1000" / "ledger.db")
    (avg,) = db.execute("SELECT AVG(LENGTH(state)) FROM stored_events").fetchone()
    db.close()
    return int(avg)


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


def one_subject_stream(facts: int) -> list[dict[str, Any]]:
    """One subject granting marketing and withdrawing it in turns, a minute apart: a history
    that grows with every fact (a subject with 20,000 of them took 34 s to record before
    the writer kept what is in force after a subject's last fact)."""
    start = datetime(2025, 1, 6, 9, 0, tzinfo=TASHKENT)
    out: list[dict[str, Any]] = []
    for i in range(facts):
        fact: dict[str, Any] = {
            "event_id": f"toggle-{i}",
            "tenant": "demo",
            "subject": "crm-contact-toggling",
            "occurred_at": (start + timedelta(minutes=i)).isoformat(),
            "source": "preferences-page",
            "channel": "web_form",
            "purposes": ["marketing"],
        }
        if i % 2:
            out.append({**fact, "type": "consent.withdrawn"})
        else:
            out.append({**fact, "type": "consent.granted", "policy_version": SEED_POLICY_VERSION})
    return out


def migrated_stream(facts: int) -> list[dict[str, Any]]:
    """The same history migrated from another system: all its grants, then all its
    withdrawals, each of them late (5,000 of them after 5,000 grants took 37 s to record
    before the subject kept each purpose's timeline)."""
    toggles = one_subject_stream(facts)
    return [f for f in toggles if f["type"] == "consent.granted"] + [
        f for f in toggles if f["type"] == "consent.withdrawn"
    ]


def _a_year_after(instant: str) -> str:
    return (datetime.fromisoformat(instant) + timedelta(days=365)).isoformat()


def _a_grants_expiry(fact: dict[str, Any]) -> dict[str, Any] | None:
    if fact["type"] != "consent.granted":
        return None
    return {"changes": {"expires_at": _a_year_after(fact["occurred_at"])}}


def _a_grant_voided(fact: dict[str, Any]) -> dict[str, Any] | None:
    return {"void": True} if fact["type"] == "consent.granted" else None


def _a_voided_grants_expiry(fact: dict[str, Any]) -> dict[str, Any] | None:
    if fact["type"] != "consent.granted":
        return None
    return {"changes": {"expires_at": _a_year_after(_a_year_after(fact["occurred_at"]))}}


def _a_withdrawal_later(fact: dict[str, Any]) -> dict[str, Any] | None:
    if fact["type"] != "consent.withdrawn":
        return None
    later = datetime.fromisoformat(fact["occurred_at"]) + timedelta(seconds=30)
    return {"changes": {"occurred_at": later.isoformat()}}


def bench_one_subject(
    root: Path,
    name: str,
    stream: list[dict[str, Any]],
    *rounds: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> list[tuple[int, float]]:
    """Every fact about one subject, whose history grows as they are recorded; then, for each
    of `rounds`, a correction of each fact it gives a correction's fields for (`changes`, or
    `void`). Returns the history's figures, then each round's. 5,000 corrections of the
    grants of a subject of 20,000 facts took 28 s before the writer kept the subject's
    entries as corrected, 5,000 of its withdrawals 56 s before it kept each purpose's
    timeline, and 10,000 corrections of voided grants 24 s before it kept its voided entries.
    """
    run = LedgerRun(root / name, stream, 1000)

    def work() -> int:
        return sum(run.step(i) for i in range(run.steps))

    figures = [timed(work)]
    for number, correction in enumerate(rounds):
        corrections = [
            {
                "event_id": f"fix{number}-{fact['event_id']}",
                "type": "consent.corrected",
                "tenant": "demo",
                "subject": fact["subject"],
                "occurred_at": fact["occurred_at"],
                "source": "data-fix",
                "corrects": fact["event_id"],
                "reason": "recorded wrong",
                **fields,
            }
            for fact in run.stream
            if (fields := correction(fact)) is not None
        ]
        figures.append(timed(partial(_recorded, run.ledger, corrections)))
    run.close()
    return figures


def _recorded(ledger: ConsentLedger, facts: list[dict[str, Any]]) -> int:
    """`facts` recorded 1,000 a batch, every one accepted."""
    for i in range(0, len(facts), 1000):
        batch = [parse_fact(f) for f in facts[i : i + 1000]]
        assert all(not isinstance(o, Exception) for o in ledger.record(batch))
    return len(facts)


def bench_policy_versions(root: Path, versions: int) -> tuple[int, float]:
    """One tenant's policy versions published one a batch, an hour apart, each the seed's
    catalogue: a batch that publishes works on a copy of the tenant, which copied every
    version before it (500 took 6.6 s before the copy shared them, 2026-12-04)."""
    ledger = ConsentLedger(Settings(data_dir=root / "policy-versions"))
    ledger.init_demo()
    start = datetime(2025, 2, 1, tzinfo=TASHKENT)
    facts = []
    for i in range(versions):
        effective = (start + timedelta(hours=i)).isoformat()
        facts.append(
            parse_fact(
                {
                    **seed_policy_fact(f"policy-v{i}"),
                    "policy_version": f"v{i}",
                    "effective_at": effective,
                    "occurred_at": effective,
                    "text": f"version {i} of the policy",
                }
            )
        )

    def work() -> int:
        for fact in facts:
            [outcome] = ledger.record([fact])
            assert not isinstance(outcome, Exception), outcome
        return len(facts)

    published = timed(work)
    ledger.close()
    return published


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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--facts", type=int, default=30_000, help="facts in the batched runs")
    parser.add_argument("--single", type=int, default=2_000, help="facts one per commit")
    parser.add_argument("--phases", action="store_true", help="also time each phase of a batch")
    parser.add_argument(
        "--grown",
        type=int,
        default=150_000,
        help="also time 10,000 facts (or --facts) once each store holds this many (0: not)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stream = mixed_stream(args.facts)
        single_stream = mixed_stream(args.single)
        payload = stored_payload(root, stream)
        rows: list[tuple[str, int, float, str]] = []

        ledger = LedgerRun(root, stream, 1000)
        (n, s), (es_n, es_s), (raw_n, raw_s) = interleaved(
            [
                ledger,
                PlainRun(root, args.facts, 1000, payload),
                RawRun(root, args.facts, 1000, payload),
            ]
        )
        ledger_batched, es_batched = n / s, es_n / es_s
        rows.append(("ledger record(), 1,000 per commit", n, s, f"{ledger.events} log events"))
        rows.append(("plain eventsourcing, 1,000 per save", es_n, es_s, f"{payload} B payload"))
        rows.append(
            ("raw sqlite3 executemany, 1,000 per commit", raw_n, raw_s, f"{payload} B rows")
        )
        grown_ratio = None
        if args.grown:
            more = max(1000, min(10_000, args.facts) // 1000 * 1000)
            (n, s), (es_n, es_s), (raw_n, raw_s) = bench_grown(root, args.grown, more, payload)
            grown_ratio = (n / s) / (es_n / es_s)
            at = f"at {args.grown // 3000 * 3000:,}"
            rows.append((f"ledger record(), 1,000/commit, {at}", n, s, "facts in the store"))
            rows.append((f"plain eventsourcing, 1,000/save, {at}", es_n, es_s, "events"))
            rows.append((f"raw sqlite3 executemany, {at}", raw_n, raw_s, "rows"))
        n, s = bench_ledger_known(root, args.facts)
        rows.append(("ledger record(), known subjects, 1,000/commit", n, s, f"{n} log events"))
        toggles = one_subject_stream(args.facts // 3)
        (n, s), (fixes, fixes_s), (voids, voids_s), (again, again_s) = bench_one_subject(
            root, "one", toggles, _a_grants_expiry, _a_grant_voided, _a_voided_grants_expiry
        )
        rows.append(
            ("ledger record(), one subject, 1,000/commit", n, s, "grants, withdrawals in turns")
        )
        rows.append(("  then its grants corrected, 1,000/commit", fixes, fixes_s, "one each"))
        rows.append(("  then voided, 1,000/commit", voids, voids_s, "each grant"))
        rows.append(("  then corrected once voided, 1,000/commit", again, again_s, "each grant"))
        migrated = migrated_stream(args.facts // 3)
        (n, s), (fixes, fixes_s) = bench_one_subject(
            root, "migrated", migrated, _a_withdrawal_later
        )
        rows.append(
            (
                "ledger record(), one subject, grants first",
                n,
                s,
                "then withdrawals, late; 1,000/commit",
            )
        )
        rows.append(("  then its withdrawals moved, 1,000/commit", fixes, fixes_s, "one each"))
        n, s = bench_policy_versions(root, max(1, args.single // 4))
        rows.append(("ledger record(), policy versions, 1/commit", n, s, "of one tenant"))

        split = phases(root, stream) if args.phases else {}
        ledger = LedgerRun(root, single_stream, 1)
        (n, s), (es_n, es_s), (raw_n, raw_s) = interleaved(
            [ledger, PlainRun(root, args.single, 1, payload), RawRun(root, args.single, 1, payload)]
        )
        ledger_single, es_single = n / s, es_n / es_s
        rows.append(("ledger record(), 1 per commit", n, s, f"{ledger.events} log events"))
        rows.append(("plain eventsourcing, 1 per save", es_n, es_s, ""))
        rows.append(("raw sqlite3, 1 row per commit", raw_n, raw_s, ""))

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
        + (f"; {grown_ratio:.2f} in batches on the grown stores" if grown_ratio else "")
    )
