"""The published JSON Schema of the envelope agrees with the ledger's own parser: every fact
the parser accepts validates, and malformed ones it refuses are refused by the schema too."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ledger.demo import demo_stream
from ledger.envelope import parse_fact
from ledger.errors import FactRejected
from ledger.policy import seed_policy_fact
from tests.facts import fact, grant

SCHEMA = json.loads((resources.files("ledger") / "schema" / "fact.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)


def test_the_schema_is_valid() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_every_fact_the_parser_accepts_validates() -> None:
    examples = [seed_policy_fact(), *demo_stream(50)]
    examples.append({**seed_policy_fact(), "request_due_days": {"information": 10, "erasure": 0}})
    examples += [
        fact("consent.corrected", corrects="g", reason="r", void=True),
        fact(
            "consent.corrected",
            corrects="g",
            reason="r",
            changes={"occurred_at": "2025-01-01T00:00:00Z", "expires_at": None},
        ),
        fact("request.closed", request_id="R", outcome="refused", reason="identity"),
        fact("complaint.lodged", authority="Agency", reference="C-1"),
        fact("consent.withdrawn", purposes=["*"]),
    ]
    for example in examples:
        parse_fact(example)
        errors = list(VALIDATOR.iter_errors(example))
        assert errors == [], (example["type"], [e.message for e in errors])


@pytest.mark.parametrize(
    "bad",
    [
        {**grant(), "purposes": []},
        {**grant(), "channel": "pigeon"},
        {**grant(), "occurred_at": "2025-03-01T10:00:00"},
        {**grant(), "purpose": ["marketing"]},
        {k: v for k, v in grant().items() if k != "subject"},
        {**grant(), "personal_data": {"shoe_size": "42"}},
        fact("consent.corrected", corrects="g", reason="r"),
        fact("consent.corrected", corrects="g", reason="r", void=True, changes={"purposes": ["a"]}),
        fact("request.closed", request_id="R", outcome="refused"),
        {**seed_policy_fact(), "subject": "someone"},
        {**seed_policy_fact(), "request_due_days": {"complaint": 10}},
        {**seed_policy_fact(), "request_due_days": {"erasure": 3651}},
        {**seed_policy_fact(), "request_due_days": {"erasure": -1}},
        {**seed_policy_fact(), "request_due_days": {"erasure": True}},
        {**seed_policy_fact(), "request_due_days": {"erasure": 1.5}},
        {**seed_policy_fact(), "request_due_days": [10]},
        {**grant(), "type": "consent.given"},
        {**grant(), "subject": "ali@example.uz "},
        {**grant(), "subject": "\tali@example.uz"},
    ],
)
def test_malformed_facts_fail_both(bad: dict[str, Any]) -> None:
    with pytest.raises(FactRejected):
        parse_fact(bad)
    assert list(VALIDATOR.iter_errors(bad)), "the schema accepted what the parser refuses"
