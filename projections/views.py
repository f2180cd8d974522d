"""The read side of one data directory: the consent views, kept up to date from the log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ledger.application import ConsentLedger
from projections.consent_projection import ConsentProjection
from projections.runner import catch_up, check_within_log
from projections.store import ConsentViews


class Views:
    """Opens the views store next to the log and catches it up before answering.

    Catching up is incremental (only facts after the stored position), so reads see every
    fact recorded before they were asked, in this process or another.
    """

    def __init__(
        self,
        ledger: ConsentLedger,
        path: Path | None = None,
        *,
        stopping: Callable[[], bool] | None = None,
        recheck_s: float = 0.0,
    ) -> None:
        """`stopping`: whether the process is stopping, which ends a Kafka-mode catch-up
        in progress (`LedgerUnavailable`) instead of waiting out a broker that is away.

        `recheck_s`: for this long after a Kafka-mode catch-up found the broker away, a
        refresh says so at once (`LedgerUnavailable`) instead of asking it again. The HTTP
        service sets it: its questions catch up one at a time, so during an outage each
        waited out the broker's answer timeout (30 s) after every question ahead of it,
        the tenth about five minutes.
        """
        self.ledger = ledger
        self.stopping = stopping
        self.recheck_s = recheck_s
        # When the broker was last found away (monotonic), and what was said.
        self._away: tuple[float, str] | None = None
        self.store = ConsentViews.open(path or ledger.settings.views_path)
        self.projection = ConsentProjection(
            view=self.store, cache_facts=ledger.settings.views_cache_facts
        )
        self._lock = threading.Lock()
        self._reader: Any = None  # Kafka mode: one ledger-topic consumer kept between reads

    def check(self) -> None:
        """Refuse views not built from this log now, as their first refresh would
        (`projections.runner.check_within_log`)."""
        with self._lock:
            check_within_log(self.ledger, self.store, self.stopping)
            self.projection.log_checked = True

    def refresh(self, *, known_at: datetime | None = None, page: int = 5000) -> int:
        with self._lock:
            if self._reader is None and self.ledger.settings.backend == "kafka":
                from ledger.kafka.recorder import KafkaLedgerRecorder
                from projections.kafka_source import LedgerTopicReader

                assert isinstance(self.ledger.recorder, KafkaLedgerRecorder)
                self._reader = LedgerTopicReader(self.ledger.recorder, self.stopping)
            if self._reader is None:
                return catch_up(self.ledger, self.projection, known_at=known_at, page=page)
            return self._kafka_catch_up(known_at, page)

    def _kafka_catch_up(self, known_at: datetime | None, page: int) -> int:
        from ledger.kafka.recorder import LedgerUnavailable

        if self._away is not None and time.monotonic() - self._away[0] < self.recheck_s:
            raise LedgerUnavailable(f"{self._away[1]} (less than {self.recheck_s:g} s ago)")
        try:
            read = catch_up(
                self.ledger, self.projection, known_at=known_at, page=page, reader=self._reader
            )
        except LedgerUnavailable as error:
            self._away = (time.monotonic(), str(error))
            raise
        self._away = None
        return read

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
        self.store.close()
