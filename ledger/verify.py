"""Walk the whole log and prove it intact, or name the first fact that is not.

Three independent records must agree: the stored bytes (rehashed here), the fact index
written in the same transaction (position -> aggregate, version, hash), and the Merkle head.
Inside the bytes, each event's `prev_hash` must equal the rehash of the event before it of
the same aggregate, and versions must run 1, 2, 3... in log order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson
from eventsourcing.persistence import Notification

from ledger.chain import GENESIS, fact_hash, frontier_append, frontier_root, leaf_hash
from ledger.recorder import IndexedFact, LedgerSQLiteRecorder

if TYPE_CHECKING:
    from ledger.application import ConsentLedger


@dataclass(frozen=True)
class Problem:
    position: int
    kind: str  # altered, removed, inserted, reordered
    aggregate: str
    version: int
    event_id: str | None
    message: str
    # Kafka mode: the ledger topic's partition, and `position` the record's offset in it, a
    # place Kafka's own tools read. None: `position` is the embedded log's.
    partition: int | None = None

    @property
    def place(self) -> str:
        if self.partition is None:
            return f"position {self.position}"
        return f"partition {self.partition} offset {self.position}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "partition": self.partition,
            "kind": self.kind,
            "sid": self.aggregate,
            "version": self.version,
            "event_id": self.event_id,
            "message": self.message,
        }


@dataclass
class VerifyResult:
    facts_checked: int
    root: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "facts_checked": self.facts_checked,
            "merkle_root": self.root,
            "first_broken": self.problems[0].as_dict() if self.problems else None,
            "problems": len(self.problems),
        }


def verify_ledger(recorder: LedgerSQLiteRecorder) -> VerifyResult:
    """The whole check of the configured backend.

    Embedded: the log. Kafka: the writer's replica (index, Merkle head, chains), then, if that
    holds, the ledger topic itself record by record — the log of record is what must be intact.
    """
    result = verify_log(recorder)
    if not recorder.log_is_elsewhere:
        return result
    if not result.ok:
        return _placed_in_the_topic(recorder, result)
    from ledger.kafka.recorder import KafkaLedgerRecorder
    from ledger.kafka.verify import verify_topic

    assert isinstance(recorder, KafkaLedgerRecorder)
    return verify_topic(recorder)


def _placed_in_the_topic(recorder: LedgerSQLiteRecorder, result: VerifyResult) -> VerifyResult:
    """Problems the replica shows, named by the place of their record in the ledger topic.

    A replica's positions are its own numbering, which nobody outside it can look up: a
    record the replica took from the topic and that breaks its subject's chain (appended by
    a holder of the record key) was reported at "position 4", where the operator must find
    it at partition 0, offset 6. A position the topic has no record for stays as it is."""
    placed = recorder.log_coordinates([p.position for p in result.problems])
    result.problems = [
        dataclasses.replace(p, partition=placed[p.position][0], position=placed[p.position][1])
        if p.position in placed
        else p
        for p in result.problems
    ]
    return result


def key_store_gaps(ledger: ConsentLedger, tenant: str | None = None) -> dict[str, Any]:
    """What a restore of one store without the other left, beside the log's own verdict.

    Not the log's integrity (a restored file is intact), but what its readers must be told:
    subjects whose key the key store lacks (`keys.db` older than the log: their personal
    data unreadable), and keys the key store destroyed in an erasure the log does not hold
    (`ledger.db` older than `keys.db`: the erasure's fact to record again). With `tenant`,
    that tenant's subjects only, as its compliance officers may see them (GET /v1/verify).
    """
    return {
        "subjects_without_key": ledger.subjects_without_key(tenant),
        "erasures_not_in_log": [
            {"tenant": name, "sid": sid.hex, "key_erased_at": at.isoformat()}
            for name, sid, at in ledger.erasures_not_in_log(tenant)
        ],
    }


def verify_log(recorder: LedgerSQLiteRecorder, page: int = 5000) -> VerifyResult:
    """Memory grows with the subjects (each one's last version and hash), not with the
    facts: the log and its index are read a page at a time, side by side."""
    (head_size, head_root), last, last_indexed = recorder.verify_bounds()
    heads: dict[UUID | str, tuple[int, str]] = {}
    problems: list[Problem] = []
    frontier: list[bytes] = []
    size = 0
    start = 0
    while True:
        notifications = recorder.select_notifications(
            start=start, limit=page, stop=last, inclusive_of_start=False
        )
        if not notifications:
            break
        upto = notifications[-1].id
        index = {row.position: row for row in recorder.index_between(start, upto)}
        for n in notifications:
            digest = fact_hash(n.originator_id, n.originator_version, n.topic, n.state)
            problem = _check(n, digest, index.pop(n.id, None), heads)
            if problem is not None:
                problems.append(problem)
            heads[n.originator_id] = (n.originator_version, digest)
            frontier = frontier_append(frontier, size, leaf_hash(digest))
            size += 1
        problems += map(_unlogged, index.values())
        start = upto
    while rows := recorder.index_between(start, last_indexed, page):
        problems += map(_unlogged, rows)
        start = rows[-1].position
    root = frontier_root(frontier).hex()
    if not problems and (head_size != size or head_root != root):
        problems.append(
            Problem(
                size,
                "removed" if head_size > size else "altered",
                "",
                0,
                None,
                f"the log's Merkle root over {size} facts does not match the recorded head "
                f"over {head_size} facts: facts were removed, added or altered together with "
                "their index",
            )
        )
    problems.sort(key=lambda p: p.position)
    return VerifyResult(facts_checked=size, root=root, problems=problems)


def _unlogged(row: IndexedFact) -> Problem:
    return Problem(
        row.position,
        "removed",
        row.originator_id.hex,
        row.originator_version,
        row.event_id,
        "the fact index records a fact at this position that the log no longer holds",
    )


def _check(
    n: Notification,
    digest: str,
    indexed: IndexedFact | None,
    heads: dict[UUID | str, tuple[int, str]],
) -> Problem | None:
    agg = n.originator_id.hex if isinstance(n.originator_id, UUID) else str(n.originator_id)
    event_id = indexed.event_id if indexed else None

    def problem(kind: str, message: str) -> Problem:
        return Problem(n.id, kind, agg, n.originator_version, event_id, message)

    if indexed is None:
        return problem("inserted", "the log holds a fact at this position that was never indexed")
    if indexed.originator_id.hex != agg or indexed.originator_version != n.originator_version:
        return problem(
            "reordered",
            f"the index records version {indexed.originator_version} of another or the same "
            "subject at this position",
        )
    if indexed.hash != digest:
        return problem("altered", "the stored bytes do not match the hash recorded when written")
    last_version, last_hash = heads.get(n.originator_id, (0, GENESIS))
    if n.originator_version != last_version + 1:
        kind = "removed" if n.originator_version > last_version + 1 else "reordered"
        return problem(
            kind, f"version {n.originator_version} follows version {last_version} of this subject"
        )
    try:
        prev_hash = orjson.loads(n.state).get("prev_hash", GENESIS)
    except orjson.JSONDecodeError:
        return problem("altered", "the stored bytes are not the JSON that was written")
    if prev_hash != last_hash:
        return problem(
            "altered",
            "prev_hash does not match the fact before it: that fact was altered or replaced",
        )
    return None
