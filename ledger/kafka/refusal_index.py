"""The intake writer's refusals by tenant and event id, for the HTTP service's receipts
lookup (`POST /v1/facts:lookup`) in Kafka mode.

A publisher that published to the intake topic gets no answer from Kafka: the lookup is
how it learns what became of its facts. It answered `recorded: false` for a fact the
writer refused, the same as for one not taken yet, so the publisher could not tell a fact
to correct from one to wait for; the reason was on the rejected topic, which only the
command line's `receipts` read, whole, each time. Reading the whole topic on a request
would cost a request as much as the topic holds (a week of refusals by default), so the
service keeps what it read in a SQLite file beside the replica, `refusals.db`, with where
it got to in each partition, and each lookup that finds ids not recorded first reads on
from there to the topic's end. The file is a cache of the topic: deleted, it is read again
from the topic's beginning.

Only records under the ledger's MAC count (`rejected.by_the_ledger`), as for `receipts`.
A refusal is kept as long as `LEDGER_REJECTED_RETENTION_MS`, the topic's own retention.
The file holds what the rejected records' bodies say beyond their original bytes: tenant,
event id, code, message and field (the messages name no personal data: the README's
"Refusals"), the intake partition and offset, when it was refused.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from ledger.errors import Code, FactRejected
from ledger.kafka.reading import KeptReaders, never
from ledger.kafka.recorder import KafkaLink, LedgerUnavailable
from ledger.kafka.rejected import Refusal, parsed_refusal, rejected_since
from ledger.store_format import REFUSALS, refuse_other_format, stamp_format

log = logging.getLogger("consent_ledger.kafka")

# Refusals written to the file at a time as a read goes on.
_KEPT_AT_A_TIME = 5000
# Ids asked of SQLite at a time (its default limit of bound parameters is 32,766).
_ASKED_AT_A_TIME = 500

_TABLES = (
    """CREATE TABLE IF NOT EXISTS refusals (
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    field TEXT,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    rejected_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, event_id)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID""",
)
_AGE_INDEX = "CREATE INDEX IF NOT EXISTS refusals_by_age ON refusals (rejected_ms)"


class RefusalIndex:
    """The rejected topic's refusals of facts, by tenant and event id, read on when asked."""

    def __init__(
        self,
        path: Path,
        link: KafkaLink,
        retention_ms: int,
        *,
        clock: Callable[[], float] = time.time,
        stopping: Callable[[], bool] = never,
        recheck_s: float = 0.0,
    ) -> None:
        """`stopping`: whether the service is stopping, which ends a read at once.
        `recheck_s`: for this long after a read found the broker away, lookups answer from
        what was read without asking it again (as the views do: during an outage each
        lookup would otherwise wait out the broker's answer timeout behind the one before)."""
        self._link = link
        self._retention_ms = retention_ms
        self._clock = clock
        self._stopping = stopping
        self._recheck_s = recheck_s
        self._away_since: float | None = None  # monotonic, when a read last failed
        # Made for each lookup, the reader's consumers were most of its answer: 73 ms
        # against 1.9 ms for ids the replica answered (2026-12-06); kept, a lookup asks
        # where the topic ends and reads nothing more when the file has got there.
        self._kept = KeptReaders(link.bootstrap, "consent-ledger-refusals")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            stamped = refuse_other_format(self._db.cursor(), str(path), REFUSALS)
            self._db.execute("PRAGMA journal_mode=WAL")
            for statement in (*_TABLES, _AGE_INDEX):
                self._db.execute(statement)
            if not stamped:
                stamp_format(self._db.cursor(), str(path), REFUSALS, _TABLES)
        except BaseException:
            self._db.close()
            raise

    def of(self, tenant: str, event_ids: Collection[str]) -> dict[str, Refusal]:
        """The latest refusal of each of these event ids of `tenant` the rejected topic
        held, read up to where it ends now.

        When the broker cannot be read, the answer is what was read before, logged: the
        receipts beside it come from the writer's replica, which answers without the
        broker, and during an outage the intake writer refuses nothing new either (its
        refusals are written in its transactions). A 503 would have taken from a publisher
        the receipts a lookup answered before the refusals were read."""
        wanted = list(dict.fromkeys(event_ids))
        if not wanted:
            return {}
        with self._lock:
            away = self._away_since
            if away is None or time.monotonic() - away >= self._recheck_s:
                try:
                    self._read_on()
                    self._away_since = None
                except LedgerUnavailable as error:
                    self._away_since = time.monotonic()
                    log.warning("refusals: %s; answering from what was read before", error)
            return self._found(tenant, wanted)

    def _read_on(self) -> None:
        topic = self._link.topics.rejected
        since = dict(
            self._db.execute(
                "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,)
            ).fetchall()
        )
        rows: list[tuple[object, ...]] = []
        reached = dict(since)
        kept = dict(since)  # where the file says the read got to
        for record in rejected_since(self._link, since, stopping=self._stopping, kept=self._kept):
            reached[record.partition] = record.offset + 1
            parsed = parsed_refusal(record, self._link)
            if parsed is not None:
                tenant, event_id, said = parsed
                why, at = said.refused, (said.partition, said.offset, said.rejected_ms)
                rows.append((tenant, event_id, why.code.value, why.message, why.field, *at))
            if len(rows) >= _KEPT_AT_A_TIME:
                # A first read of a week of refusals is not held in memory whole, and a read
                # the broker cuts short keeps what it got.
                self._keep(topic, rows, reached, kept)
                rows, kept = [], dict(reached)
        self._keep(topic, rows, reached, kept)

    def _keep(
        self,
        topic: str,
        rows: list[tuple[object, ...]],
        reached: dict[int, int],
        kept: dict[int, int],
    ) -> None:
        """Refusals read and how far, in one transaction; refusals past retention dropped."""
        with self._db:
            self._db.execute("BEGIN")
            # A later refusal of the same id replaces an earlier one (records of a partition
            # come in order; across partitions, the later refusal wins).
            self._db.executemany(
                "INSERT INTO refusals VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, event_id) DO UPDATE SET code = excluded.code, "
                "message = excluded.message, field = excluded.field, "
                "partition = excluded.partition, offset = excluded.offset, "
                "rejected_ms = excluded.rejected_ms "
                "WHERE excluded.rejected_ms >= refusals.rejected_ms",
                rows,
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
                [(topic, p, o) for p, o in reached.items() if kept.get(p) != o],
            )
            self._db.execute("DELETE FROM refusals WHERE rejected_ms < ?", (self._horizon_ms(),))

    def _horizon_ms(self) -> int:
        """Refusals before this instant are past the topic's retention."""
        return int(self._clock() * 1000) - self._retention_ms

    def _found(self, tenant: str, wanted: list[str]) -> dict[str, Refusal]:
        horizon = self._horizon_ms()
        found: dict[str, Refusal] = {}
        for start in range(0, len(wanted), _ASKED_AT_A_TIME):
            asked = wanted[start : start + _ASKED_AT_A_TIME]
            marks = ", ".join("?" * len(asked))
            for event_id, code, message, field, partition, offset, at in self._db.execute(
                "SELECT event_id, code, message, field, partition, offset, rejected_ms "
                f"FROM refusals WHERE tenant = ? AND event_id IN ({marks}) "
                "AND rejected_ms >= ?",
                (tenant, *asked, horizon),
            ):
                refused = FactRejected(Code(code), message, field)
                found[event_id] = Refusal(refused, partition, offset, at)
        return found

    def close(self) -> None:
        with self._lock:
            self._kept.close()
            self._db.close()
