"""What a write waiting for the broker's answer asks each step it goes unanswered: whether
the brokers are away (`reachable.BrokerWatch`), and whether the controllers lost their
quorum.

With two brokers of three SIGKILLed (the compose cluster's test), the broker left took the
append's records and its commit and answered neither: a transaction cannot commit without a
controller, and a partition whose leader died gets no new one. Its port accepts
connections, so the brokers did not count as away, and every write waited out the answer
timeout (30 s) before it was refused; the HTTP service's publishes queued behind it waited
as long again. `/readyz` tells a lost quorum by asking it (`readiness.quorum_problem`); a
write that has waited `ASK_AFTER_S` asks the same, and once `LOST_ANSWERS` answers in a row
say it is lost, the write ends as one whose brokers are away does (`BrokerAway`, then
`LedgerUnavailable`: nothing of it commits without a quorum, and the next write settles
the transaction). An answer that cannot be had (no broker takes the question, the cluster
refuses the principal `Describe` on it, a cluster that is not KRaft) says nothing: the
answer timeout stands, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ledger.kafka.clients import AdminClient
from ledger.kafka.reachable import BrokerWatch
from ledger.kafka.readiness import quorum_problem
from ledger.kafka.reading import BrokerAway

log = logging.getLogger("consent_ledger.kafka")

# A write unanswered this long has the quorum asked: one that commits in time never asks.
ASK_AFTER_S = 3.0
# Questions asked at most this often (each waits up to `ANSWER_MS` for its answer).
ASK_EVERY_S = 1.0
ANSWER_MS = 3000
# Answers in a row that must say the quorum is lost: a controller election (a broker of
# three killed) kept one answer waiting 1.5 s, within one answer's time.
LOST_ANSWERS = 2


class QuorumLost(BrokerAway):
    """The controllers' quorum was said lost while a write waited for its answer."""


class WriteWatch:
    """`away` for a write's wait: True once every bootstrap address refused connections
    for `REFUSED_FOR_S`; raises `QuorumLost` once the quorum was said lost `LOST_ANSWERS`
    times in a row. `close` it when the wait ends (it may hold an admin client)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        admin: Callable[[], Any] | None = None,
    ) -> None:
        self.brokers = BrokerWatch(bootstrap, clock=clock)
        self._bootstrap = bootstrap
        self._clock = clock
        self._make_admin = admin or self._admin_client
        self._admin: Any = None
        self._began: float | None = None
        self._asked_at: float | None = None
        self._lost = 0

    def __call__(self) -> bool:
        if self.brokers():
            return True
        now = self._clock()
        if self._began is None:
            self._began = now
        if self.brokers.refusing or now - self._began < ASK_AFTER_S:
            return False  # nothing to ask a cluster whose every address refuses
        if self._asked_at is not None and now - self._asked_at < ASK_EVERY_S:
            return False
        self._asked_at = now
        problem = self._asked()
        self._lost = self._lost + 1 if problem is not None else 0
        if self._lost >= LOST_ANSWERS:
            log.warning("a write waiting for the broker: %s", problem)
            raise QuorumLost(problem)
        return False

    def _asked(self) -> str | None:
        """What the quorum question said, if it said the quorum is lost."""
        try:
            if self._admin is None:
                self._admin = self._make_admin()
            said = quorum_problem(self._admin)
        except Exception:  # no answer had: it says nothing of the quorum
            self.close()
            return None
        if said is None or said[0] != "kafka_quorum_lost":
            if said is not None:
                self.close()  # no broker took it: the next question starts afresh
            return None
        return said[1]

    def _admin_client(self) -> Any:
        return _admin_client(self._bootstrap)

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()


def _admin_client(bootstrap: str) -> Any:
    return AdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=ANSWER_MS,
        bootstrap_timeout_ms=ANSWER_MS,
        client_id="consent-ledger-write-watch",
    )


_QUORUM_KNOWN: set[str] = set()


def know_the_quorum(bootstrap: str) -> None:
    """Ask the quorum once per bootstrap list in this process, on a thread of its own while
    nothing waits on it, so that a write's later silence is read knowing the quorum's
    voters (`readiness.quorum_verdict`): whether they are the brokers, whose answers then
    say they run. A cluster that does not answer now is asked again next time."""
    if bootstrap in _QUORUM_KNOWN:
        return
    threading.Thread(
        target=_ask_the_quorum, args=(bootstrap,), name="consent-ledger-quorum", daemon=True
    ).start()


def _ask_the_quorum(bootstrap: str) -> None:
    try:
        admin = _admin_client(bootstrap)
    except Exception:
        return
    try:
        said = quorum_problem(admin)
    except Exception:
        return
    finally:
        admin.close()
    if said is None:
        _QUORUM_KNOWN.add(bootstrap)
