"""Running `consent-ledger` as a real process against a real data directory, on either backend."""

from __future__ import annotations

import atexit
import contextlib
import io
import locale
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

ROOT = Path(__file__).resolve().parent.parent

# The backend of each data directory: every command runs on the embedded log and on Kafka.
BACKEND_ENV: dict[Path, dict[str, str]] = {}


def run(
    data: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`consent-ledger ARGS` as a process of its own, forked from a warm one where that runs
    exactly as a fresh process would (`tests.cli_forker`), else started afresh."""
    return run_with(command_env(data, env), *args, stdin=stdin)


def run_with(
    env: Mapping[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`consent-ledger ARGS` in exactly this environment, forked where it can be."""
    warm = forker()
    if warm is not None and warm.forkable(env):
        return warm.run(list(args), env, stdin, timeout=timeout)
    return _fresh(env, args, stdin, timeout)


def run_fresh(
    data: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`consent-ledger ARGS` in a new interpreter, as a user runs it."""
    return _fresh(command_env(data, env), args, stdin, timeout=120)


class Started(Protocol):
    """What the tests use of a started process, whether `subprocess.Popen` or `Forked`."""

    @property
    def args(self) -> Any: ...
    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | Any: ...
    @property
    def stdin(self) -> IO[Any] | None: ...
    @property
    def stdout(self) -> IO[Any] | None: ...
    @property
    def stderr(self) -> IO[Any] | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]: ...


def start_with(
    env: Mapping[str, str],
    *args: str,
    stdin: int | None = None,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    text: bool = True,
    preexec_fn: Callable[[], None] | None = None,
) -> Started:
    """`consent-ledger ARGS` started and left running (a worker, a server, a projection),
    forked where that runs exactly as a fresh process would; its streams as `subprocess.Popen`
    takes them (PIPE, DEVNULL, a file descriptor, STDOUT for stderr, None for the test's own).
    With `preexec_fn` (run before the command: only a fresh process can) it starts afresh."""
    warm = forker()
    if warm is not None and warm.forkable(env) and preexec_fn is None:
        return warm.start(list(args), env, stdin, stdout, stderr, text)
    return start_fresh(
        env, *args, stdin=stdin, stdout=stdout, stderr=stderr, text=text, preexec_fn=preexec_fn
    )


def start_fresh(
    env: Mapping[str, str],
    *args: str,
    stdin: int | None = None,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    text: bool = True,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[Any]:
    """`consent-ledger ARGS` started in a new interpreter and left running, as a user starts
    it; its streams as `start_with` takes them."""
    return subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", *args],
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=text,
        preexec_fn=preexec_fn,
    )


def _fresh(
    env: Mapping[str, str], args: Sequence[str], stdin: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def command_env(data: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a command run on `data`, with its backend's settings."""
    return {**os.environ, **BACKEND_ENV.get(data, {}), "LEDGER_DATA_DIR": str(data), **env}


class Forker:
    """This test process's `tests.cli_forker`, started at its first command."""

    # What a process reads from its environment before any command runs: start-up
    # (`PYTHON*`, the locale), import time (the failpoints) and coverage's measurement of
    # each process. A command whose environment differs in one of them starts afresh.
    READ_AT_START = ("PYTHON", "LC_", "LANG", "LEDGER_FAILPOINT", "COVERAGE_")

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="cli-forker-")
        self.path = os.path.join(self.directory, "socket")
        self.env = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_forker", self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        assert ready == b"ready\n", f"the CLI forker did not start: {ready!r}"

    def forkable(self, env: Mapping[str, str]) -> bool:
        return not any(
            key.startswith(self.READ_AT_START) and env.get(key) != self.env.get(key)
            for key in {*env, *self.env}
        )

    def run(
        self, args: list[str], env: Mapping[str, str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        encoding = locale.getpreferredencoding(False)
        pipe = subprocess.PIPE
        process = self.start(args, env, None if stdin is None else pipe, pipe, pipe, text=False)
        if process.stdin is not None:
            # Written from a thread of its own, as `subprocess.run(input=...)` writes it
            # while reading the answers; `communicate` then leaves the input alone.
            feeding = threading.Thread(
                target=_feed, args=(process.stdin, stdin or "", encoding), daemon=True
            )
            process.stdin = None
            feeding.start()
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise subprocess.TimeoutExpired(process.args, timeout) from None
        # Named as `subprocess.run` names the command, which tests read back.
        return subprocess.CompletedProcess(
            process.args, process.wait(), _text(out, encoding), _text(err, encoding)
        )

    def start(
        self,
        args: list[str],
        env: Mapping[str, str],
        stdin: int | None,
        stdout: int | None,
        stderr: int | None,
        text: bool,
    ) -> Forked:
        command = [sys.executable, "-m", "ledger.cli", *args]
        ours: list[int] = []  # this process's ends of the pipes
        theirs: list[int] = []  # the command's, closed here once sent

        def end(kind: int | None, fd: int, reading: bool) -> int:
            if kind is None or kind >= 0:  # the test's own, or a file it opened
                return fd if kind is None else kind
            if kind == subprocess.DEVNULL:
                theirs.append(os.open(os.devnull, os.O_RDWR))
                return theirs[-1]
            assert kind == subprocess.PIPE, kind
            read, write = os.pipe()
            ours.append(write if reading else read)
            theirs.append(read if reading else write)
            return theirs[-1]

        try:
            fds = [end(stdin, 0, True), end(stdout, 1, False)]
            fds.append(fds[1] if stderr == subprocess.STDOUT else end(stderr, 2, False))
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(self.path)
                request = {"args": args, "env": dict(env), "cwd": os.getcwd()}
                socket.send_fds(connection, [orjson.dumps(request)], fds)
                pid = _int_from(connection)
            except BaseException:
                connection.close()
                raise
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        streams = iter(ours)
        encoding = locale.getpreferredencoding(False)

        def opened(kind: int | None, mode: str) -> IO[Any] | None:
            if kind != subprocess.PIPE:
                return None
            raw = open(next(streams), mode + "b")  # noqa: SIM115 (the process's stream)
            if not text:
                return raw
            return io.TextIOWrapper(raw, encoding=encoding, write_through=mode == "w")

        return Forked(
            command,
            pid,
            connection,
            opened(stdin, "w"),
            opened(stdout, "r"),
            opened(stderr, "r"),
            encoding if text else None,
        )

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


class Forked:
    """A command the forker started and left running, with what the tests use of
    `subprocess.Popen`, and its semantics: `communicate` reads both pipes to their end (keeping
    what it read across a timeout), then the exit status, which the forker sends as the
    command ends (a negative signal number when a signal ended it); signals go to the pid
    only while the command has not been seen to end."""

    def __init__(
        self,
        args: list[str],
        pid: int,
        connection: socket.socket,
        stdin: IO[Any] | None,
        stdout: IO[Any] | None,
        stderr: IO[Any] | None,
        encoding: str | None,
    ) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self._connection = connection
        self._status = b""
        self._encoding = encoding
        self._read: dict[int, list[bytes]] = {
            s.fileno(): [] for s in (stdout, stderr) if s is not None
        }
        self._communicated: tuple[Any, Any] | None = None

    def poll(self) -> int | None:
        self._status_by(time.monotonic())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._status_by(deadline):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def _status_by(self, deadline: float | None) -> bool:
        while self.returncode is None:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._connection], [], [], wait)
            if not ready:
                return False
            chunk = self._connection.recv(4 - len(self._status))
            assert chunk, "the CLI forker ended a command without its status"
            self._status += chunk
            if len(self._status) == 4:
                self.returncode = struct.unpack("!i", self._status)[0]
                self._connection.close()
        return True

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        assert input is None, "not used by the tests"
        if self._communicated is not None:
            return self._communicated
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None and not self.stdin.closed:
            self.stdin.close()
        open_fds = [fd for fd in self._read if not self._ended(fd)]
        while open_fds:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(open_fds, [], [], wait)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            for fd in ready:
                chunk = os.read(fd, 65_536)
                self._read[fd].append(chunk)
                if not chunk:
                    open_fds.remove(fd)
        if not self._status_by(deadline):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self._communicated = self._output(self.stdout), self._output(self.stderr)
        return self._communicated

    def _ended(self, fd: int) -> bool:
        return bool(self._read[fd]) and self._read[fd][-1] == b""

    def _output(self, stream: IO[Any] | None) -> Any:
        if stream is None:
            return None
        data = b"".join(self._read[stream.fileno()])
        stream.close()
        return data if self._encoding is None else _text(data, self._encoding)


_FORKERS: dict[int, Forker] = {}


def forker() -> Forker | None:
    """The forker of this process (a test worker), if a fork can stand in for a fresh
    process here: not while coverage measures each process it starts."""
    if any(key.startswith("COVERAGE_") for key in os.environ):
        return None
    pid = os.getpid()
    if pid not in _FORKERS:
        _FORKERS[pid] = Forker()
        atexit.register(_FORKERS[pid].close)
    return _FORKERS[pid]


def _int_from(connection: socket.socket) -> int:
    data = b""
    while len(data) < 4:
        chunk = connection.recv(4 - len(data))
        assert chunk, "the CLI forker ended a command without its status"
        data += chunk
    value: int = struct.unpack("!i", data)[0]
    return value


def _feed(stream: IO[bytes], data: str, encoding: str) -> None:
    """A command's input, written as `subprocess.run(input=...)` writes it: all of it,
    then the end; a command that stops reading early is not an error."""
    try:
        with stream:
            stream.write(data.encode(encoding))
    except BrokenPipeError:
        pass


def _text(data: bytes, encoding: str) -> str:
    # As `subprocess.run(text=True)` decodes: universal newlines.
    return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")


def verify_elsewhere(data: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`consent-ledger verify ARGS` with no data directory at all: a package or checkpoint
    is all such a check has."""
    return run(data, "verify", *args, LEDGER_DATA_DIR=str(tmp_path / "nothing-here"))


@contextlib.contextmanager
def piped(*args: str, env: Mapping[str, str]) -> Iterator[Started]:
    """`consent-ledger ARGS` fed through a pipe the test holds open; killed if the test ends
    with it still waiting on the pipe (a failed assertion), so that it cannot hang or leak."""
    fed = start_with({**os.environ, **env}, *args, stdin=subprocess.PIPE, text=False)
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


def closed(fed: Started) -> list[dict[str, Any]]:
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


def from_a_terminal(hangup: bool = True) -> Callable[[], None]:
    """For `preexec_fn`: the command as a terminal's shell starts it, SIGHUP at its default
    (a CI job started under `nohup` has it ignored, and so would each command it starts), in
    a process group of its own, which the test signals as a closing terminal signals its
    job. `hangup=False`: started under `nohup`, SIGHUP ignored."""

    def apply() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_DFL if hangup else signal.SIG_IGN)
        os.setpgrp()

    return apply


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found
