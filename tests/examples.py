"""How many examples each property-based test tries: the number its decorator names (or
hypothesis's 100), times `TEST_EXAMPLES_SCALE`.

The numbers are sized so that `make test` stays inside CI's 15 minutes on two cores. A longer
search for rarer histories, run by hand now and then, scales them all at once instead of
editing each decorator: `TEST_EXAMPLES_SCALE=15 make test`. (At 15, on 2026-12-05, the 20
modules that hold property-based tests ran 438 tests in 975 s on two processes, all passed.)
"""

from __future__ import annotations

import math
import os


def scale_from(given: str) -> float:
    """The scale named by `given`; a value that is not a positive number is refused, so a
    typo cannot quietly run fewer examples than asked."""
    try:
        scale = float(given)
    except ValueError:
        scale = math.nan
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"TEST_EXAMPLES_SCALE must be a positive number, not {given!r}")
    return scale


try:
    SCALE, REFUSED = scale_from(os.environ.get("TEST_EXAMPLES_SCALE", "1")), ""
except ValueError as refused:
    # Said by tests/conftest.py as pytest's usage error (one line, before any test runs): an
    # error raised while pytest imports its conftest comes with a traceback.
    SCALE, REFUSED = 1.0, str(refused)


def examples(n: int, scale: float = SCALE) -> int:
    """`n` examples scaled, at least one."""
    return max(1, round(n * scale))
