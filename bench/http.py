"""HTTP publishing: single facts and batches through `consent-ledger serve`, next to a bare
FastAPI endpoint answering a constant under the same uvicorn settings, in the same run.

The load generator is a small asyncio HTTP/1.1 client on keep-alive connections, on the same
machine (it shares the 2 cores with the server: figures are for that setting). The three
servers (bare, the ledger with its writer thread, the ledger with its writer process) run
side by side, and their closed loops take turns in `--rounds` rounds, so that a change in
the machine's speed during the run falls on all three alike, as `bench ingest` does commit
by commit.

The open loop (requests at a fixed rate) runs twice for the ledger: on the closed loop's 8
connections and on `--open-connections` (64). A generator with N connections has at most N
requests in flight, so at R requests/s it can only keep up while the mean latency is under
N/R (Little's law): 8 ms for 8 connections at 1,000/s. Past that the queue that grows is
the generator's, not the server's, and the latency it reports is the generator's cap. With
64 connections the offered rate reaches the server whatever its latency; independent
publishers at 1,000/s would not share 8 connections either. Both rows are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from api.app import keys_path
from api.keys import ApiKeys
from ledger.application import ConsentLedger
from ledger.settings import Settings

_ids = itertools.count()


def fact() -> dict[str, Any]:
    i = next(_ids)
    return {
        "event_id": f"http-{i}",
        "type": "consent.granted",
        "subject": f"http-contact-{i}",
        "occurred_at": "2025-06-01T10:00:00+05:00",
        "source": "bench",
        "channel": "web_form",
        "evidence": {"ip": "84.54.1.2", "user_agent": "Mozilla/5.0", "form_id": "signup"},
        "policy_version": "crmpro-1.0",
        "purposes": ["marketing", "support"],
        "personal_data": {"full_name": f"Karimov Aziz {i}", "email": f"a{i}@example.uz"},
    }


def request(path: str, body: bytes, key: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    writer.write(data)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def closed_loop(
    port: int, make: Callable[[], bytes], total: int, connections: int
) -> tuple[float, list[float], dict[int, int]]:
    """`connections` clients sending back to back; returns elapsed, latencies, statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = itertools.count()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while next(remaining) < total:
            data = make()
            t = time.perf_counter()
            status = await exchange(reader, writer, data)
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return time.perf_counter() - start, latencies, statuses


async def open_loop(
    port: int, make: Callable[[], bytes], rate: float, seconds: float, connections: int
) -> tuple[list[float], dict[int, int]]:
    """Requests scheduled at `rate` per second; latency counts from the scheduled instant,
    so a server that falls behind shows it (no coordinated omission)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[float] = asyncio.Queue()
    total = int(rate * seconds)

    async def schedule() -> None:
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(due)
        for _ in range(connections):
            queue.put_nowait(-1.0)

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (due := await queue.get()) >= 0:
            status = await exchange(reader, writer, make())
            latencies.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    await asyncio.gather(schedule(), *(client() for _ in range(connections)))
    return latencies, statuses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not start") from None
            time.sleep(0.05)


def cpu_seconds(pid: int) -> tuple[float, float, float] | None:
    """CPU time (user and system) of a server so far: its main thread (the event loop), its
    other threads (thread pools; the group-commit thread) and its child processes (the
    writer process); None off Linux.

    Requests per second move with the machine's speed; CPU per request says what each
    part of the server costs.
    """
    tick = os.sysconf("SC_CLK_TCK")
    main = others = children = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            used = _cpu(f"/proc/{pid}/task/{tid}/stat", tick)
            if int(tid) == pid:
                main += used
            else:
                others += used
        for entry in os.listdir("/proc"):
            if entry.isdigit() and parent_pid(entry) == pid:
                children += _cpu(f"/proc/{entry}/stat", tick)
    except OSError:  # no /proc, or a thread ended while being read
        return None
    return main, others, children


def _cpu(stat: str, tick: int) -> float:
    with open(stat) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def parent_pid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):  # gone meanwhile
        return None


def ms(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


class Server:
    """One server of the benchmark and what its closed-loop rounds added up to."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int) -> None:
        self.name, self.process, self.port = name, process, port
        self.elapsed = 0.0
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.cpu: list[float] | None = [0.0, 0.0, 0.0]

    def round(self, make: Callable[[], bytes], requests: int, connections: int) -> None:
        before = cpu_seconds(self.process.pid)
        elapsed, lat, codes = asyncio.run(closed_loop(self.port, make, requests, connections))
        after = cpu_seconds(self.process.pid)
        self.elapsed += elapsed
        self.latencies += lat
        for code, n in codes.items():
            self.statuses[code] = self.statuses.get(code, 0) + n
        if before is None or after is None or self.cpu is None:
            self.cpu = None
        else:
            self.cpu = [c + a - b for c, a, b in zip(self.cpu, after, before, strict=True)]

    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def cpu_per_request(self) -> tuple[float, ...] | None:
        if self.cpu is None:
            return None
        return tuple(c / len(self.latencies) * 1000 for c in self.cpu)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench http", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="the closed loops take turns, server by server, in this many rounds",
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--open-connections", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        # What the ledger rows run with: the service's default unless the caller set it.
        writer = os.environ.get("LEDGER_HTTP_WRITER", "process")
        servers: list[Server] = []
        keys: dict[str, str] = {}
        try:
            bare_port = free_port()
            command = [sys.executable, "-m", "uvicorn", "bench.bare_app:app"]
            quiet = ["--log-level", "warning", "--no-access-log"]
            bare = start([*command, "--port", str(bare_port), *quiet], dict(os.environ), bare_port)
            servers.append(Server("bare FastAPI constant, closed loop", bare, bare_port))
            # The same server with its writes in a thread of its own process (the setting
            # before the writer process): what the writer process changes, in the same run.
            for name, setting in (
                ("ledger POST /v1/facts, closed, writer thread", "thread"),
                ("ledger POST /v1/facts, closed loop", writer),
            ):
                settings = Settings(data_dir=Path(tmp) / f"data-{setting}-{len(servers)}")
                ConsentLedger(settings).init_demo()
                store = ApiKeys(keys_path(settings))
                keys[name] = store.create("demo", {"publisher"})[1]
                store.close()
                port = free_port()
                env = {
                    **os.environ,
                    "LEDGER_DATA_DIR": str(settings.data_dir),
                    "LEDGER_HTTP_WRITER": setting,
                }
                serve = [sys.executable, "-m", "ledger.cli", "serve", "--port", str(port)]
                servers.append(Server(name, start(serve, env, port), port))
            bare_server, _, ledger_server = servers
            key = keys[ledger_server.name]

            def single_for(server: Server) -> Callable[[], bytes]:
                key = keys.get(server.name, "none")
                return lambda: request("/v1/facts", orjson.dumps(fact()), key)

            # Round by round, each server in turn: the machine's speed moves by tens of
            # percent within minutes, and a baseline measured before the ledger, not
            # alongside it, carried that drift into the ratio (0.15 to 0.34 of the bare
            # endpoint for the same code within an hour, 2026-12-01).
            per_round = max(1, args.requests // args.rounds)
            for _ in range(args.rounds):
                for server in servers:
                    server.round(single_for(server), per_round, args.connections)

            rows = [(s.name, s.rate(), s.latencies, s.statuses) for s in servers]
            single = single_for(ledger_server)
            lat, codes = asyncio.run(
                open_loop(
                    bare_port,
                    single_for(bare_server),
                    args.rate,
                    args.seconds,
                    args.open_connections,
                )
            )
            rows.insert(
                1,
                (
                    f"bare at {args.rate:.0f}/s, {args.open_connections} connections",
                    args.rate,
                    lat,
                    codes,
                ),
            )
            open_p99: dict[int, float] = {}
            for connections in (args.connections, args.open_connections):
                lat, codes = asyncio.run(
                    open_loop(ledger_server.port, single, args.rate, args.seconds, connections)
                )
                open_p99[connections] = ms(lat, 0.99)
                rows.append(
                    (
                        f"ledger at {args.rate:.0f}/s, {connections} connections",
                        args.rate,
                        lat,
                        codes,
                    )
                )
            batch = lambda: request(  # noqa: E731
                "/v1/facts:batch", orjson.dumps({"facts": [fact() for _ in range(1000)]}), key
            )
            elapsed, lat, codes = asyncio.run(
                closed_loop(ledger_server.port, batch, args.batches, 2)
            )
            batch_rate = args.batches * 1000 / elapsed
            rows.append(("ledger POST /v1/facts:batch (1,000 each)", batch_rate, lat, codes))
        finally:
            for server in servers:
                server.stop()
    bare_rate, thread_rate, ledger_rate = (s.rate() for s in servers)
    bare_cpu, thread_cpu, ledger_cpu = (s.cpu_per_request() for s in servers)

    print(
        f"HTTP publishing on {os.uname().nodename} ({os.cpu_count()} cores, server and load "
        f"generator on the same machine; {args.connections} connections; the ledger rows but "
        f"the writer thread's with LEDGER_HTTP_WRITER={writer})"
    )
    print(f"{'what':<44} {'per second':>12} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for name, rate, lat, codes in rows:
        print(
            f"{name:<44} {rate:>12,.0f} {ms(lat, 0.5):>8.1f} {ms(lat, 0.99):>8.1f}  "
            f"{dict(sorted(codes.items()))}"
        )
    if bare_cpu is not None and ledger_cpu is not None and thread_cpu is not None:
        print(
            f"server CPU per request, closed loop: bare {sum(bare_cpu):.2f} ms; ledger "
            f"{sum(ledger_cpu):.2f} ms (event loop thread {ledger_cpu[0]:.2f}, other threads "
            f"{ledger_cpu[1]:.2f}, writer process {ledger_cpu[2]:.2f}); with the writer "
            f"thread {sum(thread_cpu):.2f} ms (event loop thread {thread_cpu[0]:.2f}, "
            f"group-commit writer and other threads {thread_cpu[1]:.2f})"
        )
    print(
        f"single publish / bare endpoint: {ledger_rate / bare_rate:.2f} (target >= 0.60; "
        f"{thread_rate / bare_rate:.2f} with the writer thread); "
        f"batch facts/s: {batch_rate:,.0f} (target >= 20,000); "
        f"p99 at {args.rate:.0f}/s: {open_p99[args.connections]:.1f} ms on {args.connections} "
        f"connections, {open_p99[args.open_connections]:.1f} ms on {args.open_connections} "
        "(target <= 20 ms)"
    )
