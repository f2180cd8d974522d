"""The HTTP server's own refusal, of bytes it cannot read as a request, as a problem.

uvicorn answers a request it cannot parse (a malformed request line or header, or a request
line and headers over the parser's limit, about 64 KiB) before the application sees it,
with `400 text/plain` "Invalid HTTP request received.": the one answer of the service that
was not problem+json with a `code`, so a client that reads every error's `code` found none.
The parser, and so the speed, is uvicorn's own (httptools); only that answer changes.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.problems import PROBLEM, problem_body

MALFORMED = orjson.dumps(
    problem_body(
        400,
        "malformed_request",
        "the request could not be read as HTTP/1.1: a malformed request line or header, or "
        "a request line and headers over 64 KiB",
    )
)


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        # `msg` is uvicorn's (it logs it as a warning); the answer is the problem above.
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: " + PROBLEM.encode("ascii") + b"\r\n",
                b"content-length: " + str(len(MALFORMED)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                MALFORMED,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
