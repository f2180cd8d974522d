"""The consent views' cache: the memory it holds per fact and per subject, by history shape.

`LEDGER_VIEWS_CACHE_FACTS` bounds what a long-running `serve` or `worker` keeps in memory of
the subjects its views last wrote to; an operator sizes it from the bytes each unit costs.
This measures them with tracemalloc (Python's own allocations, not the process's resident
size, which adds the allocator's slack): views caught up from empty over a log whose
subjects have 1, 4 or 10 facts each (grants of three purposes, withdrawals of one, the
subjects' facts interleaved as publishers send them), after a warm-up that imports and
caches what any catch-up does. Next to it, in the same run, what the same facts cost held
as the library's decoded domain events, the plain way to keep a log in memory.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sqlite3
import tempfile
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.policy import SEED_POLICY_VERSION
from ledger.settings import Settings
from projections.views import Views

TASHKENT = timezone(timedelta(hours=5))
WARM_UP = 100  # subjects caught up before measuring
FIRST_GRANT = ["service_provision", "support", "marketing"]
SHAPES = (1, 4, 10)  # facts per subject


def history(subject: int, facts: int) -> list[dict[str, Any]]:
    """A subject's facts: a grant of three purposes, then marketing withdrawn and granted
    again in turn."""
    start = datetime(2025, 1, 6, 9, 0, tzinfo=TASHKENT) + timedelta(seconds=subject)
    out: list[dict[str, Any]] = []
    for k in range(facts):
        fact: dict[str, Any] = {
            "event_id": f"f-{subject}-{k}",
            "tenant": "demo",
            "subject": f"crm-contact-{subject:07d}",
            "occurred_at": (start + timedelta(days=k)).isoformat(),
            "source": "signup-form",
        }
        if k % 2 == 0:
            fact |= {
                "type": "consent.granted",
                "policy_version": SEED_POLICY_VERSION,
                "purposes": FIRST_GRANT if k == 0 else ["marketing"],
                "personal_data": {"full_name": f"Karimov Aziz {subject}"},
            }
        else:
            fact |= {"type": "consent.withdrawn", "purposes": ["marketing"]}
        out.append(fact)
    return out


def interleaved(first: int, subjects: int, per_subject: int) -> list[dict[str, Any]]:
    histories = [history(s, per_subject) for s in range(first, first + subjects)]
    return [h[k] for k in range(per_subject) for h in histories]


def record(ledger: ConsentLedger, facts: list[dict[str, Any]]) -> None:
    for i in range(0, len(facts), 1000):
        ledger.record([parse_fact(f) for f in facts[i : i + 1000]])


def traced(action: Any) -> tuple[int, Any]:
    """Bytes Python still holds after `action`, with what it returned (kept alive)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = action()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held, kept


def measure(root: Path, facts: int, per_subject: int, bound: int) -> tuple[int, int, int, int, int]:
    """(facts, subjects, units, bytes the views' cache gained, bytes as decoded events)."""
    subjects = max(1, facts // per_subject)
    settings = Settings(data_dir=root / f"per-{per_subject}", views_cache_facts=bound)
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    views = Views(ledger, root / f"per-{per_subject}-views.db")
    record(ledger, interleaved(0, WARM_UP, per_subject))
    views.refresh()
    start = ledger.recorder.max_notification_id() or 0
    record(ledger, interleaved(WARM_UP, subjects, per_subject))
    subjects_before, units_before = views.projection.cache_held()
    held, _ = traced(views.refresh)
    cached_subjects, units = views.projection.cache_held()
    assert cached_subjects - subjects_before == subjects, "the bound dropped subjects"
    units -= units_before

    def decoded() -> list[Any]:
        notifications = ledger.recorder.select_notifications(start + 1, limit=facts * 2)
        return [ledger.mapper.to_domain_event(n) for n in notifications]

    as_events, events = traced(decoded)
    assert len(events) == subjects * per_subject
    views.close()
    ledger.close()
    return subjects * per_subject, subjects, units, held, as_events


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__)
    parser.add_argument("--facts", type=int, default=30_000, help="facts measured per shape")
    args = parser.parse_args(argv)
    if args.facts < 1:
        parser.error("--facts must be at least 1")
    bound = Settings.from_env().views_cache_facts
    # The units each shape caches, warm-up included: the cache must hold them all, or it
    # would measure what eviction leaves.
    needed = max((max(1, args.facts // n) + WARM_UP) * (n + 1) for n in SHAPES)
    if bound < needed:
        parser.error(
            f"LEDGER_VIEWS_CACHE_FACTS is {bound:,}: measuring {args.facts:,} facts needs at "
            f"least {needed:,}; set it higher or measure fewer (--facts)"
        )
    print(
        f"consent views' cache on {platform.node()} (Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}): bytes held after catching up, tracemalloc"
    )
    print(
        f"{'facts/subject':>13} {'facts':>7} {'units':>7}  {'B/unit':>7} {'B/fact':>7} "
        f"{'B/subject':>9}  {'decoded events B/fact':>21}  {'at the bound':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for per_subject in SHAPES:
            facts, subjects, units, held, as_events = measure(
                Path(tmp), args.facts, per_subject, bound
            )
            print(
                f"{per_subject:>13} {facts:>7} {units:>7}  {held / units:>7.0f} "
                f"{held / facts:>7.0f} {held / subjects:>9.0f}  {as_events / facts:>21.0f}  "
                f"{held / units * bound / 2**20:>8.0f} MiB"
            )
    print(
        f"units: what the cache counts against LEDGER_VIEWS_CACHE_FACTS, here {bound:,} "
        "(`ConsentProjection.cache_facts`); 'at the bound': the cache full of "
        "subjects of that shape"
    )
