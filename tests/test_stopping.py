"""The stop SIGTERM and SIGINT set in `worker`, `serve` and `project --follow`
(`ledger.cli.stopping`): set by a signal at any instant of a wait, it ends the wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledger.cli.stopping import SignalStop
from tests.cli_support import line_within

ROOT = Path(__file__).resolve().parents[1]

# A main thread that waits on the stop again and again, each time in a new
# `stopped_by_signals` block, signalled by the test as each wait begins: every wait must
# end. A handler that took a lock (`threading.Event.set`) met its own thread holding it, now
# and then, and the process hung there.
WAITS_FOR_SIGNALS = """
import signal, sys
from ledger.cli.stopping import stopped_by_signals

signal.signal(signal.SIGTERM, lambda *_: None)  # between two blocks, a signal is let go
for _ in range(int(sys.argv[1])):
    with stopped_by_signals() as stop:
        print("waiting", flush=True)
        # A wait of no time holds an Event's lock for most of its turn; the other polls.
        while not (stop.wait(0) or stop.wait(0.0001)):
            pass
# Held from here: the interpreter's shutdown puts the default handler back.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("stopped every time", flush=True)
"""


def test_a_signal_at_any_instant_of_a_wait_ends_it() -> None:
    waits = 3000
    waiting = subprocess.Popen(
        [sys.executable, "-c", WAITS_FOR_SIGNALS, str(waits)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stdout is not None
        for _ in range(waits):
            # Each wait is signalled once it has begun; a wait that never ends prints no
            # next line, and `line_within` fails the test.
            assert line_within(waiting.stdout, 60) == "waiting\n"
            os.kill(waiting.pid, signal.SIGTERM)
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err[-2000:]
    assert out == "stopped every time\n", (out, err)


def test_a_stop_waits_until_set_or_timed_out_and_stays_set() -> None:
    stop = SignalStop()
    assert not stop.is_set() and not stop.wait(0) and not stop.wait(-1)
    started = time.monotonic()
    assert not stop.wait(0.05)
    assert time.monotonic() - started >= 0.05
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(stop.wait()))
    waiter.start()
    stop.set()
    waiter.join(timeout=30)
    assert woken == [True]
    stop.set()  # again: nothing more happens
    assert stop.is_set() and stop.wait(0) and stop.wait()
    with pytest.raises(NotImplementedError):
        stop.clear()


def test_a_stop_gives_back_its_pipe() -> None:
    """Each stop holds two file descriptors until it is dropped, not until the process ends."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        stop = SignalStop()
        stop.set()
        del stop
    assert len(os.listdir("/proc/self/fd")) == before
