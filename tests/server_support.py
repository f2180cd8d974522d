"""Running `consent-ledger serve` as a real process: a free port, a key, readiness."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable

import httpx

from api.app import keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.settings import Settings
from tests.cli_support import Started, start_with
from tests.kafka_support import kafka_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_key(settings: Settings, *roles: str) -> str:
    """The demo tenant loaded into the data directory, and a key of it with these roles."""
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    store = ApiKeys(keys_path(settings))
    _, key = store.create("demo", set(roles))
    store.close()
    return key


def serve(settings: Settings, preexec_fn: Callable[[], None] | None = None) -> tuple[Started, str]:
    """`consent-ledger serve` on a free port, once it answers /readyz; and its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "LEDGER_DATA_DIR": str(settings.data_dir),
        **(kafka_env(settings) if settings.backend == "kafka" else {}),
        **(
            {"LEDGER_ERASURE_JOURNAL": str(settings.erasure_journal)}
            if settings.erasure_journal
            else {}
        ),
    }
    args = ("serve", "--port", str(port))
    server = start_with(env, *args, stderr=subprocess.STDOUT, text=False, preexec_fn=preexec_fn)
    base = f"http://127.0.0.1:{port}"
    wait_ready(server, base)
    return server, base


def wait_ready(server: Started, base: str, timeout: float = 60) -> None:
    """Until the server answers /readyz with 200; fails with its output if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            output = server.stdout.read() if server.stdout else b""
            raise AssertionError(f"the server did not become ready: {output!r}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)  # a poll for a port that is not open yet: nothing to wait on
