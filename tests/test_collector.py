"""The cycle collector is held back for a batch, and given back as it was found."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.application import ConsentLedger
from ledger.collector import collection_deferred
from ledger.envelope import parse_fact
from projections.consent_projection import ConsentProjection
from projections.runner import catch_up
from projections.store import ConsentViews
from tests.facts import grant, withdraw


@pytest.fixture
def collections_counted() -> Iterator[list[int]]:
    """Counts collections the interpreter starts, with a threshold that would start many."""
    started: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    threshold = gc.get_threshold()
    gc.set_threshold(10)
    gc.callbacks.append(count)
    try:
        yield started
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*threshold)


def test_a_batch_runs_without_collections(
    ledger: ConsentLedger, collections_counted: list[int]
) -> None:
    facts = [parse_fact(grant(f"contact-{i}")) for i in range(300)]
    facts += [parse_fact(withdraw(f"contact-{i}")) for i in range(0, 300, 3)]
    # The same allocations outside the batch collect dozens of times at this threshold.
    [[{"k": [i]} for i in range(10)] for _ in range(100)]
    assert len(collections_counted) > 50
    collections_counted.clear()

    outcomes = ledger.record(facts)

    assert all(not isinstance(o, Exception) for o in outcomes)
    assert len(collections_counted) <= 1  # at most the one the batch's end allows
    assert gc.isenabled()


def test_nested_and_concurrent_holders_restore_the_collector_once() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with collection_deferred():
            inside.set()
            release.wait(timeout=10)

    other = threading.Thread(target=hold)
    with collection_deferred():
        with collection_deferred():
            assert not gc.isenabled()
        assert not gc.isenabled()
        other.start()
        inside.wait(timeout=10)
    assert not gc.isenabled()  # the other thread still holds it
    release.set()
    other.join(timeout=10)
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        with collection_deferred():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_comes_back_when_the_batch_fails() -> None:
    with pytest.raises(RuntimeError), collection_deferred():
        raise RuntimeError("refused")
    assert gc.isenabled()


def test_a_projection_page_runs_without_collections(
    ledger: ConsentLedger, tmp_path: Path, collections_counted: list[int]
) -> None:
    views = ConsentViews.open(tmp_path / "views.db")
    projection = ConsentProjection(view=views)
    ledger.record([parse_fact(grant(f"contact-{i}")) for i in range(300)])
    catch_up(ledger, projection)  # the first catch-up also imports modules (collecting)
    ledger.record([parse_fact(withdraw(f"contact-{i}")) for i in range(300)])
    collections_counted.clear()

    read = catch_up(ledger, projection, page=1000)

    assert read == 300
    # At most one as each read of the log ends: the page, and the empty read after it.
    assert len(collections_counted) <= 2
    views.close()
