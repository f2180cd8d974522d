"""The JSON bodies the routes answer with, as JSON Schema in the OpenAPI document.

A route that returns a plain dict was documented as "an object", so a client generated from
the document knew nothing of a receipt or a consent answer, and schemathesis's check that
responses conform to the document could not fail. The schemas here are documentation only:
the routes write their bodies with orjson as before, unvalidated (a publish pays nothing),
and `tests/test_answers.py` holds every route's real answers to them, allowing no field
they do not name.

Objects stay open in the document (a later version may add fields, as the contract allows:
clients ignore what they do not know); an object given without `properties` is one whose
keys are data (a purpose's name, a policy version) or a signed document of its own format
(`consent-ledger verify --evidence` checks those).
"""

from __future__ import annotations

from typing import Any

from api.problems import PROBLEM_SCHEMA

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INSTANT: Schema = {"type": "string", "format": "date-time"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
SID: Schema = {
    "type": "string",
    "pattern": "^[0-9a-f]{32}$",
    "description": "the subject's pseudonym",
}
OPEN: Schema = {"type": "object"}


def nullable(schema: Schema) -> Schema:
    if isinstance(schema.get("type"), str) and "$ref" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def strings() -> Schema:
    return {"type": "array", "items": STRING}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(properties: dict[str, Schema], *optional: str, description: str | None = None) -> Schema:
    """An object whose every property is present, but the `optional` ones."""
    out: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }
    if description:
        out["description"] = description
    return out


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def map_of(values: Schema) -> Schema:
    return {"type": "object", "additionalProperties": values}


OPERATOR = obj({"name": STRING, "tin": STRING})
PURPOSE_TERMS = obj(
    {"legal_basis": STRING, "categories": strings(), "retention_days": nullable(INTEGER)}
)

CONSENT_STATE: dict[str, Schema] = {
    "purpose": STRING,
    "state": {"type": "string", "enum": ["granted", "withdrawn", "expired", "none"]},
    "since": nullable(INSTANT),
    "policy_version": nullable(STRING),
    "event_id": nullable({**STRING, "description": "the fact behind the state"}),
    "expires_at": nullable(INSTANT),
}

# A subject request with its deadline and where the deadline came from (`due_from`: the
# request's own, the policy version in force at its receipt, or the settings).
REQUEST_DEADLINE: dict[str, Schema] = {
    "sid": SID,
    "request_id": STRING,
    "kind": STRING,
    "received_at": INSTANT,
    "due_at": INSTANT,
    "due_from": STRING,
    "policy_version": nullable(STRING),
}

SCHEMAS: dict[str, Schema] = {
    "Receipt": obj(
        {
            "event_id": STRING,
            "sid": nullable(SID),
            "position": INTEGER,
            "partition": INTEGER,
            "recorded_at": INSTANT,
            "hash": STRING,
            "duplicate": BOOLEAN,
        },
        "partition",
        description="A fact recorded (duplicate: false) or the first receipt of the same "
        "fact sent again (true). Kafka mode: `position` is the offset in `partition`.",
    ),
    "BatchResults": obj(
        {
            "results": array(
                obj(
                    {
                        "index": INTEGER,
                        "status": INTEGER,
                        "receipt": ref("Receipt"),
                        "problem": PROBLEM_SCHEMA,
                    },
                    "receipt",
                    "problem",
                    description="One per fact, in order: a receipt (201, 200 for a "
                    "duplicate) or the problem that refused it (its status and code).",
                )
            )
        }
    ),
    "Receipts": obj(
        {
            "results": array(
                obj(
                    {
                        "index": INTEGER,
                        "event_id": STRING,
                        "recorded": BOOLEAN,
                        "receipt": ref("Receipt"),
                        "refused": obj(
                            {
                                "code": STRING,
                                "message": STRING,
                                "field": STRING,
                                "source": obj({"partition": INTEGER, "offset": INTEGER}),
                                "rejected_at": INSTANT,
                            },
                            "field",
                            description="Kafka mode: the intake writer's latest refusal of "
                            "a fact of this event_id published to the intake topic, while the "
                            "rejected topic keeps it (LEDGER_REJECTED_RETENTION_MS): its code "
                            "and message as a refusal over HTTP gives them, the intake "
                            "partition and offset it was read from, when it was refused.",
                        ),
                    },
                    "receipt",
                    "refused",
                    description="One per event_id asked, in order: the fact's receipt as "
                    "first given (duplicate: false) when it is recorded; else, in Kafka "
                    "mode, the intake writer's refusal of it, if any.",
                )
            ),
            "recorded": INTEGER,
            "not_recorded": INTEGER,
        }
    ),
    "Resolved": obj({"sid": SID}),
    "ConsentState": obj(CONSENT_STATE),
    "Consents": obj(
        {
            "sid": SID,
            "as_of": INSTANT,
            "known_at": INSTANT,
            "erased": BOOLEAN,
            "purposes": array(ref("ConsentState")),
        }
    ),
    "TrailFact": obj(
        {
            "position": nullable(INTEGER),
            "partition": INTEGER,
            "version": INTEGER,
            "type": STRING,
            "event_id": nullable(STRING),
            "occurred_at": INSTANT,
            "recorded_at": INSTANT,
            "source": nullable(STRING),
            "channel": nullable(STRING),
            "details": {**OPEN, "description": "the fact's own fields, by its type"},
            "personal_data": nullable(
                {
                    **OPEN,
                    "description": "decrypted; {erased: true} once erased; {key_erased: "
                    "true} if the key store erased its key in an erasure the log does not "
                    "hold; {key_missing: true} if the key store lacks its key",
                }
            ),
            "prev_hash": STRING,
            "hash": nullable(STRING),
            "policy": obj({"version": STRING, "text_sha256": nullable(STRING)}),
            "corrected_by": strings(),
            "corrects": STRING,
        },
        "partition",
        "policy",
        "corrected_by",
        "corrects",
    ),
    "Trail": obj(
        {
            "tenant": STRING,
            "sid": SID,
            "subject": nullable(STRING),
            "erased": BOOLEAN,
            "erased_at": nullable(INSTANT),
            "facts": array(ref("TrailFact")),
        }
    ),
    "CheckResult": obj(
        {
            "purpose": STRING,
            "at": INSTANT,
            "known_at": nullable(INSTANT),
            "checked": INTEGER,
            "with_consent": INTEGER,
            "without_consent": array(
                obj(
                    {
                        "sid": SID,
                        "consent": BOOLEAN,
                        "reason": {
                            "type": "string",
                            "enum": [
                                "never_granted",
                                "withdrawn",
                                "expired",
                                "erased",
                                "unknown_subject",
                            ],
                        },
                        "since": nullable(INSTANT),
                        "event_id": nullable(
                            {**STRING, "description": "the grant withdrawn or expired"}
                        ),
                        "index": {**INTEGER, "description": "its place in the list asked"},
                    }
                )
            ),
        }
    ),
    "SubjectsWithConsent": obj(
        {
            "purpose": STRING,
            "as_of": INSTANT,
            "known_at": nullable(INSTANT),
            "policy_version": nullable(STRING),
            "sids": array(SID),
            "next": nullable({**STRING, "description": "the cursor of the next page"}),
        }
    ),
    "ConsentSummary": obj(
        {
            "purpose": STRING,
            "as_of": INSTANT,
            "known_at": nullable(INSTANT),
            "with_consent": INTEGER,
            "by_policy_version": map_of(INTEGER),
        }
    ),
    "Policy": obj(
        {
            "policy_version": STRING,
            "effective_at": INSTANT,
            "language": STRING,
            "text_sha256": STRING,
            "operator": OPERATOR,
            "purposes": map_of(PURPOSE_TERMS),
            "request_due_days": map_of(INTEGER),
        }
    ),
    "Policies": obj({"policies": array(ref("Policy"))}),
    "PolicyText": obj(
        {
            "policy_version": STRING,
            "effective_at": INSTANT,
            "language": STRING,
            "text_sha256": STRING,
            "text": STRING,
        }
    ),
    "PolicyChanges": obj(
        {
            "policy_version": STRING,
            "effective_at": INSTANT,
            "from": nullable(STRING),
            "from_effective_at": nullable(INSTANT),
            "text_changed": BOOLEAN,
            "operator_changed": BOOLEAN,
            "language_changed": BOOLEAN,
            "request_due_days": nullable(obj({"from": map_of(INTEGER), "to": map_of(INTEGER)})),
            "purposes_added": strings(),
            "purposes_removed": strings(),
            "purposes_changed": array(
                obj(
                    {
                        "purpose": STRING,
                        "legal_basis": obj({"from": STRING, "to": STRING}),
                        "categories_added": strings(),
                        "categories_removed": strings(),
                        "retention_days": obj({"from": nullable(INTEGER), "to": nullable(INTEGER)}),
                    },
                    "legal_basis",
                    "categories_added",
                    "categories_removed",
                    "retention_days",
                )
            ),
            "consent_needed": array(obj({"purpose": STRING, "reasons": strings()})),
        }
    ),
    "Due": obj(
        {
            "tenant": STRING,
            "as_of": INSTANT,
            "within_days": INTEGER,
            "requests": array(
                obj(
                    {
                        **REQUEST_DEADLINE,
                        "overdue": BOOLEAN,
                    }
                )
            ),
            "expiring_consents": array(
                obj({"sid": SID, "purpose": STRING, "expires_at": INSTANT, "event_id": STRING})
            ),
            "past_retention": array(
                obj(
                    {
                        "sid": SID,
                        "purpose": STRING,
                        "consent_ended_at": INSTANT,
                        "retention_days": INTEGER,
                        "due_since": INSTANT,
                    }
                )
            ),
            "erasable": array(obj({"sid": SID, "purposes": strings(), "due_since": INSTANT})),
            "next": nullable({**STRING, "description": "the cursor of the next page"}),
        }
    ),
    "RequestRegister": obj(
        {
            "tenant": STRING,
            "as_of": INSTANT,
            "state": nullable(STRING),
            "kind": nullable(STRING),
            "received_from": nullable(INSTANT),
            "received_to": nullable(INSTANT),
            "counts": obj(
                {"open": INTEGER, "overdue": INTEGER, "closed": INTEGER, "closed_late": INTEGER}
            ),
            "requests": array(
                obj(
                    {
                        **REQUEST_DEADLINE,
                        "closed_at": nullable(INSTANT),
                        "outcome": nullable(STRING),
                        "state": {
                            "type": "string",
                            "enum": ["open", "overdue", "closed", "closed_late"],
                        },
                    }
                )
            ),
            "next": nullable({**STRING, "description": "the cursor of the next page"}),
        }
    ),
    "Verified": obj(
        {
            "ok": BOOLEAN,
            "facts_checked": INTEGER,
            "merkle_root": STRING,
            "first_broken": nullable(
                obj(
                    {
                        "position": {
                            **INTEGER,
                            "description": "where the log is broken: the embedded log's "
                            "position, or in Kafka mode the record's offset in `partition`",
                        },
                        "partition": {
                            **nullable(INTEGER),
                            "description": "Kafka mode: the ledger topic's partition of the "
                            "broken record; null in embedded mode",
                        },
                        "kind": STRING,
                        "sid": STRING,
                        "version": INTEGER,
                        "event_id": nullable(STRING),
                        "message": STRING,
                    }
                )
            ),
            "problems": INTEGER,
            "subjects_without_key": {
                **INTEGER,
                "description": "the caller's tenant's subjects whose key the key store holds "
                "neither of nor an erasure (keys.db older than the log): their personal data "
                "unreadable",
            },
            "erasures_not_in_log": {
                **array(obj({"tenant": STRING, "sid": SID, "key_erased_at": INSTANT})),
                "description": "the caller's tenant's subjects whose key the key store "
                "destroyed in an erasure the log does not hold (a ledger.db restored from "
                "before the erasure): record each again (POST /v1/subjects/{sid}/erasure)",
            },
        }
    ),
    "SignedTreeHead": obj(
        {
            "trees": array(obj({"partition": INTEGER, "size": INTEGER, "root": STRING})),
            "signed_at": INSTANT,
            "algorithm": STRING,
            "public_key": STRING,
            "signature": STRING,
        }
    ),
    "Checkpoint": obj(
        {
            "format": STRING,
            "tree_head": ref("SignedTreeHead"),
            "consistency": array(OPEN),
            "key_transitions": array(OPEN),
        },
        "consistency",
        "key_transitions",
        description="`consistency`: with since_sizes, the proofs that the log only grew; "
        "`key_transitions`: the signing key's hand-overs, once it was replaced.",
    ),
    "EvidencePackage": obj(
        {
            "format": STRING,
            "tenant": STRING,
            "sid": SID,
            "tree_head": ref("SignedTreeHead"),
            "subject_head": OPEN,
            "chains": OPEN,
            "trail": ref("Trail"),
            "consistency": array(OPEN),
            "key_transitions": array(OPEN),
        },
        "consistency",
        "key_transitions",
        description="Checked without the ledger by `consent-ledger verify --evidence FILE`.",
    ),
    "Report": obj(
        {
            "tenant": STRING,
            "sid": SID,
            "as_of": INSTANT,
            "subject": nullable(STRING),
            "erased": BOOLEAN,
            "erased_at": nullable(INSTANT),
            "operators": array(OPERATOR),
            "personal_data": nullable(OPEN),
            "personal_data_unreadable": BOOLEAN,
            "personal_data_key_erased": BOOLEAN,
            "collected_with": array(
                obj(
                    {
                        "occurred_at": INSTANT,
                        "source": nullable(STRING),
                        "channel": nullable(STRING),
                        "evidence": nullable(OPEN),
                    }
                )
            ),
            "consents": array(
                obj(
                    {
                        **CONSENT_STATE,
                        "granted_under": nullable(STRING),
                        "legal_basis": nullable(STRING),
                        "categories": strings(),
                        "retention_days": nullable(INTEGER),
                    },
                    description="each purpose consented to, with what the policy version it "
                    "was granted under says of it",
                )
            ),
            "policy_in_force": nullable(ref("Policy")),
            "transfers": array(
                obj(
                    {
                        "occurred_at": INSTANT,
                        "recipient": obj({"name": STRING, "country": STRING}),
                        "categories": strings(),
                        "ground": STRING,
                        "cross_border": BOOLEAN,
                    }
                )
            ),
            "requests": array(
                obj(
                    {
                        "request_id": STRING,
                        "kind": STRING,
                        "received_at": INSTANT,
                        "due_at": INSTANT,
                        "closed_at": nullable(INSTANT),
                        "outcome": nullable(STRING),
                    }
                )
            ),
            "complaints": array(
                obj({"occurred_at": INSTANT, "authority": STRING, "reference": STRING})
            ),
            "sources": array(obj({"source": STRING, "channel": STRING})),
        }
    ),
    "Accesses": obj(
        {
            "tenant": STRING,
            "sid": SID,
            "accesses": array(
                obj(
                    {
                        "at": INSTANT,
                        "key_id": STRING,
                        "method": STRING,
                        "route": STRING,
                        "status": INTEGER,
                    }
                )
            ),
            "kept_days": nullable({**INTEGER, "description": "days of accesses kept (null: all)"}),
        }
    ),
    "Health": obj({"status": {"type": "string", "const": "ok"}}),
    "Ready": obj({"status": {"type": "string", "const": "ready"}, "backend": STRING}),
}


def answer(name: str, description: str = "Successful Response") -> dict[str, Any]:
    """A `responses` entry: the JSON body named `name` in SCHEMAS."""
    assert name in SCHEMAS, name
    return {"description": description, "content": {"application/json": {"schema": ref(name)}}}


def answer_or_csv(name: str) -> dict[str, Any]:
    """The 200 of a route that answers JSON, or CSV with `format=csv`: both in its document,
    so that a client (and schemathesis) knows the CSV answer is one."""
    entry = answer(name)
    entry["content"]["text/csv"] = {"schema": {"type": "string"}}
    return entry


def with_answers(document: dict[str, Any], bodies: dict[str, Schema]) -> dict[str, Any]:
    """The OpenAPI document with SCHEMAS (the `answer` entries refer to them) and the request
    `bodies` the routes refer to among its components."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    added = {**SCHEMAS, **bodies}
    clash = set(components) & set(added) | set(SCHEMAS) & set(bodies)
    assert not clash, clash
    components.update(added)
    return document
