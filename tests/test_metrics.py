"""The Prometheus text /metrics serves: what it counts, rendered as Prometheus reads it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.metrics import BUCKETS, Metrics

_BUCKET = re.compile(r'^ledger_http_request_seconds_bucket\{route="([^"]+)",le="([^"]+)"\} (\d+)$')


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["/v1/facts", "/v1/facts:batch", "unmatched"]),
            st.one_of(st.sampled_from(BUCKETS), st.floats(0, 5, allow_nan=False)),
        ),
        max_size=60,
    )
)
def test_each_latency_bucket_counts_the_requests_at_or_under_its_bound(
    observed: list[tuple[str, float]],
) -> None:
    """Prometheus histogram buckets are cumulative (`le`: at or under the bound)."""
    metrics = Metrics()
    for route, seconds in observed:
        metrics.observe(route, "POST", 201, seconds)
    rendered: dict[tuple[str, str], int] = {}
    for line in metrics.render(projection_lag=0).splitlines():
        found = _BUCKET.match(line)
        if found:
            rendered[(found.group(1), found.group(2))] = int(found.group(3))
    expected: dict[tuple[str, str], int] = {}
    for route in {r for r, _ in observed}:
        mine = [s for r, s in observed if r == route]
        for bound in BUCKETS:
            expected[(route, str(bound))] = sum(1 for s in mine if s <= bound)
        expected[(route, "+Inf")] = len(mine)
    assert rendered == expected


def test_the_workers_metrics_server_answers_and_survives_a_failed_render() -> None:
    """`worker --metrics-port`'s endpoint: what the render gives, a 503 (not a traceback,
    not a dead thread) when it fails, /healthz, and 404 for anything else."""
    import socket

    import httpx

    from api.metrics_server import PROMETHEUS_TEXT, MetricsServer

    answers: Iterator[str | Exception] = iter(
        ["ledger_projection_lag 3\n", RuntimeError("views away"), "ok 1\n"]
    )

    def render() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = MetricsServer(listening, render)
    base = f"http://127.0.0.1:{server.address[1]}"
    try:
        first = httpx.get(f"{base}/metrics")
        assert (first.status_code, first.text) == (200, "ledger_projection_lag 3\n")
        assert first.headers["content-type"] == PROMETHEUS_TEXT
        assert httpx.get(f"{base}/metrics").status_code == 503
        assert httpx.get(f"{base}/metrics").text == "ok 1\n"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/metrics/").status_code == 404
    finally:
        server.close()


def test_the_workers_metrics_server_speaks_tls_with_the_services_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With LEDGER_TLS_CERT and LEDGER_TLS_KEY the worker's /metrics is HTTPS, as `serve`
    is; a client speaking plain HTTP to it fails its own connection, one line in the log,
    and the next scrape is answered."""
    import socket
    import ssl

    import httpx

    from api.metrics_server import MetricsServer
    from tests.tls_support import self_signed

    pem = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pem.cert, pem.key)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = MetricsServer(listening, lambda: "ledger_projection_lag 0\n", tls)
    port = server.address[1]
    trusted = ssl.create_default_context(cafile=str(pem.cert))
    try:
        assert httpx.get(f"https://127.0.0.1:{port}/metrics", verify=trusted).status_code == 200
        with caplog.at_level("WARNING", logger="consent_ledger.metrics"):
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            with pytest.raises(httpx.HTTPError):  # nor a client that does not trust it
                httpx.get(f"https://127.0.0.1:{port}/metrics", timeout=10)
            again = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusted)
        assert again.json() == {"status": "ok"}
        assert [r.getMessage() for r in caplog.records][:1] == [
            "metrics: a connection failed (SSLError)"
        ]
    finally:
        server.close()
