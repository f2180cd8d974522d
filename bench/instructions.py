"""Instructions per fact on the embedded write path, and per log entry and per fact of replay,
counted by valgrind's callgrind.

Wall-clock figures on a shared machine drift by tens of percent between runs of the same
code, which hides a change of a few percent. Instruction counts do not drift: the same code,
input and environment give the same count within a fraction of a percent, so two commits can
be compared by running this in each. It counts a whole process recording `--facts` of the
ingest benchmark's stream in batches of `--batch` (1,000), minus one recording `--base`
facts, so start-up and the demo tenant cancel out. `--replay` counts one-process replay
(`consent-ledger replay --workers 1`) instead: a process recording the projections
benchmark's history of `--facts` facts (ten per subject) and replaying it, minus one only
recording it, per log entry and per fact. `--http` counts the event loop's part of a single
HTTP publish (`publish`), per request: a process sending `--facts` requests through the
service's app minus one sending `--base`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any


def record(facts: int, batch: int = 1000) -> None:
    """The measured work: `facts` facts of the ingest stream through ConsentLedger.record,
    `batch` facts per call.

    Written out rather than through bench.ingest.LedgerRun so that this module, copied into an
    older tree, measures that tree's code the same way (how a change is compared).
    """
    from bench.ingest import mixed_stream
    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.runtime import tune
    from ledger.settings import Settings

    tune()
    stream = mixed_stream(facts)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = ConsentLedger(Settings(data_dir=Path(tmp)))
        ledger.init_demo()
        for i in range(0, len(stream), batch):
            ledger.record([parse_fact(f) for f in stream[i : i + batch]])
        ledger.close()


def replay(facts: int, *, replaying: bool) -> None:
    """`facts` of the projections benchmark's history recorded, then (if `replaying`) the
    views rebuilt from them in this one process; prints the log's entries."""
    from bench.projections import history
    from ledger.application import ConsentLedger
    from ledger.envelope import parse_fact
    from ledger.runtime import tune
    from ledger.settings import Settings
    from projections.rebuild import rebuild

    tune()
    stream = history(max(1, facts // 10), facts)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = ConsentLedger(Settings(data_dir=Path(tmp) / "data"))
        ledger.init_demo()
        for i in range(0, len(stream), 1000):
            ledger.record([parse_fact(f) for f in stream[i : i + 1000]])
        if replaying:
            rebuild(ledger, Path(tmp) / "views.db", workers=1)
        print(ledger.recorder.max_notification_id() or 0)
        ledger.close()


def publish(requests: int) -> None:
    """`requests` single publishes (POST /v1/facts, one new subject's grant each) through the
    service's ASGI app in this process, as uvicorn hands a request over, with the writer
    answered at once by a stub.

    What is counted is the event loop's part of a publish (middleware, routing, the API key
    and role, the response, metrics and the log line): in `python -m bench http` the
    server's event loop thread spends about half a millisecond of CPU on it, more than the
    writer process. The writer's part, parsing the fact (since 2026-12-01; before, the event
    loop parsed it) and the write path this module counts without `--http`, is not; nor is
    HTTP parsing by uvicorn.
    """
    import asyncio
    import logging

    import orjson

    from api.app import create_app, keys_path
    from api.keys import ApiKeys
    from api.logs import configure
    from bench.http import fact
    from ledger.application import ConsentLedger
    from ledger.receipt import Receipt
    from ledger.runtime import tune
    from ledger.settings import Settings

    tune()

    async def run(tmp: str) -> None:
        settings = Settings(data_dir=Path(tmp) / "data", http_writer="thread")
        ConsentLedger(settings).init_demo()
        keys = ApiKeys(keys_path(settings))
        key = keys.create("demo", {"publisher"})[1]
        keys.close()
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            receipt = Receipt("e", "0" * 32, 1, "2025-06-01T05:00:00+00:00", "0" * 64)

            writer = app.state.service.writer
            writer._queue = Answered(writer._queue, receipt)
            for _ in range(requests):
                status = await _post(app, "/v1/facts", orjson.dumps(fact()), key)
                assert status == 201, status

    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory() as tmp:
        configure(logging.INFO, devnull)  # the service's log line, written and thrown away
        asyncio.run(run(tmp))


class Answered:
    """The group committer's queue, answering each request at once on the caller's thread
    as its writer thread would (a concurrent Future's result, or an asyncio future settled
    through its loop), so the count holds the event loop's whole part and nothing else.
    At the queue, not a method, so that this module counts an older tree's service too."""

    def __init__(self, queue: Any, receipt: Any) -> None:
        self.queue, self.receipt = queue, receipt

    def put(self, item: Any) -> None:
        if item is None:  # closing: the writer thread stops
            self.queue.put(item)
            return
        if len(item) == 4:  # (items, loop, future, single), since 2026-12-01
            _, loop, future, single = item
            target: Any = (loop, future)
        else:  # (items, a concurrent Future or (loop, future), single), before
            _, target, single = item
        outcome = self.receipt if single else [self.receipt]
        if isinstance(target, Future):
            target.set_result(outcome)
        else:
            loop, future = target
            loop.call_soon_threadsafe(future.set_result, outcome)


async def _post(app: Any, path: str, body: bytes, key: str) -> int:
    """One POST through an ASGI app, as a server hands it over; the response's status."""
    messages: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"host", b"bench"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        **{"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1"},
        **{"method": "POST", "scheme": "http", "path": path, "raw_path": path.encode()},
        **{"query_string": b"", "root_path": "", "headers": headers},
        **{"client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {}},
    }
    await app(scope, receive, send)
    return int(sent[0]["status"])


def count(facts: int, work: str = "--record", batch: int = 1000) -> tuple[int, str]:
    """Instructions of a whole process doing `work` over `facts` facts, and what it printed."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("python -m bench instructions: valgrind is not installed")
    out = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.instructions",
            work,
            str(facts),
            f"--batch={batch}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"refs:\s*([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", "")), out.stdout


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench instructions", description=__doc__)
    parser.add_argument("--facts", type=int, default=3000)
    parser.add_argument("--base", type=int, default=1000)
    parser.add_argument(
        "--batch",
        type=int,
        default=1000,
        help="facts per record() call (1 counts what each commit costs beside its facts)",
    )
    parser.add_argument(
        "--replay", action="store_true", help="count one-process replay, per log entry and per fact"
    )
    parser.add_argument(
        "--http",
        action="store_true",
        help="count the event loop's part of a single HTTP publish, per request "
        "(--facts minus --base requests)",
    )
    parser.add_argument("--record", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--publish", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--history", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--history-replayed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record is not None:
        record(args.record, args.batch)
        return
    if args.publish is not None:
        publish(args.publish)
        return
    if args.history is not None or args.history_replayed is not None:
        replaying = args.history_replayed is not None
        replay(args.history_replayed if replaying else args.history, replaying=replaying)
        return
    if args.replay:
        with_replay, printed = count(args.facts, "--history-replayed")
        without, _ = count(args.facts, "--history")
        entries = int(printed.split()[-1])
        # Per fact too: since a subject's first fact registers it (2026-12-01) a log holds
        # fewer entries for the same facts, so per entry alone would compare unlike things.
        work = with_replay - without
        print(
            f"one-process replay: {work / entries:,.0f} instructions per log entry, "
            f"{work / args.facts:,.0f} per fact ({entries} entries from {args.facts} facts, "
            "callgrind)"
        )
        return
    if args.facts <= args.base:
        parser.error("--facts must be more than --base")
    if args.http:
        (many, _), (few, _) = count(args.facts, "--publish"), count(args.base, "--publish")
        per_request = (many - few) / (args.facts - args.base)
        print(
            f"HTTP single publish, event loop's part: {per_request:,.0f} instructions per "
            f"request ({args.facts} minus {args.base} requests, ASGI app in process, writer "
            "stubbed, callgrind)"
        )
        return
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    (many, _), (few, _) = count(args.facts, batch=args.batch), count(args.base, batch=args.batch)
    print(
        f"embedded write path: {(many - few) / (args.facts - args.base):,.0f} instructions "
        f"per fact ({args.facts} minus {args.base} facts, batches of {args.batch:,}, callgrind)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
