"""Crash points for the fault-injection tests: `LEDGER_FAILPOINT=name:n` ends the process
abruptly (`os._exit`, no clean-up, like SIGKILL) the n-th time it passes `name`;
`name:n:raise` raises `FailpointError` there instead, once, as a bug would.

Random SIGKILLs rarely land in the narrowest windows (between the Kafka commit and the
replica's commit, say), so the tests also stop the writer exactly there. Unset, a failpoint
costs one dictionary lookup.
"""

from __future__ import annotations

import os

EXIT_STATUS = 99
# Every crash point the code passes (`failpoint(name)`): a misspelt name armed nothing, and
# the test it was meant for saw no crash where it expected one.
NAMES = frozenset(
    {
        "erasure.journalled",
        "intake-step",
        "kafka-committed",
        "kafka-sent",
        "replay-part-written",
        "rotation.before_key_file",
        "writer-recorded",
    }
)


def parse(spec: str) -> tuple[str, int, bool]:
    """`name[:n[:raise]]` as (name, n, raising), or ValueError saying what is wrong with it.

    Read at import, before any settings, so a bad value arms nothing here: `Settings.from_env`
    refuses it with this message (a malformed count was a traceback from the import).
    """
    name, _, rest = spec.partition(":")
    count_text, _, mode = rest.partition(":")
    if name not in NAMES:
        raise ValueError(
            f"LEDGER_FAILPOINT names no crash point ({name[:64]!r}); "
            f"one of {', '.join(sorted(NAMES))}"
        )
    try:
        count = int(count_text or "1")
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(
            f"LEDGER_FAILPOINT's count must be a whole number from 1, not {count_text[:64]!r}"
        )
    if mode not in ("", "raise"):
        raise ValueError(f"LEDGER_FAILPOINT ends in ':raise' or nothing, not {mode[:64]!r}")
    return name, count, mode == "raise"


_armed: dict[str, int] = {}
_raising = False
try:
    if _spec := os.environ.get("LEDGER_FAILPOINT", "").strip():
        _name, _count, _raising = parse(_spec)
        _armed[_name] = _count
except ValueError:
    pass  # refused with its reason by the settings


class FailpointError(RuntimeError):
    """A failure no code of the ledger expects, injected by a test."""


def failpoint(name: str) -> None:
    if name in _armed:
        _armed[name] -= 1
        if _armed[name] <= 0:
            if _raising:
                del _armed[name]
                raise FailpointError(name)
            os._exit(EXIT_STATUS)
