"""The intake writer on a background thread, for a process that also serves HTTP.

In Kafka mode the HTTP service is a ledger writer too (its receipts come back once the facts
are committed to the ledger topic). Two writer processes would fence each other, so the
service runs the intake writer itself, sharing one ledger, one producer and one ownership.

The `worker` command exits when its intake writer fails in a way it does not expect, and a
supervisor starts it again. The service cannot leave that to its supervisor: its HTTP side
still serves, its `/healthz` answers, and the intake topic went unread until someone
restarted the process by hand (`/readyz` said why, but the compose file's restart policy, for
one, does not act on a health check). So the thread starts the writer again itself, after a
pause that grows while the failures follow each other. A fenced writer is not started again:
another writer owns the ledger, and taking it back would fence that one in turn.
"""

from __future__ import annotations

import logging
import threading

from ledger.application import ConsentLedger
from ledger.kafka.intake import IntakeWriter
from ledger.kafka.recorder import WriterFenced

log = logging.getLogger("consent_ledger.intake")

# The pause before the intake writer starts again after a failure it did not expect, doubled
# for each failure that follows without a batch written between them, up to RESTART_MAX_S.
RESTART_S = 1.0
RESTART_MAX_S = 60.0


class IntakeThread:
    def __init__(self, ledger: ConsentLedger) -> None:
        self.writer = IntakeWriter(ledger)
        self.stop = threading.Event()
        self.fenced = False
        # The type of the failure the writer is waiting out (None while it runs): `/readyz`.
        self.failed: str | None = None
        self.restarts = 0  # writers started again after a failure (ledger_intake_restarts_total)
        self.thread = threading.Thread(target=self._run, name="intake-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        pause = RESTART_S
        try:
            while not self.stop.is_set():
                written = self.writer.stats.batches
                try:
                    self.writer.run(self.stop)
                    return
                except WriterFenced:
                    self.fenced = True
                    log.error("fenced: another writer owns the ledger partitions")
                    return
                except Exception as error:  # the thread must not die silently
                    # Its type only: the message of an unexpected error might quote a record.
                    self.failed = type(error).__name__
                    self.writer.close()  # started again from the committed offsets
                    if self.writer.stats.batches > written:
                        pause = RESTART_S  # it had written since: not failures in a row
                    log.error(
                        "the intake writer stopped (%s); starting it again in %.1f s",
                        self.failed,
                        pause,
                        extra={"error": self.failed},
                    )
                    if self.stop.wait(pause):
                        return
                    pause = min(pause * 2, RESTART_MAX_S)
                    self.restarts += 1
                    self.failed = None
        finally:
            self.writer.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
