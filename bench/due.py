"""The due list of a tenant with years of data past retention, whole and paged, next to a
plain SQL query over the same views in the same run.

The projections benchmark's history (`bench.projections.history`) is recorded after a
policy version that keeps every purpose 30 days, the views are rebuilt, and the due list is
asked for 2030-01-01, when every consent that ended is past its retention: the list that
grows with a tenant's years. Its rows:

- the whole list (`projections.due.due_list` without a limit);
- the same list in pages of `--limit`, each page's `next` followed to the last (the run
  fails unless the pages, joined, are the whole list);
- the baseline: one plain `sqlite3` query of the same views for each subject's and
  purpose's open intervals and when the last of them ended, the rows the list's data past
  retention is derived from, fetched without judging them.

The three take turns, round by round. Run on its own (`python -m bench due`): no issue
target names the due list's time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.projections import history
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.policy import seed_policy_fact
from ledger.receipt import Receipt
from ledger.settings import Settings
from projections.due import LISTS, due_list
from projections.rebuild import MAX_WORKERS, rebuild
from projections.store import ConsentViews

ASKED_AT = datetime(2030, 1, 1, tzinfo=UTC)
KEPT_DAYS = 30
# The baseline: the rows the data past retention comes from, read as they are.
PLAIN = (
    "SELECT sid, purpose, MAX(valid_to), COUNT(*) = COUNT(valid_to) FROM view_intervals "
    "WHERE tenant=? AND known_to IS NULL GROUP BY sid, purpose"
)


def kept_days_policy() -> dict[str, Any]:
    """The seed's policy again as crmpro-2.0, every purpose kept `KEPT_DAYS` days."""
    fact = seed_policy_fact("bench-due-policy-2.0")
    fact["policy_version"] = "crmpro-2.0"
    fact["effective_at"] = fact["occurred_at"] = "2023-12-01T00:00:00+05:00"
    for terms in fact["purposes"].values():
        terms["retention_days"] = KEPT_DAYS
    return fact


def due_as_of(
    views: ConsentViews,
    policies: Any,
    at: datetime,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The demo tenant's due list as of `at`, a week ahead (30 days to answer a request)."""
    return due_list(
        views,
        "demo",
        at,
        within=timedelta(days=7),
        request_days=30,
        policies=policies,
        limit=limit,
        cursor=cursor,
    )


def whole(views: ConsentViews, policies: Any) -> dict[str, Any]:
    return due_as_of(views, policies, ASKED_AT)


def follow_pages(
    ask: Callable[[str | None], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[float]]:
    """Every page `ask` gives from the first (cursor None), each page's `next` followed to
    the last, and each page's seconds."""
    pages: list[dict[str, Any]] = []
    seconds: list[float] = []
    cursor = None
    while True:
        t0 = time.perf_counter()
        page = ask(cursor)
        seconds.append(time.perf_counter() - t0)
        pages.append(page)
        cursor = page["next"]
        if cursor is None:
            return pages, seconds


def paged(
    views: ConsentViews, policies: Any, limit: int
) -> tuple[list[dict[str, Any]], list[float]]:
    return follow_pages(lambda cursor: due_as_of(views, policies, ASKED_AT, limit, cursor))


def plain(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return len(db.execute(PLAIN, ("demo",)).fetchall())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench due", description=__doc__)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        ledger = ConsentLedger(Settings(data_dir=Path(tmp) / "data"))
        ledger.init_demo()
        [receipt] = ledger.record([parse_fact(kept_days_policy())])
        assert isinstance(receipt, Receipt), receipt
        stream = history(args.subjects, args.facts)
        for i in range(0, len(stream), 1000):
            ledger.record([parse_fact(f) for f in stream[i : i + 1000]])
        store = Path(tmp) / "views.db"
        rebuild(ledger, store, workers=min(os.cpu_count() or 1, MAX_WORKERS))
        tenant = ledger.tenant("demo")
        assert tenant is not None
        views = ConsentViews.open(store)
        rows: dict[str, list[float]] = {"whole": [], "paged": [], "plain": []}
        slowest: list[float] = []
        medians: list[float] = []
        try:
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                answer = whole(views, tenant.policies)
                rows["whole"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                pages, seconds = paged(views, tenant.policies, args.limit)
                rows["paged"].append(time.perf_counter() - t0)
                slowest.append(max(seconds))
                medians.append(statistics.median(seconds))
                t0 = time.perf_counter()
                plain_rows = plain(store)
                rows["plain"].append(time.perf_counter() - t0)
                for name in LISTS:
                    if [item for page in pages for item in page[name]] != answer[name]:
                        raise SystemExit(f"the pages of {name!r} are not the whole list")
        finally:
            views.close()
            ledger.close()

    size = len(orjson.dumps(answer))
    biggest = max(len(orjson.dumps(page)) for page in pages)
    counts = ", ".join(f"{name} {len(answer[name]):,}" for name in LISTS)
    print(
        f"the due list on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}): {args.facts:,} facts over {args.subjects:,} subjects, "
        f"every purpose kept {KEPT_DAYS} days, asked for {ASKED_AT.date()}"
    )
    print(f"{'what':<46} {'seconds (each round)':>24}  note")

    def row(what: str, seconds: list[float], note: str) -> None:
        print(f"{what:<46} {', '.join(f'{s:.3f}' for s in seconds):>24}  {note}")

    row("due list, whole", rows["whole"], f"{size:,} bytes: {counts}")
    row(
        f"due list, pages of {args.limit:,}",
        rows["paged"],
        f"{len(pages)} pages, slowest {', '.join(f'{s * 1000:.0f}' for s in slowest)} ms, "
        f"median {', '.join(f'{m * 1000:.0f}' for m in medians)} ms, largest {biggest:,} bytes",
    )
    row("plain sqlite3: open intervals per sid, purpose", rows["plain"], f"{plain_rows:,} rows")
    ratio = statistics.median(rows["whole"]) / statistics.median(rows["plain"])
    print(f"whole / plain query: {ratio:.1f} times (medians); the pages joined are the whole list")
