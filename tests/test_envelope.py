"""Malformed facts get their own code and name the field, never echo a value."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ledger.envelope import MAX_FACT_BYTES, parse_fact, parse_fact_bytes
from ledger.errors import Code, FactRejected
from tests.facts import grant


def refused(data: Any, code: Code, tenant: str | None = None) -> FactRejected:
    with pytest.raises(FactRejected) as info:
        if isinstance(data, bytes):
            parse_fact_bytes(data, tenant)
        else:
            parse_fact(data, tenant)
    assert info.value.code is code, info.value
    return info.value


def test_not_json_not_object_oversize() -> None:
    refused(b"{not json", Code.INVALID_JSON)
    refused(b"[1, 2]", Code.NOT_AN_OBJECT)
    refused(b'"text"', Code.NOT_AN_OBJECT)
    big = orjson.dumps(grant(evidence={"x": "a" * MAX_FACT_BYTES}))
    refused(big, Code.OVERSIZE)


@pytest.mark.parametrize(
    "field", ["event_id", "type", "occurred_at", "source", "subject", "tenant"]
)
def test_required_fields(field: str) -> None:
    fact = grant()
    del fact[field]
    assert refused(fact, Code.MISSING_FIELD).field == field


@pytest.mark.parametrize(
    "changes,code,field",
    [
        ({"event_id": 5}, Code.INVALID_FIELD, "event_id"),
        ({"event_id": ""}, Code.INVALID_FIELD, "event_id"),
        ({"event_id": "x" * 129}, Code.INVALID_FIELD, "event_id"),
        ({"subject": "s" * 257}, Code.INVALID_FIELD, "subject"),
        ({"type": "consent.given"}, Code.UNKNOWN_TYPE, "type"),
        ({"type": 3}, Code.INVALID_FIELD, "type"),
        ({"occurred_at": "2025-03-01T10:00:00"}, Code.INVALID_TIMESTAMP, "occurred_at"),
        ({"occurred_at": "yesterday"}, Code.INVALID_TIMESTAMP, "occurred_at"),
        ({"occurred_at": "2025-02-30T10:00:00+05:00"}, Code.INVALID_TIMESTAMP, "occurred_at"),
        ({"occurred_at": 1735689600}, Code.INVALID_TIMESTAMP, "occurred_at"),
        ({"channel": "pigeon"}, Code.INVALID_FIELD, "channel"),
        ({"evidence": "ip=1.2.3.4"}, Code.INVALID_FIELD, "evidence"),
        ({"purposes": []}, Code.INVALID_FIELD, "purposes"),
        ({"purposes": "marketing"}, Code.INVALID_FIELD, "purposes"),
        ({"purposes": ["Marketing!"]}, Code.INVALID_FIELD, "purposes"),
        ({"third_party_transfer": "yes"}, Code.INVALID_FIELD, "third_party_transfer"),
        ({"personal_data": {"shoe_size": "42"}}, Code.INVALID_FIELD, "personal_data"),
        ({"personal_data": {"email": 5}}, Code.INVALID_FIELD, "personal_data"),
        ({"expires_at": "soon"}, Code.INVALID_TIMESTAMP, "expires_at"),
        ({"purpose": ["marketing"]}, Code.UNKNOWN_FIELD, "body"),
    ],
)
def test_wrong_types_and_values(changes: dict[str, Any], code: Code, field: str) -> None:
    error = refused({**grant(), **changes}, code)
    assert error.field == field


def test_messages_never_echo_values() -> None:
    secret = "+998901234567"
    for bad in (
        {**grant(), "occurred_at": secret},
        {**grant(), secret: 1},
        {**grant(), "personal_data": {secret: "x"}},
        {**grant(), "channel": secret},
    ):
        with pytest.raises(FactRejected) as info:
            parse_fact(bad)
        assert secret not in str(info.value.as_dict())


def test_tenant_from_caller() -> None:
    fact = grant()
    del fact["tenant"]
    assert parse_fact(fact, tenant="demo").tenant == "demo"
    refused({**fact, "tenant": "other"}, Code.TENANT_MISMATCH, tenant="demo")


def test_correction_shapes() -> None:
    base = {
        "event_id": "c",
        "type": "consent.corrected",
        "tenant": "demo",
        "subject": "s",
        "occurred_at": "2025-03-01T10:00:00+05:00",
        "source": "t",
        "corrects": "g",
    }
    refused({**base, "void": True}, Code.MISSING_FIELD)  # reason required
    refused({**base, "reason": "r"}, Code.INVALID_FIELD)  # neither void nor changes
    refused(
        {**base, "reason": "r", "void": True, "changes": {"purposes": ["a"]}}, Code.INVALID_FIELD
    )
    refused({**base, "reason": "r", "changes": {"colour": "red"}}, Code.UNKNOWN_FIELD)
    ok = parse_fact({**base, "reason": "r", "changes": {"occurred_at": "2025-01-01T00:00:00Z"}})
    assert ok.body["changes"]["occurred_at"].utcoffset().total_seconds() == 0


def test_offsets_are_kept_as_given() -> None:
    fact = parse_fact(grant(occurred_at="2025-03-01T10:00:00.123456+05:00"))
    assert fact.occurred_at.isoformat() == "2025-03-01T10:00:00.123456+05:00"


def test_canonical_form_ignores_key_order_and_defaults() -> None:
    a = grant(event_id="e")
    b = dict(reversed(list(a.items())))
    b["channel"] = "api"
    assert parse_fact(a).canonical() == parse_fact(b).canonical()
    assert parse_fact(a).canonical() != parse_fact({**a, "purposes": ["support"]}).canonical()
