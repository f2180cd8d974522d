"""Schemathesis against the served OpenAPI document: no 5xx, no response that breaks the
schema. Bounded in examples per operation so `make test` stays quick."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from api.app import build_service, create_app
from api.routes.facts import FACT_SCHEMA, MAX_BATCH
from ledger.demo import contact, demo_stream
from ledger.errors import Code
from ledger.policy import seed_policy_fact
from ledger.settings import Settings
from tests.examples import examples

_data = Path(tempfile.mkdtemp(prefix="schemathesis-"))
# Made at import (the schema needs the app), so no fixture removes it; under `make test` it is
# in memory (/dev/shm), where each run's data directory stayed until the machine restarted.
atexit.register(shutil.rmtree, _data, True)
_settings = Settings(data_dir=_data)
app = create_app(_settings)
app.state.service = build_service(_settings)
app.state.service.ledger.init_demo()
KEY = app.state.service.keys.create("demo", {"publisher", "compliance", "admin"})[1]


def _recorded_demo() -> dict[str, list[str]]:
    """The demo's story for a dozen subjects (grants, withdrawals, corrections, a transfer,
    requests, an erasure), recorded through the API, and the values of it a path or a body
    names: its sids, policy versions, purposes and subject references."""
    client = TestClient(app, headers={"Authorization": f"Bearer {KEY}"})
    sent = client.post("/v1/facts:batch", json={"facts": demo_stream(12)})
    results = sent.json()["results"]
    assert sent.status_code == 200 and all(r["status"] == 201 for r in results), sent.text
    versions = [p["policy_version"] for p in client.get("/v1/policies").json()["policies"]]
    return {
        "sid": sorted({r["receipt"]["sid"] for r in results if r["receipt"]["sid"]}),
        "version": versions,
        "purpose": sorted(seed_policy_fact()["purposes"]),
        "subject": [contact(i) for i in range(12)],
    }


# Random sids, versions and purposes name nothing the ledger holds: every route under
# /v1/subjects/{sid} and /v1/policies/{version} answered 404 to all of them, and the
# campaign check 422 (an unknown purpose), so schemathesis never held an answer about a real
# subject, policy or campaign to the document. Half the cases it generates name real ones.
RECORDED = _recorded_demo()

schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.hook
def flatmap_path_parameters(ctx: Any, parameters: dict[str, Any] | None) -> Any:
    """A sid, policy version or purpose the ledger holds, in half the cases; in a negative
    case too, as schemathesis checks a path's values again before it owes a refusal, and a
    broken query about a real subject is worth asking."""
    real = {k: st.sampled_from(RECORDED[k]) for k in parameters or {} if k in RECORDED}
    if not real:
        return st.just(parameters)
    given = {k: st.just(v) for k, v in (parameters or {}).items()}
    return st.just(parameters) | st.fixed_dictionaries({**given, **real})


@schema.hook
def flatmap_case(ctx: Any, case: Any) -> Any:
    """A campaign check of a purpose and subjects the ledger holds, as half the positive
    cases; a negative case is left as generated, or its refusal would not be owed."""
    body = case.body
    if (
        case.operation.path != "/v1/consents:check"
        or case.meta is None
        or case.meta.generation.mode.is_negative
        or not isinstance(body, dict)
    ):
        return st.just(case)
    named: dict[str, st.SearchStrategy[Any]] = {"purpose": st.sampled_from(RECORDED["purpose"])}
    if isinstance(body.get("subjects"), list):
        named["subjects"] = st.lists(st.sampled_from(RECORDED["subject"]), max_size=12)
    elif isinstance(body.get("sids"), list):
        named["sids"] = st.lists(st.sampled_from(RECORDED["sid"]), max_size=12)
    given = {k: st.just(v) for k, v in body.items()}

    def checking(new: dict[str, Any]) -> Any:
        case.body = new
        return case

    return st.just(case) | st.fixed_dictionaries({**given, **named}).map(checking)


@schema.auth()
class ApiKeyAuth:
    """The document declares the bearer key every /v1 route needs; given through
    schemathesis's auth, so that a case it generates without the key (expecting a 401) is
    sent without it."""

    def get(self, case: Any, ctx: Any) -> str:
        return str(KEY)

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# The problem codes the /v1 cases got with a wrong key, all routes' together: the refusal
# itself, and what the request guard and the parsing of a query or body answer before the key
# is looked at (`invalid_field` from a query's parsing; a body's comes after the key). Any
# other answer came from behind the key.
BEFORE_THE_KEY = {
    "unauthorized",
    "unsupported_media_type",
    "invalid_json",
    "unknown_field",
    "invalid_field",
}


@pytest.fixture
def answers(request: pytest.FixtureRequest) -> Iterator[set[tuple[int, str]]]:
    """The statuses and problem codes an operation's cases got, all its examples together.
    Without the key every /v1 case would be a 401 (or a refusal made before the key is looked
    at), which the document allows: the checks would pass without testing anything behind
    the key. Checked per operation, in the process that ran it (the tests run on several)."""
    got: set[tuple[int, str]] = set()
    yield got
    label = request.node.operation_label
    assert got, f"{label}: no case was sent to the route"
    if " /v1/" in label:
        behind = {a for a in got if a[1] not in BEFORE_THE_KEY}
        assert behind, f"{label}: no case got past the key: {sorted(got)}"


# A batch is answered item by item (below), not as a whole; every other operation here.
BATCH_PATH, BATCH_METHOD = "/v1/facts:batch", "POST"


@schema.exclude(path=BATCH_PATH, method=BATCH_METHOD).parametrize()
@settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: Any, answers: set[tuple[int, str]]) -> None:
    # Schema-valid is not rule-valid: a well-formed grant for an unknown purpose is refused
    # with 422 by design, so "schema-valid data must be accepted" does not apply here.
    checked(case, answers, schemathesis.checks.positive_data_acceptance)


def checked(case: Any, answers: set[tuple[int, str]], *excluded: Any) -> Any:
    """The answer to `case`, held to the document by schemathesis's checks but `excluded`,
    and counted in `answers`."""
    response = case.call_and_validate(excluded_checks=list(excluded))
    if case.method.upper() == case.operation.method.upper():  # not a method it lacks
        problem = response.headers.get("content-type", [""])[0] == "application/problem+json"
        answers.add((response.status_code, response.json()["code"] if problem else ""))
    return response


# POST /v1/facts takes ten types of fact, each with members of its own (the envelope's
# published schema): six times the examples of the other operations, so that each type is
# sent, and broken, more than a few times a run.
FACTS = schema.include(path="/v1/facts", method="POST")


@FACTS.parametrize()
@settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
def test_every_type_of_fact_is_answered_as_the_document_says(
    case: Any, answers: set[tuple[int, str]]
) -> None:
    """And a fact the document's schema takes is never refused as malformed: only by the
    ledger's rules (a purpose the tenant's policy lacks, say), or for a size the schema
    cannot state."""
    response = checked(case, answers, schemathesis.checks.positive_data_acceptance)
    if response.status_code == 422 and FACT.is_valid(case.body):
        assert response.json()["code"] not in MALFORMED, (case.body, response.json())


FACT = Draft202012Validator(FACT_SCHEMA)
# The refusals of a fact's form, which the published schema states: all but `oversize`,
# and `invalid_timestamp`, whose form the schema states by the parser's own pattern
# (`tests/test_envelope.py` holds the two equal) but not the calendar (12:99) or the years
# the ledger takes (1 to 9989).
MALFORMED = {
    Code.INVALID_JSON,
    Code.NOT_AN_OBJECT,
    Code.MISSING_FIELD,
    Code.INVALID_FIELD,
    Code.UNKNOWN_FIELD,
    Code.UNKNOWN_TYPE,
    Code.CONTROL_CHARACTER,
}


@schema.include(path=BATCH_PATH, method=BATCH_METHOD).parametrize()
@settings(max_examples=examples(50), deadline=None, suppress_health_check=list(HealthCheck))
def test_a_batch_refuses_each_item_the_document_refuses_and_only_that_item(
    case: Any, answers: set[tuple[int, str]]
) -> None:
    """The document types a batch's items as facts, but a malformed item does not refuse the
    batch: it gets its own problem in the results, and the other items are recorded. So the
    check that a request breaking the document is refused as a whole does not apply here;
    this test holds each item to it instead, and the batch as a whole to its own shape. An
    item the document takes is refused, if at all, by a rule, never as malformed."""
    response = checked(
        case,
        answers,
        schemathesis.checks.positive_data_acceptance,
        schemathesis.checks.negative_data_rejection,
    )
    if response.status_code != 200:
        return
    body = case.body
    assert isinstance(body, dict), body
    items = body["facts"]
    assert isinstance(items, list) and 1 <= len(items) <= MAX_BATCH, items
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    for item, result in zip(items, results, strict=True):
        if not FACT.is_valid(item):
            assert result["status"] >= 400 and "receipt" not in result, (item, result)
        elif "problem" in result:  # refused by a rule, never for a form the schema takes
            assert result["problem"]["code"] not in MALFORMED, (item, result)


def test_every_answer_in_csv_is_in_the_document() -> None:
    """A route with `format=csv` answers text/csv; undocumented, a client cannot expect it
    and schemathesis refuses the answer, when its random cases happen to ask for CSV."""
    document = app.openapi()
    with_csv = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            formats = [p for p in operation.get("parameters", []) if p["name"] == "format"]
            if formats and "csv" in formats[0]["schema"]["pattern"]:
                with_csv.append(f"{method.upper()} {path}")
                assert "text/csv" in operation["responses"]["200"]["content"], path
    assert sorted(with_csv) == ["GET /v1/requests", "GET /v1/subjects/{sid}/trail"]


def test_every_parameter_in_a_path_or_an_instant_says_its_shape() -> None:
    """A sid, a purpose and a policy version in a path, and every instant in a query, were
    plain strings in the document: a client, or schemathesis, sent words where a sid or an
    instant belongs, and never an empty instant, which two routes took as not given."""
    document = app.openapi()
    loose = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                instant = parameter["name"] in {"as_of", "known_at", "received_from", "received_to"}
                if instant and schema.get("format") != "date-time":
                    loose.append(f"{method.upper()} {path} {parameter['name']}")
                if parameter["in"] == "path" and not ({"pattern", "maxLength"} & set(schema)):
                    loose.append(f"{method.upper()} {path} {parameter['name']}")
    assert loose == []
