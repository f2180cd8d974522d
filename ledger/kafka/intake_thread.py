"""The intake writer on a background thread, for a process that also serves HTTP.

In Kafka mode the HTTP service is a ledger writer too (its receipts come back once the facts
are committed to the ledger topic). Two writer processes would fence each other, so the
service runs the intake writer itself, sharing one ledger, one producer and one ownership.
"""

from __future__ import annotations

import logging
import threading

from ledger.application import ConsentLedger
from ledger.kafka.intake import IntakeWriter
from ledger.kafka.recorder import WriterFenced

log = logging.getLogger("consent_ledger.intake")


class IntakeThread:
    def __init__(self, ledger: ConsentLedger) -> None:
        self.writer = IntakeWriter(ledger)
        self.stop = threading.Event()
        self.fenced = False
        self.failed: str | None = None
        self.thread = threading.Thread(target=self._run, name="intake-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.writer.run(self.stop)
        except WriterFenced:
            self.fenced = True
            log.error("fenced: another writer owns the ledger partitions")
        except Exception as error:  # the thread must not die silently
            self.failed = type(error).__name__
            log.error("the intake writer stopped (%s)", self.failed)
        finally:
            self.writer.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
