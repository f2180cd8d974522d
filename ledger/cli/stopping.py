"""The stop that SIGTERM, SIGINT and SIGHUP set in `worker`, `serve` and `project`
(`stopped_by_signals`), made so that a signal handler may set it; and one-shot commands
ended by SIGTERM or SIGHUP as by Ctrl-C (`terminated_as_interrupted`).

`threading.Event.set` takes the lock of the event's condition, which a thread waiting on the
event holds for a moment as its wait begins and ends. A signal's Python handler runs in the
main thread, between two of its bytecodes, so a SIGTERM arriving while the main thread was in
that moment of its own `stop.wait(...)` waited for a lock its own thread held: for ever. A
clean-clone CI run (2026-12-07) saw a `worker` waiting for its brokers stay alive 30 s after
SIGTERM, and a throwaway probe (a main thread waiting on an Event in a loop, another process
signalling it, the handler setting it) hung the same way within seconds.

Here `set` is a flag and a byte written to a pipe, neither of which takes a lock, and a wait
polls the pipe: interrupted by the signal, the poll goes on once the handler has run (PEP
475) and finds the byte at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class SignalStop(threading.Event):
    """A `threading.Event` whose `set` is safe in a signal handler; it cannot be cleared."""

    def __init__(self) -> None:
        super().__init__()
        self._stopped = False
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)
        weakref.finalize(self, _close, self._read_end, self._write_end)

    def is_set(self) -> bool:
        return self._stopped

    def set(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # One byte is enough: nobody reads it, so the pipe stays readable from now on.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_end, b"\0")

    def clear(self) -> None:
        raise NotImplementedError("a stop is not taken back")

    def wait(self, timeout: float | None = None) -> bool:
        if self._stopped:
            return True
        if timeout is not None and timeout <= 0:
            return False  # as threading.Event: a wait of no time only looks
        poller = select.poll()
        poller.register(self._read_end, select.POLLIN)
        poller.poll(None if timeout is None else math.ceil(timeout * 1000))
        return self._stopped


def stopping_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a command that runs until stopped: SIGTERM (process managers,
    `kill`), SIGINT (Ctrl-C) and SIGHUP (its terminal closed), but SIGHUP not in a process
    started with it ignored (`nohup`), which asked to outlive its terminal.

    SIGHUP ended `serve`, `worker` and `project --follow` on the spot until 2026-12-07: the
    requests in flight were cut off unanswered (recorded or not, their publishers could not
    tell), and `serve`'s writer process, in the terminal's process group, died in its group.
    """
    ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    return (signal.SIGTERM, signal.SIGINT) + (() if ignored else (signal.SIGHUP,))


@contextmanager
def stopped_by_signals() -> Iterator[threading.Event]:
    """An event the stopping signals set, for as long as the block runs (then the handlers
    before it are put back: uvicorn installs its own)."""
    stop = SignalStop()
    signals = stopping_signals()
    before = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in signals}
    try:
        yield stop
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP ending a one-shot command, raised where the command was, as Ctrl-C's
    KeyboardInterrupt is: what it was making (a backup's copies, a replay's store) is removed
    and a transaction it cut short rolled back, on the way out.

    By default either signal ended the process on the spot: `backup` left its half-made copy
    of the key store behind (`.NAME.incomplete-PID`, the data keys of subjects erased later
    included), `replay` its `views.db.partial`. Process managers and `timeout` stop with
    SIGTERM; a closed terminal sends SIGHUP.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def terminated_as_interrupted() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Terminated` while the block runs, unless the process was
    started with the signal ignored (`nohup` ignores SIGHUP); the handlers before are put
    back after. Commands that run until stopped are run without it (`ledger.cli.main`):
    SIGTERM stops them cleanly their own way (`stopped_by_signals`, uvicorn's).

    A Python handler found in place is taken over too, not only the default: until
    2026-12-07 it was left, so under `make coverage`, whose measurement installs one in every
    process (it saves its data, then ends the process by the signal), a `backup` stopped by
    SIGTERM died with its half-made copy of the key store behind. The command's own end
    serves such a handler's purpose: it exits normally, and Python's exit runs what was
    registered for it (coverage saves its data there)."""
    before: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        # SIG_IGN: started to outlive the signal. None: a handler not set from Python,
        # which this process cannot put back once replaced.
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):
            before[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for restored, handler in before.items():
            signal.signal(restored, handler)


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
