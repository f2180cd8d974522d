"""A question the views answer in several reads sees one state of them, while another reader
catches them up between its reads (as the server's requests each do before they ask)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.settings import Settings
from projections.consent_projection import ConsentProjection
from projections.due import due_list
from projections.queries import check_recipients, who_had_consent_page
from projections.runner import catch_up
from projections.store import ConsentViews, ViewsSnapshot
from projections.views import Views
from tests.facts import erase, grant, request, withdraw

AT = datetime.fromisoformat("2025-06-01T00:00:00+00:00")


def after_the_first_read(monkeypatch: pytest.MonkeyPatch, happen: Callable[[], None]) -> list[int]:
    """Has `happen` run right after the first read of the views (a snapshot's `rows` or
    `rows_in`, which the store's own reads go through too); the reads are counted in the
    list returned."""
    reads = [0]
    real_rows, real_rows_in = ViewsSnapshot.rows, ViewsSnapshot.rows_in

    def counted(read: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        def reading(self: ViewsSnapshot, *args: Any, **kwargs: Any) -> list[Any]:
            found = read(self, *args, **kwargs)
            reads[0] += 1
            if reads[0] == 1:
                happen()
            return found

        return reading

    monkeypatch.setattr(ViewsSnapshot, "rows", counted(real_rows))
    monkeypatch.setattr(ViewsSnapshot, "rows_in", counted(real_rows_in))
    return reads


def test_a_campaign_check_answers_for_one_state_of_the_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recipient `a` had consent and `b` was unknown. Right after the check's first read
    (the recipients' subjects), another reader catches up a withdrawal of `a` and a grant of
    `b`. Read in a transaction each, the check answered `a` withdrawn (its intervals read
    after) and `b` unknown (its subject read before): neither state of the views. It must
    answer as the views stood when it began."""
    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    ledger.record([parse_fact(grant("a", occurred_at="2025-03-01T00:00:00Z"))])
    path = tmp_path / "views.db"
    views = ConsentViews.open(path)
    catch_up(ledger, ConsentProjection(view=views))
    recipients = [ledger.sid("demo", "a").hex, ledger.sid("demo", "b").hex]
    before = check_recipients(views, "demo", "marketing", AT, recipients)
    assert [(r.consent, r.reason) for r in before] == [
        (True, "granted"),
        (False, "unknown_subject"),
    ]

    other = ConsentViews.open(path)

    def another_reader_catches_up() -> None:
        ledger.record(
            [
                parse_fact(withdraw("a", occurred_at="2025-04-01T00:00:00Z")),
                parse_fact(grant("b", occurred_at="2025-04-01T00:00:00Z")),
            ]
        )
        catch_up(ledger, ConsentProjection(view=other))

    reads = after_the_first_read(monkeypatch, another_reader_catches_up)
    during = check_recipients(views, "demo", "marketing", AT, recipients)
    assert reads[0] > 1  # the check read again after the other reader's page
    assert during == before
    monkeypatch.undo()
    after = check_recipients(views, "demo", "marketing", AT, recipients)
    assert [(r.consent, r.reason) for r in after] == [(False, "withdrawn"), (True, "granted")]
    other.close()
    views.close()
    ledger.close()


def test_the_due_list_answers_for_one_state_of_the_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The due list reads its lists one after another: open requests first, consents about
    to expire next. Right after its first read, another reader catches up the erasure of
    the subject whose consent expires and a request of another: read in a transaction
    each, the list left out both the erased subject's expiry (read after) and the new
    request (read before). It must answer as the views stood when it began."""
    now = datetime.fromisoformat("2025-06-01T12:00:00+00:00")
    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    expires = (now + timedelta(days=3)).isoformat()
    ledger.record([parse_fact(grant("x", occurred_at="2025-03-01T00:00:00Z", expires_at=expires))])
    path = tmp_path / "views.db"
    views = ConsentViews.open(path)
    catch_up(ledger, ConsentProjection(view=views))
    tenant = ledger.tenant("demo")
    assert tenant is not None

    def due() -> dict[str, Any]:
        return due_list(
            views,
            "demo",
            now,
            within=timedelta(days=30),
            request_days=30,
            policies=tenant.policies,
        )

    before = due()
    assert [e["sid"] for e in before["expiring_consents"]] == [ledger.sid("demo", "x").hex]
    assert before["requests"] == []
    other = ConsentViews.open(path)

    def another_reader_catches_up() -> None:
        ledger.record(
            [
                parse_fact(erase("x", occurred_at="2025-05-01T00:00:00Z")),
                parse_fact(request("y", "r-1", "information", "2025-05-20T00:00:00Z")),
            ]
        )
        catch_up(ledger, ConsentProjection(view=other))

    reads = after_the_first_read(monkeypatch, another_reader_catches_up)
    during = due()
    assert reads[0] > 1
    assert during == before
    monkeypatch.undo()
    after = due()
    assert after["expiring_consents"] == [] and len(after["requests"]) == 1
    other.close()
    views.close()
    ledger.close()


def test_a_page_of_who_had_consent_and_its_position_are_read_in_one_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first page pins the pages after it to the last fact the views held when it was
    read (`who_had_consent_page`). Read apart, the position could come from after another
    reader caught up a withdrawal that the page had not read: the pages after it would
    then leave that person out of the list of the first page's state."""
    people = [f"p-{n}" for n in range(4)]
    ledger = ConsentLedger(Settings(data_dir=tmp_path / "data"))
    ledger.init_demo()
    ledger.record([parse_fact(grant(p, occurred_at="2025-03-01T00:00:00Z")) for p in people])
    order = sorted(ledger.sid("demo", p).hex for p in people)
    last = next(p for p in people if ledger.sid("demo", p).hex == order[-1])
    path = tmp_path / "views.db"
    views = Views(ledger, path)
    views.refresh()
    other = ConsentViews.open(path)

    def another_reader_catches_up() -> None:
        ledger.record([parse_fact(withdraw(last, occurred_at="2025-04-01T00:00:00Z"))])
        catch_up(ledger, ConsentProjection(view=other))

    def page(cursor: str | None) -> dict[str, Any]:
        return who_had_consent_page(
            views.store,
            "demo",
            "marketing",
            AT if cursor is None else None,
            None,
            cursor=cursor,
            limit=2,
            policy_version=None,
            now=datetime.now(UTC),
            recorded_through=views.recorded_through,
        )

    reads = after_the_first_read(monkeypatch, another_reader_catches_up)
    first = page(None)
    monkeypatch.undo()
    assert reads[0] > 1 and first["sids"] == order[:2]
    second = page(first["next"])
    assert second["sids"] == order[2:]
    other.close()
    views.close()
    ledger.close()
