"""What a command says of the error that ended it: the line and exit status of each error
the ledger expects, and of any other (a bug) its classes and frames, never its message.

An error the ledger expects carries words the ledger wrote (a refusal's code, a setting, a
broker's address, a storage failure's reason), so they are said as they are. An error no
code expected carries whatever its raiser put in its message, which can quote the value it
failed on, a subject's name included (`ledger.bug_report`): Python's traceback printed it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from collections.abc import Iterator

from ledger.bug_report import report, summary
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
)
from ledger.cli.stopping import Terminated
from ledger.errors import FactRejected
from ledger.kafka.acls import refused_access
from ledger.keystore import KeyStoreBusyError
from ledger.settings import SettingsError
from ledger.storage import storage_failure

# Kafka mode's failures, named without importing Kafka in embedded mode.
_KAFKA_UNAVAILABLE = frozenset(
    {"LedgerUnavailable", "AccessRefused", "TopicRefused", "RecordsLost", "BrokersUnreachable"}
)


def said(error: BaseException) -> tuple[str, int] | None:
    """The line (after `consent-ledger: `) and exit status for an error the ledger expects;
    None for a bug."""
    if isinstance(error, CliError):
        return str(error), error.status
    if isinstance(error, SettingsError):
        return f"configuration: {error}", EXIT_USAGE
    if isinstance(error, FactRejected):
        return f"{error.code.value}: {error.message}", EXIT_REJECTED
    if isinstance(error, KeyStoreBusyError):
        return f"key store busy: {error}", EXIT_UNAVAILABLE
    if isinstance(error, Terminated):
        # As Ctrl-C, by another signal: the shell's status for a process it ended.
        return f"terminated ({error})", 128 + error.signum
    if isinstance(error, KeyboardInterrupt):
        # Ctrl-C is an answer, not a crash: no traceback. A transaction it cut short was
        # rolled back whole; what committed before it stays.
        return "interrupted", EXIT_INTERRUPTED
    if not isinstance(error, Exception):
        return None
    kind = type(error).__name__
    refused = None if kind == "AccessRefused" else refused_access(error)
    if refused is not None:
        # An ACL the cluster refused, out of any client of the ledger: what to grant,
        # where kafka-python's own words named only its error class.
        return f"kafka: {refused}", EXIT_UNAVAILABLE
    if kind in _KAFKA_UNAVAILABLE:
        return f"kafka: {error}", EXIT_UNAVAILABLE
    if kind == "WriterFenced":
        return f"kafka: {error}", EXIT_FENCED
    if type(error).__module__.startswith("kafka."):
        # kafka-python's own error, out of a wait the ledger did not bound itself: one
        # line and exit 6 (the broker's trouble, not the input's), never a traceback.
        # Its messages name brokers, topics and sizes, never a record's values.
        text = str(error)
        return f"kafka: {text if text.startswith(kind) else f'{kind}: {text}'}", EXIT_UNAVAILABLE
    failure = storage_failure(error)
    if failure is not None:
        # Nothing about the input: retrying the same command is safe (ledger.storage).
        return f"storage unavailable: {failure.reason}; retry", EXIT_UNAVAILABLE
    unusable = unusable_path(error)
    if unusable is not None:
        return unusable, EXIT_USAGE
    return None


# What the OS says of a path it was given that cannot be used as one: the data directory
# (LEDGER_DATA_DIR), a directory to make (`backup --into`, `replay --into`), a file named in
# a setting. Nothing a retry mends; the operator names another path or mends this one.
_UNUSABLE_PATH = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EACCES,
        errno.EPERM,
        errno.ELOOP,
    }
)


def unusable_path(error: Exception) -> str | None:
    """`cannot use PATH: REASON`, as the CLI says `cannot read FILE: REASON`, for an error
    the OS raised about a path it could not use as one; None for any other.

    Each command checks the paths it is given, but not every way the OS can refuse one: a
    LEDGER_DATA_DIR longer than a file name may be, `backup --into` under a directory that
    cannot hold one, a data directory the process may not write, were internal errors (exit
    70) with the reason withheld. A path is the operator's, not personal data (file names
    hold none: sids and fixed names only), so it is said.
    """
    if not isinstance(error, OSError) or error.errno not in _UNUSABLE_PATH:
        return None
    if error.filename is None or not error.strerror:
        return None
    return f"cannot use {os.fsdecode(error.filename)}: {error.strerror}"


def bug(error: BaseException, within: str = "") -> int:
    """One line that says a bug happened and where, then its frames for a bug report, every
    message withheld; EXIT_BUG."""
    fail(f"internal error{within}: {summary(error)}; the frames follow", EXIT_BUG)
    for line in report(error):
        say(line, file=sys.stderr)
    return EXIT_BUG


@contextlib.contextmanager
def bugs_said_without_messages() -> Iterator[None]:
    """A thread of a command that died of an exception, and an exception Python could only
    ignore (a finaliser's), are printed by Python's hooks message and all, the ignored one
    with its object's `repr` too: here as `bug` says a command's, while the command runs
    (the hooks before it are put back, for a caller that runs commands in its own process).
    """

    def thread_died(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
            name = "?" if args.thread is None else args.thread.name
            bug(args.exc_value, f" in thread {name!r}")

    def ignored(args: sys.UnraisableHookArgs) -> None:
        if args.exc_value is not None:
            # Named by its code's name (a finaliser) or its class: its `repr` may quote data.
            held = getattr(args.object, "__qualname__", None)
            bug(args.exc_value, f" ignored in {held or type(args.object).__qualname__}")

    before = threading.excepthook, sys.unraisablehook
    threading.excepthook, sys.unraisablehook = thread_died, ignored
    try:
        yield
    finally:
        threading.excepthook, sys.unraisablehook = before
