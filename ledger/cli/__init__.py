"""`consent-ledger`: the command line of the contract.

Exit status 0 on success; otherwise non-zero with one line on stderr that says why. Read
commands print a human table, or with --json the same JSON the HTTP routes return.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from ledger.cli import admin, erasure, integrity, policies, records, service, subjects, views
from ledger.cli.common import EXIT_USAGE, fail, say, subject_from_stdin
from ledger.cli.failures import bug, bugs_said_without_messages, said
from ledger.cli.stopping import terminated_as_interrupted
from ledger.settings import Settings, unknown_variables


def main(argv: Sequence[str] | None = None) -> int:
    _never_unencodable()
    with bugs_said_without_messages():
        return _command(argv)


def _command(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from ledger.runtime import tune

    tune()
    # A command that runs until stopped (`serve`, `worker`, `project --follow`) stops on
    # SIGTERM or SIGHUP its own way, cleanly, with the status it always had
    # (`stopped_by_signals`, `serve`'s `Server.capture_signals`); the others end where they
    # are, as on Ctrl-C.
    until_stopped = getattr(args, "until_stopped", False) or getattr(args, "follow", False)
    with contextlib.nullcontext() if until_stopped else terminated_as_interrupted():
        return _answered(args)


def _answered(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
        for line in unknown_variables(os.environ):
            say(f"consent-ledger: warning: {line}", file=sys.stderr)
        subject_from_stdin(args)
        result: int = args.run(args, settings)
        return result
    except BrokenPipeError:
        return 0
    except BaseException as e:
        answer = said(e)
        if answer is None and not isinstance(e, Exception):
            raise  # SystemExit, say: Python's to handle
        return bug(e) if answer is None else fail(*answer)


# An argument that names a file or directory says so by its metavar; it may be any bytes the
# file system takes. Every other argument is text (a tenant, a subject, a purpose, an
# instant) and must be UTF-8.
PATH_METAVARS = frozenset({"FILE", "FILE|-", "DIR"})


class _Once(argparse.Action):
    """argparse's `store`, refusing an option given twice: argparse keeps the last, so
    `consents S --as-of A --as-of B` answered as of B as if asked as written. And refusing
    an empty value, and text that is not UTF-8: Python hands such bytes on as lone
    surrogates, which failed as a subject's sid was computed, an internal error (exit 70)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        seen: set[str] = namespace.__dict__.setdefault("_given", set())
        name = option_string or self.metavar or self.dest
        if self.dest in seen:
            parser.error(f"{name} is given twice")
        if values == "":
            # A script's variable left unset: taken as not given, `consents --as-of ""`
            # answered as of now and `erase --event-id ""` made a new erasure each run; an
            # empty --evidence or --out path failed deep in the command.
            parser.error(f"{name} is empty")
        if self.metavar not in PATH_METAVARS and not _utf8(values):
            # The value is not quoted back: it may be a subject's name.
            parser.error(f"{name} is not UTF-8 text (check the terminal's or script's encoding)")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


def _utf8(values: Any) -> bool:
    for value in values if isinstance(values, list) else [values]:
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return False
    return True


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
