"""RFC 9457 problem details: every error the API returns, with a stable `code`.

Bodies name fields and rules, never values: a value may be personal data.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.responses import OrjsonResponse
from ledger.checkpoint import LogNotIntact, SinceTooLarge
from ledger.errors import Code, FactRejected
from ledger.kafka.acls import refused_access
from ledger.keystore import KeyStoreBusyError, MasterKeyMismatch
from ledger.storage import storage_failure
from projections.store import ViewsAheadOfLog, ViewsOfAnotherLog

log = logging.getLogger("consent_ledger.http")

_VIEWS_NOT_THIS_LOGS: dict[type, str] = {
    ViewsAheadOfLog: "views_ahead_of_log",
    ViewsOfAnotherLog: "views_of_another_log",
}

PROBLEM = "application/problem+json"
# A 503 `ledger_unavailable` says to retry after this many seconds (`Retry-After`); for as
# long, the service's views do not ask the broker again (projections.views.Views).
UNAVAILABLE_RETRY_AFTER_S = 5
_FIELD = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable (the writer process stopped, the storage failed, the key store "
    "was rotated to a new master key, or the views are not this log's; Kafka mode: writer "
    "fenced, broker unreachable, or a topic refused)",
}


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "stable, machine-readable: the rule broken"},
        "detail": {"type": "string"},
        "field": {"type": "string"},
    },
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem+json answers."""
    return {
        status: {
            "description": TITLES.get(status, "Error"),
            "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}},
            **({"headers": {"WWW-Authenticate": CHALLENGE}} if status == 401 else {}),
        }
        for status in statuses
    }


# What every 401 carries (`api.deps.caller`).
CHALLENGE = {
    "description": 'The scheme to use: `Bearer realm="consent-ledger"`, with '
    '`error="invalid_token"` when the key given is unknown, revoked or expired (RFC 6750).',
    "required": True,
    "schema": {"type": "string"},
}


class Problem(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field = status, code, detail, field
        self.headers = headers or {}


def problem_body(status: int, code: str, detail: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://consent-ledger.invalid/problems/{code}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    return body


def respond(status: int, code: str, detail: str, field: str | None = None) -> OrjsonResponse:
    return OrjsonResponse(problem_body(status, code, detail, field), status, media_type=PROBLEM)


def status_of(rejected: FactRejected) -> int:
    if rejected.code is Code.EVENT_ID_CONFLICT:
        return 409
    if rejected.code is Code.OVERSIZE:
        return 413
    if rejected.code is Code.UNKNOWN_SUBJECT:
        return 404
    return 422


async def on_problem(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, Problem)
    response = respond(exc.status, exc.code, exc.detail, exc.field)
    response.headers.update(exc.headers)
    return response


async def on_rejected(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, FactRejected)
    return respond(status_of(exc), exc.code.value, exc.message, exc.field)


async def on_validation(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    # A location part can be a key the client chose (an unknown field): echo only names
    # that look like field names, since a key may be personal data too.
    location = [
        str(p) if isinstance(p, int) or _FIELD.match(str(p)) else "(unnamed)"
        for p in first.get("loc", ())
        if p not in ("body", "query", "path")
    ]
    field = ".".join(location) or None
    kind = str(first.get("type", ""))
    code = (
        "invalid_json"
        if kind == "json_invalid"
        else ("missing_field" if kind == "missing" else "invalid_field")
    )
    return respond(422, code, f"{kind or 'invalid'} at {field or 'the body'}", field)


async def on_http(_: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode: for this API that is invalid JSON.
        return respond(422, "invalid_json", "the body is not valid JSON")
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "oversize"}
    response = respond(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
    # Keep what the framework says in headers, e.g. `Allow` on a 405 (RFC 9110).
    response.headers.update(exc.headers or {})
    return response


async def on_unexpected(_: Request, exc: Exception) -> OrjsonResponse:
    # Kafka mode's two ways of not writing: both mean "nothing was recorded, try later".
    kind = type(exc).__name__
    if kind == "WriterFenced":
        return respond(503, "writer_fenced", "another writer owns the ledger partitions")
    refused = str(exc) if kind == "AccessRefused" else refused_access(exc)
    if refused is not None:
        # An ACL the cluster refused the ledger (revoked under the running service, say):
        # nothing was recorded, and a retry works once the operator grants it. The log line
        # names the topic, group or transactional id; the answer, only what happened.
        log.error("Kafka ACL refused: %s", refused, extra={"error": kind})
        response = respond(
            503, "kafka_access_refused", "the Kafka cluster refused the ledger an ACL: see its log"
        )
        response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_S)
        return response
    if kind == "LedgerUnavailable":
        # A write it did not take, or a read (the views catching up) it did not answer.
        response = respond(503, "ledger_unavailable", "the Kafka broker did not answer; retry")
        response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_S)
        return response
    if kind in ("TopicRefused", "RecordsLost"):
        # Met when the writer takes the ledger again after an outage and finds the topics
        # changed under it (records lost, partitions added): an operator must act. Its
        # message names topics, partitions, offsets and settings, never a request's values.
        log.error("Kafka topic refused: %s", exc, extra={"error": kind})
        return respond(
            503, "topic_refused", "the Kafka topics are not as the ledger needs them: see its log"
        )
    if kind == "WriterUnavailable":
        # The writer process died mid-request: the fact may or may not be recorded; a retry
        # with the same event_id gets the first receipt if it was.
        return respond(503, "writer_unavailable", "the ledger's writer stopped; retry the write")
    if isinstance(exc, KeyStoreBusyError):
        # Committed (the erasure is recorded, the key deleted); the WAL's old page images
        # wait for the next erasure. A retry with the same event_id is answered as a retry.
        return respond(
            503, "key_store_busy", "recorded, but another process holds the key store open"
        )
    views_code = _VIEWS_NOT_THIS_LOGS.get(type(exc))
    if views_code is not None:
        # Views of a longer log, or of another one: answering from them would count people
        # the log does not hold. An operator rebuilds them (the message in the log says how).
        log.error("%s", exc, extra={"error": type(exc).__name__})
        return respond(503, views_code, "the views are not this log's: see the service's log")
    if isinstance(exc, MasterKeyMismatch):
        # The key store was rotated under this running process: it refuses to read or write
        # keys with the retired master key; a restart with the new one serves again.
        return respond(
            503, "master_key_mismatch", "the key store is under another master key: restart"
        )
    failure = storage_failure(exc)
    if failure is not None:
        # A full disk or a file locked elsewhere: nothing about the request, and it passes
        # when an operator acts. A write retried with the same event_id gets the first
        # receipt of a fact that was recorded (see ledger.storage). The reason is the
        # ledger's own words, never the request's.
        log.error("storage unavailable: %s", failure.reason, extra={"error": "StorageUnavailable"})
        return respond(
            503, "storage_unavailable", f"the ledger's storage failed ({failure.reason}); retry"
        )
    # The exception text may carry personal data; the log line names only its type.
    return respond(500, "internal_error", f"unexpected {type(exc).__name__}")


@contextlib.contextmanager
def signing_refusals() -> Iterator[None]:
    """What refuses a signed proof (a checkpoint, an evidence package), as problem+json."""
    try:
        yield
    except LogNotIntact:
        raise Problem(
            503, "log_not_intact", "the log does not verify: the ledger signs nothing for it"
        ) from None
    except SinceTooLarge:
        raise Problem(
            422, "invalid_field", "since_sizes name a tree larger than the log's", "since_sizes"
        ) from None


# `since_sizes`, as the OpenAPI document states it.
SIZES = r"^[0-9]+(,[0-9]+)*$"


def parse_sizes(text: str | None) -> dict[int, int] | None:
    """`since_sizes`: an earlier checkpoint's tree sizes, comma-separated in partition order."""
    if text is None:
        return None
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = [-1]
    if any(size < 0 for size in sizes):
        raise Problem(
            422,
            "invalid_field",
            "since_sizes is whole numbers of at least 0, comma-separated",
            "since_sizes",
        )
    return dict(enumerate(sizes))
