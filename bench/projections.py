"""Questions about the past, answered from the consent views, next to the same questions
answered by a plain scan of the raw facts in the log (decode and fold), in the same run.

- as-of: one subject's consent per purpose at a random instant as known at a random instant;
- who had consent for a purpose at an instant, over every subject;
- a campaign check of 10,000 recipients;
- replay: rebuilding the views from the log into a fresh store (`consent-ledger replay`),
  and, for comparison, a live store catching up from empty;
- a live store catching up with one subject whose history came newest first (every fact
  before the ones already projected: a CRM's history imported in reverse).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from ledger.application import ConsentLedger
from ledger.consent import GRANTED, ConsentEntry, Correction, consent_at
from ledger.envelope import parse_fact
from ledger.policy import SEED_POLICY_VERSION
from ledger.settings import Settings, SettingsError
from ledger.subject import Subject
from projections.consent_projection import ConsentProjection
from projections.queries import (
    check_recipients,
    consents_at,
    who_had_consent,
    who_had_consent_page,
)
from projections.rebuild import MAX_WORKERS, rebuild
from projections.runner import catch_up
from projections.store import ConsentViews
from projections.views import Views

START = datetime(2024, 1, 1, tzinfo=UTC)
PURPOSES = ["marketing", "service_improvement", "support"]


def history(subjects: int, facts: int, seed: int = 9) -> list[dict[str, Any]]:
    """Per subject, alternating grants and withdrawals over three purposes, spread over a year
    and interleaved across subjects the way publishers would send them."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    round_ = -1
    while len(out) < facts:
        round_ += 1
        for s in range(subjects):
            purpose = PURPOSES[(s + round_ // 2) % len(PURPOSES)]
            granting = round_ % 2 == 0
            at = START + timedelta(days=round_ * 30 + rng.randint(0, 29), seconds=s)
            fact: dict[str, Any] = {
                "event_id": f"f-{s}-{round_}",
                "type": "consent.granted" if granting else "consent.withdrawn",
                "tenant": "demo",
                "subject": f"contact-{s:07d}",
                "occurred_at": at.isoformat(),
                "source": "bench",
                "purposes": [purpose],
            }
            if granting:
                fact["policy_version"] = SEED_POLICY_VERSION
                if rng.random() < 0.2:
                    fact["expires_at"] = (at + timedelta(days=rng.randint(10, 200))).isoformat()
            elif rng.random() < 0.3:
                continue  # not every grant is withdrawn
            out.append(fact)
    return out[:facts]


def newest_first(facts: int) -> list[dict[str, Any]]:
    """One subject's grants, an hour apart, sent latest first, two purposes in turns."""
    return [
        {
            "event_id": f"import-{i}",
            "type": "consent.granted",
            "tenant": "demo",
            "subject": "contact-imported",
            "occurred_at": (START + timedelta(hours=facts - i)).isoformat(),
            "source": "bench",
            "policy_version": SEED_POLICY_VERSION,
            "purposes": [PURPOSES[i % 2]],
        }
        for i in range(facts)
    ]


def decode_scan(ledger: ConsentLedger) -> int:
    """The raw log read and decoded, page by page: the baseline of replay and catch-up."""
    n, start = 0, 0
    while True:
        page = ledger.recorder.select_notifications(start, 1000, inclusive_of_start=False)
        if not page:
            return n
        for notification in page:
            ledger.mapper.to_domain_event(notification)
        n += len(page)
        start = page[-1].id


def catch_up_newest_first(
    root: Path, facts: int, sqlite_memory: int = 0
) -> tuple[int, float, float]:
    """(log entries, seconds to catch a live store up, seconds to decode them): the views
    used to recompute the subject's whole timeline for each such fact, quadratic in its
    history (10,000 took 43 s, 2026-12-04)."""
    ledger = ConsentLedger(
        Settings(data_dir=root / "newest-first", sqlite_memory_mib=sqlite_memory)
    )
    ledger.init_demo()
    stream = newest_first(facts)
    for i in range(0, len(stream), 1000):
        ledger.record([parse_fact(f) for f in stream[i : i + 1000]])
    projection = ConsentProjection(ConsentViews.open(root / "newest-first.db"))
    entries, seconds = timed(lambda: catch_up(ledger, projection))
    _, scan = timed(lambda: decode_scan(ledger))
    projection.view.close()
    ledger.close()
    return entries, seconds, scan


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def raw_subject(ledger: ConsentLedger, sid: Any) -> tuple[list[ConsentEntry], list[Correction]]:
    """Baseline: a subject's facts straight from the log, decoded and folded."""
    subject: Any = None
    for stored in ledger.recorder.select_events(sid):
        event: Any = ledger.mapper.to_domain_event(stored)
        subject = event.mutate(subject)
    assert isinstance(subject, Subject)
    return subject.entries, subject.corrections


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = work()
    return result, time.perf_counter() - t0


def disk_reads(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """`timed`, and the MiB this process read from the disk meanwhile (not from the page
    cache): a first question's time depends mostly on it, and this machine's page cache does
    not always keep a store written minutes before."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_inblock
    result, seconds = timed(work)
    blocks = resource.getrusage(resource.RUSAGE_SELF).ru_inblock - before
    return result, seconds, blocks * 512 / 2**20


# verify's floor: every stored event read in log order and hashed once, nothing else.
READ_AND_HASH = """
import hashlib, sqlite3, sys
n = 0
for (state,) in sqlite3.connect(sys.argv[1]).execute(
    "SELECT state FROM stored_events ORDER BY rowid"
):
    hashlib.sha256(state).digest()
    n += 1
print(n)
"""
VERIFY = """
import runpy, sys
sys.argv = ["consent-ledger", "verify", "--json"]
runpy.run_module("ledger.cli", run_name="__main__")
"""
# A server's views bringing an empty store up to date (`Views.refresh`): prints its seconds.
# In a process of its own for its peak memory, the views' cache's (its bound is
# LEDGER_VIEWS_CACHE_FACTS, taken from the environment). A second argument sets
# FILL_BY_REPLAY_FROM: past the log's length, the store is caught up in log order.
CATCH_UP = """
import sys, time
from pathlib import Path
from ledger.application import ConsentLedger
from ledger.settings import Settings
import projections.views
from projections.views import Views
if len(sys.argv) > 2:
    projections.views.FILL_BY_REPLAY_FROM = int(sys.argv[2])
ledger = ConsentLedger(Settings.from_env())
views = Views(ledger, Path(sys.argv[1]))
t0 = time.perf_counter()
views.refresh()
print(time.perf_counter() - t0)
views.close()
ledger.close()
"""
# Run last by the program, whatever way it ends: its peak resident memory, from the kernel's
# count of the program's own pages (VmHWM). The ru_maxrss that waiting for a child gives
# counts the pages of the process that started it: this benchmark's 242 MiB, at 20,000
# facts, for a verify that used 67.
PEAK = """
import atexit, sys
def _peak():
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("VmHWM:"))
    print(line.split()[1], file=sys.stderr)
atexit.register(_peak)
"""


def in_a_process(
    program: str, args: list[str], env: dict[str, str] | None = None
) -> tuple[str, float, float]:
    """What a Python program run on its own printed, its seconds and its peak memory (MiB):
    a process of its own, so that the peak is the program's and not this process's."""
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", PEAK + program, *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - t0
    return run.stdout, seconds, int(run.stderr.split()[-1]) / 1024


def evict_from_page_cache(store: Path) -> None:
    """Have the OS forget the cached pages of the store's files (written back first), so
    the next read of them comes from the disk; the program's own pages stay cached."""
    for path in (store, store.with_name(store.name + "-wal")):
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench projections", description=__doc__)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument(
        "--campaign-first",
        action="store_true",
        help="ask the campaign check before who had consent (which reads the same index)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="open the views anew and evict their files from the OS page cache before each "
        "of who had consent and the campaign check is first asked",
    )
    parser.add_argument(
        "--sqlite-memory",
        type=int,
        default=0,
        help="LEDGER_SQLITE_MEMORY_MIB for every process of the run (default: no bound)",
    )
    args = parser.parse_args(argv)
    bound = {"LEDGER_SQLITE_MEMORY_MIB": str(args.sqlite_memory)}
    try:
        Settings.from_env(bound)
    except SettingsError as error:
        parser.error(f"--sqlite-memory: {error}")
    rng = random.Random(3)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            aggregate_cache=args.subjects,
            sqlite_memory_mib=args.sqlite_memory,
        )
        # The settings of the processes the run starts (catch-up, verify).
        env = {**os.environ, "LEDGER_DATA_DIR": str(settings.data_dir), **bound}
        ledger = ConsentLedger(settings)
        ledger.init_demo()
        stream = history(args.subjects, args.facts)
        t0 = time.perf_counter()
        for i in range(0, len(stream), 1000):
            ledger.record([parse_fact(f) for f in stream[i : i + 1000]])
        ingest = time.perf_counter() - t0
        log_entries = ledger.recorder.max_notification_id() or 0

        workers = min(os.cpu_count() or 1, MAX_WORKERS)
        _, replay = timed(lambda: rebuild(ledger, Path(tmp) / "views.db", workers=workers))
        views = Views(ledger, Path(tmp) / "views.db")

        _, scan = timed(lambda: decode_scan(ledger))

        sids = [ledger.sid("demo", f"contact-{s:07d}") for s in range(args.subjects)]
        end = START + timedelta(days=400)
        recorded_span = (datetime.now(UTC) - timedelta(seconds=ingest), datetime.now(UTC))

        def instant() -> datetime:
            return START + timedelta(seconds=rng.uniform(0, (end - START).total_seconds()))

        def known() -> datetime | None:
            a, b = recorded_span
            return None if rng.random() < 0.5 else a + (b - a) * rng.random()

        view_ms, raw_ms = [], []
        for _ in range(args.queries):
            sid, at, k = rng.choice(sids), instant(), known()
            t = time.perf_counter()
            mine = consents_at(views.store, "demo", sid.hex, at, k)
            view_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            entries, corrections = raw_subject(ledger, sid)
            theirs = consent_at(entries, corrections, at, k)
            raw_ms.append((time.perf_counter() - t) * 1000)
            assert mine is not None and {p: s.state for p, s in mine.items()} == {
                p: s.state for p, s in theirs.items()
            }

        at = START + timedelta(days=200)

        def who_view() -> set[str]:
            found: list[str] = []
            after = ""
            while True:
                page = who_had_consent(
                    views.store, "demo", "marketing", at, after=after, limit=50_000
                )
                found += page
                if len(page) < 50_000:
                    return set(found)
                after = page[-1]

        def who_raw() -> set[str]:
            subjects: dict[Any, Any] = {}
            start = 0
            while True:
                page = ledger.recorder.select_notifications(start, 5000, inclusive_of_start=False)
                if not page:
                    break
                for n in page:
                    event: Any = ledger.mapper.to_domain_event(n)
                    subjects[n.originator_id] = event.mutate(subjects.get(n.originator_id))
                start = page[-1].id
            return {
                sid.hex
                for sid, s in subjects.items()
                if isinstance(s, Subject)
                and (state := s.consent_at(at).get("marketing")) is not None
                and state.state == GRANTED
            }

        recipients = [s.hex for s in rng.sample(sids, min(args.recipients, len(sids)))]

        def check_view() -> list[Any]:
            return check_recipients(views.store, "demo", "marketing", at, recipients)

        def check_raw() -> int:
            granted = 0
            for hex_ in recipients:
                entries, corrections = raw_subject(ledger, UUID(hex_))
                state = consent_at(entries, corrections, at).get("marketing")
                granted += bool(state and state.state == GRANTED)
            return granted

        def first(work: Callable[[], Any]) -> tuple[Any, float, float]:
            """`work` asked for the first time: with --cold, from a store opened anew whose
            files the OS no longer caches; otherwise from the store as the questions before
            left it."""
            nonlocal views
            if args.cold:
                views.close()
                evict_from_page_cache(Path(tmp) / "views.db")
                views = Views(ledger, Path(tmp) / "views.db")
            return disk_reads(work)

        if args.cold:
            # The baselines first, so that they read the log as in a run without --cold.
            who_theirs, who_raw_s = timed(who_raw)
            granted_raw, check_raw_s = timed(check_raw)
        # Who had consent as known now and the campaign check read the same index: without
        # --cold, the one asked first reads more of it from the disk.
        if args.campaign_first:
            checked, check_view_s, check_disk = first(check_view)
        who_mine, who_view_s, who_disk = first(who_view)
        if not args.campaign_first:
            checked, check_view_s, check_disk = first(check_view)
        if not args.cold:
            who_theirs, who_raw_s = timed(who_raw)
            granted_raw, check_raw_s = timed(check_raw)
        assert who_mine == who_theirs
        assert sum(c.consent for c in checked) == granted_raw
        # The first runs above read a store the process had not read before; asked again, they
        # read pages the process has read already (what a server answering all day sees).
        who_again = statistics.median(timed(who_view)[1] for _ in range(5))

        def who_pages() -> tuple[list[str], float]:
            """The same list as an HTTP client fetches it: pages of 1,000, each after the
            first asked by its cursor (as known when the first page was asked)."""
            found: list[str] = []
            slowest, cursor = 0.0, None
            while True:
                t = time.perf_counter()
                page = who_had_consent_page(
                    views.store,
                    "demo",
                    "marketing",
                    at if cursor is None else None,
                    None,
                    cursor=cursor,
                    limit=1000,
                    policy_version=None,
                    now=datetime.now(UTC),
                    recorded_through=views.recorded_through,
                )
                slowest = max(slowest, time.perf_counter() - t)
                found += page["sids"]
                cursor = page["next"]
                if cursor is None:
                    return found, slowest

        (paged, slowest_page), paged_s = timed(who_pages)
        assert len(paged) == len(who_mine) and set(paged) == who_mine
        check_again = statistics.median(timed(check_view)[1] for _ in range(5))
        views.close()

        # What a server did with an empty views store before 2026-12-04, and still does
        # with a log shorter than FILL_BY_REPLAY_FROM: catch up in log order, a page per
        # transaction, the store positioned after each.
        out, _, caught_up_mib = in_a_process(
            CATCH_UP,
            [str(Path(tmp) / "caught-up.db"), str(2**62)],
            env,
        )
        caught_up = float(out)
        # The campaign check asked first of that store, laid out in log order as a server's
        # own store is (replay lays out its store table by table: projections.rebuild).
        if args.cold:
            evict_from_page_cache(Path(tmp) / "caught-up.db")
        served = Views(ledger, Path(tmp) / "caught-up.db")
        served_checked, served_s, served_disk = disk_reads(
            lambda: check_recipients(served.store, "demo", "marketing", at, recipients)
        )
        served.close()
        assert served_checked == checked
        # What it does now with a log this long (and here at any length): fill the store
        # by replay, copied in. After the campaign check above: its writes (the store, its
        # write-ahead log, the checkpoint) ran between the catch-up and that check once,
        # which then took 233 ms against 92-186 before.
        out, _, filled_mib = in_a_process(CATCH_UP, [str(Path(tmp) / "filled.db"), "0"], env)
        filled = float(out)
        with sqlite3.connect(Path(tmp) / "filled.db") as db:
            [(position,)] = db.execute("SELECT MAX(notification_id) FROM tracking").fetchall()
        db.close()
        assert position == log_entries, (position, log_entries)
        for leftover in Path(tmp).glob("filled.db*"):
            leftover.unlink()
        # Last, so that the stores it writes do not push the queried one out of the page cache.
        _, replay_alone = timed(lambda: rebuild(ledger, Path(tmp) / "alone.db", workers=1))
        ledger.close()
        # verify in a process of its own (as the command runs), for its peak memory.
        out, verify_s, verify_mib = in_a_process(VERIFY, [], env)
        verified = orjson.loads(out)
        assert verified["ok"] and verified["facts_checked"] == log_entries, verified
        out, hashed_s, hashed_mib = in_a_process(
            READ_AND_HASH, [str(settings.data_dir / "ledger.db")]
        )
        assert int(out) == log_entries
        imported, imported_s, imported_scan = catch_up_newest_first(
            Path(tmp), args.facts // 100, args.sqlite_memory
        )

    print(
        f"projections on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}): {len(stream):,} facts, {args.subjects:,} subjects, "
        f"{log_entries:,} log entries (ingest {len(stream) / ingest:,.0f} facts/s)"
        + (f", LEDGER_SQLITE_MEMORY_MIB {args.sqlite_memory}" if args.sqlite_memory else "")
    )
    cold = ", views evicted from the page cache" if args.cold else ""
    print(f"{'question':<40} {'views':>16} {'raw log scan':>16}  target")
    print(
        f"{'as-of, one subject: p50':<40} {statistics.median(view_ms):>13.2f} ms "
        f"{statistics.median(raw_ms):>13.2f} ms"
    )
    print(
        f"{'as-of, one subject: p99':<40} {percentile(view_ms, 0.99):>13.2f} ms "
        f"{percentile(raw_ms, 0.99):>13.2f} ms  <= 2 ms"
    )
    print(
        f"{'who had consent (' + str(len(who_mine)) + ' of all)':<40} "
        f"{who_view_s * 1000:>13.0f} ms {who_raw_s * 1000:>13.0f} ms  <= 300 ms"
        f"  (first asked{cold}: {who_disk:.1f} MiB read from disk)"
    )
    print(f"{'  asked again (median of 5)':<40} {who_again * 1000:>13.0f} ms")
    print(
        f"{'  in pages of 1,000, by their cursors':<40} {paged_s * 1000:>13.0f} ms"
        f"{'':>17}  (slowest page {slowest_page * 1000:.1f} ms)"
    )
    print(
        f"{'campaign check, ' + str(len(recipients)) + ' recipients':<40} "
        f"{check_view_s * 1000:>13.0f} ms {check_raw_s * 1000:>13.0f} ms  <= 200 ms"
        f"  (first asked{cold}: {check_disk:.1f} MiB read from disk)"
    )
    print(f"{'  asked again (median of 5)':<40} {check_again * 1000:>13.0f} ms")
    print(
        f"{'  of a store caught up in log order':<40} {served_s * 1000:>13.0f} ms"
        f"{'':>17}  <= 200 ms  (first asked{cold}: {served_disk:.1f} MiB read from disk)"
    )
    print(
        f"{f'replay ({workers} processes) / decode-only scan':<40} "
        f"{log_entries / replay:>11,.0f} /s "
        f"{log_entries / scan:>11,.0f} /s  >= 100,000 /s"
    )
    print(f"{'replay in one process':<40} {log_entries / replay_alone:>11,.0f} /s")
    print(
        f"{'catch-up of an empty store (views)':<40} {log_entries / caught_up:>11,.0f} /s"
        f"                (peak memory {caught_up_mib:,.0f} MiB)"
    )
    print(
        f"{'  filled by replay (its first question)':<40} {log_entries / filled:>11,.0f} /s"
        f"                (peak memory {filled_mib:,.0f} MiB, the asking process)"
    )
    print(
        f"{'catch-up, one subject sent newest first':<40} {imported / imported_s:>11,.0f} /s "
        f"{imported / imported_scan:>11,.0f} /s  ({imported:,} log entries; the scan decodes)"
    )
    print(
        f"{'verify / read and SHA-256 only':<40} {log_entries / verify_s:>11,.0f} /s "
        f"{log_entries / hashed_s:>11,.0f} /s  "
        f"(peak memory {verify_mib:,.0f} / {hashed_mib:,.0f} MiB)"
    )
