"""Process-wide tuning for the ledger's own processes (CLI, HTTP service, benchmarks).

Recording a batch allocates many short-lived objects (events, dicts, receipts) while the
process also holds long-lived ones (cached subjects, the catalogue); CPython's default
generation-0 threshold of 700 runs the cyclic collector over them every few facts. A larger
threshold, and freezing what exists after start-up, keeps the collector off the hot path.
Only entry points call this; importing the ledger as a library changes nothing.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000


def tune() -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
