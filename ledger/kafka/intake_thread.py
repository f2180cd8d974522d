"""The intake writer on a background thread, for a process that also serves HTTP; and the
loop that starts an intake writer again after a failure it did not expect, for it and for
`worker`.

In Kafka mode the HTTP service is a ledger writer too (its receipts come back once the facts
are committed to the ledger topic). Two writer processes would fence each other, so the
service runs the intake writer itself, sharing one ledger, one producer and one ownership.

An intake writer waits out a broker or storage outage by itself, and a record that trips a
bug is rejected alone (`IntakeWriter.step`). Anything else it raises used to end it: in
`serve`, whose HTTP side went on answering and whose `/healthz` said ok, the intake topic then
went unread until someone restarted the process by hand (`/readyz` said why, but the compose
file's restart policy, for one, does not act on a health check); `worker` exited with a
traceback. Now both start it again, after a pause that grows while the failures follow each
other. A fenced writer is not started again: another writer owns the ledger, and taking it
back would fence that one in turn; nor is one stopped by the process's own configuration or
state (`SettingsError`: a key store rotated to a new master key under it), which only a
restart of the process with the new setting mends (`worker` exits 2).
"""

from __future__ import annotations

import logging
import threading

from ledger.application import ConsentLedger
from ledger.kafka.intake import IntakeWriter
from ledger.kafka.recorder import WriterFenced
from ledger.settings import SettingsError

log = logging.getLogger("consent_ledger.intake")

# The pause before the intake writer starts again after a failure it did not expect, doubled
# for each failure that follows without a batch written between them, up to RESTART_MAX_S.
RESTART_S = 1.0
RESTART_MAX_S = 60.0


class Supervised:
    """An intake writer run until stopped, and started again, from the committed intake
    offsets, after a failure it did not expect; WriterFenced and SettingsError end it
    (raised)."""

    def __init__(self, writer: IntakeWriter) -> None:
        self.writer = writer
        # The type of the failure the writer is waiting out (None while it runs): `/readyz`.
        self.failed: str | None = None

    def run(self, stop: threading.Event) -> None:
        pause = RESTART_S
        while not stop.is_set():
            written = self.writer.stats.batches
            try:
                self.writer.run(stop)
                return
            except (WriterFenced, SettingsError):
                raise
            except Exception as error:
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
                if stop.wait(pause):
                    return
                pause = min(pause * 2, RESTART_MAX_S)
                self.writer.stats.restarts += 1
                self.failed = None


class IntakeThread:
    def __init__(self, ledger: ConsentLedger) -> None:
        self.writer = IntakeWriter(ledger)
        self.supervised = Supervised(self.writer)
        self.stop = threading.Event()
        self.fenced = False
        self.ended: str | None = None  # why it stopped for good, other than fenced: `/readyz`
        self.thread = threading.Thread(target=self._run, name="intake-writer", daemon=True)

    @property
    def failed(self) -> str | None:
        return self.supervised.failed

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.supervised.run(self.stop)
        except WriterFenced:
            self.fenced = True
            log.error("fenced: another writer owns the ledger partitions")
        except SettingsError as error:  # the ledger's own words: no record's values in them
            self.ended = f"{error}; restart the service"
            log.error("the intake writer stopped: %s", self.ended, extra={"error": "SettingsError"})
        finally:
            self.writer.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
