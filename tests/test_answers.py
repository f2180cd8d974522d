"""Every route's real answers hold to the JSON Schema its OpenAPI document gives them
(`api.answers`), allowing no field the schema does not name, over a ledger with every kind
of fact: the demo stream (corrections, a transfer, requests, an erasure), a complaint, and
a second policy version that changes a purpose's terms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator, ValidationError

from api.answers import SCHEMAS
from api.app import create_app, keys_path
from api.keys import ApiKeys
from ledger.demo import contact
from ledger.settings import Settings
from tests.answers_support import FORMATS, V2, conforms, rich_ledger, strict
from tests.facts import grant


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("answers") / "data")
    rich_ledger(settings)
    keys = ApiKeys(keys_path(settings))
    key = keys.create("demo", {"publisher", "compliance", "admin"})[1]
    keys.close()
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


ANSWERED: set[tuple[str, str]] = set()  # (method, path template) of the answers checked


def holds(
    client: TestClient, method: str, template: str, path: str, status: int = 200, **kw: Any
) -> Any:
    response = client.request(method, path, **kw)
    assert response.status_code == status, response.text
    assert conforms(client, response) == template
    ANSWERED.add((method, template))
    return response.json()


def test_every_route_answers_as_its_document_says(client: TestClient) -> None:
    c = client
    ANSWERED.clear()
    sids = {
        i: holds(
            c, "POST", "/v1/subjects:resolve", "/v1/subjects:resolve", json={"subject": contact(i)}
        )["sid"]
        for i in (3, 4, 7)
    }
    new = {k: v for k, v in grant("answers-1", event_id="answers-1").items() if k != "tenant"}
    holds(c, "POST", "/v1/facts", "/v1/facts", 201, json=new)
    holds(c, "POST", "/v1/facts", "/v1/facts", 200, json=new)
    batch = holds(
        c,
        "POST",
        "/v1/facts:batch",
        "/v1/facts:batch",
        json={"facts": [new, {**new, "purposes": ["lottery"], "event_id": "answers-2"}, 7]},
    )
    assert [r["status"] for r in batch["results"]] == [200, 422, 422]
    looked_up = holds(
        c, "POST", "/v1/facts:lookup", "/v1/facts:lookup", json={"event_ids": ["answers-1", "x"]}
    )
    assert [r["recorded"] for r in looked_up["results"]] == [True, False]
    for sid in sids.values():
        for route in ("consents", "trail", "report", "evidence", "accesses"):
            holds(c, "GET", f"/v1/subjects/{{sid}}/{route}", f"/v1/subjects/{sid}/{route}")
    holds(
        c,
        "GET",
        "/v1/subjects/{sid}/consents",
        f"/v1/subjects/{sids[3]}/consents?as_of=2025-01-20T00:00:00Z&known_at=2025-12-01T00:00:00Z",
    )
    checked = holds(
        c,
        "POST",
        "/v1/consents:check",
        "/v1/consents:check",
        json={
            "purpose": "marketing",
            "at": "2025-03-01T00:00:00Z",
            "subjects": [contact(i) for i in range(12)] + ["nobody"],
        },
    )
    assert {r["reason"] for r in checked["without_consent"]} >= {"unknown_subject", "erased"}
    page = holds(
        c,
        "GET",
        "/v1/purposes/{purpose}/subjects",
        "/v1/purposes/marketing/subjects?as_of=2025-03-01T00:00:00Z&limit=2",
    )
    assert page["next"] is not None
    holds(
        c,
        "GET",
        "/v1/purposes/{purpose}/summary",
        "/v1/purposes/marketing/summary?as_of=2025-03-01T00:00:00Z",
    )
    holds(c, "GET", "/v1/policies", "/v1/policies")
    for version in ("crmpro-1.0", V2):
        holds(c, "GET", "/v1/policies/{version}", f"/v1/policies/{version}")
        holds(c, "GET", "/v1/policies/{version}/text", f"/v1/policies/{version}/text")
        changes = holds(
            c, "GET", "/v1/policies/{version}/changes", f"/v1/policies/{version}/changes"
        )
    assert changes["purposes_changed"] and changes["purposes_removed"]
    due = holds(c, "GET", "/v1/due", "/v1/due?within_days=3650")
    assert due["requests"] and due["past_retention"] and due["erasable"]
    due_page = holds(c, "GET", "/v1/due", "/v1/due?within_days=3650&limit=1")
    assert due_page["next"] is not None
    holds(c, "GET", "/v1/due", f"/v1/due?within_days=3650&limit=1&cursor={due_page['next']}")
    register = holds(c, "GET", "/v1/requests", "/v1/requests?limit=1")
    assert register["next"] is not None
    holds(c, "GET", "/v1/verify", "/v1/verify")
    first = holds(c, "GET", "/v1/checkpoint", "/v1/checkpoint")
    sizes = ",".join(str(t["size"]) for t in first["tree_head"]["trees"])
    assert "consistency" in holds(c, "GET", "/v1/checkpoint", f"/v1/checkpoint?since_sizes={sizes}")
    holds(
        c,
        "GET",
        "/v1/subjects/{sid}/evidence",
        f"/v1/subjects/{sids[3]}/evidence?since_sizes={sizes}",
    )
    erasure = {"ground": "subject_request", "event_id": "answers-erasure"}
    holds(
        c,
        "POST",
        "/v1/subjects/{sid}/erasure",
        f"/v1/subjects/{sids[4]}/erasure",
        201,
        json=erasure,
    )
    holds(
        c,
        "POST",
        "/v1/subjects/{sid}/erasure",
        f"/v1/subjects/{sids[4]}/erasure",
        200,
        json=erasure,
    )
    holds(c, "GET", "/healthz", "/healthz")
    holds(c, "GET", "/readyz", "/readyz")
    # A route added with a plain dict answer ("an object"), or one left unchecked above,
    # fails here.
    assert json_answers(c.app.openapi()) == ANSWERED  # type: ignore[attr-defined]


def json_answers(document: dict[str, Any]) -> set[tuple[str, str]]:
    """The routes whose document gives a JSON answer to a success, each named in SCHEMAS."""
    found = set()
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                body = response.get("content", {}).get("application/json")
                if status.startswith("2") and body is not None:
                    assert body["schema"]["$ref"].rsplit("/", 1)[1] in SCHEMAS, (template, status)
                    found.add((method.upper(), template))
    return found


def test_an_answer_with_a_field_the_schema_does_not_name_is_caught() -> None:
    schema = strict(SCHEMAS["Resolved"], SCHEMAS)
    Draft202012Validator(schema).validate({"sid": "0" * 32})
    with pytest.raises(ValidationError):
        Draft202012Validator(schema).validate({"sid": "0" * 32, "subject": "someone"})


def test_an_instant_without_its_offset_is_caught() -> None:
    instant = Draft202012Validator(
        SCHEMAS["Receipt"]["properties"]["recorded_at"], format_checker=FORMATS
    )
    instant.validate("2025-03-01T10:00:00.123456+05:00")
    with pytest.raises(ValidationError):
        instant.validate("2025-03-01T10:00:00")


def test_the_schemas_are_valid_json_schema() -> None:
    for schema in SCHEMAS.values():
        Draft202012Validator.check_schema(strict(schema, SCHEMAS))
