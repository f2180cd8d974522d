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
from typing import Any

from ledger.envelope import Fact, Item, Received
from ledger.receipt import ErasureNotOverwritten, Outcome

MAX_GROUP = 1000

# One request's items, the future its outcomes go to (settled on the request's event loop),
# and whether it wants one outcome (`outcome`) or a list (`outcomes`).
_Item = tuple[Sequence[Item], asyncio.AbstractEventLoop, "asyncio.Future[Any]", bool]


class GroupCommitter:
    """`record` is `ConsentLedger.record_received` (the writer thread records) or a writer
    process's.

    A request awaits an asyncio future that the writer thread settles through the request's
    loop (`call_soon_threadsafe`), not a concurrent Future mirrored by `asyncio.wrap_future`
    (a second future, a done-callback and a copy of the state per request): every single
    publish awaits one.
    """

    def __init__(self, record: Callable[[Sequence[Item]], list[Outcome]]) -> None:
        self._record_facts = record
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    async def outcome(self, fact: Fact | Received) -> Outcome:
        """One fact's outcome, recorded in the next group."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._queue.put(((fact,), loop, future, True))
        return await future

    async def outcomes(self, items: Sequence[Item]) -> list[Outcome]:
        """A batch's outcomes, one per item in order, its facts recorded in one group."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        self._queue.put((items, loop, future, False))
        return await future

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
            recorded: list[Outcome] | ErasureNotOverwritten = self._record_facts(
                [item for items, _, _, _ in group for item in items]
            )
        except ErasureNotOverwritten as busy:
            recorded = busy
        except BaseException as exc:
            for _, loop, future, _ in group:
                _settle(loop, future, None, exc)
            return
        shares = answers([(len(items), single) for items, _, _, single in group], recorded)
        for (_, loop, future, _), (result, error) in zip(group, shares, strict=True):
            _settle(loop, future, result, error)


def answers(
    requests: Sequence[tuple[int, bool]], recorded: list[Outcome] | ErasureNotOverwritten
) -> list[tuple[Any, BaseException | None]]:
    """Each request's share of its group's outcomes, given (how many items, whether it wants
    one outcome) per request in order: (its outcome or outcomes, None), or (None, the error).

    A group whose erasure the key store could not finish was recorded all the same: only a
    request that asked for an erasure is told (503 `key_store_busy`); the others get their
    receipts, not an error about someone else's fact.
    """
    busy = recorded if isinstance(recorded, ErasureNotOverwritten) else None
    outcomes = busy.outcomes if busy is not None else recorded
    assert isinstance(outcomes, list)
    shares: list[tuple[Any, BaseException | None]] = []
    start = 0
    for size, single in requests:
        end = start + size
        mine = outcomes[start:end]
        if busy is not None and any(start <= i < end for i in busy.erasures):
            # Its own outcomes ride with the error (the service counts them as recorded).
            erasures = frozenset(i - start for i in busy.erasures if start <= i < end)
            shares.append((None, ErasureNotOverwritten(str(busy), mine, erasures)))
        else:
            shares.append((mine[0] if single else mine, None))
        start = end
    return shares


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    """Hand a request its outcome, or the error, on its own loop (from this thread, only
    the loop may touch the future)."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nothing waits on it any more
        loop.call_soon_threadsafe(_settle_on_loop, future, result, error)


def _settle_on_loop(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled: the request went away while its facts were recorded
        return
    if error is not None:
        future.set_exception(settable(error))
    else:
        future.set_result(result)


def settable(error: BaseException) -> BaseException:
    """The error, or one a future can hold: asyncio refuses StopIteration (a bug deep in a
    write can raise it), and a future left unsettled would hold its request forever."""
    if isinstance(error, StopIteration | StopAsyncIteration):
        return RuntimeError(f"the writer failed ({type(error).__name__})")
    return error
