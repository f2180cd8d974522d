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
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems

log = logging.getLogger("consent_ledger.http")
MAX_BODY = 16 * 1024 * 1024


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        answered = False

        async def watch(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        length = Headers(scope=scope).get("content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                await problems.respond(
                    413, "oversize", f"a request body may be at most {MAX_BODY} bytes"
                )(scope, receive, watch)
                return
            try:
                await self.app(scope, receive, watch)
            except Exception as exc:
                if answered:  # the response is already on its way: nothing else can be sent
                    raise
                response = await problems.on_unexpected(Request(scope), exc)
                await response(scope, receive, watch)
        finally:
            # Counted and logged however it ended (a response that broke off midway too).
            self._observe(scope, status, time.perf_counter() - started)

    @staticmethod
    def _observe(scope: Scope, status: int, seconds: float) -> None:
        path = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"]
        service: Any = getattr(scope["app"].state, "service", None)
        if service is not None:
            service.metrics.observe(path, method, status, seconds)
        # Structured log line: the route template, never the URL's values or any body.
        fields = {"route": path, "method": method, "status": status, "ms": round(seconds * 1000, 2)}
        log.info("request", extra=fields)
