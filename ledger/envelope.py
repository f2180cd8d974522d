"""The fact envelope of the contract: parse, validate its shape, normalise.

Shape only: whether a fact is *allowed* (tenant known, policy in effect, purpose in force...)
is the domain's question, asked in `ledger.application` and the aggregates. Every refusal is a
`FactRejected` with its own code and names the field, never its value, because values may be
personal data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeAlias

import orjson

from ledger.codec import as_orjson_datetime
from ledger.controls import code_point, first_control
from ledger.errors import Code, FactRejected
from ledger.json_names import MAX_DEPTH, TooDeep, depth_of, marked, repeats_a_name
from ledger.vocabulary import (
    CHANNELS,
    ERASURE_GROUNDS,
    FACT_TYPES,
    LEGAL_BASES,
    PERSONAL_DATA_FIELDS,
    REQUEST_KINDS,
    REQUEST_OUTCOMES,
    TRANSFER_GROUNDS,
)

MAX_FACT_BYTES = 1024 * 1024
MAX_EVIDENCE_DEPTH = 16
MAX_TEXT = 2000
# A policy's retention of a purpose: a century is past any law's; more would carry the due
# list's dates past the calendar's end.
MAX_RETENTION_DAYS = 36_500
MAX_REQUEST_DUE_DAYS = 3650  # as LEDGER_REQUEST_DUE_DAYS
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# The same, for documents that describe a name (a purpose in the API's paths).
NAME_PATTERN = _NAME.pattern

COMMON_FIELDS = frozenset(
    {"event_id", "type", "tenant", "subject", "occurred_at", "source", "channel", "evidence"}
)


class Fact(NamedTuple):
    """One validated, normalised fact as a publisher stated it (before the ledger accepts it).

    Immutable; a NamedTuple because one is made per fact on every write path (a frozen
    dataclass sets each field through object.__setattr__, several times slower).
    """

    event_id: str
    type: str
    tenant: str
    subject: str | None
    occurred_at: datetime
    source: str
    channel: str
    evidence: dict[str, Any] | None
    body: dict[str, Any]

    def canonical(self) -> bytes:
        """Bytes that are equal exactly when two submissions say the same thing.

        Used for idempotency: the same `event_id` with the same canonical bytes is a retry.
        """
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "type": self.type,
                "tenant": self.tenant,
                "subject": self.subject,
                "occurred_at": as_orjson_datetime(self.occurred_at),
                "source": self.source,
                "channel": self.channel,
                "evidence": self.evidence,
                "body": self.body,
            },
            option=orjson.OPT_SORT_KEYS,
            default=_iso,
        )


def _iso(obj: object) -> str:
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise TypeError


class Received(NamedTuple):
    """A fact as its publisher sent it, for the process that records it to parse.

    The HTTP service hands each single publish to its writer process this way. Parsed on the
    event loop and pickled across, a fact cost 15 us to parse plus 17.5 us to pickle there,
    and 11.9 us to unpickle in the writer; as bytes, 0.8 and 0.8 us, and the writer parses
    it (timeit, 2026-12-01). The event loop serves every request; the writer has the other
    core. `tenant` is the caller's, as `parse_fact` takes it.
    """

    data: bytes
    tenant: str | None


# What `ConsentLedger.record_received` takes: a parsed fact, a fact still to parse, or one
# already refused (a batch item that did not parse), which keeps its place in the outcomes.
Item: TypeAlias = Fact | Received | FactRejected


def named_twice() -> FactRejected:
    """The refusal of a fact with an object that names a member twice (ledger.json_names)."""
    return FactRejected(Code.INVALID_JSON, "an object in the fact names the same member twice")


def check_size(data: bytes) -> None:
    """Refuse a fact longer than the contract allows before anything else reads it."""
    if len(data) > MAX_FACT_BYTES:
        raise FactRejected(Code.OVERSIZE, f"a fact may be at most {MAX_FACT_BYTES} bytes")


_BOM = b"\xef\xbb\xbf"


def without_bom(data: bytes) -> bytes:
    """JSON bytes without a leading UTF-8 byte order mark. RFC 8259 forbids writing one
    and lets a parser ignore it; .NET's and Windows PowerShell's UTF-8 writers add it, and
    a fact refused as "not valid JSON" for an invisible mark tells its publisher nothing."""
    return data[3:] if data.startswith(_BOM) else data


def parse_fact_item(item: object, tenant: str | None = None) -> Fact:
    """Parse one fact of an HTTP batch or a CLI document, decoded with the others.

    Held to the size of a fact sent alone, measured as its compact JSON (no longer than its
    bytes as sent, but for a float written short, `1e15`, which no fact has a use for). An
    item was not measured at all: a policy text of 2 MB, refused as `oversize` alone, was
    recorded in a batch (found 2026-12-07)."""
    check_size(orjson.dumps(item))
    return parse_fact(item, tenant)


def parse_fact_bytes(data: bytes, tenant: str | None = None) -> Fact:
    """Parse one fact from JSON bytes (a Kafka record value, an HTTP body, a CLI line)."""
    check_size(data)
    data = without_bom(data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FactRejected(Code.INVALID_JSON, "the fact is not valid JSON") from None
    try:
        exact = marked(data, obj)
    except TooDeep:
        raise FactRejected(
            Code.INVALID_JSON, f"the fact nests deeper than {MAX_DEPTH} levels"
        ) from None
    if exact is not None and repeats_a_name(exact):
        raise named_twice()
    return parse_fact(obj, tenant)


def parse_fact(obj: object, tenant: str | None = None) -> Fact:
    """Validate a decoded JSON value as a fact.

    `tenant`, when given, is the tenant the caller is authenticated as (HTTP): the fact's own
    `tenant` may be absent and, if present, must match.
    """
    if not isinstance(obj, dict):
        raise FactRejected(Code.NOT_AN_OBJECT, "a fact must be a JSON object")
    fact_type = obj.get("type")
    if fact_type is None:
        raise FactRejected(Code.MISSING_FIELD, "field 'type' is required", "type")
    if not isinstance(fact_type, str):
        raise FactRejected(Code.INVALID_FIELD, "field 'type' must be a string", "type")
    parser = _BODY_PARSERS.get(fact_type)
    if parser is None:
        raise FactRejected(
            Code.UNKNOWN_TYPE, f"type must be one of {', '.join(FACT_TYPES)}", "type"
        )
    allowed = _ALLOWED_FIELDS[fact_type]
    for key in obj:
        if key not in allowed:
            raise FactRejected(
                Code.UNKNOWN_FIELD, f"field {_safe_key(key)} is not part of {fact_type}", "body"
            )

    event_id = _text(obj, "event_id", required=True, max_len=128)
    assert event_id is not None
    given_tenant = _text(obj, "tenant", required=tenant is None, max_len=64)
    if tenant is not None and given_tenant is not None and given_tenant != tenant:
        raise FactRejected(
            Code.TENANT_MISMATCH, "field 'tenant' does not match the caller's tenant", "tenant"
        )
    resolved_tenant = tenant if tenant is not None else given_tenant
    assert resolved_tenant is not None
    if fact_type == "policy.published":
        if "subject" in obj:
            raise FactRejected(
                Code.UNKNOWN_FIELD, "a policy.published fact has no subject", "subject"
            )
        if obj.get("evidence") is not None:
            # As the published schema says; the tenant's own check of it came only as the
            # fact was recorded, so a fact parsed that the schema refused.
            raise FactRejected(
                Code.UNKNOWN_FIELD,
                "policy.published carries no evidence: it is not about a person",
                "evidence",
            )
        subject = None
    else:
        subject = _text(obj, "subject", required=True, max_len=256)
        assert subject is not None
        if subject != subject.strip():
            # "ali@example.uz " from a spreadsheet would quietly be another person (another
            # sid) than "ali@example.uz", and `check` reads its list with lines stripped.
            raise FactRejected(
                Code.INVALID_FIELD,
                "field 'subject' must not begin or end with white space",
                "subject",
            )
    occurred_at = _time(obj, "occurred_at", required=True)
    assert occurred_at is not None
    source = _text(obj, "source", required=True, max_len=128)
    assert source is not None
    channel = _text(obj, "channel", required=False, max_len=32) or "api"
    if channel not in CHANNELS:
        raise FactRejected(
            Code.INVALID_FIELD, f"channel must be one of {', '.join(sorted(CHANNELS))}", "channel"
        )
    evidence = obj.get("evidence")
    if evidence is not None:
        if not isinstance(evidence, dict):
            raise FactRejected(Code.INVALID_FIELD, "field 'evidence' must be an object", "evidence")
        if depth_of(evidence) > MAX_EVIDENCE_DEPTH:  # orjson writes at most 254 levels
            raise FactRejected(
                Code.INVALID_FIELD,
                f"evidence may nest at most {MAX_EVIDENCE_DEPTH} levels of objects and arrays",
                "evidence",
            )
        if len(orjson.dumps(evidence)) > 16384:
            raise FactRejected(Code.OVERSIZE, "evidence may be at most 16384 bytes", "evidence")
    body = parser(obj)
    return Fact(
        event_id=event_id,
        type=fact_type,
        tenant=resolved_tenant,
        subject=subject,
        occurred_at=occurred_at,
        source=source,
        channel=channel,
        evidence=evidence,
        body=body,
    )


def parse_time(value: object, field: str) -> datetime:
    """RFC 3339 with an explicit offset; the offset is kept as given."""
    if not isinstance(value, str):
        raise FactRejected(Code.INVALID_TIMESTAMP, f"{field} must be an RFC 3339 string", field)
    if len(value) > 40 or not _RFC3339.match(value):
        if _PLUS_AS_SPACE.match(value):
            # An unencoded '+' in a URL's query string arrives as a space: the caller wrote an
            # offset, and "must have an offset" would send them looking in the wrong place.
            raise FactRejected(
                Code.INVALID_TIMESTAMP,
                f"{field} has a space where its offset's sign belongs: in a URL, write '+' as %2B",
                field,
            )
        raise FactRejected(
            Code.INVALID_TIMESTAMP,
            f"{field} must be RFC 3339 with an offset, e.g. 2025-03-01T10:00:00+05:00",
            field,
        )
    try:
        # RFC 3339 lets 'T' and 'Z' be lower case (as the published schema does); Python's
        # parser takes only upper case. Digits of a second past the sixth (Go and Java write
        # nine) are dropped: the ledger keeps microseconds, as Python's datetime does.
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise FactRejected(
            Code.INVALID_TIMESTAMP, f"{field} is not a valid date and time", field
        ) from None
    try:
        in_range = EARLIEST <= parsed.astimezone(UTC) < LATEST
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        in_range = False
    if not in_range:
        raise FactRejected(
            Code.INVALID_TIMESTAMP,
            f"{field} is outside the years 1 to 9989 (UTC) that the ledger takes",
            field,
        )
    return parsed


def parse_known_at(value: str | None, field: str, slack_s: int) -> datetime | None:
    """A question's transaction time (None: all the ledger knows). An instant up to `slack_s`
    ahead (a caller's clock a little fast) is taken as now, so that pages asked with it
    stay as stable as with any instant past.

    An instant further ahead is refused: what the ledger will know then is not known yet, and
    an answer labelled "as known at" it changed as facts were recorded, where every answer as
    known at an instant past is final (a report kept with it could no longer be reproduced).
    """
    if value is None:
        return None
    known = parse_time(value, field)
    now = datetime.now(UTC)
    if known > now + timedelta(seconds=slack_s):
        raise FactRejected(
            Code.KNOWN_AT_IN_FUTURE,
            f"{field} is in the future: what the ledger will know then is not known yet; "
            "leave it out for what it knows now",
            field,
        )
    return min(known, now)


# The instants the ledger takes: every window a question adds to one (up to ten years: a
# due list's horizon) stays inside the calendar Python can represent.
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9990, 1, 1, tzinfo=UTC)


_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
# The same, for documents that describe an instant (the API's query parameters and bodies).
INSTANT_PATTERN = _RFC3339.pattern
_PLUS_AS_SPACE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})? \d{2}:\d{2}$")


def _safe_key(key: str) -> str:
    # Field names are chosen by publishers; quote them only when they look like field names.
    return repr(key) if _NAME.match(key) else "(unnamed)"


def _text(
    obj: dict[str, Any],
    field: str,
    *,
    required: bool,
    max_len: int,
    multiline: bool = False,
    path: str | None = None,
) -> str | None:
    """A string field; one line unless `multiline` (free text: a reason), and without the
    characters that act instead of showing (`ledger.controls`)."""
    value = obj.get(field)
    named = path or field
    if value is None:
        if required:
            raise FactRejected(Code.MISSING_FIELD, f"field {named!r} is required", named)
        return None
    if not isinstance(value, str):
        raise FactRejected(Code.INVALID_FIELD, f"field {named!r} must be a string", named)
    if not 1 <= len(value) <= max_len:
        raise FactRejected(
            Code.INVALID_FIELD, f"field {named!r} must be 1 to {max_len} characters", named
        )
    control = first_control(value, multiline=multiline)
    if control is not None:
        only = "; of these it may hold tab, newline and carriage return" if multiline else ""
        raise FactRejected(
            Code.CONTROL_CHARACTER,
            f"field {named!r} holds {code_point(control)}, a control or bidirectional "
            f"formatting character{only}",
            named,
        )
    return value


def _time(
    obj: dict[str, Any], field: str, *, required: bool, path: str | None = None
) -> datetime | None:
    value = obj.get(field)
    named = path or field
    if value is None:
        if required:
            raise FactRejected(Code.MISSING_FIELD, f"field {named!r} is required", named)
        return None
    return parse_time(value, named)


def _bool(obj: dict[str, Any], field: str) -> bool:
    value = obj.get(field, False)
    if not isinstance(value, bool):
        raise FactRejected(Code.INVALID_FIELD, f"field {field!r} must be true or false", field)
    return value


def _names(
    obj: dict[str, Any],
    field: str,
    *,
    required: bool,
    star: bool = False,
    path: str | None = None,
) -> list[str]:
    value = obj.get(field)
    named = path or field
    if value is None:
        if required:
            raise FactRejected(Code.MISSING_FIELD, f"field {named!r} is required", named)
        return []
    if not isinstance(value, list) or not value or len(value) > 64:
        raise FactRejected(
            Code.INVALID_FIELD, f"field {named!r} must be a list of 1 to 64 names", named
        )
    seen: dict[str, None] = {}
    for item in value:
        if star and item == "*" and len(value) == 1:
            return ["*"]
        if not isinstance(item, str) or not _NAME.match(item):
            raise FactRejected(
                Code.INVALID_FIELD,
                f"field {named!r} must hold names of lower-case letters, digits and '_'",
                named,
            )
        seen.setdefault(item, None)
    return list(seen)


def _choice(
    obj: dict[str, Any],
    field: str,
    allowed: frozenset[str],
    *,
    required: bool,
    path: str | None = None,
) -> str:
    value = obj.get(field)
    named = path or field
    if value is None and not required:
        return ""
    if value is None:
        raise FactRejected(Code.MISSING_FIELD, f"field {named!r} is required", named)
    # Not a string first: an object or a list asked of a set raised TypeError (unhashable), a
    # 500 over HTTP and a `processing_failed` refusal in Kafka intake.
    if not isinstance(value, str) or value not in allowed:
        raise FactRejected(
            Code.INVALID_FIELD, f"{named} must be one of {', '.join(sorted(allowed))}", named
        )
    return str(value)


def _object(obj: dict[str, Any], field: str, *, required: bool) -> dict[str, Any] | None:
    value = obj.get(field)
    if value is None:
        if required:
            raise FactRejected(Code.MISSING_FIELD, f"field {field!r} is required", field)
        return None
    if not isinstance(value, dict):
        raise FactRejected(Code.INVALID_FIELD, f"field {field!r} must be an object", field)
    return value


def _personal_data(obj: dict[str, Any], *, required: bool) -> dict[str, str] | None:
    value = _object(obj, "personal_data", required=required)
    if value is None:
        return None
    if required and not value:
        raise FactRejected(
            Code.INVALID_FIELD,
            "field 'personal_data' must name at least one field",
            "personal_data",
        )
    for key, item in value.items():
        if key not in PERSONAL_DATA_FIELDS:
            raise FactRejected(
                Code.INVALID_FIELD,
                f"personal_data fields are {', '.join(sorted(PERSONAL_DATA_FIELDS))}",
                "personal_data",
            )
        if not isinstance(item, str) or len(item) > 1024:
            raise FactRejected(
                Code.INVALID_FIELD,
                f"personal_data.{key} must be a string of at most 1024 characters",
                f"personal_data.{key}",
            )
    return dict(value)


_TERMS_FIELDS = frozenset({"legal_basis", "categories", "retention_days"})
_PARTY_FIELDS = {
    "operator": frozenset({"name", "tin"}),
    "recipient": frozenset({"name", "country"}),
}


def _holds_only(obj: dict[str, Any], fields: frozenset[str], what: str, field: str) -> None:
    """A nested object of the envelope is refused for a member it does not define: dropped
    in silence, what its publisher sent would not be what the ledger recorded."""
    stray = sorted({_safe_key(key) for key in obj if key not in fields})
    if stray:
        # Named like a field, or not at all: a member's name is the publisher's to choose,
        # and one that held a phone number was echoed into the error (and so into the logs).
        raise FactRejected(
            Code.UNKNOWN_FIELD,
            f"{what} hold {', '.join(sorted(fields))}; {', '.join(stray)} is not one of them",
            field,
        )


def _policy_published(obj: dict[str, Any]) -> dict[str, Any]:
    operator = _object(obj, "operator", required=True)
    assert operator is not None
    _holds_only(operator, _PARTY_FIELDS["operator"], "operator's details", "operator")
    purposes = _object(obj, "purposes", required=True)
    assert purposes is not None
    if not purposes:
        raise FactRejected(
            Code.INVALID_FIELD, "a policy must define at least one purpose", "purposes"
        )
    terms: dict[str, Any] = {}
    for purpose, spec in purposes.items():
        if not _NAME.match(purpose) or not isinstance(spec, dict):
            raise FactRejected(
                Code.INVALID_FIELD, "purposes must map purpose names to their terms", "purposes"
            )
        # A misspelt "retention_day" was dropped, and the purpose's data kept forever.
        at = f"purposes.{purpose}"
        _holds_only(spec, _TERMS_FIELDS, "a purpose's terms", at)
        basis = _choice(spec, "legal_basis", LEGAL_BASES, required=True, path=f"{at}.legal_basis")
        categories = _names(spec, "categories", required=True, path=f"{at}.categories")
        given = spec.get("retention_days")
        retention = _whole(given)
        if given is not None and (retention is None or not 0 <= retention <= MAX_RETENTION_DAYS):
            raise FactRejected(
                Code.INVALID_FIELD,
                f"{at}.retention_days must be a whole number of days from 0 to "
                f"{MAX_RETENTION_DAYS} or null",
                f"{at}.retention_days",
            )
        terms[purpose] = {
            "legal_basis": basis,
            "categories": categories,
            "retention_days": retention,
        }
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise FactRejected(Code.INVALID_FIELD, "field 'text' must be a string", "text")
    if not text:
        raise FactRejected(
            Code.MISSING_FIELD, "field 'text' (the policy's full text) is required", "text"
        )
    body = {
        "policy_version": _text(obj, "policy_version", required=True, max_len=64),
        "effective_at": _time(obj, "effective_at", required=True),
        "language": _text(obj, "language", required=True, max_len=16),
        "text": text,
        "operator": {
            "name": _text(operator, "name", required=True, max_len=256, path="operator.name"),
            "tin": _text(operator, "tin", required=True, max_len=32, path="operator.tin"),
        },
        "purposes": terms,
    }
    # Only when stated: a fact without it keeps the canonical bytes (the idempotency digest)
    # it had before the field existed, so sending it again is still a retry.
    deadlines = _request_due_days(obj)
    if deadlines is not None:
        body["request_due_days"] = deadlines
    return body


def _request_due_days(obj: dict[str, Any]) -> dict[str, int] | None:
    """The days within which the policy promises to answer each kind of request."""
    days = _object(obj, "request_due_days", required=False)
    if days is None:
        return None
    whole: dict[str, int] = {}
    for kind, given in days.items():
        value = _whole(given)
        if kind not in REQUEST_KINDS or value is None:
            raise FactRejected(
                Code.INVALID_FIELD,
                "request_due_days maps kinds of request "
                f"({', '.join(sorted(REQUEST_KINDS))}) to whole numbers of days",
                "request_due_days",
            )
        if not 0 <= value <= MAX_REQUEST_DUE_DAYS:
            raise FactRejected(
                Code.INVALID_FIELD,
                f"request_due_days: from 0 to {MAX_REQUEST_DUE_DAYS} days",
                "request_due_days",
            )
        whole[kind] = value
    return {kind: whole[kind] for kind in sorted(whole)}


def _whole(value: Any) -> int | None:
    """A whole number as JSON gives it: `30` or `30.0`, which are one number to JSON Schema
    (the published schema takes both for an "integer"); None for anything else (`true`
    included). A `30.0` was refused as not a whole number, a fact the schema took."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _consent_granted(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "policy_version": _text(obj, "policy_version", required=True, max_len=64),
        "purposes": _names(obj, "purposes", required=True),
        "categories": _names(obj, "categories", required=False),
        "expires_at": _time(obj, "expires_at", required=False),
        "third_party_transfer": _bool(obj, "third_party_transfer"),
        "cross_border_transfer": _bool(obj, "cross_border_transfer"),
        "publication": _bool(obj, "publication"),
        "personal_data": _personal_data(obj, required=False),
    }


def _consent_withdrawn(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "purposes": _names(obj, "purposes", required=True, star=True),
        "reason": _text(obj, "reason", required=False, max_len=MAX_TEXT, multiline=True),
    }


_CHANGE_FIELDS = frozenset(
    {"occurred_at", "purposes", "categories", "expires_at", "policy_version"}
)


def _consent_corrected(obj: dict[str, Any]) -> dict[str, Any]:
    corrects = _text(obj, "corrects", required=True, max_len=128)
    reason = _text(obj, "reason", required=True, max_len=MAX_TEXT, multiline=True)
    void = obj.get("void", False)
    if not isinstance(void, bool):
        raise FactRejected(Code.INVALID_FIELD, "field 'void' must be true or false", "void")
    changes = _object(obj, "changes", required=False)
    if void == (changes is not None):
        raise FactRejected(
            Code.INVALID_FIELD,
            "a correction has either 'void': true or 'changes', not both",
            "changes",
        )
    normalised: dict[str, Any] = {}
    if changes is not None:
        if not changes:
            raise FactRejected(Code.INVALID_FIELD, "'changes' must change something", "changes")
        for key in changes:
            if key not in _CHANGE_FIELDS:
                raise FactRejected(
                    Code.UNKNOWN_FIELD,
                    f"'changes' may hold {', '.join(sorted(_CHANGE_FIELDS))}",
                    "changes",
                )
        if "occurred_at" in changes:
            normalised["occurred_at"] = _time(
                changes, "occurred_at", required=True, path="changes.occurred_at"
            )
        if "purposes" in changes:
            normalised["purposes"] = _names(
                changes, "purposes", required=True, path="changes.purposes"
            )
        if "categories" in changes:
            normalised["categories"] = _names(
                changes, "categories", required=True, path="changes.categories"
            )
        if "expires_at" in changes:
            normalised["expires_at"] = _time(
                changes, "expires_at", required=False, path="changes.expires_at"
            )
        if "policy_version" in changes:
            normalised["policy_version"] = _text(
                changes, "policy_version", required=True, max_len=64, path="changes.policy_version"
            )
    return {"corrects": corrects, "reason": reason, "void": void, "changes": normalised}


def _subject_rectified(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "personal_data": _personal_data(obj, required=True),
        "request_id": _text(obj, "request_id", required=False, max_len=128),
    }


def _subject_erased(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "ground": _choice(obj, "ground", ERASURE_GROUNDS, required=True),
        "request_id": _text(obj, "request_id", required=False, max_len=128),
    }


def _transfer_recorded(obj: dict[str, Any]) -> dict[str, Any]:
    recipient = _object(obj, "recipient", required=True)
    assert recipient is not None
    _holds_only(recipient, _PARTY_FIELDS["recipient"], "recipient's details", "recipient")
    return {
        "recipient": {
            "name": _text(recipient, "name", required=True, max_len=256, path="recipient.name"),
            "country": _text(
                recipient, "country", required=True, max_len=64, path="recipient.country"
            ),
        },
        "categories": _names(obj, "categories", required=True),
        "ground": _choice(obj, "ground", TRANSFER_GROUNDS, required=True),
        "cross_border": _bool(obj, "cross_border"),
    }


def _request_received(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": _text(obj, "request_id", required=True, max_len=128),
        "kind": _choice(obj, "kind", REQUEST_KINDS, required=True),
        "due_at": _time(obj, "due_at", required=False),
    }


def _request_closed(obj: dict[str, Any]) -> dict[str, Any]:
    outcome = _choice(obj, "outcome", REQUEST_OUTCOMES, required=True)
    return {
        "request_id": _text(obj, "request_id", required=True, max_len=128),
        "outcome": outcome,
        "reason": _text(
            obj, "reason", required=outcome == "refused", max_len=MAX_TEXT, multiline=True
        ),
    }


def _complaint_lodged(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "authority": _text(obj, "authority", required=True, max_len=256),
        "reference": _text(obj, "reference", required=True, max_len=128),
        "request_id": _text(obj, "request_id", required=False, max_len=128),
    }


_BODY_PARSERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "policy.published": _policy_published,
    "consent.granted": _consent_granted,
    "consent.withdrawn": _consent_withdrawn,
    "consent.corrected": _consent_corrected,
    "subject.rectified": _subject_rectified,
    "subject.erased": _subject_erased,
    "transfer.recorded": _transfer_recorded,
    "request.received": _request_received,
    "request.closed": _request_closed,
    "complaint.lodged": _complaint_lodged,
}

_BODY_FIELDS: dict[str, frozenset[str]] = {
    "policy.published": frozenset(
        {
            "policy_version",
            "effective_at",
            "language",
            "text",
            "operator",
            "purposes",
            "request_due_days",
        }
    ),
    "consent.granted": frozenset(
        {
            "policy_version",
            "purposes",
            "categories",
            "expires_at",
            "third_party_transfer",
            "cross_border_transfer",
            "publication",
            "personal_data",
        }
    ),
    "consent.withdrawn": frozenset({"purposes", "reason"}),
    "consent.corrected": frozenset({"corrects", "reason", "void", "changes"}),
    "subject.rectified": frozenset({"personal_data", "request_id"}),
    "subject.erased": frozenset({"ground", "request_id"}),
    "transfer.recorded": frozenset({"recipient", "categories", "ground", "cross_border"}),
    "request.received": frozenset({"request_id", "kind", "due_at"}),
    "request.closed": frozenset({"request_id", "outcome", "reason"}),
    "complaint.lodged": frozenset({"authority", "reference", "request_id"}),
}
# Each type's fields with the common ones, made once rather than per fact.
_ALLOWED_FIELDS = {name: COMMON_FIELDS | fields for name, fields in _BODY_FIELDS.items()}
