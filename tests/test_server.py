"""The real server process (uvicorn on a free port) driven over HTTP: publish, query,
erase, verify."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.settings import Settings
from tests.cli_support import start_with
from tests.facts import grant
from tests.server_support import demo_key, free_port, serve, wait_ready


def test_publish_query_erase_verify_over_http(backend_settings: Settings) -> None:
    """On both backends; in Kafka mode the server process is the ledger writer."""
    settings = backend_settings
    key = demo_key(settings, "publisher", "compliance", "admin")
    server, base = serve(settings)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        fact = {
            "event_id": "http-1",
            "type": "consent.granted",
            "subject": "+998901112233",
            "occurred_at": "2025-06-01T10:00:00+05:00",
            "source": "test",
            "policy_version": "crmpro-1.0",
            "purposes": ["marketing"],
            "personal_data": {"full_name": "Server Test"},
        }
        receipt = httpx.post(f"{base}/v1/facts", json=fact, headers=headers)
        assert receipt.status_code == 201, receipt.text
        sid = receipt.json()["sid"]
        consents = httpx.get(f"{base}/v1/subjects/{sid}/consents", headers=headers).json()
        states = {p["purpose"]: p["state"] for p in consents["purposes"]}
        assert states["marketing"] == "granted"
        erased = httpx.post(
            f"{base}/v1/subjects/{sid}/erasure", headers=headers, json={"ground": "subject_request"}
        )
        assert erased.status_code == 201, erased.text
        trail = httpx.get(f"{base}/v1/subjects/{sid}/trail", headers=headers).json()
        assert trail["erased"] is True
        assert trail["facts"][0]["personal_data"] == {"erased": True}
        verify = httpx.get(f"{base}/v1/verify", headers=headers).json()
        assert verify["ok"] is True
        # Kafka mode checks the ledger topic itself: the demo policy, two subject events
        # and the erasure at least.
        assert verify["facts_checked"] >= 4
        # Bytes the server cannot read as a request are refused before the application
        # sees them: as a problem too (it was uvicorn's `400 text/plain`).
        for unreadable in (
            b"GET /v1/verify?x=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET /v1/verify HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
            b"GET /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Length: +2jyt\r\n\r\n",
        ):
            head, _, body = raw_answer(base, unreadable).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), head
            assert b"content-type: application/problem+json" in head.lower(), head
            assert json.loads(body)["code"] == "malformed_request"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.stdout is not None
    logs = server.stdout.read().decode()
    lines = [line for line in logs.splitlines() if line.startswith("{")]
    assert any('"route":"/v1/facts"' in line and '"status":201' in line for line in lines)
    assert "Server Test" not in logs and "+998901112233" not in logs and sid not in logs
    for path in settings.data_dir.rglob("*"):
        if path.is_file():
            assert b"Server Test" not in path.read_bytes()
            assert b"+998901112233" not in path.read_bytes()


def raw_answer(base: str, request: bytes) -> bytes:
    """What the server at `base` answers to these bytes, up to its closing the connection."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_concurrent_batches_and_single_publishes_through_the_writer_process(
    settings: Settings,
) -> None:
    """The service's own event loop (uvicorn's, uvloop where installed) hands groups to the
    writer process and reads its answers: batches of 1,000 facts, larger than a socket's
    buffer both ways, and single publishes arriving meanwhile, each get their own
    outcomes."""
    headers = {"Authorization": f"Bearer {demo_key(settings, 'publisher')}"}
    server, base = serve(settings)

    # A fact as a web form sends it: its evidence makes a group of 1,000 about 500 KB, over
    # twice a socket's default buffer here (212,992 bytes).
    evidence = {"user_agent": "Mozilla/5.0 " + "x" * 300, "url": "https://crmpro.uz/form"}

    def batch(b: int) -> list[dict[str, Any]]:
        facts = [
            grant(f"batch-{b}-{i}", event_id=f"batch-{b}-{i}", evidence=evidence)
            for i in range(1000)
        ]
        response = httpx.post(
            f"{base}/v1/facts:batch", json={"facts": facts}, headers=headers, timeout=120
        )
        assert response.status_code == 200, response.text[:300]
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def single(i: int) -> dict[str, Any]:
        fact = grant(f"single-{i}", event_id=f"single-{i}")
        response = httpx.post(f"{base}/v1/facts", json=fact, headers=headers, timeout=120)
        assert response.status_code == 201, response.text[:300]
        receipt: dict[str, Any] = response.json()
        return receipt

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            batches = [pool.submit(batch, b) for b in range(3)]
            singles = [pool.submit(single, i) for i in range(60)]
            results = [r for f in batches for r in f.result()]
            receipts = [f.result() for f in singles]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [r["status"] for r in results] == [201] * 3000
    assert [r["receipt"]["event_id"] for r in results] == [
        f"batch-{b}-{i}" for b in range(3) for i in range(1000)
    ]
    assert [r["event_id"] for r in receipts] == [f"single-{i}" for i in range(60)]
    positions = [r["receipt"]["position"] for r in results] + [r["position"] for r in receipts]
    assert len(set(positions)) == 3060


def test_serve_refuses_a_configuration_it_cannot_start_with_in_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    ok = Settings(data_dir=tmp_path / "data")
    demo_key(ok, "admin")
    wrong_key = base64.b64encode(bytes(32)).decode()
    for env in (
        {"LEDGER_DATA_DIR": str(afile)},
        {"LEDGER_DATA_DIR": str(ok.data_dir), "LEDGER_MASTER_KEY": wrong_key},
    ):
        out = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "serve", "--port", str(free_port())],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert (
            out.stderr.startswith("consent-ledger: configuration: ") and out.stderr.count("\n") == 1
        )
        assert wrong_key not in out.stderr


def test_serve_demo_prints_an_address_and_a_key_that_work(tmp_path: Path) -> None:
    """`make run`'s promise: the lines it prints are a working address (the port taken,
    with --port 0 too, where the banner said ":0") and key, and the curl it shows records a
    grant and reads it back."""
    import re
    import shlex
    import signal

    from tests.cli_support import lines_until, start_with

    server = start_with(
        {**os.environ, "LEDGER_DATA_DIR": str(tmp_path / "data")},
        *("serve", "--demo", "--subjects", "8", "--port", "0"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        # Up to the banner's last line; its curl is tried at once, as a person pasting it
        # would: a banner printed before the service listened showed a refused address.
        lines = lines_until(server.stdout, lambda line: line.startswith("  curl -s http"))
        serving = next(line for line in lines if line.startswith("serving the demo tenant on "))
        base = serving.split()[5]
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", base), serving
        # The service's own log says where it listens, for an operator without the banner.
        logged = [json.loads(line) for line in lines if line.startswith("{")]
        assert {"message": "listening", "url": base}.items() <= logged[-1].items(), logged
        key = next(line for line in lines if line.startswith("API key")).rsplit(" ", 1)[1]
        # The printed curl, as a person would paste it: one command over three lines.
        start = next(i for i, line in enumerate(lines) if line.startswith("  curl -s -X POST"))
        words = shlex.split(" ".join(line.rstrip("\\") for line in lines[start : start + 4]))
        body = words[words.index("-d") + 1]
        assert words[4] == f"{base}/v1/facts" and f"Authorization: Bearer {key}" in words
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        recorded = httpx.post(words[4], content=body, headers=headers, timeout=30)
        assert recorded.status_code == 201, recorded.text
        sid = recorded.json()["sid"]
        read = httpx.get(f"{base}/v1/subjects/{sid}/consents", headers=headers, timeout=30)
        assert read.status_code == 200, read.text
        marketing = [p for p in read.json()["purposes"] if p["purpose"] == "marketing"]
        assert marketing[0]["state"] == "granted"
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)


def test_serve_with_a_certificate_answers_https_only(tmp_path: Path) -> None:
    """LEDGER_TLS_CERT and LEDGER_TLS_KEY: the banner's address and curl are HTTPS and
    work as printed; plain HTTP, or a client that does not trust the certificate, gets
    nothing."""
    import shlex
    import signal
    import ssl

    from tests.cli_support import lines_until, start_with
    from tests.tls_support import self_signed

    pem = self_signed(tmp_path)
    env = {"LEDGER_TLS_CERT": str(pem.cert), "LEDGER_TLS_KEY": str(pem.key)}
    server = start_with(
        {**os.environ, "LEDGER_DATA_DIR": str(tmp_path / "data"), **env},
        *("serve", "--demo", "--subjects", "8", "--port", "0"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        lines = lines_until(server.stdout, lambda line: "/consents" in line)  # its last line
        base = next(line for line in lines if line.startswith("serving the demo")).split()[5]
        assert base.startswith("https://127.0.0.1:"), base
        start = next(i for i, line in enumerate(lines) if " -X POST " in line)
        words = shlex.split(" ".join(line.rstrip("\\") for line in lines[start : start + 4]))
        assert words[:4] == ["curl", "-s", "--cacert", str(pem.cert)]
        body, key = words[words.index("-d") + 1], next(w for w in words if "Bearer" in w)
        trusting = ssl.create_default_context(cafile=str(pem.cert))
        headers = {"Authorization": key.split(": ", 1)[1], "Content-Type": "application/json"}
        recorded = httpx.post(words[6], content=body, headers=headers, verify=trusting)
        assert words[6] == f"{base}/v1/facts" and recorded.status_code == 201, recorded.text
        sid = recorded.json()["sid"]
        read = httpx.get(f"{base}/v1/subjects/{sid}/consents", headers=headers, verify=trusting)
        assert read.status_code == 200, read.text
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{base}/healthz")  # the system's CAs do not know it
        with pytest.raises(httpx.TransportError):  # TLS is not optional on this port
            httpx.get(base.replace("https://", "http://") + "/healthz")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)


@pytest.mark.parametrize(
    ("host", "warned"), [("127.0.0.1", False), ("127.0.0.2", False), ("0.0.0.0", True)]
)
def test_plain_http_off_this_host_is_warned_of(host: str, warned: bool) -> None:
    """`serve` says at start that keys would cross the network in the clear, unless it
    listens on this host only."""
    from ledger.cli.service import listening_socket, loopback

    with listening_socket(host, 0) as listening:
        assert loopback(listening) is not warned


def test_serve_refuses_a_certificate_it_cannot_serve_with_in_one_line(tmp_path: Path) -> None:
    from tests.tls_support import self_signed

    pem = self_signed(tmp_path)
    data = str(tmp_path / "data")
    for tls, said in [
        ({"LEDGER_TLS_CERT": str(pem.cert)}, "LEDGER_TLS_CERT and LEDGER_TLS_KEY go together"),
        (
            {"LEDGER_TLS_CERT": str(pem.cert), "LEDGER_TLS_KEY": str(tmp_path / "none.pem")},
            f"LEDGER_TLS_KEY: cannot read {tmp_path / 'none.pem'}: No such file",
        ),
        (
            {"LEDGER_TLS_CERT": str(pem.cert), "LEDGER_TLS_KEY": str(pem.other_key)},
            "LEDGER_TLS_CERT and LEDGER_TLS_KEY are not a PEM certificate and its private key",
        ),
        (
            {"LEDGER_TLS_CERT": str(pem.key), "LEDGER_TLS_KEY": str(pem.key)},
            "LEDGER_TLS_CERT and LEDGER_TLS_KEY are not a PEM certificate and its private key",
        ),
        (  # OpenSSL would ask for the passphrase on the terminal of a service
            {"LEDGER_TLS_CERT": str(pem.cert), "LEDGER_TLS_KEY": str(pem.encrypted_key)},
            "LEDGER_TLS_KEY is encrypted",
        ),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "serve", "--port", str(free_port())],
            env={**os.environ, "LEDGER_DATA_DIR": data, **tls},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"consent-ledger: configuration: {said}"), out.stderr
        assert out.stderr.count("\n") == 1


def test_serve_on_a_port_in_use_says_so_before_loading_anything(tmp_path: Path) -> None:
    """A port in use ended in uvicorn's error and exit 3 (this CLI's "no such subject"),
    after the demo was loaded and a key made and printed for a service that never ran."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "serve", "--demo", "--port", str(port)],
            env={**os.environ, "LEDGER_DATA_DIR": str(tmp_path / "data")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert refused.returncode == 6, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr == (
        f"consent-ledger: serve: cannot listen on 127.0.0.1 port {port}: Address already in use\n"
    )


@pytest.mark.parametrize(
    ("host", "status", "said"),
    [
        ("no-such-host.invalid", 2, "serve: --host 'no-such-host.invalid' names no address here: "),
        ("192.0.2.1", 6, "serve: cannot listen on 192.0.2.1 port 8000: "),  # not this host's
    ],
)
def test_serve_on_an_address_it_cannot_have_says_so_in_one_line(
    tmp_path: Path, host: str, status: int, said: str
) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "serve", "--demo", "--host", host],
        env={**os.environ, "LEDGER_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == status, refused.stderr
    assert refused.stdout == ""
    assert refused.stderr.startswith(f"consent-ledger: {said}")
    assert refused.stderr.count("\n") == 1


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_plain_http_beyond_this_host_is_warned_of(tmp_path: Path, host: str, warned: bool) -> None:
    """API keys and personal data cross the network in the clear when the service listens
    beyond this host without TLS: `serve` says so as it starts (and not on loopback)."""
    port = free_port()
    server = start_with(
        {**os.environ, "LEDGER_DATA_DIR": str(tmp_path / "data")},
        *("serve", "--demo", "--host", host, "--port", str(port)),
        stderr=subprocess.STDOUT,
        text=False,
    )
    try:
        wait_ready(server, f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    warning = (
        f"serve: warning: plain HTTP on {host}: API keys and personal data "
        "cross the network in the clear"
    )
    assert (warning.encode() in output) == warned, output
