"""Subjects, addressed by sid: resolve, consent at an instant, audit trail, evidence, who
accessed them, erasure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.answers import answer, answer_or_csv
from api.deps import (
    Disclosed,
    Service,
    disclosed,
    instant_query,
    parse_sid,
    role,
    service,
    sid_path,
)
from api.keys import Principal
from api.problems import SIZES, Problem, parse_sizes, signing_refusals
from api.responses import OrjsonResponse
from api.routes.facts import FACT_SCHEMA
from ledger.envelope import parse_fact, parse_known_at, parse_time
from ledger.errors import FactRejected
from ledger.vocabulary import ERASURE_GROUNDS
from projections.consents import subject_consents
from projections.evidence import evidence_package
from projections.report import subject_report
from projections.trail import subject_trail, trail_csv

router = APIRouter(tags=["subjects"])


class Resolve(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=256)


# As the published fact schema states them for a `subject.erased` fact, which this body
# becomes: the document said only "a string" of each, and a client learnt the grounds, and
# that an identifier holds no control character, from the refusals. The identifiers may be
# null here (not given), and a pattern holds of anything but a string: its bare `not`
# refused the null the route takes, so the `not` is of a string that matches.
_IN_ONE_LINE: dict[str, Any] = {
    "not": {"type": "string", **FACT_SCHEMA["properties"]["event_id"]["not"]}
}
_GROUNDS: dict[str, Any] = {"enum": sorted(ERASURE_GROUNDS)}


class Erasure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Checked where the fact is read (`invalid_field` naming them), as a fact's ground is.
    ground: str = Field(json_schema_extra=_GROUNDS)
    request_id: str | None = Field(
        default=None, min_length=1, max_length=128, json_schema_extra=_IN_ONE_LINE
    )
    event_id: str | None = Field(
        default=None, min_length=1, max_length=128, json_schema_extra=_IN_ONE_LINE
    )


def _instant(value: str | None, name: str) -> datetime | None:
    return parse_time(value, name) if value is not None else None


@router.post("/v1/subjects:resolve", response_model=None, responses={200: answer("Resolved")})
def resolve(
    body: Resolve,
    principal: Annotated[Principal, role("publisher", "compliance", "admin")],
    svc: Annotated[Service, Depends(service)],
    disclose: Annotated[Disclosed, Depends(disclosed)],
) -> dict[str, str]:
    sid = svc.ledger.sid(principal.tenant, body.subject).hex
    disclose([sid])
    return {"sid": sid}


@router.get("/v1/subjects/{sid}/consents", response_model=None, responses={200: answer("Consents")})
def consents(
    sid: Annotated[str, sid_path()],
    principal: Annotated[Principal, role("compliance", "admin")],
    svc: Annotated[Service, Depends(service)],
    as_of: Annotated[str | None, instant_query()] = None,
    known_at: Annotated[str | None, instant_query()] = None,
) -> dict[str, Any]:
    view = subject_consents(
        svc.ledger,
        principal.tenant,
        parse_sid(sid),
        _instant(as_of, "as_of"),
        parse_known_at(known_at, "known_at", svc.ledger.settings.max_future_skew_s),
    )
    if view is None:
        raise Problem(404, "unknown_subject", "no such subject")
    return view


@router.get(
    "/v1/subjects/{sid}/trail", response_model=None, responses={200: answer_or_csv("Trail")}
)
def trail(
    sid: Annotated[str, sid_path()],
    principal: Annotated[Principal, role("compliance", "admin")],
    svc: Annotated[Service, Depends(service)],
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Response:
    found = subject_trail(svc.ledger, principal.tenant, parse_sid(sid))
    if found is None:
        raise Problem(404, "unknown_subject", "no such subject")
    if format == "csv":
        return PlainTextResponse(trail_csv(found), media_type="text/csv")
    return OrjsonResponse(found)


@router.get(
    "/v1/subjects/{sid}/evidence", response_model=None, responses={200: answer("EvidencePackage")}
)
def evidence(
    sid: Annotated[str, sid_path()],
    principal: Annotated[Principal, role("compliance", "admin")],
    svc: Annotated[Service, Depends(service)],
    since_sizes: Annotated[str | None, Query(max_length=4096, pattern=SIZES)] = None,
) -> OrjsonResponse:
    """The trail with what lets someone without the ledger verify it: the facts' stored
    bytes, their inclusion proofs in the log's Merkle tree and its head signed with the
    ledger's Ed25519 key (`consent-ledger verify --evidence FILE` checks one); with
    `since_sizes` (a checkpoint's tree sizes, comma-separated in partition order), the
    proofs that the trees extend that checkpoint's."""
    with signing_refusals():
        found = evidence_package(
            svc.ledger, principal.tenant, parse_sid(sid), since_sizes=parse_sizes(since_sizes)
        )
    if found is None:
        raise Problem(404, "unknown_subject", "no such subject")
    return OrjsonResponse(found)


@router.get("/v1/subjects/{sid}/report", response_model=None, responses={200: answer("Report")})
def report(
    sid: Annotated[str, sid_path()],
    principal: Annotated[Principal, role("compliance", "admin")],
    svc: Annotated[Service, Depends(service)],
) -> dict[str, Any]:
    """The answer to the person's information request (§7.1): the personal data held about
    them now (rectifications applied; none once erased) and what it was collected with,
    each purpose they consented to with its state, legal basis, categories and retention,
    the policy in force, every transfer to a third party (cross-border marked), their
    requests (each with when it is due, as the request register says) and complaints, the
    operator and the services the data came from. Built from
    the trail and the consent state (`projections.report`)."""
    found = subject_report(svc.ledger, principal.tenant, parse_sid(sid))
    if found is None:
        raise Problem(404, "unknown_subject", "no such subject")
    return found


@router.get("/v1/subjects/{sid}/accesses", response_model=None, responses={200: answer("Accesses")})
def accesses(
    sid: Annotated[str, sid_path()],
    principal: Annotated[Principal, role("compliance", "admin")],
    svc: Annotated[Service, Depends(service)],
) -> dict[str, Any]:
    """Who read or erased this subject's data over HTTP, oldest first: each request a key
    made to this subject's routes (refused ones too), and each answer that named it among
    others (a campaign check, a page of who had consent, the due list, the resolution of
    its reference), with its instant, key id, route template and status
    (`api.access_log`). This request is recorded as it completes, so it shows from the next
    one on. `kept_days`: how many days of accesses the service keeps
    (`LEDGER_ACCESS_LOG_DAYS`; null: all), so an empty list is not read as "never"."""
    subject_id = parse_sid(sid)
    if svc.ledger.subject(principal.tenant, subject_id) is None:
        raise Problem(404, "unknown_subject", "no such subject")
    found = svc.access.of_subject(principal.tenant, subject_id.hex) if svc.access else []
    return {
        "tenant": principal.tenant,
        "sid": subject_id.hex,
        "accesses": found,
        "kept_days": svc.settings.access_log_days or None,
    }


@router.post(
    "/v1/subjects/{sid}/erasure",
    status_code=201,
    response_model=None,
    responses={
        201: answer("Receipt", "the erasure recorded"),
        200: answer("Receipt", "the same erasure again (its event_id): the first receipt"),
    },
)
def erase(
    sid: Annotated[str, sid_path()],
    body: Erasure,
    principal: Annotated[Principal, role("admin")],
    svc: Annotated[Service, Depends(service)],
) -> OrjsonResponse:
    subject_id = parse_sid(sid)
    subject = svc.ledger.subject(principal.tenant, subject_id)
    if subject is None:
        raise Problem(404, "unknown_subject", "no such subject")
    # The publisher's reference is not known here (only its sid), so the erasure fact is
    # built around the sid through the same rules as any other fact.
    event_id = body.event_id or f"erasure-{uuid.uuid4()}"
    # A retry repeats the first attempt's instant: same event_id, same fact, first receipt.
    # An erasure the log lost (GET /v1/verify names it) occurred when its key was destroyed.
    occurred_at = svc.ledger.occurred_at_of(
        principal.tenant, event_id, subject_id
    ) or svc.ledger.lost_erasure_at(subject)
    fact = parse_fact(
        {
            "event_id": event_id,
            "type": "subject.erased",
            "subject": f"sid:{subject_id.hex}",
            "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
            "source": "http-api",
            "ground": body.ground,
            **({"request_id": body.request_id} if body.request_id else {}),
        },
        principal.tenant,
    )
    [outcome] = svc.ledger.record([fact], sids=[subject_id])
    if isinstance(outcome, FactRejected):
        raise outcome
    return OrjsonResponse(outcome.as_dict(), 200 if outcome.duplicate else 201)
