"""What an error the code did not expect may say where people read it: its classes and the
frames it passed through, never its message.

An exception's message can quote the value it failed on (`KeyError('Ivanov Ivan')`, "invalid
literal for int() with base 10: 'Иван'"), and that value can be a subject's name or their
personal data. The service and the worker already log such an error by its class alone
(`api.logs`, `ledger.kafka.intake_thread`); a CLI command that met one ended in Python's
traceback, message and all, on a terminal, in a cron job's mail or a CI log. Here it is the
same traceback less every message (the chain's causes and contexts, exception groups'
members, notes, a SyntaxError's line of text): the frames are the code's own file names,
line numbers and source lines, which is what a bug report needs.
"""

from __future__ import annotations

import traceback
from types import TracebackType

WITHHELD = "(message withheld: it may quote personal data)"


class SaysNoData(Exception):
    """An exception whose message the code builds from no personal data (a frame list of
    this module, say): a report shows it."""


def named(error: BaseException) -> str:
    """The exception's class as a report names it: builtins bare, others with their module."""
    kind = type(error)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def where(error: BaseException) -> str:
    """`Class at file:line in function`, the innermost frame of the error's traceback: the
    one line a person reads before the frames."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return named(error)
    last = frames[-1]
    return f"{named(error)} at {last.filename}:{last.lineno} in {last.name}"


def summary(error: BaseException) -> str:
    """The one line said before the frames: where the error was raised, its message withheld."""
    return f"{where(error)} {WITHHELD}"


def report(error: BaseException) -> list[str]:
    """Python's traceback of `error` and of the exceptions it was raised from or during,
    oldest first, as lines, with every message withheld but those of `SaysNoData`."""
    lines: list[str] = []
    _chain(error, lines, set())
    return lines


def _chain(error: BaseException, lines: list[str], seen: set[int]) -> None:
    seen.add(id(error))
    cause, context = error.__cause__, error.__context__
    if cause is not None and id(cause) not in seen:
        _chain(cause, lines, seen)
        lines += ["", "The above exception was the direct cause of the following exception:", ""]
    elif context is not None and not error.__suppress_context__ and id(context) not in seen:
        _chain(context, lines, seen)
        lines += ["", "During handling of the above exception, another exception occurred:", ""]
    lines += _frames(error.__traceback__)
    said = str(error) if isinstance(error, SaysNoData) else WITHHELD
    lines += f"{named(error)}: {said}".splitlines()
    members = getattr(error, "exceptions", None)  # an exception group's
    if isinstance(error, BaseExceptionGroup) and members:
        for number, member in enumerate(members, 1):
            lines.append(f"  member {number} of {len(members)}:")
            lines += ["    " + line if line else line for line in report(member)]


def _frames(tb: TracebackType | None) -> list[str]:
    if tb is None:
        return []
    formatted = "".join(traceback.StackSummary.extract(traceback.walk_tb(tb)).format())
    return ["Traceback (most recent call last):", *formatted.rstrip("\n").split("\n")]
