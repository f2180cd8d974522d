"""The pages of who had consent answer one question: the first page's instant, as known at
the moment the first page was asked, whatever is recorded while the list is fetched (over
HTTP and from the CLI)."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from ledger.settings import Settings
from projections.consent_projection import ConsentProjection
from projections.cursors import encode_cursor
from projections.queries import who_had_consent_page
from projections.runner import APPLICATION, catch_up
from projections.store import ConsentViews, ViewReads
from projections.views import Views
from tests.cli_support import run
from tests.examples import examples
from tests.facts import grant, withdraw
from tests.histories import BASE, PURPOSES, SUBJECTS, Reference, hours, in_batches, init_ledger
from tests.views_support import erased_by, histories

PEOPLE = [f"page-{n}" for n in range(6)]
GRANTED_AT = "2025-03-01T10:00:00+05:00"
QUESTION = "/v1/purposes/marketing/subjects"


class Asker:
    def __init__(
        self,
        client: TestClient,
        ledger_sids: dict[str, str],
        keys: dict[str, str],
        last_recorded: datetime,
    ) -> None:
        self.client = client
        self.last_recorded = last_recorded  # of the facts recorded before the first question
        self.sid = ledger_sids  # person -> sid
        self.reader = {"Authorization": f"Bearer {keys['compliance']}"}
        self.publisher = {"Authorization": f"Bearer {keys['publisher']}"}

    def ask(self, query: str = "", status: int = 200) -> dict[str, Any]:
        answer = self.client.get(f"{QUESTION}?{query}", headers=self.reader)
        assert answer.status_code == status, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def record(self, fact: dict[str, Any]) -> None:
        answer = self.client.post("/v1/facts", headers=self.publisher, json=fact)
        assert answer.status_code == 201, answer.text


@pytest.fixture
def asker(tmp_path: Path) -> Iterator[Asker]:
    settings = Settings(data_dir=tmp_path / "data")
    with contextlib.closing(ConsentLedger(settings)) as ledger:
        ledger.init_demo()
        receipts = ledger.record([parse_fact(grant(p, occurred_at=GRANTED_AT)) for p in PEOPLE])
        sids = {p: ledger.sid("demo", p).hex for p in PEOPLE}
    with contextlib.closing(ApiKeys(keys_path(settings))) as api_keys:
        keys = {role: api_keys.create("demo", {role})[1] for role in ("compliance", "publisher")}
    last = receipts[-1]
    assert isinstance(last, Receipt)
    with TestClient(create_app(settings)) as client:
        yield Asker(client, sids, keys, datetime.fromisoformat(last.recorded_at))


def in_sid_order(asker: Asker) -> list[str]:
    """The people by their sids: the order of the pages."""
    return sorted(PEOPLE, key=lambda p: asker.sid[p])


def test_the_pages_after_the_first_answer_for_its_instant_as_then_known(asker: Asker) -> None:
    """Asked without `as_of` (now), a list of six in pages of two. Between the pages: one
    person on a later page withdraws now, and one on the last page has a withdrawal of
    April 2025 recorded late. The pages after the first used to answer for the moment each
    was asked: they left out both, while the first page's instant had them both with
    consent, so the list was of no one instant. Now every page answers as the first did."""
    order = in_sid_order(asker)
    first = asker.ask("limit=2")
    assert first["sids"] == [asker.sid[p] for p in order[:2]]
    assert first["known_at"] is None and first["next"] is not None
    asked_at = datetime.fromisoformat(first["as_of"])
    asker.record(withdraw(order[3], occurred_at=datetime.now(UTC).isoformat()))
    asker.record(withdraw(order[5], occurred_at="2025-04-01T00:00:00Z"))
    asker.record(grant("page-new", occurred_at=datetime.now(UTC).isoformat()))
    listed, pages, cursor = list(first["sids"]), [first], first["next"]
    while cursor is not None:
        page = asker.ask(f"limit=2&cursor={cursor}")
        assert datetime.fromisoformat(page["as_of"]) == asked_at
        # As known when the last fact the first page read was recorded: what it read.
        assert datetime.fromisoformat(page["known_at"]) == asker.last_recorded < asked_at
        listed += page["sids"]
        pages.append(page)
        cursor = page["next"]
    assert listed == [asker.sid[p] for p in order]  # each once, in sid order
    assert len(pages) == 3  # the last full page says so: no `next` to an empty page
    # The facts were recorded: asked anew, the list leaves out the two who withdrew.
    now = asker.ask("limit=100")
    kept = {asker.sid[p] for p in PEOPLE if p not in (order[3], order[5])}
    assert set(now["sids"]) >= kept and len(now["sids"]) == len(kept) + 1  # and page-new
    assert now["next"] is None
    # Asked anew for the first page's instant, the late withdrawal counts (as known now);
    # the one made now does not (it came after that instant).
    again = asker.ask(f"as_of={quote(first['as_of'])}&limit=100")
    assert asker.sid[order[3]] in again["sids"] and asker.sid[order[5]] not in again["sids"]


def test_a_fact_committed_after_the_first_page_was_read_is_in_no_page(
    tmp_path: Path, backend_ledger: ConsentLedger
) -> None:
    """The moment the pages after the first answer as known at is the last fact the first
    page read, not the reader's clock. A reader that read its clock after the writer stamped
    a withdrawal still being committed (here: a clock read a minute late) pinned the pages
    after it to a moment that counted the withdrawal, which the first page had not read:
    the person withdrawing, on a later page, was left out of the list of the first page's
    instant. In Kafka mode too (the clock until 2026-12-06), where the views stand at a
    position in each ledger partition."""
    ledger = backend_ledger
    receipts = ledger.record([parse_fact(grant(p, occurred_at=GRANTED_AT)) for p in PEOPLE])
    order = sorted(ledger.sid("demo", p).hex for p in PEOPLE)
    views = Views(ledger, tmp_path / "views.db")
    views.refresh()
    late_clock = datetime.now(UTC) + timedelta(minutes=1)
    at = datetime.fromisoformat(GRANTED_AT) + timedelta(days=30)

    def page(cursor: str | None) -> dict[str, Any]:
        return who_had_consent_page(
            views.store,
            "demo",
            "marketing",
            at if cursor is None else None,
            None,
            cursor=cursor,
            limit=2,
            policy_version=None,
            now=late_clock,
            recorded_through=views.recorded_through,
        )

    first = page(None)
    assert first["sids"] == order[:2]
    withdrawing = next(p for p in PEOPLE if ledger.sid("demo", p).hex == order[4])
    [withdrawal] = ledger.record([parse_fact(withdraw(withdrawing, occurred_at=GRANTED_AT))])
    assert isinstance(withdrawal, Receipt)
    assert datetime.fromisoformat(withdrawal.recorded_at) < late_clock
    views.refresh()
    listed, cursor = list(first["sids"]), first["next"]
    while cursor is not None:
        answer = page(cursor)
        assert datetime.fromisoformat(answer["known_at"]) == datetime.fromisoformat(
            cast(Receipt, receipts[-1]).recorded_at
        )
        listed += answer["sids"]
        cursor = answer["next"]
    assert listed == order
    views.close()


def test_a_cursor_answers_with_the_question_it_was_made_for(asker: Asker) -> None:
    """Given with the same instants (even written at another offset), a cursor pages on;
    with another instant, moment, purpose or policy version it is refused: each page would
    otherwise answer a different question than the list it continues."""
    as_of = "2025-06-01T05:00:00+05:00"
    known = datetime.now(UTC)  # after the facts were recorded
    first = asker.ask(f"as_of={quote(as_of)}&known_at={quote(known.isoformat())}&limit=2")
    cursor = first["next"]
    assert first["known_at"] == known.isoformat()
    in_tashkent = known.astimezone(timezone(timedelta(hours=5))).isoformat()
    utc = f"as_of=2025-06-01T00:00:00Z&known_at={quote(in_tashkent)}&"
    for same in ("", f"as_of={quote(as_of)}&", utc):
        page = asker.ask(f"{same}limit=2&cursor={cursor}")
        assert page["as_of"] == "2025-06-01T05:00:00+05:00"  # as the first page said it
        assert page["known_at"] == known.isoformat()
        assert page["sids"] == [asker.sid[p] for p in in_sid_order(asker)[2:4]]
    for other in (
        "as_of=2025-06-01T00:00:01Z&",
        f"known_at={quote((known - timedelta(seconds=1)).isoformat())}&",
        "policy_version=crmpro-1.0&",
    ):
        refused = asker.ask(f"{other}limit=2&cursor={cursor}", 422)
        assert refused["code"] == "invalid_cursor", other
    on_support = asker.client.get(
        f"/v1/purposes/support/subjects?cursor={cursor}", headers=asker.reader
    )
    assert on_support.status_code == 422 and on_support.json()["code"] == "invalid_cursor"
    # A policy version's cursor goes on with that version only.
    by_version = asker.ask(f"policy_version=crmpro-1.0&as_of={quote(as_of)}&limit=2")
    assert by_version["sids"] == first["sids"]
    assert asker.ask(f"policy_version=crmpro-1.0&limit=2&cursor={by_version['next']}")["sids"]
    assert asker.ask(f"limit=2&cursor={by_version['next']}", 422)["code"] == "invalid_cursor"


def test_a_sid_the_cursor_of_earlier_releases_still_pages(asker: Asker) -> None:
    order = in_sid_order(asker)
    page = asker.ask(f"as_of=2025-06-01T00:00:00Z&limit=3&cursor={asker.sid[order[1]]}")
    assert page["sids"] == [asker.sid[p] for p in order[2:5]]
    rest = asker.ask(f"limit=3&cursor={page['next']}")  # pinned from there on
    assert rest["sids"] == [asker.sid[order[5]]] and rest["next"] is None
    assert rest["as_of"] == "2025-06-01T00:00:00+00:00"


SID = "0" * 32
INSTANT = "2025-06-01T00:00:00+00:00"
LATER = "2030-01-01T00:00:00+00:00"  # a moment after the test recorded its facts
GOOD = {"after": SID, "as_of": INSTANT, "known_at": LATER, "of": ["marketing", None]}


@pytest.mark.parametrize(
    "made_up",
    [
        "zz",
        "0" * 31,
        "0" * 32 + "0",
        "A" * 32,  # a sid is lower-case hex
        encode_cursor([SID, INSTANT]),
        encode_cursor({**GOOD, "extra": 1}),
        encode_cursor({k: v for k, v in GOOD.items() if k != "known_at"}),
        encode_cursor({**GOOD, "after": "g" * 32}),
        encode_cursor({**GOOD, "after": 7}),
        encode_cursor({**GOOD, "as_of": "2025-06-01T00:00:00"}),  # no offset
        encode_cursor({**GOOD, "as_of": "0001-01-01T00:00:00+00:00"}),  # the calendar's end
        encode_cursor({**GOOD, "known_at": "yesterday"}),
        encode_cursor({**GOOD, "known_at": None}),
        encode_cursor({**GOOD, "of": ["marketing"]}),
        encode_cursor({**GOOD, "of": "marketing"}),
    ],
)
def test_a_made_up_cursor_is_refused_not_a_500(asker: Asker, made_up: str) -> None:
    refused = asker.ask(f"cursor={made_up}", 422)
    assert refused["code"] == "invalid_cursor" and refused["field"] == "cursor"


def test_a_made_up_cursor_of_the_right_shape_pages(asker: Asker) -> None:
    """The refusals above are of shape, not of origin: the same state made by hand pages."""
    page = asker.ask(f"cursor={encode_cursor(GOOD)}")
    assert page["sids"] == sorted(asker.sid.values())


def test_who_pages_on_from_the_cursor_it_prints(data: Path) -> None:
    """`who` says where to go on (`--after`), and the page after answers as the first did
    (on both backends): late withdrawals recorded between them leave the last person
    listed, as known when the first page was asked; the same cursor with another question
    is refused."""
    facts = [grant(p, occurred_at=GRANTED_AT) for p in PEOPLE[:3]]
    assert run(data, "record", stdin=orjson.dumps(facts).decode()).returncode == 0
    at = ("--tenant", "demo", "--purpose", "marketing", "--at", "2025-06-01T00:00:00Z")
    everyone = run(data, "who", *at).stdout.split()
    assert len(everyone) == 3
    first = run(data, "who", *at, "--limit", "2")
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == everyone[:2]
    assert first.stderr.startswith("more may follow: --after ")
    cursor = first.stderr.split()[-1]
    late = [withdraw(p, occurred_at="2025-04-01T00:00:00Z") for p in PEOPLE[:3]]
    assert run(data, "record", stdin=orjson.dumps(late).decode()).returncode == 0
    rest = run(data, "who", *at, "--limit", "2", "--after", cursor)
    assert rest.returncode == 0 and rest.stderr == "", rest.stderr
    assert rest.stdout.split() == everyone[2:]
    assert run(data, "who", *at).stdout.split() == []  # asked anew: all withdrawn
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    for other in (("--known-at", later), ("--policy-version", "crmpro-1.0")):
        refused = run(data, "who", *at, "--after", cursor, *other)
        assert refused.returncode == 2, refused.stderr
        assert "--after takes the 'next' of a previous page" in refused.stderr
    moved = run(data, "who", *at[:-1], "2025-06-02T00:00:00Z", "--after", cursor)
    assert moved.returncode == 2 and "--after takes" in moved.stderr


NO_TRANSFERS = {"third_party_transfer": False, "cross_border_transfer": False}


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=histories["ops"],
    cuts=histories["cuts"],
    first=st.integers(min_value=0, max_value=3),
    hour=hours,
    limit=st.sampled_from([1, 1, 2]),
    purpose=st.sampled_from(PURPOSES),
    by_the_log=st.booleans(),
)
def test_pages_list_who_the_raw_facts_known_at_the_first_page_say(
    ops: list[dict[str, Any]],
    cuts: list[int],
    first: int,
    hour: int,
    limit: int,
    purpose: str,
    by_the_log: bool,
) -> None:
    """Random histories, of which some batches are recorded before the first page and the
    rest one batch between each page and the next (grants, withdrawals, late facts,
    corrections, erasures): the pages together list, in sid order and each once, the
    subjects that a plain fold of the facts recorded before the first page says had
    consent at its instant. The moment the pages are pinned to is the clock's, or
    (`by_the_log`, as the route and the CLI ask in embedded mode) the last fact's that the
    first page read."""
    batches = list(in_batches(ops, cuts))
    # Each subject granted every purpose at the start, so that most pages list someone and
    # the random facts after it withdraw, correct, erase and grant again.
    start = [
        grant(
            s, tuple(PURPOSES), occurred_at=BASE.isoformat(), event_id=f"start-{s}", **NO_TRANSFERS
        )
        for s in SUBJECTS
    ]
    before, between = [start, *batches[:first]], iter(batches[first:])
    at = BASE + timedelta(hours=hour)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = ConsentLedger(Settings(data_dir=Path(tmp) / "data"))
        views = ConsentViews.open(Path(tmp) / "views.db")
        projection = ConsentProjection(view=views)
        accepted: list[tuple[datetime, dict[str, Any]]] = []

        def record(batch: list[dict[str, Any]]) -> None:
            outcomes = ledger.record([parse_fact(f) for f in batch])
            for f, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Receipt) and not outcome.duplicate:
                    accepted.append((datetime.fromisoformat(outcome.recorded_at), f))
            catch_up(ledger, projection)

        try:
            init_ledger(ledger)
            for batch in before:
                record(batch)
            asked = datetime.now(UTC)

            def recorded_through(reads: ViewReads) -> datetime | None:
                position = reads.position(APPLICATION)
                recorded = ledger.ledger_recorder.recorded_at_through(position)
                return None if recorded is None else datetime.fromisoformat(recorded)

            def page(cursor: str | None) -> dict[str, Any]:
                return who_had_consent_page(
                    views,
                    "demo",
                    purpose,
                    at if cursor is None else None,
                    None,
                    cursor=cursor,
                    limit=limit,
                    policy_version=None,
                    now=asked if cursor is None else datetime.now(UTC),
                    recorded_through=recorded_through if by_the_log else None,
                )

            answer = page(None)
            listed = list(answer["sids"])
            recorded_between = 0
            while answer["next"] is not None:
                for batch in itertools.islice(between, 1):
                    record(batch)
                    recorded_between += 1
                answer = page(answer["next"])
                listed += answer["sids"]
            event(f"batches recorded between pages: {min(recorded_between, 2)}")
            event(f"listed {len(listed)}")
            reference = Reference()
            for recorded, f in accepted:
                if recorded <= asked:
                    reference.record(f)
            expected = {
                ledger.sid("demo", s).hex
                for s in SUBJECTS
                if reference.state(s, purpose, at) == "granted"
                and not erased_by(accepted, s, at, asked)
            }
            assert listed == sorted(expected)
        finally:
            views.close()
            ledger.close()
