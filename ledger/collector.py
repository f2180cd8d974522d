"""Python's cycle collector held back while a batch of facts is checked and appended.

A batch allocates tens of thousands of small objects (facts, events, entries, rows), almost
all freed by reference counting or kept in the subject cache; none form cycles the batch
needs collected. Left running, the collector would interrupt a 1,000-fact batch dozens of
times, and every few batches walk the whole heap, subject cache included: about an eighth of
the write path's time in `python -m bench ingest`. Held back, it runs once after the batch
over what survived it, and cycles are still collected, only later.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def collection_deferred() -> Iterator[None]:
    """Defer cyclic garbage collection until the outermost holder (of any thread) leaves."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()
