"""Transaction time never runs backwards (`ledger.clock`): not when the wall clock steps back,
not across a restart, not when another process wrote the log last."""

from __future__ import annotations

import heapq
import itertools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import ConsentLedger
from ledger.clock import TRANSACTION_CLOCK, TransactionClock
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from ledger.settings import Settings
from projections.consent_projection import ConsentProjection
from projections.queries import consents_at, who_had_consent
from projections.rebuild import rebuild
from projections.runner import catch_up
from projections.store import ConsentViews, ViewMovedOn
from tests import facts as built
from tests.examples import examples
from tests.views_support import histories, views_agree

instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@given(st.lists(st.tuples(st.booleans(), instants), min_size=1, max_size=40))
def test_each_stamp_is_later_than_every_stamp_and_floor_before_it(
    steps: list[tuple[bool, datetime]],
) -> None:
    """Steps: read the clock with the wall at that instant, or raise the floor to it."""
    readings = iter([instant for is_floor, instant in steps if not is_floor])
    clock = TransactionClock(wall=lambda: next(readings))
    before: datetime | None = None
    for is_floor, instant in steps:
        if is_floor:
            clock.not_before(instant)
            before = instant if before is None else max(before, instant)
            continue
        stamp = clock.now()
        if before is None or instant > before:
            assert stamp == instant  # the wall clock, when it is ahead
        else:
            assert stamp == before + timedelta(microseconds=1)
        before = stamp


@contextmanager
def wall(reading: Callable[[], datetime], *, fresh_process: bool = False) -> Iterator[None]:
    """The process's transaction clock reading `reading`; with `fresh_process`, remembering
    no stamp, as a process that has just started."""
    saved = TRANSACTION_CLOCK.wall, TRANSACTION_CLOCK._last
    TRANSACTION_CLOCK.wall = reading
    if fresh_process:
        TRANSACTION_CLOCK._last = None
    try:
        yield
    finally:
        TRANSACTION_CLOCK.wall, TRANSACTION_CLOCK._last = saved


def stepped_back(hours: int) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) - timedelta(hours=hours)


def recorded_at(ledger: ConsentLedger, fact: dict[str, Any]) -> datetime:
    [receipt] = ledger.record([parse_fact(fact)])
    assert isinstance(receipt, Receipt), receipt
    return datetime.fromisoformat(receipt.recorded_at)


def test_a_clock_stepped_back_stamps_after_what_was_recorded(backend_settings: Settings) -> None:
    ledger = ConsentLedger(backend_settings)
    try:
        ledger.init_demo()
        granted = recorded_at(ledger, built.grant("ada", event_id="g1"))
        with wall(stepped_back(1)):  # in this process: the wall clock an hour behind
            withdrawn = recorded_at(ledger, built.withdraw("ada", event_id="w1"))
    finally:
        ledger.close()
    assert granted < withdrawn < granted + timedelta(seconds=5)
    # A restart with the clock further behind: the log's last fact is the floor, for a
    # tenant's registration (no batch reads the log before it) as for a fact.
    with wall(stepped_back(2), fresh_process=True):
        reopened = ConsentLedger(backend_settings)
        try:
            registered = reopened.create_tenant("acme").created_on
            regranted = recorded_at(reopened, built.grant("ada", event_id="g2"))
        finally:
            reopened.close()
    assert withdrawn < registered < regranted < withdrawn + timedelta(seconds=5)


def test_every_kind_of_fact_is_stamped_after_the_one_before(ledger: ConsentLedger) -> None:
    """Each fact type, as a subject's first fact and as a later one, a policy version and a
    tenant's registration, stamped by the transaction clock: its wall clock a day ahead of
    the system's (a stamp the library made from the system clock would stand out) and a
    minute further behind at each reading."""
    transfer: dict[str, Any] = {
        "recipient": {"name": "Click LLC", "country": "UZ"},
        "categories": ["email"],
        "ground": "contract_performance",
    }
    later = "2025-03-02T10:00:00+05:00"
    firsts = [
        built.grant(),
        built.fact("subject.rectified", personal_data={"email": "a@b.uz"}),
        built.fact("transfer.recorded", **transfer),
        built.request("x", "r-1", "information", later),
        built.fact("complaint.lodged", authority="Agency", reference="C-1"),
        built.erase(),
    ]
    stream = [
        built.policy("crmpro-2.0"),
        *({**first, "subject": f"first-{n}"} for n, first in enumerate(firsts)),
        built.grant("ada", event_id="g-ada"),
        built.withdraw("ada", occurred_at=later),
        built.fact("consent.corrected", "ada", corrects="g-ada", reason="typo", void=True),
        built.fact("subject.rectified", "ada", personal_data={"email": "a@b.uz"}),
        built.fact("transfer.recorded", "ada", **transfer),
        built.request("ada", "r-2", "erasure", later),
        built.closed("ada", "r-2", "fulfilled", later),
        built.fact("complaint.lodged", "ada", authority="Agency", reference="C-2"),
        built.erase("ada", occurred_at=later),
    ]
    readings = iter(range(1, 1_000))
    ahead = datetime.now(UTC) + timedelta(days=1)
    with wall(lambda: ahead - timedelta(minutes=next(readings))):
        stamps = [recorded_at(ledger, fact) for fact in stream]
        stamps.append(ledger.create_tenant("acme").created_on)  # a tenant's registration
    assert stamps == sorted(set(stamps)), stamps
    assert stamps[0] > ahead - timedelta(minutes=2)


def test_a_second_writer_stamps_after_what_the_first_recorded(tmp_path: Path) -> None:
    """Embedded mode lets two processes write one log (a server and `consent-ledger
    record`): each takes its floor from the log before each batch."""
    settings_ = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings_)
    other = ConsentLedger(settings_)  # opened before the first writer's facts
    try:
        ledger.init_demo()
        granted = recorded_at(ledger, built.grant("ada", event_id="g1"))
        # The other process's clock an hour behind, and its memory without those stamps.
        with wall(stepped_back(1), fresh_process=True):
            withdrawn = recorded_at(other, built.withdraw("ada", event_id="w1"))
        assert granted < withdrawn < granted + timedelta(seconds=5)
    finally:
        other.close()
        ledger.close()


def alternating_batch(ledger: ConsentLedger) -> list[Receipt]:
    """One batch whose facts alternate between two subjects (ada, bo, ada); its receipts."""
    batch = [
        built.grant("ada", event_id="g-ada"),
        built.grant("bo", event_id="g-bo"),
        built.withdraw("ada", event_id="w-ada"),
    ]
    receipts = ledger.record([parse_fact(f) for f in batch])
    assert all(isinstance(r, Receipt) for r in receipts), receipts
    return [r for r in receipts if isinstance(r, Receipt)]


def test_a_batch_is_written_in_the_order_it_was_stamped(tmp_path: Path) -> None:
    """A batch whose facts alternate between subjects: its positions follow its stamps, so
    the log's last fact holds its latest stamp. Written subject by subject, the last
    position held an earlier stamp than the one before it, and a second writer, whose
    floor is the log's last fact, stamped before a fact already recorded when its clock
    had stepped back."""
    settings_ = Settings(data_dir=tmp_path / "data")
    ledger = ConsentLedger(settings_)
    other = ConsentLedger(settings_)
    try:
        ledger.init_demo()
        in_log_order = sorted(alternating_batch(ledger), key=lambda r: r.position)
        stamps = [datetime.fromisoformat(r.recorded_at) for r in in_log_order]
        assert stamps == sorted(stamps)
        with wall(stepped_back(1), fresh_process=True):
            later = recorded_at(other, built.withdraw("bo", event_id="w-bo"))
        assert later > max(stamps)
    finally:
        other.close()
        ledger.close()


def test_the_latest_stamp_up_to_a_position_of_a_log_written_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log whose batches were written subject by subject (before 2026-12-04): what the
    log knew at its last position is the latest stamp of that batch, not the last one's."""

    def subject_by_subject(*lists: Any, key: Any = None) -> Any:
        return itertools.chain(*lists)

    monkeypatch.setattr(heapq, "merge", subject_by_subject)  # what ledger.batch merges with
    app = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    try:
        app.init_demo()
        receipts = alternating_batch(app)
        last = max(receipts, key=lambda r: r.position)
        latest = max(receipts, key=lambda r: datetime.fromisoformat(r.recorded_at))
        assert last is not latest  # written as before: the last position is not the latest
        assert app.ledger_recorder.recorded_at_through(last.position) == latest.recorded_at
    finally:
        app.close()


@contextmanager
def as_before(reading: Callable[[], datetime]) -> Iterator[None]:
    """The wall clock's reading taken as it is, as the ledger stamped facts before
    transaction time kept its order."""

    def unfloored() -> datetime:
        TRANSACTION_CLOCK._last = None  # read by `now` after the wall clock
        return reading()

    with wall(unfloored):
        yield


def test_replay_up_to_an_instant_of_a_log_stamped_across_a_clock_stepped_back(
    backend_ledger: ConsentLedger, tmp_path: Path
) -> None:
    """Logs written before: what the ledger knew at an instant is a beginning of each
    subject's history, whatever a later fact's stamp says."""
    ledger = backend_ledger
    granted = recorded_at(ledger, built.grant("ada"))
    with as_before(stepped_back(1)):
        withdrawn = recorded_at(ledger, built.withdraw("ada"))
        bob = recorded_at(ledger, built.grant("bob"))
    assert withdrawn < bob < granted  # as such a clock left the log
    ada_sid, bob_sid = ledger.sid("demo", "ada").hex, ledger.sid("demo", "bob").hex
    at = datetime.fromisoformat("2025-03-02T00:00:00+05:00")
    stores = []
    for n, known_at in enumerate((bob, granted)):
        rebuild(ledger, tmp_path / f"replayed-{n}.db", known_at=known_at)
        stores.append((known_at, ConsentViews.open(tmp_path / f"replayed-{n}.db")))
        if ledger.settings.backend == "embedded":  # Kafka mode's replay is this catch-up
            caught_up = ConsentViews.open(tmp_path / f"caught-up-{n}.db")
            catch_up(ledger, ConsentProjection(view=caught_up), known_at=known_at)
            stores.append((known_at, caught_up))
    try:
        for known_at, views in stores:
            ada = consents_at(views, "demo", ada_sid, at)
            if known_at == bob:  # ada's grant not known yet, so neither its withdrawal
                assert ada is None
            else:
                assert ada is not None and ada["marketing"].state == "withdrawn"
            assert who_had_consent(views, "demo", "marketing", at) == [bob_sid]
    finally:
        for _, views in stores:
            views.close()


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**histories)
def test_views_agree_with_the_facts_while_the_clock_keeps_stepping_back(
    ops: list[dict[str, Any]], cuts: list[int], instants: list[int], known: list[int]
) -> None:
    """Every answer as known at an instant, and every replay up to one, against the plain
    reading of the facts, with the wall clock a minute further behind at every reading."""
    readings = iter(range(1_000_000))
    start = datetime.now(UTC)
    with (
        tempfile.TemporaryDirectory() as tmp,
        wall(lambda: start - timedelta(minutes=next(readings)), fresh_process=True),
    ):
        views_agree(Settings(data_dir=Path(tmp) / "data"), Path(tmp), ops, cuts, instants, known)


class MovedOnOnce(ConsentProjection):
    """A projection told, once, right after a page committed, that another process moved
    the store on (as `ConsentViews.apply` says it): catching up reads on from the store."""

    def __init__(self, view: ConsentViews, *, after_pages: int) -> None:
        super().__init__(view)
        self.pages_left = after_pages

    def process_batch(
        self, events: Any, tracking: Any, *, after: int | None, mark: Any = None
    ) -> None:
        super().process_batch(events, tracking, after=after, mark=mark)
        self.pages_left -= 1
        if self.pages_left == 0:
            raise ViewMovedOn(tracking.application_name)


def test_a_catch_up_read_on_after_another_process_keeps_its_cut(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    """The log stamped the old way, caught up a page a fact as known at an instant between
    ada's grant and her withdrawal's earlier stamp: ada's grant is past it, and told to read
    on from the store right after that page, the catch-up still leaves her withdrawal out."""
    start = ledger.recorder.max_notification_id() or 0
    granted = recorded_at(ledger, built.grant("ada"))
    with as_before(stepped_back(1)):
        recorded_at(ledger, built.withdraw("ada"))
        bob = recorded_at(ledger, built.grant("bob"))
    assert bob < granted
    views = ConsentViews.open(tmp_path / "views.db")
    try:
        # Pages of one entry: the log's entries before ada's grant, then her grant.
        projection = MovedOnOnce(views, after_pages=start + 1)
        catch_up(ledger, projection, known_at=bob, page=1)
        assert projection.pages_left < 0  # it read on after being told
        at = datetime.fromisoformat("2025-03-02T00:00:00+05:00")
        assert consents_at(views, "demo", ledger.sid("demo", "ada").hex, at) is None
        assert who_had_consent(views, "demo", "marketing", at) == [ledger.sid("demo", "bob").hex]
    finally:
        views.close()
