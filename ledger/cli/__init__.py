"""`consent-ledger`: the command line of the contract.

Exit status 0 on success; otherwise non-zero with one line on stderr that says why. Read
commands print a human table, or with --json the same JSON the HTTP routes return.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ledger.bug_report import WITHHELD, report, where
from ledger.cli import admin, erasure, integrity, policies, records, service, subjects, views
from ledger.cli.common import (
    EXIT_BUG,
    EXIT_FENCED,
    EXIT_INTERRUPTED,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    fail,
    say,
    subject_from_stdin,
)
from ledger.errors import FactRejected
from ledger.kafka.acls import refused_access
from ledger.keystore import KeyStoreBusyError
from ledger.settings import Settings, SettingsError, unknown_variables
from ledger.storage import storage_failure


def main(argv: Sequence[str] | None = None) -> int:
    _never_unencodable()
    with _bugs_said_without_messages():
        return _command(argv)


def _command(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from ledger.runtime import tune

    tune()
    try:
        settings = Settings.from_env()
        for line in unknown_variables(os.environ):
            say(f"consent-ledger: warning: {line}", file=sys.stderr)
        subject_from_stdin(args)
        result: int = args.run(args, settings)
        return result
    except CliError as e:
        return fail(str(e), e.status)
    except SettingsError as e:
        return fail(f"configuration: {e}", EXIT_USAGE)
    except FactRejected as e:
        return fail(f"{e.code.value}: {e.message}", EXIT_REJECTED)
    except KeyStoreBusyError as e:
        return fail(f"key store busy: {e}", EXIT_UNAVAILABLE)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        # Ctrl-C is an answer, not a crash: no traceback. A transaction it cut short was
        # rolled back whole; what committed before it stays.
        return fail("interrupted", EXIT_INTERRUPTED)
    except Exception as e:
        # Kafka mode's failures, named without importing Kafka in embedded mode.
        kind = type(e).__name__
        refused = None if kind == "AccessRefused" else refused_access(e)
        if refused is not None:
            # An ACL the cluster refused, out of any client of the ledger: what to grant,
            # where kafka-python's own words named only its error class.
            return fail(f"kafka: {refused}", EXIT_UNAVAILABLE)
        if kind in (
            "LedgerUnavailable",
            "AccessRefused",
            "TopicRefused",
            "RecordsLost",
            "BrokersUnreachable",
        ):
            return fail(f"kafka: {e}", EXIT_UNAVAILABLE)
        if kind == "WriterFenced":
            return fail(f"kafka: {e}", EXIT_FENCED)
        if type(e).__module__.startswith("kafka.") and isinstance(e, Exception):
            # kafka-python's own error, out of a wait the ledger did not bound itself: one
            # line and exit 6 (the broker's trouble, not the input's), never a traceback.
            # Its messages name brokers, topics and sizes, never a record's values.
            said = str(e) if str(e).startswith(kind) else f"{kind}: {e}"
            return fail(f"kafka: {said}", EXIT_UNAVAILABLE)
        failure = storage_failure(e)
        if failure is not None:
            # Nothing about the input: retrying the same command is safe (ledger.storage).
            return fail(f"storage unavailable: {failure.reason}; retry", EXIT_UNAVAILABLE)
        return _bug(e)


def _bug(error: BaseException, within: str = "") -> int:
    """An error no code expected: one line that says so, then its frames for a bug report,
    every message withheld (`ledger.bug_report`); Python's own traceback printed them."""
    fail(f"internal error{within}: {where(error)} {WITHHELD}; the frames follow", EXIT_BUG)
    for line in report(error):
        say(line, file=sys.stderr)
    return EXIT_BUG


@contextlib.contextmanager
def _bugs_said_without_messages() -> Iterator[None]:
    """A thread of a command that died of an exception, and an exception Python could only
    ignore (a finaliser's), are printed by Python's hooks message and all, the ignored one
    with its object's `repr` too: here as `_bug` says a command's, while the command runs
    (the hooks before it are put back, for a caller that runs commands in its own process).
    """

    def thread_died(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
            name = "?" if args.thread is None else args.thread.name
            _bug(args.exc_value, f" in thread {name!r}")

    def ignored(args: sys.UnraisableHookArgs) -> None:
        if args.exc_value is not None:
            # Named by its code's name (a finaliser) or its class: its `repr` may quote data.
            held = getattr(args.object, "__qualname__", None)
            _bug(args.exc_value, f" ignored in {held or type(args.object).__qualname__}")

    before = threading.excepthook, sys.unraisablehook
    threading.excepthook, sys.unraisablehook = thread_died, ignored
    try:
        yield
    finally:
        threading.excepthook, sys.unraisablehook = before


class _Once(argparse.Action):
    """argparse's `store`, refusing an option given twice: argparse keeps the last, so
    `consents S --as-of A --as-of B` answered as of B as if asked as written."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        seen: set[str] = namespace.__dict__.setdefault("_given", set())
        if self.dest in seen:
            parser.error(f"{option_string or self.dest} is given twice")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """Every command's parser (subcommands are made of the same class): plain options are
    taken once (`_Once`); `--role`, which appends, may repeat."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)
        self.register("action", "store", _Once)


def _never_unencodable() -> None:
    """A terminal whose encoding is not UTF-8 (a server set to CP1251 or Latin-1) cannot
    show a Cyrillic name; printing one raised UnicodeEncodeError, a traceback. What it
    cannot encode is written as a backslash escape instead (and JSON as JSON escapes:
    `common.json_text`)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="consent-ledger", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    # One module a job, each adding its own commands: a command's arguments sit next to
    # what it does.
    for module in (records, subjects, erasure, integrity, policies, admin, views, service):
        module.register(sub)
    return parser
