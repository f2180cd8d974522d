"""Group commit: concurrent requests share appends but keep their own outcomes."""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import orjson
import pytest

from api.group_commit import GroupCommitter, answers
from api.writer_process import _portable
from ledger.application import ConsentLedger
from ledger.envelope import Fact, Item, Received, parse_fact
from ledger.errors import Code, FactRejected
from ledger.receipt import ErasureNotOverwritten, Outcome, Receipt
from ledger.settings import Settings
from tests.facts import fact, grant
from tests.keystore_support import reader_holding


def test_concurrent_facts_each_get_their_own_outcome(ledger: ConsentLedger) -> None:
    writer = GroupCommitter(ledger.record_received)
    # Half as the HTTP service sends a single publish: the bytes, parsed where recorded.
    facts: list[Fact | Received] = [
        parse_fact(grant(f"g-{i}", event_id=f"g-{i}"))
        if i % 2
        else Received(orjson.dumps(grant(f"g-{i}", event_id=f"g-{i}")), "demo")
        for i in range(300)
    ]
    twice = parse_fact(grant("twice", event_id="twice"))
    bad = parse_fact(grant("bad", event_id="bad", purposes=("lottery",)))
    malformed = Received(b"[1, 2]", "demo")

    async def main() -> list[Outcome]:
        # All at once: the writer records them in as many groups as its pace makes.
        requests = [*facts, twice, twice, bad, malformed]
        return list(await asyncio.gather(*(writer.outcome(f) for f in requests)))

    try:
        *outcomes, first, second, rejected, not_a_fact = asyncio.run(main())
    finally:
        writer.close()
    assert [getattr(o, "event_id", None) for o in outcomes] == [f"g-{i}" for i in range(300)]
    receipts = [o for o in outcomes if isinstance(o, Receipt)]
    assert len(receipts) == 300 and len({r.position for r in receipts}) == 300
    assert isinstance(first, Receipt) and isinstance(second, Receipt)
    assert sorted([first.duplicate, second.duplicate]) == [False, True]
    assert first.position == second.position
    assert isinstance(rejected, FactRejected) and rejected.code.value == "unknown_purpose"
    assert isinstance(not_a_fact, FactRejected) and not_a_fact.code.value == "not_an_object"
    head, _ = ledger.ledger_recorder.head()
    assert ledger.ledger_recorder.find_facts("demo", ["twice"])["twice"].position == first.position
    assert head >= 300


def test_a_failed_append_reaches_every_waiter(ledger: ConsentLedger) -> None:
    writer = GroupCommitter(ledger.record_received)
    ledger.close()  # the store is gone: the append must fail, loudly, for everyone waiting

    async def main() -> list[Outcome | BaseException]:
        requests = [
            writer.outcome(parse_fact(grant(f"x-{i}", event_id=f"x-{i}"))) for i in range(5)
        ]
        return list(await asyncio.gather(*requests, return_exceptions=True))

    try:
        results = asyncio.run(main())
    finally:
        writer.close()
    assert len(results) == 5 and all(isinstance(r, Exception) for r in results), results


def test_an_error_no_future_can_hold_still_reaches_every_waiter() -> None:
    """asyncio refuses to put StopIteration in a future; a writer raising it must not leave
    its requests waiting forever."""

    def broken(items: Sequence[Item]) -> list[Outcome]:
        raise StopIteration

    writer = GroupCommitter(broken)

    async def main() -> list[Outcome | BaseException]:
        requests = [
            writer.outcome(parse_fact(grant(f"s-{i}", event_id=f"s-{i}"))) for i in range(3)
        ]
        return list(await asyncio.gather(*requests, return_exceptions=True))

    try:
        results = asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        writer.close()
    assert [type(r) for r in results] == [RuntimeError] * 3
    assert all("StopIteration" in str(r) for r in results)


def test_batches_and_single_facts_share_groups_and_keep_their_order(
    ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch request is one item of a group, its refused items in their places; no group
    grows past MAX_GROUP facts."""
    import api.group_commit

    monkeypatch.setattr(api.group_commit, "MAX_GROUP", 7)
    groups: list[int] = []
    record = ledger.record_received

    def counted(items: Sequence[Item]) -> list[Outcome]:
        groups.append(len(items))
        return record(items)

    writer = GroupCommitter(counted)
    refused = FactRejected(Code.NOT_AN_OBJECT, "a fact must be a JSON object")
    batches: list[list[Item]] = [
        [*(parse_fact(grant(f"b{b}-{i}", event_id=f"b{b}-{i}")) for i in range(2)), refused]
        for b in range(20)
    ]
    singles = [parse_fact(grant(f"s-{i}", event_id=f"s-{i}")) for i in range(20)]

    async def main() -> tuple[list[list[Outcome]], list[Outcome]]:
        batch_requests = [asyncio.ensure_future(writer.outcomes(b)) for b in batches]
        single_requests = [asyncio.ensure_future(writer.outcome(s)) for s in singles]
        return list(await asyncio.gather(*batch_requests)), list(
            await asyncio.gather(*single_requests)
        )

    try:
        batch_outcomes, single_outcomes = asyncio.run(main())
    finally:
        writer.close()
    for batch, outcomes in zip(batches, batch_outcomes, strict=True):
        assert [getattr(o, "event_id", None) for o in outcomes[:2]] == [
            getattr(f, "event_id", None) for f in batch[:2]
        ]
        assert outcomes[2] is refused or (
            isinstance(outcomes[2], FactRejected) and outcomes[2].code is Code.NOT_AN_OBJECT
        )
    assert [getattr(o, "event_id", None) for o in single_outcomes] == [f.event_id for f in singles]
    assert sum(groups) == 80 and max(groups) <= 7 and len(groups) > 1


def test_awaited_outcomes_reach_their_own_requests_on_the_event_loop(
    ledger: ConsentLedger,
) -> None:
    """What a single publish awaits: each request its own outcome, settled on its loop; a
    request that went away meanwhile (cancelled) does not disturb the others."""
    writer = GroupCommitter(ledger.record_received)

    async def main() -> tuple[list[Outcome], Outcome]:
        facts = [
            Received(orjson.dumps(grant(f"aw-{i}", event_id=f"aw-{i}")), "demo") for i in range(50)
        ]
        gone = asyncio.ensure_future(writer.outcome(parse_fact(grant("gone", event_id="gone"))))
        tasks = [asyncio.ensure_future(writer.outcome(f)) for f in facts]
        await asyncio.sleep(0)  # one turn of the loop: every task has handed its fact over
        gone.cancel()
        refused = await writer.outcome(Received(b"{", "demo"))
        return list(await asyncio.gather(*tasks)), refused

    try:
        outcomes, refused = asyncio.run(main())
    finally:
        writer.close()
    assert [getattr(o, "event_id", None) for o in outcomes] == [f"aw-{i}" for i in range(50)]
    assert isinstance(refused, FactRejected) and refused.code.value == "invalid_json"
    # The cancelled request's fact was recorded all the same (as a retry would find).
    assert "gone" in ledger.ledger_recorder.find_facts("demo", ["gone"])


def test_an_unfinished_erasure_is_reported_to_its_own_request_only(
    ledger: ConsentLedger, settings: Settings
) -> None:
    """A grant, a batch with a refused item, and an erasure share a group while another
    process holds the key store open. All are recorded, and only the erasure's old key pages
    wait; the grant and the batch used to be answered 503 `key_store_busy` too."""
    [granted] = ledger.record([parse_fact(grant("to-erase", event_id="g-to-erase"))])
    assert isinstance(granted, Receipt)
    entered, gate = threading.Event(), threading.Event()
    groups: list[int] = []

    def gated(items: Sequence[Item]) -> list[Outcome]:
        if not groups:
            entered.set()
            gate.wait(30)  # the first group holds the writer while the next one queues
        groups.append(len(items))
        return ledger.record_received(items)

    writer = GroupCommitter(gated)
    refused = FactRejected(Code.NOT_AN_OBJECT, "a fact must be a JSON object")
    batch: list[Item] = [refused, parse_fact(grant("in-batch", event_id="in-batch"))]
    erasure = parse_fact(fact("subject.erased", "to-erase", event_id="e", ground="subject_request"))

    async def main() -> list[Any]:
        first = asyncio.ensure_future(writer.outcome(parse_fact(grant("first", event_id="first"))))
        assert await asyncio.to_thread(entered.wait, 30)  # the writer holds the first group
        together = [
            asyncio.ensure_future(writer.outcome(parse_fact(grant("alone", event_id="alone")))),
            asyncio.ensure_future(writer.outcomes(batch)),
            asyncio.ensure_future(writer.outcome(erasure)),
        ]
        await asyncio.sleep(0)  # and the three that follow are queued behind it
        gate.set()
        return list(await asyncio.gather(first, *together, return_exceptions=True))

    try:
        with reader_holding(settings.keystore_path):
            first, alone, in_batch, erased = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        writer.close()
    assert groups == [1, 4]
    assert isinstance(first, Receipt) and isinstance(alone, Receipt) and not alone.duplicate
    assert in_batch[0] is refused or in_batch[0].code is Code.NOT_AN_OBJECT
    assert isinstance(in_batch[1], Receipt) and in_batch[1].event_id == "in-batch"
    assert isinstance(erased, ErasureNotOverwritten), erased
    # It carries its own request's outcome only (counted by the route as recorded).
    assert erased.erasures == {0}
    [receipt] = erased.outcomes
    assert isinstance(receipt, Receipt) and receipt.event_id == "e" and not receipt.duplicate
    assert ledger.keystore.open_keys([UUID(hex=granted.sid)]) == {}
    found = ledger.ledger_recorder.find_facts("demo", ["alone", "in-batch", "e"])
    assert sorted(found) == ["alone", "e", "in-batch"]


def test_an_unfinished_erasure_crosses_the_writer_process_pipe_whole() -> None:
    receipt = Receipt("e", "ab" * 16, 7, "2026-12-02T00:00:00+00:00", "h")
    refused = FactRejected(Code.NOT_AN_OBJECT, "a fact must be a JSON object")
    error = ErasureNotOverwritten("held", [refused, receipt], frozenset({1}))
    back = _portable(error)
    assert back is error  # it pickles: the writer sends it as it is
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ErasureNotOverwritten) and str(copy) == "held"
    assert copy.outcomes[1] == receipt and copy.erasures == {1}
    assert isinstance(copy.outcomes[0], FactRejected)
    shares = answers([(1, True), (1, True)], copy)
    assert shares[0] == (copy.outcomes[0], None)
    result, mine = shares[1]
    assert result is None and isinstance(mine, ErasureNotOverwritten)
    assert mine.outcomes == [receipt] and mine.erasures == {0} and str(mine) == "held"
