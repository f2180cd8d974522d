"""What every route needs: the service's parts, and the caller (its key's tenant and roles)."""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from fastapi import Path, Query, Request, Security
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase

from api.access_log import AccessLog, keep
from api.group_commit import GroupCommitter
from api.keys import ApiKeys, ExpiredKey, Principal
from api.metrics import Metrics
from api.problems import Problem
from api.process_committer import ProcessCommitter
from api.sids import SID_PATTERN, is_sid_spelling
from ledger.application import ConsentLedger
from ledger.envelope import INSTANT_PATTERN, NAME_PATTERN
from ledger.settings import Settings
from projections.views import Views


@dataclass
class Service:
    settings: Settings
    ledger: ConsentLedger
    views: Views
    keys: ApiKeys
    metrics: Metrics
    # Where publishes go: straight to the writer process from the event loop in embedded mode
    # (api.process_committer), else through a group-commit thread (api.group_commit).
    writer: GroupCommitter | ProcessCommitter
    intake: Any = None  # Kafka mode: the intake writer thread (ledger.kafka.intake_thread)
    writer_process: Any = None  # embedded mode: where `writer` records (api.writer_process)
    admin: Any = None  # Kafka mode: an admin client kept for readiness checks
    # Kafka mode: held by the readiness check that uses `admin` (api.app.kafka_unready).
    readiness_lock: threading.Lock = field(default_factory=threading.Lock)
    refusals: Any = None  # Kafka mode: the intake writer's refusals (ledger.kafka.refusal_index)
    access: AccessLog | None = None  # who read or erased which subject (api.access_log)


# Dependencies are `async` on purpose: FastAPI runs sync ones in a thread pool, a hop per
# dependency per request; these do no blocking work beyond one indexed SQLite read.
async def service(request: Request) -> Service:
    return service_of(request)


def service_of(request: Request) -> Service:
    """The service, read from the app without a dependency: the publishing routes, which
    every publisher calls for every fact, do so. A dependency of its own was 7.5% of the
    event loop's part of a single publish (`python -m bench instructions --http`: 917,232
    -> 848,069 instructions per request, 2026-12-01); the other routes keep it."""
    found: Service = request.app.state.service
    return found


class Disclosed:
    """Records in the access log each subject a route's answer names (a campaign check's
    recipients, a page of who had consent, the due list, a resolved reference), once the
    answer is ready: the request guard records a subject's own routes by their path."""

    def __init__(self, request: Request) -> None:
        self._scope = request.scope

    def __call__(self, sids: Iterable[str]) -> None:
        scope = self._scope
        principal: Principal = scope["ledger.principal"]
        keep(
            scope["app"].state.service.access,
            principal.tenant,
            list(dict.fromkeys(sids)),
            principal.key_id,
            scope["method"],
            scope["route"].path,
            200,
        )


async def disclosed(request: Request) -> Disclosed:
    return Disclosed(request)


# A 401 names the scheme to use (RFC 9110 15.5.2: it must), and whether the key given was
# refused (RFC 6750 3.1: `invalid_token`, for a key unknown, revoked or expired).
ASK_FOR_KEY = {"WWW-Authenticate": 'Bearer realm="consent-ledger"'}
KEY_REFUSED = {"WWW-Authenticate": 'Bearer realm="consent-ledger", error="invalid_token"'}


def caller(request: Request) -> Principal:
    """The caller, from its API key."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Problem(
            401, "unauthorized", "send 'Authorization: Bearer <api key>'", headers=ASK_FOR_KEY
        )
    keys: ApiKeys = request.app.state.service.keys
    try:
        principal = keys.authenticate(token.strip())
    except ExpiredKey as e:
        raise Problem(
            401,
            "api_key_expired",
            f"the API key expired at {e.expires_at}; ask for a new one",
            headers=KEY_REFUSED,
        ) from None
    if principal is None:
        raise Problem(401, "unauthorized", "the API key is unknown or revoked", headers=KEY_REFUSED)
    # For the access log, which the request guard writes as the request completes.
    request.scope["ledger.principal"] = principal
    return principal


SCHEME = "apiKey"  # the security scheme's name in the OpenAPI document


class ApiKey(SecurityBase):
    """The API key every `/v1` route needs, as a FastAPI security dependency: the OpenAPI
    document then declares the bearer scheme and, on each operation, the roles it admits
    (the requirement's list, which OpenAPI 3.1 allows to hold role names for a scheme that
    is not OAuth2). The roles reach the check as FastAPI's `SecurityScopes`.

    One dependency that calls `caller` itself, rather than one that depends on `caller`,
    which depended on `service`: FastAPI resolves each dependency of each request through
    generic machinery (cache keys, signature checks), and the two it no longer resolves were
    11% of the event loop's part of a single publish (`python -m bench instructions
    --http`: 1,090,238 -> 968,991 instructions per request, 2026-12-01).
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            description="An API key from `consent-ledger keys create --tenant T --role R`, "
            "sent as `Authorization: Bearer <key>`. A key reads and writes only its own "
            "tenant. Each operation lists the roles it admits (publisher: write facts; "
            "compliance: read, export, check; admin: erase and the rest). No key, or an "
            "unknown or revoked one: 401 `unauthorized`; a key past its expiry: 401 "
            "`api_key_expired`; a key without one of the roles: 403."
        )
        self.scheme_name = SCHEME

    async def __call__(self, request: Request, security_scopes: SecurityScopes) -> Principal:
        return authorized(request, security_scopes.scopes)


API_KEY = ApiKey()


def role(*allowed: str) -> Any:
    """A route's caller, who must have one of these roles:
    `principal: Annotated[Principal, role("compliance", "admin")]`."""
    return Security(API_KEY, scopes=list(allowed))


def authorized(request: Request, allowed: Collection[str]) -> Principal:
    """The caller, if it has one of these roles: what `role`'s dependency checks, for the
    publishing routes to call themselves (their decorators declare the same to OpenAPI).
    Every publisher calls them for every fact, and FastAPI's resolution of the one
    dependency was 9% of the event loop's part of a single publish (`python -m bench
    instructions --http`: 774,187 -> 703,737 instructions per request, 2026-12-01). The
    other routes keep the dependency."""
    principal = caller(request)
    if not principal.roles.intersection(allowed):
        raise Problem(403, "forbidden", f"this needs one of the roles: {', '.join(allowed)}")
    return principal


def sid_path() -> Any:
    return Path(json_schema_extra={"pattern": SID_PATTERN})


def purpose_path() -> Any:
    """A purpose in a URL, documented as the envelope's names are (a name no policy defines
    is still the route's own 422 `unknown_purpose`)."""
    return Path(json_schema_extra={"pattern": NAME_PATTERN})


def version_path() -> Any:
    """A policy version in a URL, documented as long as the envelope takes one."""
    return Path(json_schema_extra={"minLength": 1, "maxLength": 64})


def parse_sid(sid: str) -> UUID:
    """A sid in a URL; anything else is simply not a subject of this tenant (404). Only the
    documented spellings: `UUID(hex=...)` alone also took a hyphen anywhere, a sign, and
    digits grouped by underscores."""
    if not is_sid_spelling(sid):
        raise Problem(404, "unknown_subject", "no such subject")
    return UUID(hex=sid)


# A query parameter's name as a refusal may quote it: only one that looks like a name.
_QUERY_NAME = re.compile(r"^[a-z][a-z_]{0,31}$")
_ROUTE_QUERY: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> frozenset[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


async def strict_query(request: Request) -> None:
    """Refuse a query parameter the route does not take, or one given twice.

    FastAPI ignores the first and keeps the last of the second: `?as-of=2025-03-01...` (a
    typo for `as_of`) was answered as of now, and `?as_of=A&as_of=B` as of B, each as if
    the question had been asked as written. On the routes that ask the ledger questions.
    """
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = _ROUTE_QUERY.get(id(route))
    if allowed is None:
        allowed = _ROUTE_QUERY[id(route)] = _query_names(dependant)
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        quoted = name if _QUERY_NAME.match(name) else None
        if name not in allowed:
            said = repr(quoted) if quoted else "(unnamed)"
            raise Problem(422, "unknown_field", f"this route takes no query parameter {said}")
        if name in seen:
            raise Problem(422, "invalid_field", f"query parameter {name!r} is given twice", name)
        seen.add(name)


# An instant given in a query or a body: documented as RFC 3339 with an offset (the pattern the
# envelope's parser takes), so a client or schemathesis knows what to send; checked by that
# parser (`invalid_timestamp`, which names the parameter), not by FastAPI's validation, whose
# refusal has another code. They were plain strings in the document, and schemathesis sent
# words where instants belong.
INSTANT_SCHEMA: dict[str, Any] = {"format": "date-time", "pattern": INSTANT_PATTERN}


def instant_query() -> Any:
    return Query(json_schema_extra=INSTANT_SCHEMA)
