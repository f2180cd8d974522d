"""An error no code expected is said by its classes and frames, never its message: the
rendering on its own; a real CLI process, and a real `serve` as it starts and stops, with a
bug put into them; and the request guard after a response started."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from api.request_guard import RequestGuard, ResponseBrokeOff
from ledger.bug_report import WITHHELD, SaysNoData, named, report, where
from tests.cli_support import ROOT, lines_until, run_with
from tests.facts import grant

# What the personal data of these tests looks like: none of it may be printed.
NAME = "Ivanova Sevara Bahodirovna"


E = TypeVar("E", bound=BaseException)


def _raised(error: E) -> E:
    """The error as raised: with its traceback."""
    try:
        raise error
    except BaseException:
        return error


def _caught(doing: Callable[[], object]) -> BaseException:
    try:
        doing()
    except BaseException as error:
        return error
    raise AssertionError("nothing was raised")


def failing_lookup(subject: str) -> None:
    names = {"someone else": 1}
    names[subject]  # a KeyError quoting the subject, as a real bug would


def test_a_report_names_every_exception_of_the_chain_by_class_with_no_message() -> None:
    def handle() -> None:
        try:
            failing_lookup(NAME)
        except KeyError as missing:
            try:
                raise ValueError(f"could not file {NAME}") from missing
            except ValueError:
                note = RuntimeError(f"while filing {NAME}")
                note.add_note(f"the subject was {NAME}")
                raise note from None

    suppressed = report(_caught(handle))
    assert NAME not in "\n".join(suppressed)
    # `from None` hides the chain, as Python's traceback does.
    assert suppressed[0] == "Traceback (most recent call last):"
    assert suppressed[-1] == f"RuntimeError: {WITHHELD}"
    assert "KeyError" not in "\n".join(suppressed)

    def file_it() -> None:
        try:
            failing_lookup(NAME)
        except KeyError as missing:
            raise ValueError(f"could not file {NAME}") from missing

    error = _caught(file_it)
    lines = report(error)
    text = "\n".join(lines)
    assert NAME not in text
    assert lines.index(f"KeyError: {WITHHELD}") < lines.index(f"ValueError: {WITHHELD}")
    assert "The above exception was the direct cause of the following exception:" in lines
    assert "in failing_lookup" in text and "names[subject]" in text  # frames and source lines
    assert re.fullmatch(r"ValueError at \S*tests/test_bug_report\.py:\d+ in file_it", where(error))

    def count_it() -> None:
        try:
            failing_lookup(NAME)
        except KeyError:
            int(NAME)  # "invalid literal for int() with base 10: 'Ivanova ...'"

    during = "\n".join(report(_caught(count_it)))
    assert NAME not in during
    assert "During handling of the above exception, another exception occurred:" in during


def test_a_report_withholds_what_python_would_print_besides_messages() -> None:
    text = f"consent = {NAME!r} +"
    syntax = _raised(SyntaxError("invalid syntax", ("<fact>", 1, 10, text, 1, 11)))
    group = _raised(
        ExceptionGroup(
            f"two for {NAME}", [_raised(KeyError(NAME)), _raised(OSError(2, NAME, NAME))]
        )
    )
    for error in (syntax, group):
        assert NAME not in "\n".join(report(error)), error
    group_lines = report(group)
    assert f"ExceptionGroup: {WITHHELD}" in group_lines
    assert "  member 2 of 2:" in group_lines and f"    FileNotFoundError: {WITHHELD}" in group_lines
    assert report(KeyError(NAME)) == [f"KeyError: {WITHHELD}"]  # never raised: no frames
    assert where(KeyError(NAME)) == "KeyError"


def test_a_message_made_of_no_personal_data_is_shown() -> None:
    class Frames(SaysNoData):
        pass

    shown = report(_raised(Frames("in worker 2:\nits frames")))
    assert shown[-2:] == [f"{named(Frames())}: in worker 2:", "its frames"]
    assert named(Frames()).startswith("tests.test_bug_report.")


def _cli_with_a_bug(tmp_path: Path, bug: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`consent-ledger ARGS` in a process of its own whose `ConsentLedger.record` runs `bug`
    (Python source, the facts given as `facts`) before recording."""
    code = textwrap.dedent(
        """
        import sys
        from ledger.application import ConsentLedger
        from ledger.cli import main

        recorded = ConsentLedger.record

        def record(self, facts, *args, **kwargs):
        {bug}
            return recorded(self, facts, *args, **kwargs)

        ConsentLedger.record = record
        sys.exit(main(sys.argv[1:]))
        """
    ).format(bug=textwrap.indent(textwrap.dedent(bug), "    "))
    env = {**os.environ, "LEDGER_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    assert run_with(env, "init").returncode == 0
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _facts_file(tmp_path: Path) -> Path:
    facts = tmp_path / "facts.jsonl"
    facts.write_bytes(orjson.dumps(grant(NAME, personal_data={"full_name": NAME})) + b"\n")
    return facts


def test_a_command_that_meets_a_bug_says_where_and_withholds_what_it_was_given(
    tmp_path: Path,
) -> None:
    """Python's traceback printed `ValueError: could not file <the fact's full name>`."""
    bug = """
        try:
            {}[facts[0].body["personal_data"]["full_name"]]
        except KeyError as missing:
            raise ValueError(f"could not file {facts[0].subject}") from missing
    """
    out = _cli_with_a_bug(tmp_path, bug, "record", str(_facts_file(tmp_path)))
    assert out.returncode == 70, out.stderr
    said = out.stderr.splitlines()
    assert said[0].startswith("consent-ledger: internal error: ValueError at <string>:"), said
    assert said[0].endswith(f"in record {WITHHELD}; the frames follow")
    assert f"KeyError: {WITHHELD}" in said and said[-1] == f"ValueError: {WITHHELD}"
    assert "ledger/cli/records.py" in out.stderr  # the frames a bug report needs
    assert NAME not in out.stdout + out.stderr


def test_a_thread_or_a_finaliser_that_fails_in_a_command_is_said_without_its_message(
    tmp_path: Path,
) -> None:
    """Python's hooks print a dying thread's exception with its message, and an ignored
    one's with the `repr` of the object it was ignored in."""
    bug = """
        import threading

        class Held:
            def __repr__(self):
                return facts[0].subject
            def __del__(self):
                raise KeyError(facts[0].subject)

        held = Held()
        del held
        thread = threading.Thread(
            target=lambda: int(facts[0].subject), name="filer"
        )
        thread.start()
        thread.join()
    """
    out = _cli_with_a_bug(tmp_path, bug, "record", str(_facts_file(tmp_path)))
    assert out.returncode == 0, out.stderr  # the command itself went on, as before
    said = out.stderr.splitlines()
    ignored = [line for line in said if line.startswith("consent-ledger: internal error")]
    assert len(ignored) == 2, out.stderr
    assert re.fullmatch(
        rf"consent-ledger: internal error ignored in record\.<locals>\.Held\.__del__: KeyError "
        rf"at <string>:\d+ in __del__ {re.escape(WITHHELD)}; the frames follow",
        ignored[0],
    )
    assert re.fullmatch(
        rf"consent-ledger: internal error in thread 'filer': ValueError at <string>:\d+ in "
        rf"<lambda> {re.escape(WITHHELD)}; the frames follow",
        ignored[1],
    )
    assert NAME not in out.stdout + out.stderr


def _serve_with_a_bug(tmp_path: Path, patched: str) -> subprocess.Popen[str]:
    """`consent-ledger serve --port 0` in a process of its own, `api.app.<patched>` raising a
    ValueError that quotes NAME."""
    code = textwrap.dedent(
        f"""
        import sys
        import api.app

        def {patched}(*args, **kwargs):
            raise ValueError("could not open the store of " + {NAME!r})

        api.app.{patched} = {patched}
        from ledger.cli import main
        sys.exit(main(["serve", "--port", "0"]))
        """
    )
    env = {**os.environ, "LEDGER_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    assert run_with(env, "init").returncode == 0
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_service_that_meets_a_bug_as_it_starts_or_stops_says_it_without_its_message(
    tmp_path: Path,
) -> None:
    """uvicorn printed the traceback of a failed start, message and all, and exited 3 (this
    CLI's "no such subject")."""
    started = _serve_with_a_bug(tmp_path / "start", "build_service")
    said, _ = started.communicate(timeout=120)
    assert started.returncode == 70, said
    assert (
        f"consent-ledger: internal error in the service's start or stop: ValueError at "
        f"<string>:6 in build_service {WITHHELD}; the frames follow"
    ) in said.splitlines()
    assert "consent-ledger: serve: the service did not start" in said
    assert NAME not in said

    stopped = _serve_with_a_bug(tmp_path / "stop", "close_service")
    assert stopped.stdout is not None
    lines = lines_until(stopped.stdout, lambda line: '"listening"' in line)
    stopped.send_signal(signal.SIGINT)  # (SIGTERM ends it by SIGTERM, as uvicorn does)
    rest, _ = stopped.communicate(timeout=120)
    said = "\n".join([*lines, rest])
    assert stopped.returncode == 70, said
    assert (
        f"consent-ledger: internal error in the service's start or stop: ValueError at "
        f"<string>:6 in close_service {WITHHELD}; the frames follow"
    ) in said.splitlines()
    assert NAME not in said


def test_a_bug_after_a_response_started_reaches_the_server_without_its_message() -> None:
    """Raised as it was, it reached uvicorn, which logged "Exception in ASGI application"
    with its traceback, message and all."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        failing_lookup(NAME)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    # The service's app, as far as the guard's log line reads it: no service, no routes.
    service_app = SimpleNamespace(state=SimpleNamespace(), routes=[])
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "app": service_app}
    with pytest.raises(ResponseBrokeOff) as raised:
        asyncio.run(RequestGuard(app, max_body=1024)(scope, receive, send))
    said = "\n".join(report(raised.value))
    assert NAME not in said
    assert raised.value.__suppress_context__ and raised.value.__cause__ is None
    assert f"the response broke off: KeyError at {__file__}:" in said
    assert "in failing_lookup" in said and f"KeyError: {WITHHELD}" in said
    assert [m["type"] for m in sent] == ["http.response.start"]  # nothing after it
