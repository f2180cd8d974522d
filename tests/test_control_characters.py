"""Characters that act instead of showing (ESC, a newline, a bidirectional override): refused
in the envelope's identifiers, shown as escapes wherever a person reads the ledger.

Before: an `event_id` of `"esc-\\x1b[31mRED\\x1b[0m-\\r\\nverify: OK"` was recorded, and
`consent-ledger trail` printed it raw: the compliance officer's terminal ran the sequence and
showed a forged line, and a newline in a subject's name split a row of the trail in two.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.controls import first_control, visible
from ledger.envelope import parse_fact
from ledger.errors import Code, FactRejected
from ledger.policy import seed_policy_fact
from tests.cli_support import run
from tests.facts import fact, grant, withdraw
from tests.test_fact_schema import VALIDATOR

ACTING = ["\x00", "\x1b", "\n", "\r", "\t", "\x7f", "\x9b", "\u202e", "\u2066", "\u2028"]


def _set(obj: dict[str, Any], path: str, value: str) -> dict[str, Any]:
    """`obj` with the string at `path` ("recipient.name") holding `value` inside it."""
    *outer, last = path.split(".")
    inner = obj
    for name in outer:
        inner[name] = dict(inner[name])
        inner = inner[name]
    inner[last] = f"{inner[last][:2]}{value}{inner[last][2:]}"
    return obj


ONE_LINE_FIELDS = [
    (grant(), "event_id"),
    (grant(), "tenant"),
    (grant(), "subject"),
    (grant(), "source"),
    (grant(), "policy_version"),
    (seed_policy_fact(), "policy_version"),
    (seed_policy_fact(), "language"),
    (seed_policy_fact(), "operator.name"),
    (seed_policy_fact(), "operator.tin"),
    (fact("consent.corrected", corrects="g-1", reason="typo", void=True), "corrects"),
    (fact("subject.erased", ground="subject_request", request_id="R-1"), "request_id"),
    (
        fact(
            "transfer.recorded",
            recipient={"name": "Courier LLC", "country": "UZ"},
            categories=["email"],
            ground="contract_performance",
        ),
        "recipient.name",
    ),
    (fact("request.received", request_id="R-1", kind="information"), "request_id"),
    (fact("complaint.lodged", authority="Agency", reference="C-1"), "authority"),
    (fact("complaint.lodged", authority="Agency", reference="C-1"), "reference"),
]


@pytest.mark.parametrize("char", ACTING, ids=[f"U+{ord(c):04X}" for c in ACTING])
@pytest.mark.parametrize(
    ("good", "field"), ONE_LINE_FIELDS, ids=[f"{f['type']}:{p}" for f, p in ONE_LINE_FIELDS]
)
def test_an_identifier_holding_a_control_is_refused_by_parser_and_schema(
    good: dict[str, Any], field: str, char: str
) -> None:
    parse_fact(good)
    bad = _set(orjson.loads(orjson.dumps(good)), field, char)
    with pytest.raises(FactRejected) as refused:
        parse_fact(bad)
    assert refused.value.code is Code.CONTROL_CHARACTER
    assert refused.value.field == field
    assert f"U+{ord(char):04X}" in refused.value.message
    assert list(VALIDATOR.iter_errors(bad)), "the schema accepted what the parser refuses"


def test_a_reason_may_span_lines_but_holds_no_other_control() -> None:
    lines = withdraw(reason="asked by phone,\r\nthen\tin writing")
    parse_fact(lines)
    assert not list(VALIDATOR.iter_errors(lines))
    for char in ("\x00", "\x1b", "\u202e"):
        bad = withdraw(reason=f"asked{char}")
        with pytest.raises(FactRejected) as refused:
            parse_fact(bad)
        assert refused.value.code is Code.CONTROL_CHARACTER
        assert list(VALIDATOR.iter_errors(bad))


@given(st.text())
def test_what_is_visible_prints_and_hides_nothing(text: str) -> None:
    shown = visible(text)
    assert shown.isprintable()
    # Printable text is shown as it is; any other, a refused character included, never is.
    assert (shown == text) == text.isprintable()
    assert first_control(text) is None or shown != text
    # As JSON: the same value read back, whatever it held.
    as_json = visible(orjson.dumps(text).decode())
    assert as_json.isprintable() and orjson.loads(as_json) == text


@given(st.recursive(st.text(), lambda inner: st.dictionaries(st.text(), inner, max_size=3)))
def test_indented_json_made_visible_reads_back_the_same(value: Any) -> None:
    text = visible(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode(), lines=True)
    assert all(line.isprintable() for line in text.split("\n"))
    assert orjson.loads(text) == value


FORGED = "Ali\x1b[2J\x1b[H\nverify: OK, 1 facts\u202e"


def test_what_a_person_reads_shows_every_control_and_forges_no_line(tmp_path: Path) -> None:
    """Personal data and evidence are kept exactly as sent (they are not checked), so their
    controls reach the trail's text, its CSV and the CLI's JSON: shown, never acting."""
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    facts = [
        grant(
            "crm-1",
            event_id="g-1",
            personal_data={"full_name": FORGED},
            evidence={"user_agent": "Mozilla\x9b31m\u2066"},
        ),
        withdraw("crm-1", event_id="w-1", reason="by phone\nthen in writing"),
    ]
    recorded = run(data, "record", stdin="\n".join(orjson.dumps(f).decode() for f in facts))
    assert recorded.returncode == 0, recorded.stderr

    text = run(data, "trail", "--tenant", "demo", "crm-1")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert all(line.isprintable() for line in lines), [ln for ln in lines if not ln.isprintable()]
    assert not any(line.startswith("verify") for line in lines)
    assert "\\u001b[2J" in text.stdout and "\\u202e" in text.stdout

    table = run(data, "trail", "--tenant", "demo", "crm-1", "--format", "csv")
    assert table.returncode == 0, table.stderr
    header, *rows = list(csv.reader(io.StringIO(table.stdout)))
    assert len(rows) == 2
    cells = [dict(zip(header, row, strict=True)) for row in rows]
    assert all(cell.isprintable() for row in rows for cell in row)
    assert orjson.loads(cells[0]["personal_data"]) == {
        "personal_data": {"full_name": FORGED},
        "evidence": {"user_agent": "Mozilla\x9b31m\u2066"},
    }
    assert orjson.loads(cells[1]["personal_data"])["reason"] == "by phone\nthen in writing"

    exact = run(data, "trail", "--tenant", "demo", "crm-1", "--json")
    assert exact.returncode == 0, exact.stderr
    assert all(line.isprintable() for line in exact.stdout.splitlines())
    trail = orjson.loads(exact.stdout)
    assert trail["subject"] == "crm-1"
    assert trail["facts"][0]["personal_data"] == {
        "personal_data": {"full_name": FORGED},
        "evidence": {"user_agent": "Mozilla\x9b31m\u2066"},
    }


def test_a_refusal_is_one_printable_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    refused = run(data, "record", stdin=orjson.dumps(grant(event_id="g\x1b[2J\nok")).decode())
    assert refused.returncode != 0
    assert "control_character" in refused.stdout
    [line] = refused.stderr.splitlines()
    assert line.isprintable()
    typo = run(data, "trail", "--tenant", "de\x1b[8mmo", "crm-1")
    assert typo.returncode != 0
    [line] = typo.stderr.splitlines()
    assert line.isprintable()
