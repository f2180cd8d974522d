"""Compliance questions: campaign checks, who had consent, policies, what is due, integrity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.answers import answer, answer_or_csv
from api.deps import (
    INSTANT_SCHEMA,
    Disclosed,
    Service,
    disclosed,
    instant_query,
    purpose_path,
    role,
    service,
    version_path,
)
from api.keys import Principal
from api.problems import SIZES, Problem, parse_sizes, signing_refusals
from api.responses import OrjsonResponse
from api.sids import HEX_SID_PATTERN
from ledger.checkpoint import checkpoint
from ledger.envelope import parse_known_at, parse_time
from ledger.policy import PolicyVersion, policy_changes, policy_text, previous_version
from ledger.tenant import Tenant
from ledger.verify import key_store_gaps, verify_ledger
from projections.cursors import BadCursor
from projections.due import due_list
from projections.queries import (
    check_recipients,
    check_report,
    consent_summary,
    is_sid,
    who_had_consent_page,
)
from projections.requests import (
    RequestKind,
    RequestState,
    register_csv,
    request_register,
)

router = APIRouter(tags=["compliance"])
READERS = ("compliance", "admin")


MAX_SUBJECT = 256  # characters of a subject reference, as the envelope takes one


def _given(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"type": "array"}}}


# Exactly one of `subjects` and `sids`, as the route checks: said in the document, which left
# it to the route's own refusal (`give either 'subjects' or 'sids'`), so a client could not
# tell, and schemathesis sent neither in most of its cases.
ONE_LIST: dict[str, Any] = {
    "oneOf": [
        {**_given("subjects"), "not": _given("sids")},
        {**_given("sids"), "not": _given("subjects")},
    ]
}


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_LIST)
    purpose: str = Field(min_length=1, max_length=64)
    at: str = Field(json_schema_extra=INSTANT_SCHEMA)
    known_at: str | None = Field(default=None, json_schema_extra=INSTANT_SCHEMA)
    # The items' shape, as the route checks it (documentation: the route's own refusal names
    # the item, `subjects.3`, where FastAPI's would not).
    subjects: list[str] | None = Field(
        default=None,
        max_length=10_000,
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT}},
    )
    sids: list[str] | None = Field(
        default=None,
        max_length=10_000,
        json_schema_extra={"items": {"type": "string", "pattern": HEX_SID_PATTERN}},
    )


def invalid_cursor() -> Problem:
    """What every paged route answers a cursor that is not a page's `next`."""
    return Problem(422, "invalid_cursor", "cursor is the 'next' value of a previous page", "cursor")


@router.post("/v1/consents:check", response_model=None, responses={200: answer("CheckResult")})
def check(
    body: Check,
    principal: Annotated[Principal, role(*READERS)],
    svc: Annotated[Service, Depends(service)],
    disclose: Annotated[Disclosed, Depends(disclosed)],
) -> dict[str, Any]:
    if (body.subjects is None) == (body.sids is None):
        raise Problem(422, "invalid_field", "give either 'subjects' or 'sids'", "subjects")
    at = parse_time(body.at, "at")
    known_at = parse_known_at(body.known_at, "known_at", svc.ledger.settings.max_future_skew_s)
    if body.subjects is not None:
        for i, reference in enumerate(body.subjects):
            if not 1 <= len(reference) <= MAX_SUBJECT:
                raise Problem(
                    422,
                    "invalid_field",
                    f"a subject is 1 to {MAX_SUBJECT} characters",
                    f"subjects.{i}",
                )
        sids = [svc.ledger.sid(principal.tenant, s).hex for s in body.subjects]
    else:
        sids = [s.lower() for s in body.sids or []]
        for i, sid in enumerate(sids):
            if not is_sid(sid):
                raise Problem(422, "invalid_field", "a sid is 32 hex digits", f"sids.{i}")
    _known_purpose(svc, principal.tenant, body.purpose, 422, "purpose")
    svc.views.refresh()
    results = check_recipients(svc.views.store, principal.tenant, body.purpose, at, sids, known_at)
    disclose(sids)
    return check_report(body.purpose, at, known_at, results)


@router.get(
    "/v1/purposes/{purpose}/subjects",
    response_model=None,
    responses={200: answer("SubjectsWithConsent")},
)
def subjects_with_consent(
    purpose: Annotated[str, purpose_path()],
    principal: Annotated[Principal, role(*READERS)],
    svc: Annotated[Service, Depends(service)],
    disclose: Annotated[Disclosed, Depends(disclosed)],
    as_of: Annotated[str | None, instant_query()] = None,
    known_at: Annotated[str | None, instant_query()] = None,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    policy_version: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    """The subjects with consent for the purpose at `as_of` (default now) as known at
    `known_at` (default now), in sid order, `limit` a page; `next` is the cursor of the
    page after, null on the last. With `policy_version`, only those whose consent in force
    was given under that version: after a new version (§9), who has not consented under it
    (an unknown version: 422 `unknown_policy_version`). Every page after the first answers
    for the first page's instant as known when the first page was asked (its `known_at`
    then names that moment: when the last fact the first page read was recorded),
    whatever was recorded since: the cursor holds them, its purpose and its
    `policy_version`. Given with another `as_of`,
    `known_at` or `policy_version` (or of another purpose), a cursor is refused: 422
    `invalid_cursor`."""
    at = parse_time(as_of, "as_of") if as_of is not None else None
    known = parse_known_at(known_at, "known_at", svc.ledger.settings.max_future_skew_s)
    _known_purpose(svc, principal.tenant, purpose, 404, None)
    if policy_version is not None:
        tenant = svc.ledger.tenant(principal.tenant, shared=True)
        assert tenant is not None  # _known_purpose found it
        tenant.policy(policy_version)  # 422 unknown_policy_version, as for a fact
    svc.views.refresh()
    try:
        page = who_had_consent_page(
            svc.views.store,
            principal.tenant,
            purpose,
            at,
            known,
            cursor=cursor,
            limit=limit,
            policy_version=policy_version,
            now=datetime.now(UTC),
            recorded_through=svc.views.recorded_through,
        )
    except BadCursor:
        raise invalid_cursor() from None
    disclose(page["sids"])
    return page


@router.get(
    "/v1/purposes/{purpose}/summary", response_model=None, responses={200: answer("ConsentSummary")}
)
def consent_summary_of_purpose(
    purpose: Annotated[str, purpose_path()],
    principal: Annotated[Principal, role(*READERS)],
    svc: Annotated[Service, Depends(service)],
    as_of: Annotated[str | None, instant_query()] = None,
    known_at: Annotated[str | None, instant_query()] = None,
) -> dict[str, Any]:
    """How many subjects had consent for the purpose at `as_of` (default now) as known at
    `known_at` (default now), and how many under each policy version: the subjects the
    route above lists, counted, none named. After a new version (§9), how many are still on
    an old one."""
    at = parse_time(as_of, "as_of") if as_of is not None else datetime.now(UTC)
    known = parse_known_at(known_at, "known_at", svc.ledger.settings.max_future_skew_s)
    _known_purpose(svc, principal.tenant, purpose, 404, None)
    svc.views.refresh()
    return consent_summary(svc.views.store, principal.tenant, purpose, at, known)


def _known_purpose(svc: Service, tenant: str, purpose: str, status: int, field: str | None) -> None:
    """Refuse a purpose no policy version of the tenant names: 422 in a body, 404 in a path."""
    found = svc.ledger.tenant(tenant, shared=True)
    if found is None or not found.names_purpose(purpose):
        raise Problem(
            status, "unknown_purpose", "no policy version of this tenant names this purpose", field
        )


@router.get("/v1/policies", response_model=None, responses={200: answer("Policies")})
def policies(
    principal: Annotated[Principal, role("publisher", *READERS)],
    svc: Annotated[Service, Depends(service)],
) -> dict[str, Any]:
    tenant = svc.ledger.tenant(principal.tenant)
    versions = tenant.policies.values() if tenant else []
    return {"policies": [p.as_dict() for p in versions]}


@router.get("/v1/policies/{version}", response_model=None, responses={200: answer("Policy")})
def policy(
    version: Annotated[str, version_path()],
    principal: Annotated[Principal, role("publisher", *READERS)],
    svc: Annotated[Service, Depends(service)],
) -> dict[str, Any]:
    return _published(svc, principal.tenant, version)[1].as_dict()


@router.get(
    "/v1/policies/{version}/text", response_model=None, responses={200: answer("PolicyText")}
)
def policy_version_text(
    version: Annotated[str, version_path()],
    principal: Annotated[Principal, role("publisher", *READERS)],
    svc: Annotated[Service, Depends(service)],
) -> dict[str, Any]:
    """The full text people were shown under this version, as published, with its SHA-256
    (the hash each grant's trail names): what a subject agreed to, word for word."""
    return policy_text(_published(svc, principal.tenant, version)[1])


@router.get(
    "/v1/policies/{version}/changes", response_model=None, responses={200: answer("PolicyChanges")}
)
def policy_version_changes(
    version: Annotated[str, version_path()],
    principal: Annotated[Principal, role("publisher", *READERS)],
    svc: Annotated[Service, Depends(service)],
    since: Annotated[str | None, Query(alias="from", max_length=128)] = None,
) -> dict[str, Any]:
    """What this version changes from the one in force before it (or from `from`), and the
    purposes whose consent under that one does not cover this one: `consent_needed`, each
    with its reasons (`purpose_added`, `basis_now_consent`, `categories_added`,
    `retention_extended`). Those to ask again are the subjects the who route lists for such a
    purpose with `policy_version` the old version. The first version compares with none:
    `from` null, every purpose added. An unknown version: 404 `unknown_policy_version`; an
    unknown `from`: 422 `unknown_policy_version`."""
    tenant, found = _published(svc, principal.tenant, version)
    if since is None:
        old = previous_version(tenant.policies, found)
    else:
        old = tenant.policies.get(since)
        if old is None:
            raise Problem(422, "unknown_policy_version", "no such policy version", "from")
    return policy_changes(old, found)


def _published(svc: Service, name: str, version: str) -> tuple[Tenant, PolicyVersion]:
    """The caller's tenant and one of its policy versions; 404 for a version it never
    published."""
    tenant = svc.ledger.tenant(name, shared=True)
    found = tenant.policies.get(version) if tenant else None
    if tenant is None or found is None:
        raise Problem(404, "unknown_policy_version", "no such policy version")
    return tenant, found


@router.get("/v1/due", response_model=None, responses={200: answer("Due")})
def due(
    principal: Annotated[Principal, role(*READERS)],
    svc: Annotated[Service, Depends(service)],
    disclose: Annotated[Disclosed, Depends(disclosed)],
    within_days: Annotated[int, Query(ge=0, le=3650)] = 7,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> dict[str, Any]:
    """Subject requests due within `within_days` (or overdue), consents expiring within it,
    each subject's data for a purpose kept past that purpose's retention, and `erasable`:
    the subjects no purpose keeps any longer (every purpose they consented to past its
    retention, none unbounded, no request open), which `consent-ledger retention --erase`
    erases on the ground `retention_expired`. Every list whole, unless `limit` is given:
    then each holds at most `limit` items, and `next` is the cursor of the page after while
    any list has more (null on the last; a cursor that is not one: 422 `invalid_cursor`).
    A cursor's pages answer for the first page's `as_of`; pass the same `within_days`."""
    tenant = svc.ledger.tenant(principal.tenant)
    svc.views.refresh()
    try:
        report = due_list(
            svc.views.store,
            principal.tenant,
            datetime.now(UTC),
            within=timedelta(days=within_days),
            request_days=svc.settings.request_due_days,
            request_days_by_kind=dict(svc.settings.request_due_days_by_kind),
            policies=tenant.policies if tenant else {},
            limit=limit,
            cursor=cursor,
        )
    except BadCursor:
        raise invalid_cursor() from None
    disclose(
        item["sid"]
        for part in ("requests", "expiring_consents", "past_retention", "erasable")
        for item in report[part]
    )
    return report


@router.get(
    "/v1/requests",
    response_model=None,
    responses={
        200: {
            **answer_or_csv("RequestRegister"),
            "headers": {
                "Next-Cursor": {
                    "description": "format=csv: the cursor of the page after (absent on the last)",
                    "schema": {"type": "string"},
                }
            },
        }
    },
)
def requests(
    principal: Annotated[Principal, role(*READERS)],
    svc: Annotated[Service, Depends(service)],
    disclose: Annotated[Disclosed, Depends(disclosed)],
    state: Annotated[RequestState | None, Query()] = None,
    kind: Annotated[RequestKind | None, Query()] = None,
    received_from: Annotated[str | None, instant_query()] = None,
    received_to: Annotated[str | None, instant_query()] = None,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Response:
    """The register of subject requests (§7.1): each request received in
    [`received_from`, `received_to`) (default: all), of `kind` if given, in the order
    received, with its deadline and where it came from (`due_from`: the request's own, the
    tenant's policy version in force at its receipt, or the settings), when and how it was
    closed, and its `state`: `open`, `overdue` (not closed, past due), `closed` (by its
    deadline) or `closed_late`; `state=` keeps one. `counts` counts each state over the
    period and kind. `next` is the cursor of the page after, null on the last (a cursor
    that is not, or given with another period or kind: 422 `invalid_cursor`); the pages
    after the first answer as of its `as_of`, with its `counts`. `format=csv`: the page as
    CSV, one request a row, its `next` in the `Next-Cursor` header."""
    start = parse_time(received_from, "received_from") if received_from is not None else None
    end = parse_time(received_to, "received_to") if received_to is not None else None
    if start is not None and end is not None and end < start:
        # An empty page would read as "no requests in that period".
        raise Problem(422, "invalid_field", "received_to is before received_from", "received_to")
    tenant = svc.ledger.tenant(principal.tenant, shared=True)
    svc.views.refresh()
    try:
        register = request_register(
            svc.views.store,
            principal.tenant,
            datetime.now(UTC),
            policies=tenant.policies if tenant else {},
            request_days=svc.settings.request_due_days,
            request_days_by_kind=dict(svc.settings.request_due_days_by_kind),
            state=state,
            kind=kind,
            received_from=start,
            received_to=end,
            cursor=cursor,
            limit=limit,
        )
    except BadCursor:
        raise invalid_cursor() from None
    disclose(r["sid"] for r in register["requests"])
    if format == "csv":
        headers = {"Next-Cursor": register["next"]} if register["next"] else None
        return PlainTextResponse(register_csv(register), media_type="text/csv", headers=headers)
    return OrjsonResponse(register)


@router.get("/v1/checkpoint", response_model=None, responses={200: answer("Checkpoint")})
def signed_checkpoint(
    principal: Annotated[Principal, role(*READERS)],
    svc: Annotated[Service, Depends(service)],
    since_sizes: Annotated[str | None, Query(max_length=4096, pattern=SIZES)] = None,
) -> dict[str, Any]:
    """The log's Merkle tree heads (one per ledger partition in Kafka mode), signed with the
    ledger's Ed25519 key, for the operator to publish; with `since_sizes` (an earlier
    checkpoint's tree sizes, comma-separated in partition order), the RFC 9162 proofs that
    the log only grew since (`consent-ledger verify --checkpoint NEW --since OLD`). Once the
    signing key was replaced, `key_transitions` lists its hand-overs, each signed by the
    retiring key and its successor, so a holder of any of the ledger's keys can check."""
    with signing_refusals():
        return checkpoint(
            svc.ledger.ledger_recorder, svc.ledger.keystore, since_sizes=parse_sizes(since_sizes)
        )


@router.get("/v1/verify", response_model=None, responses={200: answer("Verified")})
def verify(
    principal: Annotated[Principal, role(*READERS)],
    svc: Annotated[Service, Depends(service)],
) -> dict[str, Any]:
    """The whole log's integrity; beside it, what a restore of one store without the other
    left of the caller's tenant: `subjects_without_key` (their personal data unreadable) and
    `erasures_not_in_log` (keys destroyed by an erasure whose fact the log lost, each to
    record again by `POST /v1/subjects/{sid}/erasure`). Other tenants' are never named."""
    result = verify_ledger(svc.ledger.ledger_recorder).as_dict()
    return {**result, **key_store_gaps(svc.ledger, principal.tenant)}
