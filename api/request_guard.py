"""Around every request: the body-size limit, the last-resort problem answer, metrics, the log line.

A plain ASGI middleware rather than `@app.middleware("http")`: Starlette runs that kind in an
anyio task group per request and re-streams every response through a memory channel, which
cost more than the rest of a small request's route (`python -m bench http`, the single
publish row). This one only watches the messages going out.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.access_log import a_sid, keep
from ledger.bug_report import SaysNoData, report, summary

log = logging.getLogger("consent_ledger.http")


class BodyTooLarge(StarletteHTTPException):
    """A body sent without Content-Length grew past the limit while it was read. An HTTP
    exception, which FastAPI passes on from its own reading of a body (anything else it
    turns into a 400), so the app's handler answers it as 413 `oversize`."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"a request body may be at most {limit} bytes")


class ResponseBrokeOff(SaysNoData):
    """A bug after a response started, in place of the error itself (its frames, no
    message), for the server to log."""


class RequestGuard:
    """`max_body` is LEDGER_HTTP_MAX_BODY_BYTES: a body that declares more is refused before
    the route runs; one that does not declare its length (chunked) is counted as the route
    reads it and refused once it passes the limit, so no route holds more in memory."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        answered = False
        method = scope["method"]
        if method == "HEAD":
            # Every general-purpose server must answer HEAD as GET without the body (RFC 9110
            # 9.1, 9.3.2); FastAPI's routes list GET alone, so HEAD was a 405 (`curl -I`, and
            # monitors that probe /healthz with it). Logged and counted as HEAD.
            scope = {**scope, "method": "GET"}
            send = _without_body(send)

        async def watch(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        headers = Headers(scope=scope)
        length = headers.get("content-length")
        try:
            if length is not None and not (length.isascii() and length.isdigit()):
                # Not a length at all (`+2`, `1, 2`, `abc`): the real server's parser refuses
                # such a header before the app sees it (RFC 9112 6.3), and an app reached
                # without it (an ASGI client) answers as the server would, not with a 413
                # that names a size limit the request never came near.
                await _malformed()(scope, receive, watch)
                return
            if length is not None and int(length) > self.max_body:
                await self._oversize()(scope, receive, watch)
                return
            if scope["method"] in _WITH_BODY:
                coding = headers.get("content-encoding")
                if coding is not None and coding.strip().lower() not in ("", "identity"):
                    # Read as it came, a gzip body was refused as `invalid_json`, which sends
                    # its client looking for a fault in its JSON.
                    await _not_encoded()(scope, receive, watch)
                    return
                media = headers.get("content-type")
                if media is None:
                    # Every body this API takes is JSON; a client that names no type (Python's
                    # `requests` with bytes) gets it read as JSON on every route alike.
                    scope = {**scope, "headers": [*scope["headers"], _JSON_TYPE]}
                elif not is_json(media):
                    await _unsupported()(scope, receive, watch)
                    return
            try:
                await self.app(
                    scope, receive if length is not None else self._counted(receive), watch
                )
            except Exception as exc:
                if answered:
                    # The response is already on its way: nothing else can be sent, and what
                    # is raised reaches uvicorn, which logs it message and all; a message may
                    # quote a value, so it gets the frames alone (`ledger.bug_report`).
                    said = [f"the response broke off: {summary(exc)}", *report(exc)]
                    raise ResponseBrokeOff("\n".join(said)) from None
                if isinstance(exc, BodyTooLarge):  # read outside the app's own handlers
                    await self._oversize()(scope, receive, watch)
                    return
                response = await problems.on_unexpected(Request(scope), exc)
                await response(scope, receive, watch)
        finally:
            # Counted and logged however it ended (a response that broke off midway too).
            self._observe(scope, method, status, time.perf_counter() - started)

    def _oversize(self) -> Response:
        return problems.respond(
            413, "oversize", f"a request body may be at most {self.max_body} bytes"
        )

    def _counted(self, receive: Receive) -> Receive:
        """`receive`, refusing a body (sent without its length) once it passes the limit."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        return counted

    @staticmethod
    def _observe(scope: Scope, method: str, status: int, seconds: float) -> None:
        path = _template(scope)
        service: Any = getattr(scope["app"].state, "service", None)
        if service is not None:
            service.metrics.observe(path, method, status, seconds)
        # Structured log line: the route template, never the URL's values or any body.
        fields = {"route": path, "method": method, "status": status, "ms": round(seconds * 1000, 2)}
        principal = scope.get("ledger.principal")
        if principal is not None:
            fields["key_id"] = principal.key_id
            sid = a_sid(scope.get("path_params", {}).get("sid"))
            if sid is not None and service is not None:
                keep(
                    service.access, principal.tenant, [sid], principal.key_id, method, path, status
                )
        log.info("request", extra=fields)


_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_JSON_TYPE = (b"content-type", b"application/json")


def is_json(content_type: str) -> bool:
    """`application/json` or a `+json` type (RFC 6839), in UTF-8 (RFC 8259 requires it)."""
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return False
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _without_body(send: Send) -> Send:
    """`send`, with every part of the response's body left out (its headers kept, the
    Content-Length of the GET answer included, as RFC 9110 9.3.2 allows)."""

    async def headers_only(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return headers_only


def _malformed() -> Response:
    # The code of the server's own refusal of unreadable requests (api.http_protocol).
    return problems.respond(
        400, "malformed_request", "the Content-Length header is not a number of bytes"
    )


def _unsupported() -> Response:
    # The declared type is not echoed: like every refusal, it names what is expected, never
    # what the client sent.
    return problems.respond(
        415,
        "unsupported_media_type",
        "request bodies are JSON in UTF-8: send Content-Type: application/json",
    )


def _not_encoded() -> Response:
    # RFC 9110 15.5.16: a content coding the server does not take is a 415, with the codings
    # it does take in Accept-Encoding.
    response = problems.respond(
        415,
        "unsupported_media_type",
        "request bodies are not content-encoded: send them without Content-Encoding",
    )
    response.headers["Accept-Encoding"] = "identity"
    return response


def _template(scope: Scope) -> str:
    """The matched route's template, never the URL's values; "unmatched" for no route.

    FastAPI puts its own routes in the scope; Starlette's (the OpenAPI document, the docs
    pages) leave only their endpoint there, so their template is looked up by it.
    """
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        for candidate in scope["app"].routes:
            if getattr(candidate, "endpoint", None) is endpoint:
                return str(candidate.path)
    return "unmatched"
