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
_armed: dict[str, int] = {}
_raising = False
_spec = os.environ.get("LEDGER_FAILPOINT", "")
if _spec:
    _name, _, _rest = _spec.partition(":")
    _count, _, _mode = _rest.partition(":")
    _armed[_name] = int(_count or "1")
    _raising = _mode == "raise"


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
