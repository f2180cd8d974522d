"""A views store far behind its log: filled again by replay, against caught up in log order.

A store that is not empty is filled again once a quarter of the log or more is unread
(`projections.views.REFILL_BEHIND_SHARE`): a service stopped while the log grew, or a bulk
`record` beside it. This times the question that finds it so behind, both ways, on one log:
`--facts` facts recorded with a store caught up along the way for each share of the log to
leave unread (`--behind`), the rest recorded, then for each share a copy of its store
refreshed by `Views` filled again by replay and caught up in log order (whatever the bound
would choose), the two taking turns, round by round; the run fails if a refresh did not take
the way asked. The baseline is the catch-up itself: the same question answered the way a
store took before stores that are not empty were filled.

`--history projections` takes the projections benchmark's history (every subject's facts
interleaved with all the others', withdrawals, expiries), `mixed` (the default) the ingest
benchmark's stream (two facts in three are new subjects' grants). `--kafka`: in Kafka mode,
on a broker of its own (filled again from the replica, caught up from the ledger topic).
Run on its own (`python -m bench refill`): no issue target names it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.ingest import mixed_stream
from bench.projections import history
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.settings import Settings
from projections import views as views_module
from projections.views import Views


def stream_of(kind: str, facts: int) -> list[dict[str, Any]]:
    if kind == "projections":
        return history(subjects=max(1, facts // 10), facts=facts)
    return mixed_stream(facts)


def record(ledger: ConsentLedger, facts: list[dict[str, Any]]) -> None:
    for i in range(0, len(facts), 1000):
        ledger.record([parse_fact(f) for f in facts[i : i + 1000]])


class _Said(logging.Handler):
    """What the views logged during one refresh."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def timed_refresh(ledger: ConsentLedger, path: Path, *, fill: bool) -> float:
    """Seconds for one refresh of the store at `path`, filled again by replay (`fill`) or
    caught up in log order, whatever the share unread; the run fails if the refresh did not
    take the way asked (said by the views' log line of a fill)."""
    share = views_module.REFILL_BEHIND_SHARE
    # unread * share >= the log's length: always, or never.
    views_module.REFILL_BEHIND_SHARE = 10**9 if fill else 0
    said = _Said()
    logger = logging.getLogger("consent_ledger.projections")
    level = logger.level
    logger.addHandler(said)
    logger.setLevel(logging.INFO)
    try:
        views = Views(ledger, path)
        try:
            t0 = time.perf_counter()
            views.refresh()
            seconds = time.perf_counter() - t0
        finally:
            views.close()
    finally:
        views_module.REFILL_BEHIND_SHARE = share
        logger.removeHandler(said)
        logger.setLevel(level)
    filled = any("log entries behind, were filled by replay" in line for line in said.lines)
    if filled != fill:
        raise RuntimeError(f"asked to {'fill' if fill else 'catch up'}, said {said.lines}")
    return seconds


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench refill", description=__doc__)
    parser.add_argument("--facts", type=int, default=200_000, help="facts in the log")
    parser.add_argument(
        "--behind",
        default="0.5,0.25",
        help="shares of the log left unread, comma-separated (default 0.5,0.25)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the two, taking turns")
    parser.add_argument("--history", choices=["mixed", "projections"], default="mixed")
    parser.add_argument(
        "--kafka",
        action="store_true",
        help="Kafka mode, on a broker of its own (or KAFKA_BOOTSTRAP's): filled again from the "
        "replica, caught up from the topic",
    )
    args = parser.parse_args(argv)
    shares = [float(x) for x in args.behind.split(",")]
    if args.facts < 1 or args.rounds < 1 or not all(0 < x < 1 for x in shares):
        parser.error("--facts and --rounds at least 1, and every --behind between 0 and 1")
    facts = stream_of(args.history, args.facts)
    root = Path(tempfile.mkdtemp(prefix="bench-refill-"))
    # Small logs too: the bound on entries is for replay's processes to repay themselves.
    views_module.FILL_BY_REPLAY_FROM = min(views_module.FILL_BY_REPLAY_FROM, args.facts // 10)
    try:
        with ExitStack() as stack:
            if args.kafka:
                from bench.kafka import broker, settings_for
                from projections import kafka_source

                settings = settings_for(root, stack.enter_context(broker(root)), "refill")
                # A fill needs more than WHOLE_READ offsets unread: small logs' too. (Caught
                # up, reads longer than it commit at instants rather than whole.)
                kafka_source.WHOLE_READ = min(kafka_source.WHOLE_READ, args.facts // 20)
            else:
                settings = Settings(data_dir=root / "data")
            rows = _timed(settings, facts, shares, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mode = "Kafka mode" if args.kafka else "embedded"
    print(
        f"A views store behind its log, {mode}, on {platform.node()} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}), history {args.history}, {args.rounds} rounds "
        "taking turns"
    )
    print(f"{'what':<58} {'seconds, each round':>26}")
    for name, seconds in rows:
        print(f"{name:<58} {', '.join(f'{s:.2f}' for s in seconds):>26}")
    print(
        f"Views fills a store again from 1/{views_module.REFILL_BEHIND_SHARE} of the log unread "
        "(REFILL_BEHIND_SHARE), and catches it up below that"
    )


def _timed(
    settings: Settings, facts: list[dict[str, Any]], shares: list[float], rounds: int
) -> list[tuple[str, list[float]]]:
    """The log recorded, a store caught up along it for each share, and the rows' seconds."""
    rows: list[tuple[str, list[float]]] = []
    root = settings.data_dir.parent
    ledger = ConsentLedger(settings)
    try:
        ledger.init_demo()
        recorded = 0
        caught: dict[float, Path] = {}
        for share in sorted(shares, reverse=True):  # the store furthest behind first
            upto = int(len(facts) * (1 - share))
            record(ledger, facts[recorded:upto])
            recorded = upto
            path = root / f"caught-up-{share}.db"
            views = Views(ledger, path)
            views.refresh()
            views.close()
            caught[share] = path
        record(ledger, facts[recorded:])
        for share in shares:
            times: dict[str, list[float]] = {"filled again": [], "caught up": []}
            for r in range(rounds):
                ways = ("filled again", "caught up")
                for how in ways if r % 2 == 0 else ways[::-1]:
                    copy = root / f"round-{r}-{how.replace(' ', '-')}.db"
                    shutil.copy(caught[share], copy)
                    times[how].append(timed_refresh(ledger, copy, fill=how == "filled again"))
                    for leftover in root.glob(f"{copy.name}*"):
                        leftover.unlink()
            for how, seconds in times.items():
                rows.append((f"{share:.0%} of {len(facts):,} facts unread, {how}", seconds))
    finally:
        ledger.close()
    return rows
