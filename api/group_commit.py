"""Group commit: requests that arrive together are recorded in one batch, off the event loop.

Each fact is still checked on its own, in arrival order, exactly as if sent alone (a batch
behaves like the same facts one by one); only the append, and its fsync, is shared. The
writer takes whatever is waiting when it is free: requests that arrive while it commits form
the next group. Under load this turns N commits into one; alone, a request never waits for
company. (It used to linger 2 ms for more facts: every request paid that even when the
writer was idle, and when it is busy the waiting requests already form the next group.)

A batch request goes through the same writer as one item, so a thousand facts being
checked and appended never hold up the event loop that serves every other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeAlias

from ledger.envelope import Fact, Received
from ledger.receipt import Outcome

MAX_GROUP = 1000

# One request's facts and where its outcomes go (a concurrent Future, or an asyncio future
# with its loop): one outcome for `submit` and `outcome`, a list for `submit_all`.
_OnLoop: TypeAlias = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]
_Target: TypeAlias = Future[Outcome] | Future[list[Outcome]] | _OnLoop
_Item = tuple[Sequence[Fact | Received], _Target, bool]


class GroupCommitter:
    """`record` is `ConsentLedger.record_received` (the writer thread records) or a writer
    process's."""

    def __init__(self, record: Callable[[Sequence[Fact | Received]], list[Outcome]]) -> None:
        self._record_facts = record
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, fact: Fact | Received) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        self._queue.put(((fact,), future, True))
        return future

    async def outcome(self, fact: Fact | Received) -> Outcome:
        """`submit`, awaited on the caller's event loop.

        The writer settles an asyncio future on that loop itself, instead of a concurrent
        Future that `asyncio.wrap_future` mirrors into one (a second future, a done-callback
        and a copy of the state on every request). Every single publish awaits this.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._queue.put(((fact,), (loop, future), True))
        return await future

    def submit_all(self, facts: Sequence[Fact]) -> Future[list[Outcome]]:
        future: Future[list[Outcome]] = Future()
        self._queue.put((facts, future, False))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        carried: _Item | None = None
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is None:
                return
            group = [first]
            size = len(first[0])
            stopping = False
            while size < MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                if size + len(item[0]) > MAX_GROUP:
                    carried = item  # the next group starts with it
                    break
                group.append(item)
                size += len(item[0])
            self._record(group)
            if stopping:
                return

    def _record(self, group: list[_Item]) -> None:
        try:
            outcomes = self._record_facts([fact for facts, _, _ in group for fact in facts])
        except BaseException as exc:
            for _, future, _ in group:
                _settle(future, None, exc)
            return
        start = 0
        for facts, future, single in group:
            mine = outcomes[start : start + len(facts)]
            start += len(facts)
            _settle(future, mine[0] if single else mine, None)


def _settle(target: _Target, result: Any, error: BaseException | None) -> None:
    """Hand a request its outcome (or the error): a concurrent Future directly, an asyncio
    future through its loop (from this thread, only the loop may touch it)."""
    if isinstance(target, Future):
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(result)
        return
    loop, future = target
    with contextlib.suppress(RuntimeError):  # a closed loop: nothing waits on it any more
        loop.call_soon_threadsafe(_settle_on_loop, future, result, error)


def _settle_on_loop(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled: the request went away while its fact was recorded
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
