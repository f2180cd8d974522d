"""The real server process (uvicorn on a free port) driven over HTTP: publish, query,
erase, verify."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from api.app import keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.settings import Settings
from tests.kafka_support import kafka_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_publish_query_erase_verify_over_http(backend_settings: Settings) -> None:
    """On both backends; in Kafka mode the server process is the ledger writer."""
    settings = backend_settings
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    store = ApiKeys(keys_path(settings))
    _, key = store.create("demo", {"publisher", "compliance", "admin"})
    store.close()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "serve", "--port", str(port)],
        env={
            **os.environ,
            "LEDGER_DATA_DIR": str(settings.data_dir),
            **(kafka_env(settings) if settings.backend == "kafka" else {}),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness: the server answers /readyz
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
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
