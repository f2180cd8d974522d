"""The tests' warm CLI (`tests.cli_forker`) answers exactly as a fresh `consent-ledger`
process does: every CLI test that runs a command through `tests.cli_support.run` stands on it,
and every one that starts a worker, server or projection through `start_with`."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.cli_support import (
    Forker,
    Started,
    command_env,
    forker,
    line_within,
    run_fresh,
    start_fresh,
)
from tests.facts import grant, withdraw


@pytest.fixture
def warm() -> Iterator[Forker]:
    """The forker the suite's commands go through; under coverage, which measures each
    process afresh and so runs no command forked, one of the test's own."""
    shared = forker()
    if shared is not None:
        yield shared
        return
    own = Forker()
    try:
        yield own
    finally:
        own.close()


def test_a_forked_command_answers_as_a_fresh_process(data: Path, warm: Forker) -> None:
    facts = orjson.dumps(
        [
            grant("c-1", event_id="g1"),
            {"type": "grant", "tenant": "demo"},
            withdraw("c-1", event_id="w1", occurred_at="2025-03-02T10:00:00+05:00"),
        ]
    ).decode()
    assert run_fresh(data, "record", "-", stdin=facts).returncode == 1  # one refused
    at = ("--as-of", "2025-06-01T00:00:00+05:00", "--known-at", "2026-01-01T00:00:00Z")
    commands: list[tuple[tuple[str, ...], str | None]] = [
        # The same facts again: the first receipts, the refusal, exit 1.
        (("record", "-"), facts),
        (("consents", "c-1", "--tenant", "demo", *at, "--json"), None),
        (("consents", "-", "--tenant", "demo", *at), "c-1\r\n"),
        (("trail", "c-1", "--tenant", "demo", "--format", "csv"), None),
        (("trail", "-", "--tenant", "demo"), "\ufeffc-1\n"),
        (("trail", "-", "--tenant", "demo"), ""),
        (("verify", "--json"), None),
        (("consents", "c-1", "--tenant", "demo", "--as-of", "yesterday"), None),
        (("consents",), None),
        (("no-such-command",), None),
        ((), None),
    ]
    for args, stdin in commands:
        forked = warm.run(list(args), command_env(data, {}), stdin, timeout=120)
        fresh = run_fresh(data, *args, stdin=stdin)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            fresh.returncode,
            fresh.stdout,
            fresh.stderr,
        ), args
        assert forked.args == fresh.args


def test_what_a_process_reads_before_any_command_runs_is_never_forked(warm: Forker) -> None:
    assert warm.forkable(dict(os.environ))
    for changed in ("LEDGER_FAILPOINT", "PYTHONIOENCODING", "LC_ALL", "LANG", "PYTHONHASHSEED"):
        assert not warm.forkable({**os.environ, changed: "x"}), changed


def test_a_forked_process_left_running_behaves_as_a_started_one(data: Path, warm: Forker) -> None:
    """What the tests do with a worker or server, to a forked one and to one started afresh
    (`subprocess.Popen`), in both ways the tests take its output: the same states, answers,
    exit statuses and output, through a timeout, a signal and the end of its input."""
    facts = [grant(f"c-{i}", event_id=f"g{i}") for i in range(3)]
    lines = b"".join(orjson.dumps(f) + b"\n" for f in facts)
    assert run_fresh(data, "record", "-", stdin=lines.decode()).returncode == 0
    env = command_env(data, {})
    args = ["record", "-"]  # answers each line as it reads it, until its input ends
    pipe = subprocess.PIPE

    def both(stderr: int, text: bool) -> list[Started]:
        fresh = start_fresh(env, *args, stdin=pipe, stderr=stderr, text=text)
        return [warm.start(args, env, pipe, pipe, stderr, text), fresh]

    # Its input held open: still running, a wait that times out, its answer to a line, and
    # a signal's exit status.
    answers = []
    for process in both(subprocess.STDOUT, text=False):
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(lines[: lines.index(b"\n") + 1])
        process.stdin.flush()
        answer = line_within(process.stdout)
        assert process.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        rest = process.communicate(timeout=60)
        process.kill()  # after the end: nothing to signal, as Popen does
        answers.append((answer, process.returncode, rest))
    assert answers[0] == answers[1]
    assert isinstance(answers[0][0], bytes) and answers[0][2][1] is None

    # Its input ended: every answer, as text, stdout and stderr apart.
    answers = []
    for process in both(pipe, text=True):
        assert process.stdin is not None
        process.stdin.write(lines.decode())
        out, err = process.communicate(timeout=120)
        answers.append((process.returncode, out, err))
    assert answers[0] == answers[1]
    assert answers[0][0] == 0 and answers[0][1].count("\n") == 3
