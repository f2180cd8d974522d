"""The Kafka-mode worker's /metrics: a Prometheus endpoint for a process with no HTTP API.

A worker has no FastAPI app to put the route on, and one endpoint read every few seconds by
a scraper needs no more than the standard library's threaded HTTP server, on a thread of its
own beside the intake writer and the projections.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
log = logging.getLogger("consent_ledger.metrics")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """One line, not the standard library's traceback on stderr: a client that spoke
        plain HTTP to the TLS port, or hung up mid-answer."""
        error = sys.exc_info()[1]
        log.warning("metrics: a connection failed (%s)", type(error).__name__)


class MetricsServer:
    """`GET /metrics` (what `render` gives) and `GET /healthz`, on an already bound socket,
    until `close`."""

    def __init__(
        self,
        listening: socket.socket,
        render: Callable[[], str],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    try:
                        text = render()
                    except Exception as error:  # the views' store away: said, not a traceback
                        log.error("metrics not rendered (%s)", type(error).__name__)
                        self._answer(503, "text/plain; charset=utf-8", b"unavailable\n")
                        return
                    self._answer(200, PROMETHEUS_TEXT, text.encode())
                elif self.path == "/healthz":
                    self._answer(200, "application/json", b'{"status":"ok"}')
                else:
                    self._answer(404, "text/plain; charset=utf-8", b"not found\n")

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # client addresses and paths: nothing the service's logs should hold

        self._server = _Server(listening.getsockname()[:2], Handler, bind_and_activate=False)
        self._server.socket.close()
        # With TLS (LEDGER_TLS_CERT and LEDGER_TLS_KEY, as `serve`), each connection's
        # handshake happens in its own thread, at its first read: a client that never
        # finishes one holds its thread, not the accepting loop.
        self._server.socket = (
            listening
            if tls is None
            else tls.wrap_socket(listening, server_side=True, do_handshake_on_connect=False)
        )
        self._server.server_activate()
        self.address = self._server.socket.getsockname()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
