"""A long Kafka-mode read of the views commits at instants of transaction time
(`projections.kafka_source._Read`): whatever order the partitions' records come in, each
commit holds every fact recorded up to the latest it holds, and the read as a whole applies
every record once, in its partition's order."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from kafka import TopicPartition

from ledger.recorder import FactKey
from projections.kafka_source import _Read

START = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def logs(draw: Any) -> tuple[list[list[tuple[int, int, bool, bool]]], int]:
    """The records of each partition in offset order, as (offset, log index, whether a
    fact, whether `known` keeps it): the log's records are stamped in log order and each
    goes to a partition; offsets leave gaps (transaction markers, records left out)."""
    count = draw(st.integers(1, 4))
    partitions: list[list[tuple[int, int, bool, bool]]] = [[] for _ in range(count)]
    offsets = [0] * count
    for index in range(draw(st.integers(0, 30))):
        p = draw(st.integers(0, count - 1))
        offsets[p] += draw(st.integers(0, 2))  # a gap before it
        partitions[p].append((offsets[p], index, draw(st.booleans()), draw(st.booleans())))
        offsets[p] += 1
    return partitions, count


def fact_key(index: int) -> FactKey:
    """The log's `index`th record's fact, stamped in log order."""
    return FactKey("demo", f"e-{index}", "", (START + timedelta(seconds=index)).isoformat())


@given(logs(), st.data())
def test_every_commit_of_a_long_read_is_an_instant(
    log: tuple[list[list[tuple[int, int, bool, bool]]], int], data: st.DataObject
) -> None:
    partitions, count = log
    tps = [TopicPartition("ledger", p) for p in range(count)]
    # Where each partition ends: past its last record, by a marker or not.
    ends = {
        tp: (records[-1][0] + 1 if records else 0) + data.draw(st.integers(0, 1))
        for tp, records in zip(tps, partitions, strict=True)
    }
    read = _Read(tps, dict.fromkeys(tps), ends, lambda p, offset: f"{p}@{offset}")
    unread = {tp: list(records) for tp, records in zip(tps, partitions, strict=True)}
    facts = {index for records in partitions for _, index, fact, _ in records if fact}
    applied: dict[TopicPartition, list[int]] = {tp: [] for tp in tps}  # log indexes
    standing: dict[TopicPartition, int] = dict.fromkeys(tps, 0)  # the views' positions

    def commit(final: bool) -> None:
        for tp, page in read.settled(final=final).items():
            assert page.after in (None, standing[tp]) and page.position > standing[tp]
            # The mark: the last record the page took, as the replica hashes it.
            took = [o for o, _, _, _ in partitions[tp.partition] if standing[tp] <= o]
            took = [o for o in took if o < page.position]
            assert page.mark == ((took[-1], f"{tp.partition}@{took[-1]}") if took else None)
            standing[tp] = page.position
            applied[tp].extend(index for _, index in page.events)
        held = {i for indexes in applied.values() for i in indexes if i in facts}
        if held:  # every fact recorded up to the latest held is held
            assert {i for i in facts if i <= max(held)} <= held | {
                i for tp in tps for _, i, _, kept in partitions[tp.partition] if not kept
            }, "not an instant"

    while any(unread.values()):
        # A poll: some records of some partitions, in the order the fetcher gives them.
        tp = data.draw(st.sampled_from([tp for tp in tps if unread[tp]]))
        taken = unread[tp][: data.draw(st.integers(1, 3))]
        del unread[tp][: len(taken)]
        # The consumer's position: past the last record, or past the marker after it too.
        position = ends[tp] if not unread[tp] and data.draw(st.booleans()) else taken[-1][0] + 1
        read.take(
            tp,
            [
                (offset, fact_key(index) if fact else None, (offset, index) if kept else None)
                for offset, index, fact, kept in taken
            ],
            position,
        )
        commit(final=False)
    # Every partition's consumer past its last marker (a poll that gave no record): nothing
    # is held back any more, before the read's end is called.
    for tp in tps:
        read.reached(tp, ends[tp])
    commit(final=False)
    assert not any(read.offsets.values()), "held with every partition read to its end"
    commit(final=True)
    for tp, records in zip(tps, partitions, strict=True):
        assert applied[tp] == [index for _, index, _, kept in records if kept]
        if records:
            assert standing[tp] >= records[-1][0] + 1


def test_a_read_holding_more_than_its_bound_commits_what_it_read(caplog: Any) -> None:
    """Partitions fetched far apart: one read far ahead of another that has given nothing
    yet. Past `hold` records held, the read commits them rather than hold the partition
    whole, and says so."""
    ahead, behind = TopicPartition("ledger", 0), TopicPartition("ledger", 1)
    records = [(offset, fact_key(offset), offset) for offset in range(5)]
    for hold, applied in ((10, []), (3, [0, 1, 2, 3, 4])):
        read = _Read(
            [ahead, behind],
            {ahead: None, behind: None},
            {ahead: 5, behind: 7},
            lambda p, offset: f"{p}@{offset}",
            hold,
        )
        read.take(ahead, records, 5)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="consent_ledger.projections"):
            pages = read.settled(final=False)
        assert (pages[ahead].events if pages else []) == applied
        assert ("held more than 3 records" in caplog.text) == bool(applied)
