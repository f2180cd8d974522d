"""Group commit: concurrent single facts share appends but keep their own outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from api.group_commit import GroupCommitter
from ledger.application import ConsentLedger
from ledger.envelope import Fact, Received, parse_fact
from ledger.errors import FactRejected
from ledger.receipt import Outcome, Receipt
from tests.facts import grant


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

    def publish(fact: Fact | Received) -> Outcome:
        return writer.submit(fact).result(timeout=60)

    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            futures = [pool.submit(publish, f) for f in facts]
            pair = [pool.submit(publish, twice) for _ in range(2)]
            refused = pool.submit(publish, bad)
            unparsed = pool.submit(publish, malformed)
            outcomes: list[Outcome] = [f.result() for f in futures]
            both = [f.result() for f in pair]
            rejected = refused.result()
            not_a_fact = unparsed.result()
    finally:
        writer.close()
    receipts = [o for o in outcomes if isinstance(o, Receipt)]
    assert len(receipts) == 300 and len({r.position for r in receipts}) == 300
    assert all(isinstance(o, Receipt) for o in both)
    first, second = sorted(both, key=lambda r: r.duplicate)  # type: ignore[union-attr]
    assert isinstance(first, Receipt) and isinstance(second, Receipt)
    assert not first.duplicate and second.duplicate and first.position == second.position
    assert isinstance(rejected, FactRejected) and rejected.code.value == "unknown_purpose"
    assert isinstance(not_a_fact, FactRejected) and not_a_fact.code.value == "not_an_object"
    head, _ = ledger.ledger_recorder.head()
    assert ledger.ledger_recorder.find_facts("demo", ["twice"])["twice"].position == first.position
    assert head >= 300


def test_a_failed_append_reaches_every_waiter(ledger: ConsentLedger) -> None:
    writer = GroupCommitter(ledger.record_received)
    ledger.close()  # the store is gone: the append must fail, loudly, for everyone waiting
    try:
        futures = [writer.submit(parse_fact(grant(f"x-{i}", event_id=f"x-{i}"))) for i in range(5)]
        for future in futures:
            with pytest.raises(Exception):  # noqa: B017 (whatever the store raises)
                future.result(timeout=60)
    finally:
        writer.close()


def test_batches_and_single_facts_share_groups_and_keep_their_order(
    ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch request is one item of a group; no group grows past MAX_GROUP facts."""
    import api.group_commit

    monkeypatch.setattr(api.group_commit, "MAX_GROUP", 7)
    groups: list[int] = []
    record = ledger.record_received

    def counted(facts: Sequence[Fact | Received]) -> list[Outcome]:
        groups.append(len(facts))
        return record(facts)

    writer = GroupCommitter(counted)
    batches = [
        [parse_fact(grant(f"b{b}-{i}", event_id=f"b{b}-{i}")) for i in range(3)] for b in range(20)
    ]
    singles = [parse_fact(grant(f"s-{i}", event_id=f"s-{i}")) for i in range(20)]
    try:
        batch_futures = []
        single_futures = []
        for batch, single in zip(batches, singles, strict=True):
            batch_futures.append(writer.submit_all(batch))
            single_futures.append(writer.submit(single))
        batch_outcomes = [f.result(timeout=60) for f in batch_futures]
        single_outcomes = [f.result(timeout=60) for f in single_futures]
    finally:
        writer.close()
    for facts, outcomes in zip(batches, batch_outcomes, strict=True):
        assert all(isinstance(o, Receipt) for o in outcomes)
        assert [getattr(o, "event_id", None) for o in outcomes] == [f.event_id for f in facts]
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


def test_an_awaited_request_gets_the_writers_error(ledger: ConsentLedger) -> None:
    writer = GroupCommitter(ledger.record_received)
    ledger.close()

    async def main() -> None:
        await writer.outcome(parse_fact(grant("x", event_id="x")))

    try:
        with pytest.raises(Exception):  # noqa: B017 (whatever the closed store raises)
            asyncio.run(main())
    finally:
        writer.close()
