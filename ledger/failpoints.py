"""Crash points for the fault-injection tests: `LEDGER_FAILPOINT=name:n` ends the process
abruptly (`os._exit`, no clean-up, like SIGKILL) the n-th time it passes `name`.

Random SIGKILLs rarely land in the narrowest windows (between the Kafka commit and the
replica's commit, say), so the tests also stop the writer exactly there. Unset, a failpoint
costs one dictionary lookup.
"""

from __future__ import annotations

import os

EXIT_STATUS = 99
_armed: dict[str, int] = {}
_spec = os.environ.get("LEDGER_FAILPOINT", "")
if _spec:
    _name, _, _count = _spec.partition(":")
    _armed[_name] = int(_count or "1")


def failpoint(name: str) -> None:
    if name in _armed:
        _armed[name] -= 1
        if _armed[name] <= 0:
            os._exit(EXIT_STATUS)
