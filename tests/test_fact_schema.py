"""The published JSON Schema of the envelope agrees with the ledger's own parser: every fact
the parser accepts validates, and malformed ones it refuses are refused by the schema too."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ledger.demo import demo_stream
from ledger.envelope import parse_fact
from ledger.errors import FactRejected
from ledger.policy import seed_policy_fact
from tests.facts import fact, grant, one_of_each_type

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


def test_a_null_member_is_taken_by_both_or_refused_by_both() -> None:
    """The parser takes a null as the member left out. The schema said null to every
    optional member, so a schema-driven client (schemathesis, since POST /v1/facts serves
    this schema) saw each such fact taken that its schema refused."""
    from ledger.envelope import _ALLOWED_FIELDS

    kinds = one_of_each_type()
    assert set(kinds) == set(_ALLOWED_FIELDS)
    disagree = []
    for kind, base in sorted(kinds.items()):
        for name in sorted(_ALLOWED_FIELDS[kind]):
            nulled = {**base, name: None}
            try:
                parse_fact(nulled, "demo")  # over HTTP: the key's tenant
                taken = True
            except FactRejected:
                taken = False
            if taken != (not list(VALIDATOR.iter_errors(nulled))):
                disagree.append((kind, name, "parser takes" if taken else "schema takes"))
    assert disagree == []


def test_a_refusal_needs_its_reason_in_both() -> None:
    closed = fact("request.closed", request_id="R", outcome="refused", reason=None)
    with pytest.raises(FactRejected):
        parse_fact(closed)
    assert list(VALIDATOR.iter_errors(closed))


def test_a_whole_number_written_with_a_point_is_a_whole_number_to_both() -> None:
    """To JSON Schema `30.0` is the integer 30; the parser refused it, a fact the schema
    took. It is taken as 30, so the same fact with `30` is the same fact (its event_id
    answered as a duplicate)."""
    policy_fact = seed_policy_fact()
    purpose = next(iter(policy_fact["purposes"]))
    pointed = json.loads(json.dumps(policy_fact))
    pointed["purposes"][purpose]["retention_days"] = 30.0
    pointed["request_due_days"] = {"erasure": 10.0}
    plain = json.loads(json.dumps(policy_fact))
    plain["purposes"][purpose]["retention_days"] = 30
    plain["request_due_days"] = {"erasure": 10}
    assert not list(VALIDATOR.iter_errors(pointed))
    assert parse_fact(pointed) == parse_fact(plain)
    pointed["purposes"][purpose]["retention_days"] = 30.5
    with pytest.raises(FactRejected):
        parse_fact(pointed)
    assert list(VALIDATOR.iter_errors(pointed))


def test_the_api_document_serves_this_schema_as_the_body_of_a_fact_and_a_batch_item() -> None:
    document = json.loads(
        (Path(__file__).resolve().parents[1] / "api" / "openapi.json").read_text()
    )
    fact = {"$ref": "#/components/schemas/Fact"}
    assert document["components"]["schemas"]["Fact"] == {
        k: v for k, v in SCHEMA.items() if k not in ("$schema", "$id")
    }
    body = document["paths"]["/v1/facts"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == fact
    batch = document["paths"]["/v1/facts:batch"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"]["properties"]["facts"]["items"] == fact


def test_the_erasure_route_states_what_a_fact_of_erasure_takes() -> None:
    """POST /v1/subjects/{sid}/erasure makes a `subject.erased` fact of its body: its
    document states that fact's grounds, and that its identifiers hold no control
    character, as this schema does (it said only "a string" of each)."""
    document = json.loads(
        (Path(__file__).resolve().parents[1] / "api" / "openapi.json").read_text()
    )
    body = document["components"]["schemas"]["Erasure"]["properties"]
    [erased] = [
        rule["then"]
        for rule in SCHEMA["allOf"]
        if rule["if"]["properties"]["type"].get("const") == "subject.erased"
    ]
    assert set(body["ground"]["enum"]) == set(erased["properties"]["ground"]["enum"])
    # Of a string only: the body's identifiers may be null (not given), and a bare `not` of
    # a pattern refuses a null (a pattern holds of anything but a string).
    one_line = {"type": "string", **SCHEMA["properties"]["event_id"]["not"]}
    assert body["event_id"]["not"] == body["request_id"]["not"] == one_line
