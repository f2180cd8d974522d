"""A warm `consent-ledger` for the tests: one process per test worker imports the CLI and
everything its commands load, then forks a fresh process for each command it is asked to run.

Why: the CLI tests run commands by the hundred (`tests/test_cli.py` alone from 191 places,
most on both backends), on two cores. A fresh Python process spends 0.37 s importing the
ledger before a command does anything, 0.85 s in Kafka mode (kafka-python parses its protocol
schemas at import); that start-up was about half of those tests' time (test_cli, test_trail,
test_keystore and test_master_key_rotation on two workers: 243 s started afresh, 126 s
forked, the same hour). A forked process is still a process of its own, with its own standard
streams (the test's pipes), environment, working directory, exit status and signals; only the
imports were done before it existed. `tests.cli_support.run` sends here only what a fork can
run exactly as a fresh process would (`Forker.forkable`); `tests/test_cli_forker.py` holds
the two to the same answers.

Run as `python -m tests.cli_forker SOCKET`; it serves until its standard input ends (the
test worker that started it exited or closed the pipe).
"""

from __future__ import annotations

import importlib
import io
import os
import pkgutil
import runpy
import select
import signal
import socket
import struct
import sys
import traceback
from typing import Any

import orjson

# What a command may load: the whole project, so that no command pays for an import.
# `__main__` modules run on import and are skipped; `ledger.cli.__main__` runs per command.
PACKAGES = ("ledger", "projections", "api")
MAX_REQUEST = 1 << 20


def warm() -> None:
    import kafka  # noqa: F401  (Kafka mode's client; imported lazily by the ledger)
    import uvicorn  # noqa: F401  (`serve`'s server; imported as it starts)

    for name in PACKAGES:
        package = importlib.import_module(name)
        for found in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not found.name.endswith("__main__"):
                importlib.import_module(found.name)


def serve(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    # Children are reaped by the kernel: the zygote never waits for one.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in ready:
            return  # the test worker is gone
        connection, _ = listener.accept()
        if os.fork() == 0:
            # Whatever happens here, this process ends here: it must never return into the
            # loop as a second zygote.
            code = 1
            try:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = _attend(connection)
            finally:
                os._exit(code)
        connection.close()


def _attend(connection: socket.socket) -> int:
    """One command: its request and standard streams in, its pid and exit status out."""
    message, fds, _, _ = socket.recv_fds(connection, MAX_REQUEST, 3)
    request = orjson.loads(message)
    pid = os.fork()
    if pid == 0:
        connection.close()
        _run(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    connection.sendall(struct.pack("!i", pid))
    _, status = os.waitpid(pid, 0)
    connection.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
    return 0


def _run(request: dict[str, Any], fds: list[int]) -> None:
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdin, sys.stdout, sys.stderr = (
            _reopened(0, sys.stdin, "r"),
            _reopened(1, sys.stdout, "w"),
            _reopened(2, sys.stderr, "w"),
        )
        sys.argv = ["consent-ledger", *request["args"]]
        try:
            runpy.run_module("ledger.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            # As the interpreter does: None is 0, an integer is itself, anything else is
            # printed and is 1.
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                # As the interpreter ends: a standard stream it cannot flush (a reader
                # that went away) makes a successful exit 120.
                code = code or 120
    finally:
        os._exit(code)


def _reopened(fd: int, like: Any, mode: str) -> io.TextIOWrapper:
    """A standard stream on `fd` made as the interpreter makes one at start-up for a pipe:
    the zygote was started with the same `PYTHON*` and locale variables, so its streams'
    encoding, errors and buffering are the ones a fresh process would choose."""
    binary: Any = open(fd, mode + "b", closefd=False)  # noqa: SIM115 (the process's own)
    return io.TextIOWrapper(
        binary,
        encoding=like.encoding,
        errors=like.errors,
        line_buffering=like.line_buffering,
        write_through=getattr(like, "write_through", False),
    )


if __name__ == "__main__":
    warm()
    serve(sys.argv[1])
