"""The register of subject requests of a tenant with years of them, paged, next to a plain
SQL read of the same views in the same run.

`--requests` requests of five kinds are recorded, one every five minutes from 2021 (two in
three closed, some late), the views rebuilt, and the register asked for as of 2026-12-04.
Its rows:

- the register in pages of `--limit`, each page's `next` followed to the last: the first
  page (which counts every request of the period) apart from the pages after it (which
  carry its counts and read on from its cursor);
- the same with `state=overdue`, the pages after the first reading on until each has
  `--limit` overdue requests;
- the baseline: one plain `sqlite3` query of the same views for the tenant's requests in
  the register's order, fetched without judging them (what counting reads);
- what /metrics counts of them (`open_request_counts`: those not closed yet, open and
  overdue), next to a plain `sqlite3` read of the requests not closed yet;
- the due list of the same views, whole and in pages of `--limit` (its requests: every
  one not closed yet is overdue by then).

The run fails unless the pages, joined, are the whole register (one page as large as it)
and the overdue pages are its overdue requests. The three take turns, round by round. Run
on its own (`python -m bench register`): no issue target names the register's time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.due import due_as_of, follow_pages
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from ledger.settings import Settings
from ledger.vocabulary import REQUEST_KINDS
from projections.rebuild import MAX_WORKERS, rebuild
from projections.requests import open_request_counts, request_register
from projections.store import ConsentViews

ASKED_AT = datetime(2026, 12, 4, tzinfo=UTC)
START = datetime(2021, 1, 1, tzinfo=UTC)
KINDS = sorted(REQUEST_KINDS)
PLAIN = (
    "SELECT sid, request_id, kind, received_at, due_at, closed_at, outcome FROM view_requests "
    "WHERE tenant=? ORDER BY received_at, sid, request_id"
)
PLAIN_OPEN = (
    "SELECT tenant, sid, request_id, kind, received_at, due_at FROM view_requests "
    "WHERE closed_at IS NULL"
)


def requests(count: int) -> list[dict[str, Any]]:
    """`count` requests, one every five minutes; two in three closed 0 to 39 days later."""
    facts: list[dict[str, Any]] = []
    for i in range(count):
        at = START + timedelta(minutes=5 * i)
        subject = f"contact-{i:07d}"
        common = {"tenant": "demo", "subject": subject, "source": "bench"}
        facts.append(
            {
                **common,
                "event_id": f"r-{i}",
                "type": "request.received",
                "occurred_at": at.isoformat(),
                "request_id": f"q-{i}",
                "kind": KINDS[i % len(KINDS)],
            }
        )
        if i % 3:
            facts.append(
                {
                    **common,
                    "event_id": f"c-{i}",
                    "type": "request.closed",
                    "occurred_at": (at + timedelta(days=i % 40)).isoformat(),
                    "request_id": f"q-{i}",
                    "outcome": "fulfilled",
                }
            )
    return facts


def paged(
    views: ConsentViews, policies: Any, limit: int, state: str | None
) -> tuple[list[dict[str, Any]], list[float]]:
    """Every page of the register, and each page's seconds."""
    return follow_pages(
        lambda cursor: request_register(
            views,
            "demo",
            ASKED_AT,
            policies=policies,
            request_days=30,
            request_days_by_kind={},
            state=state,
            cursor=cursor,
            limit=limit,
        )
    )


def plain(path: Path, sql: str = PLAIN, params: tuple[str, ...] = ("demo",)) -> int:
    with sqlite3.connect(path) as db:
        return len(db.execute(sql, params).fetchall())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench register", description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        ledger = ConsentLedger(Settings(data_dir=Path(tmp) / "data"))
        ledger.init_demo()
        stream = requests(args.requests)
        for i in range(0, len(stream), 1000):
            outcomes = ledger.record([parse_fact(f) for f in stream[i : i + 1000]])
            assert all(isinstance(o, Receipt) for o in outcomes), outcomes[:3]
        store = Path(tmp) / "views.db"
        rebuild(ledger, store, workers=min(os.cpu_count() or 1, MAX_WORKERS))
        tenant = ledger.tenant("demo")
        assert tenant is not None
        views = ConsentViews.open(store)
        firsts: dict[str, list[float]] = {"all": [], "overdue": []}
        rests: dict[str, list[float]] = {"all": [], "overdue": []}
        slowest: dict[str, list[float]] = {"all": [], "overdue": []}
        counted: dict[str, int] = {}
        plain_s: list[float] = []
        metrics_s: list[float] = []
        due_whole_s: list[float] = []
        due_paged_s: list[float] = []
        due_pages = 0
        plain_open_s: list[float] = []
        try:
            whole = paged(views, tenant.policies, args.requests + 1, None)[0][0]
            for _ in range(args.rounds):
                for name, state in (("all", None), ("overdue", "overdue")):
                    pages, seconds = paged(views, tenant.policies, args.limit, state)
                    firsts[name].append(seconds[0])
                    rests[name].append(sum(seconds[1:]))
                    slowest[name].append(max(seconds[1:], default=0.0))
                    counted[name] = len(pages)
                    joined = [r for page in pages for r in page["requests"]]
                    wanted = [r for r in whole["requests"] if state is None or r["state"] == state]
                    if joined != wanted or any(p["counts"] != whole["counts"] for p in pages):
                        raise SystemExit(f"the pages ({name}) are not the whole register")
                t0 = time.perf_counter()
                plain_rows = plain(store)
                plain_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                metrics = open_request_counts(views, ASKED_AT, lambda _: tenant.policies, 30, {})
                metrics_s.append(time.perf_counter() - t0)
                if metrics != {k: whole["counts"][k] for k in ("open", "overdue")}:
                    raise SystemExit(f"/metrics counted {metrics}, not the register's counts")
                t0 = time.perf_counter()
                open_rows = plain(store, PLAIN_OPEN, ())
                plain_open_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                due = due_as_of(views, tenant.policies, ASKED_AT)
                due_whole_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                due_paged, _ = follow_pages(
                    lambda cursor: due_as_of(views, tenant.policies, ASKED_AT, args.limit, cursor)
                )
                due_paged_s.append(time.perf_counter() - t0)
                due_pages = len(due_paged)
                if [r for page in due_paged for r in page["requests"]] != due["requests"]:
                    raise SystemExit("the due list's pages of requests are not its whole list")
        finally:
            views.close()
            ledger.close()

    counts = ", ".join(f"{state} {n:,}" for state, n in whole["counts"].items())
    print(
        f"the register of subject requests on {platform.node()} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}): {args.requests:,} requests ({counts}), "
        f"asked as of {ASKED_AT.date()}"
    )
    print(f"{'what':<46} {'seconds (each round)':>24}  note")

    def row(what: str, seconds: list[float], note: str) -> None:
        print(f"{what:<46} {', '.join(f'{s:.3f}' for s in seconds):>24}  {note}")

    for name, label in (("all", "register"), ("overdue", "register, state=overdue")):
        row(f"{label}, first page of {args.limit:,}", firsts[name], "counts the period")
        row(
            f"{label}, the {counted[name] - 1:,} pages after",
            rests[name],
            f"slowest {', '.join(f'{s * 1000:.0f}' for s in slowest[name])} ms",
        )
    row("plain sqlite3: the tenant's requests in order", plain_s, f"{plain_rows:,} rows")
    row("/metrics: open and overdue requests counted", metrics_s, f"{metrics}")
    row("plain sqlite3: the requests not closed yet", plain_open_s, f"{open_rows:,} rows")
    row("due list, whole", due_whole_s, f"{len(due['requests']):,} requests")
    row(f"due list, pages of {args.limit:,}", due_paged_s, f"{due_pages} pages")
    ratio = statistics.median(firsts["all"]) / statistics.median(plain_s)
    print(
        f"first page / plain query: {ratio:.1f} times (medians); the pages joined are the whole "
        "register"
    )
