"""Publishing facts: one, or a batch of up to 1,000, idempotent by event_id."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.answers import answer, ref
from api.deps import SCHEME, Disclosed, Service, authorized, disclosed, role, service, service_of
from api.keys import Principal
from api.problems import Problem, problem_body, status_of
from api.responses import OrjsonResponse
from ledger.envelope import (
    Fact,
    Received,
    check_size,
    named_twice,
    parse_fact_item,
    without_bom,
)
from ledger.errors import FactRejected
from ledger.json_names import MAX_DEPTH, Repeated, TooDeep, marked, repeats_a_name
from ledger.receipt import ErasureNotOverwritten, Outcome, Receipt

router = APIRouter(tags=["facts"])
MAX_BATCH = 1000
PUBLISHERS = ("publisher", "admin")

# The request body of POST /v1/facts is the envelope's published JSON Schema
# (`ledger/schema/fact.schema.json`), so that the API's own document tells a publisher every
# fact type's members, and a schema-driven client or test generates facts of each type (and
# facts that break it, which the route must refuse). It was a loose object of the common
# members only, with which schemathesis never sent a transfer's `ground`: an object there was
# a 500 (a TypeError) until 2026-12-07. The document holds it once, as the component `Fact`,
# which each item of a batch refers to as well: those items were untyped until 2026-12-07, so
# a client generated from the document knew nothing of what a batch holds.
FACT_SCHEMA: dict[str, Any] = {
    name: value
    for name, value in orjson.loads(
        (resources.files("ledger") / "schema" / "fact.schema.json").read_bytes()
    ).items()
    if name not in ("$schema", "$id")  # the document's own dialect (OpenAPI 3.1) and place
}


@router.post(
    "/v1/facts",
    status_code=201,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("Fact")}}},
        "security": [{SCHEME: list(PUBLISHERS)}],  # checked by the route itself
    },
    responses={
        201: answer("Receipt", "recorded"),
        200: answer("Receipt", "the same fact again: the first receipt"),
        409: {"description": "the event_id was recorded with other content"},
        422: {"description": "invalid or refused by a rule"},
    },
)
async def record_fact(
    request: Request,
) -> OrjsonResponse:
    principal = authorized(request, PUBLISHERS)
    svc = service_of(request)
    body = await request.body()
    check_size(body)
    # Parsed by the writer, not here: see ledger.envelope.Received.
    try:
        outcome = await svc.writer.outcome(Received(body, principal.tenant))
    except ErasureNotOverwritten as busy:
        counted(svc, busy.outcomes)  # recorded all the same; the answer is 503
        raise
    counted(svc, [outcome])
    if isinstance(outcome, FactRejected):
        raise outcome
    return OrjsonResponse(outcome.as_dict(), 200 if outcome.duplicate else 201)


@router.post(
    "/v1/facts:batch",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["facts"],
                        "properties": {
                            "facts": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_BATCH,
                                "description": "each item is a fact (as for POST /v1/facts), "
                                "checked on its own: a malformed item gets its own problem in "
                                "the results, in order, and the others are recorded",
                                "items": ref("Fact"),
                            }
                        },
                    }
                }
            },
        },
        "security": [{SCHEME: list(PUBLISHERS)}],
    },
    responses={200: answer("BatchResults", "a result per fact, in order")},
)
async def record_batch(
    request: Request,
) -> OrjsonResponse:
    principal = authorized(request, PUBLISHERS)
    svc = service_of(request)
    raw = without_bom(await request.body())
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Problem(422, "invalid_json", "the body is not valid JSON") from None
    try:
        exact = marked(raw, body)  # None unless some object names a member twice
    except TooDeep:
        raise Problem(
            422, "invalid_json", f"the body nests deeper than {MAX_DEPTH} levels"
        ) from None
    if isinstance(exact, Repeated):
        raise Problem(422, "invalid_json", "the body names the same member twice")
    items = body.get("facts") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise Problem(422, "invalid_field", 'the body is {"facts": [...]}', "facts")
    if not items or len(items) > MAX_BATCH:
        raise Problem(422, "batch_size", f"a batch holds 1 to {MAX_BATCH} facts", "facts")
    parsed: list[Fact | FactRejected] = []
    for i, item in enumerate(items):
        try:
            if exact is not None and repeats_a_name(exact["facts"][i]):
                raise named_twice()
            parsed.append(parse_fact_item(item, principal.tenant))
        except FactRejected as e:
            parsed.append(e)
    # Items that did not parse keep their places: the writer answers one outcome per item.
    try:
        outcomes = await svc.writer.outcomes(parsed)
    except ErasureNotOverwritten as busy:
        counted(svc, busy.outcomes)  # recorded all the same; the answer is 503
        raise
    # Every refusal counts, a fact that did not parse too, as for a single publish.
    counted(svc, outcomes)
    results = []
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, FactRejected):
            status = status_of(outcome)
            results.append(
                {
                    "index": i,
                    "status": status,
                    "problem": problem_body(
                        status, outcome.code.value, outcome.message, outcome.field
                    ),
                }
            )
        else:
            results.append(
                {
                    "index": i,
                    "status": 200 if outcome.duplicate else 201,
                    "receipt": outcome.as_dict(),
                }
            )
    return OrjsonResponse({"results": results})


class Lookup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=MAX_BATCH
    )


@router.post("/v1/facts:lookup", response_model=None, responses={200: answer("Receipts")})
def lookup(
    body: Lookup,
    principal: Annotated[Principal, role("publisher", "compliance", "admin")],
    svc: Annotated[Service, Depends(service)],
    disclose: Annotated[Disclosed, Depends(disclosed)],
) -> OrjsonResponse:
    """The receipts of facts of the key's tenant, by `event_id` (up to 1,000), as they were
    first given: a publisher that lost its answers, or published to the Kafka intake topic
    and got none, learns which facts the ledger recorded without sending them again. An
    `event_id` not recorded (not yet, refused, or another tenant's) reads `recorded: false`;
    in Kafka mode one the intake writer refused says why (`refused`), from the rejected
    topic, so the publisher can tell a fact to correct from one to wait for."""
    found = svc.ledger.receipts(principal.tenant, body.event_ids)
    missing = [e for e in body.event_ids if e not in found]
    refusals = svc.refusals.of(principal.tenant, missing) if svc.refusals and missing else {}
    results = []
    for i, event_id in enumerate(body.event_ids):
        receipt = found.get(event_id)
        result: dict[str, Any] = {"index": i, "event_id": event_id, "recorded": bool(receipt)}
        if receipt is not None:
            result["receipt"] = receipt.as_dict()
        elif event_id in refusals:
            result["refused"] = refusals[event_id].as_dict()
        results.append(result)
    disclose(r.sid for r in found.values() if r.sid is not None)
    recorded = sum(1 for r in results if r["recorded"])
    return OrjsonResponse(
        {"results": results, "recorded": recorded, "not_recorded": len(results) - recorded}
    )


def counted(svc: Service, outcomes: Sequence[Outcome]) -> None:
    """Count facts recorded (not retries) and refused, by code, for /metrics."""
    svc.metrics.facts(
        sum(1 for o in outcomes if isinstance(o, Receipt) and not o.duplicate),
        [o.code.value for o in outcomes if isinstance(o, FactRejected)],
    )
