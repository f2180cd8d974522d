"""The HTTP service's writes, recorded by a process of their own.

The event loop (routing, the key check, parsing, responses) and the ledger's writes (rules,
sealing, hashing, SQLite) are both Python. In one process they take turns on one interpreter
lock, and every SQLite call the writer makes hands the lock over and waits to get it back
from a busy event loop: a group of 4 facts spent 3.4 ms setting up its batch, 0.8 ms of it
on the CPU (throwaway profile, 2026-12-01). Here the event loop only hands each group to
this process and reads the outcomes when they arrive (`api.process_committer`), so the two
halves run on two cores. `python -m bench http`, which runs both in the same run: 637 and 761
single publishes/s against 481 and 634 with the writer thread (README, "HTTP publishing").

The child owns a `ConsentLedger` on the same settings. Other processes may write the same
data directory meanwhile (the service's own erasure route, the CLI), as SQLite and the
ledger's version checks already allow. A group is sent as one list of items (single
publishes as the bytes received, `ledger.envelope.Received`, parsed here; a batch's facts,
and its refused items in their places) and comes back as one list of outcomes, or as the
error `ConsentLedger.record_received` raised. If the child dies,
the waiting requests get `WriterUnavailable` (their facts may or may not have been recorded;
a retry with the same `event_id` records the fact, or answers with the first receipt if it
was) and the next group starts a new child.

Embedded mode only: in Kafka mode the service's intake writer and its HTTP writes share one
fenced producer, so both stay in the service's process (`ledger.kafka.intake_thread`).

The child is spawned, so, as with any program using multiprocessing's spawn, a script that
builds the service itself (`create_app`) must do so under `if __name__ == "__main__":` (the
child imports the script's module again), or set `LEDGER_HTTP_WRITER=thread`.
`consent-ledger serve` is such a program already.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

from ledger.failpoints import failpoint
from ledger.receipt import Outcome
from ledger.settings import Settings

log = logging.getLogger("consent_ledger.api")

# Spawned, not forked: the service forks from a process that already runs threads.
_CONTEXT = multiprocessing.get_context("spawn")
START_TIMEOUT_S = 120.0
# A group of at most 1,000 facts takes well under a second; a writer that has not answered
# in this long is stuck (a lock it waits for, a hung disk) and is replaced, so that one stuck
# group does not hold every later request forever.
ANSWER_TIMEOUT_S = 120.0


class WriterUnavailable(RuntimeError):
    """The writer process stopped while (or before) recording; nothing may be assumed."""


class WriterProcess:
    """The parent's end. The service's event loop drives it through `ProcessCommitter`
    (`api.process_committer`), which sends groups over the connection `running` or
    `ensure_started` gives it and reads the answers as they come (`answer_of`). One user
    at a time."""

    def __init__(self, settings: Settings, answer_timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self._settings = settings
        self.answer_timeout_s = answer_timeout_s  # seconds a group's answer may take
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: Any = None
        self.restarts = 0  # writers started after one ended (ledger_writer_restarts_total)
        self._start()

    def running(self) -> Connection | None:
        """The connection to the writer if it is running (never blocks on a start)."""
        conn, process = self._conn, self._process
        return conn if conn is not None and process is not None and process.is_alive() else None

    def ensure_started(self) -> Connection:
        """The connection to a running writer, started anew if the last one ended (blocks
        while a new one starts); raises what its start raised."""
        with self._lock:
            if self._conn is None or not self._process.is_alive():
                # Gone while idle: nothing was sent to it, so a new one takes the next group.
                self._stopped()
                self._start()
                self.restarts += 1
            assert self._conn is not None
            return self._conn

    def lost(self) -> None:
        """The writer ended or its answer was lost: let it go; the next group starts another."""
        with self._lock:
            self._stopped()

    def kill(self) -> None:
        """Stop a writer that does not answer (see `answer_timeout_s`)."""
        with self._lock:
            if self._process is not None:
                self._process.kill()
                self._process.join(timeout=30)
                self._stopped()

    @property
    def process(self) -> Any:
        """The child (a multiprocessing.Process), for operations and tests."""
        return self._process

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(None)
            if self._process is not None:
                self._process.join(timeout=30)
                if self._process.is_alive():
                    self._process.terminate()
                    self._process.join(timeout=10)
            self._stopped()

    def _start(self) -> None:
        parent, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=_serve, args=(child, self._settings), name="ledger-writer", daemon=True
        )
        process.start()
        child.close()
        # Ready once its ledger is open: a store it cannot open fails the service's start.
        try:
            if not parent.poll(START_TIMEOUT_S):
                process.terminate()
                raise WriterUnavailable("the ledger's writer process did not start")
            kind, value = parent.recv()
        except (EOFError, OSError):
            parent.close()
            raise WriterUnavailable("the ledger's writer process did not start") from None
        except WriterUnavailable:
            parent.close()
            raise
        if kind == "error":
            parent.close()
            process.join(timeout=10)
            raise value
        self._conn, self._process = parent, process
        log.info("writer process started", extra={"pid": process.pid})

    def _stopped(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None and not self._process.is_alive():
            self._process.join(timeout=1)
        self._conn, self._process = None, None


def answer_of(kind: str, value: Any) -> list[Outcome]:
    """A group's outcomes from the writer's answer, or the error it answered with, raised."""
    if kind == "error":
        raise value
    outcomes: list[Outcome] = value
    return outcomes


def _serve(conn: Connection, settings: Settings) -> None:
    """The child: record each group it is sent until the parent says stop or goes away."""
    # Ctrl-C, and a closed terminal's SIGHUP, reach the whole process group; the service
    # stops this process itself once its requests in flight are answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from api.logs import configure
    from ledger.application import ConsentLedger
    from ledger.runtime import tune

    configure()  # the service's structured logs, here too

    try:
        ledger = ConsentLedger(settings)
    except Exception as error:
        conn.send(("error", _portable(error)))
        return
    tune()
    conn.send(("ready", None))
    try:
        while True:
            try:
                facts = conn.recv()
            except (EOFError, OSError):
                return  # the service is gone
            if facts is None:
                return
            try:
                reply: tuple[str, Any] = ("ok", ledger.record_received(facts))
            except Exception as error:
                reply = ("error", _portable(error))
            failpoint("writer-recorded")  # committed, not yet answered: the narrowest window
            conn.send(reply)
    finally:
        ledger.close()


def _portable(error: Exception) -> Exception:
    """The error itself if it survives the pipe, else one of the same name (never its text,
    which might quote personal data)."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"the writer failed ({type(error).__name__})")
    return error
