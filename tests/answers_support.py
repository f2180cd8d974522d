"""Checking an HTTP answer against the JSON Schema the OpenAPI document gives it, strictly
(`tests/test_answers.py`, and the role matrix of `tests/test_api.py` on both backends)."""

from __future__ import annotations

import copy
import re
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from jsonschema import Draft202012Validator, FormatChecker

from ledger.application import ConsentLedger
from ledger.demo import contact, demo_stream
from ledger.envelope import parse_fact
from ledger.policy import seed_policy_fact
from ledger.settings import Settings
from tests.facts import fact, grant, policy, request, withdraw

V2 = "crmpro-2.0"


def rich_ledger(settings: Settings) -> None:
    """A ledger with every kind of fact, so that every field of every answer shows: the demo
    stream (corrections, a transfer, requests, an erasure), a complaint, a second policy
    version that changes a purpose's terms, consent kept past that purpose's retention, and
    an open request."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    purposes = copy.deepcopy(seed_policy_fact("seed")["purposes"])
    purposes["marketing"]["retention_days"] = 30
    purposes["marketing"]["categories"].append("cookies")
    del purposes["service_improvement"]
    facts = [
        *demo_stream(40),
        policy(V2, "2025-02-01T00:00:00+05:00", purposes),
        # Consent under the second version, withdrawn: kept past its 30 days' retention.
        grant("kept-too-long", policy_version=V2, occurred_at="2025-02-10T10:00:00+05:00"),
        withdraw("kept-too-long", occurred_at="2025-02-15T10:00:00+05:00"),
        request(contact(5), "answers-open", "information", "2025-03-02T10:00:00+05:00"),
        fact(
            "complaint.lodged",
            contact(3),
            occurred_at="2025-03-01T10:00:00+05:00",
            authority="Personal data inspection",
            reference="PDI-2025-17",
        ),
    ]
    for outcome in ledger.record([parse_fact(f) for f in facts]):
        assert not isinstance(outcome, Exception), outcome
    ledger.close()


def strict(schema: Any, components: dict[str, Any]) -> Any:
    """The schema with its references resolved and every object that names its properties
    closed to others: the document leaves them open for later versions, a test of this
    version allows nothing it does not name."""
    if isinstance(schema, list):
        return [strict(s, components) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return strict(components[schema["$ref"].rsplit("/", 1)[1]], components)
    out = {k: strict(v, components) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _rfc3339(value: object) -> bool:
    """RFC 3339 wants an offset, which `datetime.fromisoformat` alone does not."""
    return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


FORMATS = FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(_rfc3339)


def template_of(document: dict[str, Any], path: str) -> str:
    """The document's path template that `path` is an instance of."""
    template: str
    for template in document["paths"]:
        if re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)), path):
            return template
    raise AssertionError(f"no path of the document matches {path}")


def conforms(client: TestClient, response: Response) -> str:
    """Validate a JSON answer against its document, allowing no field it does not name;
    returns the path template."""
    document = client.app.openapi()  # type: ignore[attr-defined]
    template = template_of(document, response.request.url.path)
    assert response.headers["content-type"].startswith("application/json")
    operation = document["paths"][template][response.request.method.lower()]
    declared = operation["responses"][str(response.status_code)]
    schema = strict(
        declared["content"]["application/json"]["schema"], document["components"]["schemas"]
    )
    Draft202012Validator(schema, format_checker=FORMATS).validate(response.json())
    return template
