"""Malformed facts get their own code and name the field, never echo a value."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.envelope import (
    _RFC3339,
    MAX_FACT_BYTES,
    Fact,
    parse_fact,
    parse_fact_bytes,
    parse_fact_item,
    parse_time,
)
from ledger.errors import Code, FactRejected
from tests.facts import fact, grant, one_of_each_type, policy, terms


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
    # A leading byte order mark is ignored (RFC 8259 allows it); one anywhere else is not.
    given = grant()
    fact = orjson.dumps(given)
    assert parse_fact_bytes(b"\xef\xbb\xbf" + fact).event_id == given["event_id"]
    refused(b" \xef\xbb\xbf" + fact, Code.INVALID_JSON)


def test_a_fact_decoded_with_others_is_held_to_the_size_of_one_sent_alone() -> None:
    """A policy's text has no limit of its own, only the fact's 1 MiB: a batch's item or a
    CLI document's was not measured, and a 2 MB policy refused alone was recorded in one."""
    within = policy("v-long", text="x" * (MAX_FACT_BYTES - 2_000))
    assert len(orjson.dumps(within)) <= MAX_FACT_BYTES
    assert parse_fact_item(within).event_id == parse_fact_bytes(orjson.dumps(within)).event_id
    over = policy("v-long", text="x" * MAX_FACT_BYTES)
    refused(orjson.dumps(over), Code.OVERSIZE)
    with pytest.raises(FactRejected) as info:
        parse_fact_item(over)
    assert info.value.code is Code.OVERSIZE


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
        ({"subject": "ali@example.uz "}, Code.INVALID_FIELD, "subject"),
        ({"subject": " ali@example.uz"}, Code.INVALID_FIELD, "subject"),
        ({"subject": "ali@example.uz\u00a0"}, Code.INVALID_FIELD, "subject"),
        ({"subject": "   "}, Code.INVALID_FIELD, "subject"),
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
        ({"personal_data": {"email": 5}}, Code.INVALID_FIELD, "personal_data.email"),
        ({"expires_at": "soon"}, Code.INVALID_TIMESTAMP, "expires_at"),
        ({"purpose": ["marketing"]}, Code.UNKNOWN_FIELD, "body"),
    ],
)
def test_wrong_types_and_values(changes: dict[str, Any], code: Code, field: str) -> None:
    error = refused({**grant(), **changes}, code)
    assert error.field == field


def test_a_policy_text_that_is_not_a_string_is_named_so() -> None:
    """It was "field 'text' (the policy's full text) is required", for a text that was
    there, as a number."""
    from ledger.policy import seed_policy_fact

    for wrong in (5, ["Maxfiylik siyosati"], {"uz": "..."}):
        assert refused({**seed_policy_fact(), "text": wrong}, Code.INVALID_FIELD).field == "text"
    for missing in ("", None):
        assert refused({**seed_policy_fact(), "text": missing}, Code.MISSING_FIELD).field == "text"


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


def test_nested_details_take_no_field_they_do_not_define() -> None:
    """A misspelt `retention_day` was dropped, and the purpose's data kept forever (its
    retention read as null); an operator's or recipient's extra detail was dropped too.
    The published schema refuses them as the parser does."""
    terms = {"legal_basis": "consent", "categories": ["email"], "retention_day": 30}
    published = {**policy("v-typo"), "purposes": {"marketing": terms}}
    said = refused(published, Code.UNKNOWN_FIELD)
    assert said.field == "purposes.marketing" and "'retention_day' is" in said.message
    schema = json.loads((resources.files("ledger") / "schema" / "fact.schema.json").read_text())
    assert not jsonschema.Draft202012Validator(schema).is_valid(published)
    terms["retention_days"] = terms.pop("retention_day")
    assert parse_fact(published).body["purposes"]["marketing"]["retention_days"] == 30
    assert jsonschema.Draft202012Validator(schema).is_valid(published)
    # The operator's and a transfer's recipient's details alike.
    transfer = fact(
        "transfer.recorded",
        recipient={"name": "Click LLC", "country": "UZ", "address": "Tashkent"},
        categories=["email"],
        ground="legal_requirement",
        cross_border=False,
    )
    for sent, field in (
        ({**published, "operator": {"name": "A", "tin": "1", "adress": "x"}}, "operator"),
        (transfer, "recipient"),
    ):
        assert refused(sent, Code.UNKNOWN_FIELD).field == field
        assert not jsonschema.Draft202012Validator(schema).is_valid(sent)


def test_offsets_are_kept_as_given() -> None:
    fact = parse_fact(grant(occurred_at="2025-03-01T10:00:00.123456+05:00"))
    assert fact.occurred_at.isoformat() == "2025-03-01T10:00:00.123456+05:00"


def test_canonical_form_ignores_key_order_and_defaults() -> None:
    a = grant(event_id="e")
    b = dict(reversed(list(a.items())))
    b["channel"] = "api"
    assert parse_fact(a).canonical() == parse_fact(b).canonical()
    assert parse_fact(a).canonical() != parse_fact({**a, "purposes": ["support"]}).canonical()


def test_the_published_schema_takes_the_timestamps_the_parser_takes() -> None:
    """A publisher that checks its facts against `fact.schema.json` must not be refused for a
    timestamp's form: both use one pattern (only the calendar is the parser's own check)."""
    schema = json.loads((resources.files("ledger") / "schema" / "fact.schema.json").read_text())
    patterns = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("format") == "date-time":
                patterns.add(node["pattern"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema)
    assert patterns == {_RFC3339.pattern}


@st.composite
def rfc3339(draw: st.DrawFn) -> tuple[str, datetime]:
    """Any RFC 3339 date-time with an offset (section 5.6, upper or lower case, the space
    that section 5.6's note allows), and the instant it names, to the microsecond."""
    when = draw(
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9989, 12, 30))
    ).replace(microsecond=0)
    digits = draw(st.text("0123456789", min_size=0, max_size=9))
    zulu = draw(st.booleans())
    minutes = 0 if zulu else draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    separator = draw(st.sampled_from("Tt "))
    sign = "-" if minutes < 0 else "+"
    offset = (
        draw(st.sampled_from("Zz"))
        if zulu
        else f"{sign}{abs(minutes) // 60:02}:{abs(minutes) % 60:02}"
    )
    text = (
        f"{when.year:04}-{when.month:02}-{when.day:02}{separator}"
        f"{when.hour:02}:{when.minute:02}:{when.second:02}"
    )
    if digits:
        text += "." + digits
    micro = int((digits + "000000")[:6]) if digits else 0
    zone = timezone(timedelta(minutes=minutes))
    return text + offset, when.replace(microsecond=micro, tzinfo=zone)


@given(rfc3339())
def test_every_rfc3339_timestamp_is_taken_to_the_microsecond(case: tuple[str, datetime]) -> None:
    text, instant = case
    assert _RFC3339.match(text)
    parsed = parse_time(text, "occurred_at")
    assert parsed == instant and parsed.utcoffset() == instant.utcoffset()


def test_a_plus_sent_unencoded_in_a_url_is_named() -> None:
    """`?as_of=2025-03-01T10:00:00+05:00` arrives with a space for the '+'."""
    with pytest.raises(FactRejected) as info:
        parse_time("2025-03-01T10:00:00 05:00", "as_of")
    assert info.value.code is Code.INVALID_TIMESTAMP and "%2B" in info.value.message
    with pytest.raises(FactRejected) as info:
        parse_time("2025-03-01T10:00:00", "as_of")
    assert "%2B" not in info.value.message


def _without(obj: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in fields}


def _policy_with(**purpose_terms: Any) -> dict[str, Any]:
    return policy("v-bad", purposes={"marketing": {**terms(30), **purpose_terms}})


def _correction(**fields: Any) -> dict[str, Any]:
    return fact("consent.corrected", corrects="g", reason="r", **fields)


def _transfer(**fields: Any) -> dict[str, Any]:
    out = fact(
        "transfer.recorded",
        recipient={"name": "Click LLC", "country": "UZ"},
        categories=["email"],
        ground="legal_requirement",
    )
    return {**out, **fields}


NAMED_REFUSALS = [
    (_without(grant(), "purposes"), Code.MISSING_FIELD, "purposes"),
    ({**grant(), "evidence": {"note": "a" * 17_000}}, Code.OVERSIZE, "evidence"),
    (_without(policy("v-bad"), "operator"), Code.MISSING_FIELD, "operator"),
    ({**policy("v-bad"), "operator": {"name": "CRM Pro"}}, Code.MISSING_FIELD, "operator.tin"),
    ({**policy("v-bad"), "purposes": {}}, Code.INVALID_FIELD, "purposes"),
    ({**policy("v-bad"), "purposes": {"Marketing": terms()}}, Code.INVALID_FIELD, "purposes"),
    ({**policy("v-bad"), "purposes": {"marketing": 5}}, Code.INVALID_FIELD, "purposes"),
    (
        policy("v-bad", purposes={"marketing": _without(terms(), "legal_basis")}),
        Code.MISSING_FIELD,
        "purposes.marketing.legal_basis",
    ),
    (_policy_with(legal_basis="whim"), Code.INVALID_FIELD, "purposes.marketing.legal_basis"),
    (
        policy("v-bad", purposes={"marketing": _without(terms(), "categories")}),
        Code.MISSING_FIELD,
        "purposes.marketing.categories",
    ),
    (_policy_with(categories=["E-mail"]), Code.INVALID_FIELD, "purposes.marketing.categories"),
    (_policy_with(retention_days=-1), Code.INVALID_FIELD, "purposes.marketing.retention_days"),
    (_policy_with(retention_days=True), Code.INVALID_FIELD, "purposes.marketing.retention_days"),
    (_policy_with(retention_days=36_501), Code.INVALID_FIELD, "purposes.marketing.retention_days"),
    (_policy_with(retention_days=1.5), Code.INVALID_FIELD, "purposes.marketing.retention_days"),
    (fact("subject.rectified"), Code.MISSING_FIELD, "personal_data"),
    (fact("subject.rectified", personal_data={}), Code.INVALID_FIELD, "personal_data"),
    (_correction(void="yes"), Code.INVALID_FIELD, "void"),
    (_correction(changes={}), Code.INVALID_FIELD, "changes"),
    (_correction(changes={"purposes": []}), Code.INVALID_FIELD, "changes.purposes"),
    (_correction(changes={"categories": "email"}), Code.INVALID_FIELD, "changes.categories"),
    (_correction(changes={"occurred_at": None}), Code.MISSING_FIELD, "changes.occurred_at"),
    (_correction(changes={"expires_at": "soon"}), Code.INVALID_TIMESTAMP, "changes.expires_at"),
    (_correction(changes={"policy_version": ""}), Code.INVALID_FIELD, "changes.policy_version"),
    (_correction(changes={"colour": "red"}), Code.UNKNOWN_FIELD, "changes"),
    (_without(_transfer(), "recipient"), Code.MISSING_FIELD, "recipient"),
    (_transfer(recipient={"name": "Click LLC"}), Code.MISSING_FIELD, "recipient.country"),
    (_transfer(recipient={"name": "", "country": "UZ"}), Code.INVALID_FIELD, "recipient.name"),
    (_without(_transfer(), "ground"), Code.MISSING_FIELD, "ground"),
    (_transfer(ground="whim"), Code.INVALID_FIELD, "ground"),
    (_transfer(cross_border="no"), Code.INVALID_FIELD, "cross_border"),
    (fact("subject.erased"), Code.MISSING_FIELD, "ground"),
    (fact("request.received", request_id="R"), Code.MISSING_FIELD, "kind"),
    (fact("request.closed", request_id="R", outcome="maybe"), Code.INVALID_FIELD, "outcome"),
]


@pytest.mark.parametrize(
    ("bad", "code", "field"),
    NAMED_REFUSALS,
    ids=[f"{bad['type']}:{field}:{code.value}" for bad, code, field in NAMED_REFUSALS],
)
def test_a_refusal_names_the_member_it_is_about_a_nested_one_by_its_path(
    bad: dict[str, Any], code: Code, field: str
) -> None:
    """A policy whose operator lacked its TIN was refused with the field `tin`, a purpose's
    terms without a legal basis with `legal_basis`, a correction's `changes.purposes`
    with `purposes` (which a correction does not have). The published schema refuses each
    as well, but for evidence past 16 KiB, a size JSON Schema cannot state."""
    error = refused(bad, code)
    assert error.field == field, error
    if code is Code.MISSING_FIELD:
        assert f"field {field!r} is required" in error.message
    schema = json.loads((resources.files("ledger") / "schema" / "fact.schema.json").read_text())
    if code is not Code.OVERSIZE:
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad)), "schema took it"


def test_a_stray_member_of_a_nested_object_is_not_echoed_unless_named_like_a_field() -> None:
    """Its name was put in the message as sent: a phone number given as a recipient's
    member went into the error, and from there into the service's log."""
    secret = "+998901234567"
    for bad, field in (
        (_transfer(recipient={"name": "Click LLC", "country": "UZ", secret: "x"}), "recipient"),
        ({**policy("v-bad"), "operator": {"name": "A", "tin": "1", secret: "x"}}, "operator"),
        (_policy_with(**{secret: 1}), "purposes.marketing"),
    ):
        error = refused(bad, Code.UNKNOWN_FIELD)
        assert error.field == field
        assert secret not in str(error.as_dict()) and "(unnamed)" in error.message
    named = refused(
        _transfer(recipient={"name": "C", "country": "UZ", "adress": "x"}), Code.UNKNOWN_FIELD
    )
    assert "'adress' is not one of them" in named.message


FACTS_OF_EVERY_TYPE = list(one_of_each_type().values())
# A value of each JSON type, and the edges of the ones a field takes (and some values that
# fields take, so that a change can make a fact valid as well as break it).
ANY_JSON = [
    None,
    True,
    0,
    -(2**63),
    2**63 - 1,
    1.5,
    "",
    "x" * 5000,
    "x" * MAX_FACT_BYTES,  # a fact over its limit, in a member without a limit of its own
    "marketing",
    " padded ",
    "a\u202eb",
    "line\nbreak",
    "2025-01-01T00:00:00Z",
    "2025-02-30T00:00:00Z",
    "*",
    "subject_request",
    "explicit_consent",
    ["marketing"],
    ["*"],
    [],
    ["x"],
    {},
    {"x": 1},
]


def _members() -> list[tuple[str, str, str | None]]:
    """Every member each fact type takes, and each member of an object or list in it."""
    from ledger.envelope import _ALLOWED_FIELDS

    members: list[tuple[str, str, str | None]] = []
    for base in FACTS_OF_EVERY_TYPE:
        for name in sorted(_ALLOWED_FIELDS[base["type"]]):
            members.append((base["type"], name, None))
            inside = base.get(name)
            if isinstance(inside, dict):
                members += [(base["type"], name, key) for key in sorted(inside)]
            elif isinstance(inside, list) and inside:
                members.append((base["type"], name, "0"))
    return members


MEMBERS = _members()


def _with(kind: str, changes: list[tuple[str, str | None, Any]]) -> bytes:
    """The fact of type `kind`, each (member, inner member, value) of `changes` set in turn."""
    changed = json.loads(json.dumps(next(f for f in FACTS_OF_EVERY_TYPE if f["type"] == kind)))
    for name, inner, shared in changes:
        value = json.loads(json.dumps(shared))  # a list of ANY_JSON set inside itself
        inside = changed.get(name)
        if inner is None or not isinstance(inside, list | dict):  # an earlier change's value
            changed[name] = value
        elif isinstance(inside, list):
            inside[:1] = [value]
        else:
            inside[inner] = value
    return orjson.dumps(changed)


def test_every_member_of_every_fact_type_refuses_any_json_value_with_a_code() -> None:
    """Each member any fact type takes, top level or one level down, given a value of each
    JSON type in turn: the fact parses or is refused with a code, and nothing else is raised.
    An object where a choice belongs (`"ground": {}`) raised TypeError (unhashable), a 500
    over HTTP; found by a throwaway structure-aware fuzzer (atheris), 2026-12-07."""
    from ledger.envelope import _ALLOWED_FIELDS

    assert {f["type"] for f in FACTS_OF_EVERY_TYPE} == set(_ALLOWED_FIELDS)
    assert len(MEMBERS) > 120
    for kind, name, inner in MEMBERS:
        for value in ANY_JSON:
            with contextlib.suppress(FactRejected):  # refused with a code: as it should be
                parse_fact_bytes(_with(kind, [(name, inner, value)]))


def _read(read: Callable[[], Fact]) -> Fact | tuple[Code, str | None, str]:
    try:
        return read()
    except FactRejected as refusal:
        return refusal.code, refusal.field, refusal.message


@given(st.data())
def test_several_members_changed_at_once_are_read_alike_alone_and_in_a_batch(
    data: st.DataObject,
) -> None:
    """Parsed, or refused with a code, and the same either way a fact comes: as bytes of
    its own (an HTTP body, a CLI line, an intake record) or decoded with others (a batch's
    item, a CLI document's). A batch's item was not held to the fact's 1 MiB.

    And parsed if and only if the published schema takes it, but for what the schema cannot
    state: the sizes its description names, a timestamp's calendar (2025-02-30) and years
    (1 to 9989), and the `tenant`, which Kafka and the CLI need and an HTTP fact takes from
    its key. A policy with evidence parsed, and was refused only
    as the tenant recorded it (`unknown_field` all the same), where the schema refused it."""
    kind = data.draw(st.sampled_from(sorted({k for k, _, _ in MEMBERS})))
    ofkind = [(name, inner) for k, name, inner in MEMBERS if k == kind]
    changes = data.draw(
        st.lists(st.tuples(st.sampled_from(ofkind), st.sampled_from(ANY_JSON)), max_size=5)
    )
    raw = _with(kind, [(name, inner, value) for (name, inner), value in changes])
    alone = _read(lambda: parse_fact_bytes(raw))
    assert _read(lambda: parse_fact_item(orjson.loads(raw))) == alone
    said = list(PUBLISHED.iter_errors(orjson.loads(raw)))
    if isinstance(alone, Fact):  # a publisher checking it by the schema would send it
        assert not said, said
    elif not said:
        code, field, _ = alone
        assert code in (Code.OVERSIZE, Code.INVALID_TIMESTAMP) or field == "tenant", (
            alone,
            raw[:300],
        )


PUBLISHED = jsonschema.Draft202012Validator(
    json.loads((resources.files("ledger") / "schema" / "fact.schema.json").read_text())
)
