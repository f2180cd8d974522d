"""The projection as a real process: killed with SIGKILL mid-stream and restarted, its views
equal a rebuild from scratch; and no personal data reaches the views."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ledger.application import ConsentLedger
from ledger.demo import demo_stream
from ledger.envelope import parse_fact
from ledger.settings import Settings
from projections.store import ConsentViews
from projections.views import Views
from tests.cli_support import Started, from_a_terminal, start_with
from tests.views_support import dump


def cli(data: Path, *args: str) -> Started:
    env = {**os.environ, "LEDGER_DATA_DIR": str(data)}
    return start_with(env, *args, stdout=subprocess.DEVNULL, text=False)


def position(views_db: Path) -> int:
    if not views_db.exists():
        return 0
    with sqlite3.connect(views_db, timeout=30) as c:
        try:
            row = c.execute("SELECT MAX(notification_id) FROM tracking").fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0] or 0)


def test_sigkill_mid_stream_then_restart_equals_rebuild(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    stream = demo_stream(1500)
    for i in range(0, len(stream), 500):
        ledger.record([parse_fact(f) for f in stream[i : i + 500]])
    total = ledger.recorder.max_notification_id() or 0
    ledger.close()

    rng = random.Random(4)
    kills = 0
    while position(settings.views_path) < total and kills < 6:
        target = min(total - 1, position(settings.views_path) + rng.randint(50, 400))
        proc = cli(settings.data_dir, "project", "--follow", "--page", "7", "--interval", "0.05")
        deadline = time.monotonic() + 60
        while position(settings.views_path) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the projection made no progress"
            time.sleep(0.005)  # polling the real position, not standing in for it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
    assert kills >= 3, "the stream was too short to kill the projection mid-way"

    finish = cli(settings.data_dir, "project")
    assert finish.wait(timeout=120) == 0, finish.stderr.read() if finish.stderr else ""
    assert position(settings.views_path) == total

    ledger = ConsentLedger(settings)
    rebuilt = Views(ledger, tmp_path / "rebuilt.db")
    rebuilt.refresh()
    live = ConsentViews.open(settings.views_path)
    assert dump(live) == dump(rebuilt.store)
    live.close()
    rebuilt.close()
    ledger.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_following_projection_stops_cleanly_on_sigterm_or_its_terminal_closed(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """SIGHUP (its terminal closed) ended it on the spot until 2026-12-07, exit -1."""
    settings = Settings(data_dir=tmp_path / "data")
    ConsentLedger(settings).init_demo()
    proc = start_with(
        {**os.environ, "LEDGER_DATA_DIR": str(settings.data_dir)},
        *("project", "--follow", "--interval", "0.05"),
        stdout=subprocess.DEVNULL,
        text=False,
        preexec_fn=from_a_terminal() if stop == signal.SIGHUP else None,
    )
    deadline = time.monotonic() + 60
    while position(settings.views_path) == 0:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(stop)
    assert proc.wait(timeout=30) == 0


def test_views_hold_no_personal_data(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    stream = demo_stream(60)
    ledger.record([parse_fact(f) for f in stream])
    views = Views(ledger)
    views.refresh()
    views.close()
    ledger.close()
    data = settings.views_path.read_bytes()
    personal: set[str] = set()
    for fact in stream:
        personal.add(fact["subject"])
        for value in (fact.get("personal_data") or {}).values():
            personal.add(value)
        for key in ("ip", "user_agent"):
            if key in (fact.get("evidence") or {}):
                personal.add(fact["evidence"][key])
    assert personal
    leaked = [p for p in personal if p.encode() in data]
    assert leaked == []
    # The erased subject's facts are still in the views, by sid only.
    erased: list[Any] = ConsentViews.open(settings.views_path).rows(
        "SELECT sid FROM view_subjects WHERE erased_at IS NOT NULL"
    )
    assert len(erased) == 1
