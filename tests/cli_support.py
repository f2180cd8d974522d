"""Running `consent-ledger` as a real process against a real data directory, on either backend."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

# The backend of each data directory: every command runs on the embedded log and on Kafka.
BACKEND_ENV: dict[Path, dict[str, str]] = {}


def run(
    data: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        env={**os.environ, **BACKEND_ENV.get(data, {}), "LEDGER_DATA_DIR": str(data), **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def verify_elsewhere(data: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`consent-ledger verify ARGS` with no data directory at all: a package or checkpoint
    is all such a check has."""
    return run(data, "verify", *args, LEDGER_DATA_DIR=str(tmp_path / "nothing-here"))


@contextlib.contextmanager
def piped(*args: str, env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`consent-ledger ARGS` fed through a pipe the test holds open; killed if the test ends
    with it still waiting on the pipe (a failed assertion), so that it cannot hang or leak."""
    fed = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", *args],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield fed
    finally:
        if fed.poll() is None:
            fed.kill()
            fed.wait()


def written_behind(stream: IO[bytes], data: bytes) -> threading.Thread:
    """`data` written to a process's input (and flushed, the pipe left open) from a thread
    of its own, while the test reads the answers: a process that answers as it reads fills
    its output pipe while a test that writes everything first is still writing, and then
    both wait for ever. Join it before writing more."""
    writer = threading.Thread(target=lambda: (stream.write(data), stream.flush()), daemon=True)
    writer.start()
    return writer


def closed(fed: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    """The rest of what a `piped` process answers once its input ends; it must exit 0."""
    assert fed.stdin is not None and fed.stdout is not None and fed.stderr is not None
    fed.stdin.close()
    rest = [orjson.loads(line) for line in fed.stdout.read().splitlines()]
    assert fed.wait(timeout=120) == 0, fed.stderr.read()
    return rest


def line_within(stream: IO[str], timeout: float = 120) -> str:
    """The next line a process prints, or a failure if it prints none in `timeout` seconds:
    a process that hangs silently must fail the test, not hang it. Only for a stream whose
    reader holds nothing read ahead (select sees the pipe, not the reader's buffer)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"the process printed nothing in {timeout} s"
    return stream.readline()


def lines_until(stream: IO[Any], last: Callable[[str], bool], timeout: float = 120) -> list[str]:
    """The lines a process prints up to the one `last` accepts, read from the pipe itself:
    a burst of lines arrives in one read, and a reader that buffered the rest would wait in
    select for output that already came. Only for a stream nothing has been read from."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    held = b""
    while not lines or not last(lines[-1]):
        if b"\n" not in held:
            ready, _, _ = select.select([stream], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"the process printed no line in {timeout} s: {lines}"
            chunk = os.read(stream.fileno(), 65_536)
            assert chunk, f"the process ended its output: {lines}"
            held += chunk
            continue
        line, held = held.split(b"\n", 1)
        lines.append(line.decode())
    return lines


def file_size_limit(size: int) -> Callable[[], None]:
    """For `preexec_fn`: the process (and its children) may not grow a file past `size`."""

    def apply() -> None:
        # Ignored, SIGXFSZ no longer kills the process: the write fails, as on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(
            resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
        )

    return apply
