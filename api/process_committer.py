"""Group commit on the event loop itself, straight to the writer process.

With a writer process the service's own work per group is only to send it and to read the
answer, so no thread of its own does it: the event loop sends a group over the pipe and
watches the pipe for the answer (`add_reader`), settling each request's future where it
waits. A group-commit thread had cost two hand-offs per group (the queue to the thread, and
`call_soon_threadsafe` back, each a wake-up and a wait for the interpreter lock the busy
event loop holds): closed loops of 3,000 single publishes on 8 connections ran 1,539-1,724
a second against 1,356-1,391 through the thread, three A/B runs taking turns (throwaway
script, 2026-12-01).

Grouping is the same as `api.group_commit.GroupCommitter`'s: what waits when the writer
is free goes as one group of at most 1,000 facts, in arrival order; each fact is still
checked on its own. A writer that died idle is replaced before the next group is sent; one
that dies with a group, or answers nothing within the writer's `answer_timeout_s` (it is
killed then), gives that group's requests `WriterUnavailable`, and the next group starts a
new one. Starting one blocks, so it runs in the loop's default executor while requests keep
arriving and wait; so does writing a group too large for the socket's buffer (a batch), so
that a writer which stopped reading cannot block the loop and the timer that would kill it.

The committer serves the event loop it first served, and moves to another only while idle
(a test client may run a loop per request); a request on another loop while a group is out
is handed to the serving one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from api.group_commit import MAX_GROUP, answers, settable
from api.writer_process import WriterProcess, WriterUnavailable, answer_of
from ledger.envelope import Fact, Item, Received
from ledger.receipt import ErasureNotOverwritten, Outcome

log = logging.getLogger("consent_ledger.api")

# Groups pickled to at most this many bytes are written from the loop itself: the writer
# has read everything sent before (one group at a time), so they fit in the socket's buffer
# (212,992 bytes by default here) and the write returns at once. A single publish is a few
# hundred bytes; a batch of 1,000 facts, hundreds of kilobytes.
SENT_ON_THE_LOOP = 64 * 1024

# One request's items, the future its outcomes go to, and whether it wants one outcome.
_Waiting = tuple[Sequence[Item], "asyncio.Future[Any]", bool]


class ProcessCommitter:
    def __init__(self, process: WriterProcess) -> None:
        self._process = process
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: deque[_Waiting] = deque()
        self._sent: list[_Waiting] | None = None  # the group the writer is recording
        self._conn: Connection | None = None  # watched for the answer, on `_loop`
        self._timer: asyncio.TimerHandle | None = None
        self._starting = False  # a new writer is starting in the executor
        self._closed = False

    async def outcome(self, fact: Fact | Received) -> Outcome:
        """One fact's outcome, recorded in the next group."""
        result: Outcome = await self._submit((fact,), True)
        return result

    async def outcomes(self, items: Sequence[Item]) -> list[Outcome]:
        """A batch's outcomes, one per item in order, its facts recorded in one group."""
        result: list[Outcome] = await self._submit(items, False)
        return result

    def close(self) -> None:
        """Stop serving: what still waits is told the writer is unavailable."""
        self._closed = True
        self._unwatch()
        sent, self._sent = self._sent, None
        waiting = [*(sent or ()), *self._waiting]
        self._waiting.clear()
        _fail(waiting, WriterUnavailable("the service is stopping"))

    # ---- on the serving loop ---------------------------------------------------------------

    async def _submit(self, items: Sequence[Item], single: bool) -> Any:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise WriterUnavailable("the service is stopping")
        if loop is not self._loop:
            busy = self._sent is not None or self._starting or bool(self._waiting)
            if busy and self._loop is not None and self._loop.is_running():
                handed = asyncio.run_coroutine_threadsafe(self._submit(items, single), self._loop)
                return await asyncio.wrap_future(handed)
            self._unwatch()
            self._loop = loop
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((items, future, single))
        self._pump()
        return await future

    def _pump(self) -> None:
        """Send the next group if the writer is free and something waits."""
        if self._sent is not None or self._starting or not self._waiting or self._closed:
            return
        conn = self._process.running()
        if conn is None:  # ended while idle: nothing was sent to it; a new one takes the group
            self._process.lost()
            self._start_writer()
            return
        if conn is not self._conn:
            self._unwatch()
            self._watch(conn)
        group: list[_Waiting] = []
        size = 0
        while self._waiting:
            items = self._waiting[0][0]
            if group and size + len(items) > MAX_GROUP:
                break  # the next group starts with it
            group.append(self._waiting.popleft())
            size += len(items)
        group = [w for w in group if not w[1].done()]  # cancelled while waiting: not sent
        if not group:
            self._pump()
            return
        try:
            payload = ForkingPickler.dumps([item for items, _, _ in group for item in items])
        except Exception as error:  # not picklable: refused before a byte was written
            _fail(group, error)
            self._pump()
            return
        self._sent = group
        assert self._loop is not None
        self._timer = self._loop.call_later(self._process.answer_timeout_s, self._too_slow, group)
        if len(payload) <= SENT_ON_THE_LOOP:
            try:
                conn.send_bytes(payload)
            except OSError:
                self._sent = None
                self._lost(group, "the ledger's writer process stopped")
            return
        # A large group (a batch) leaves the loop free while it is written: a writer that
        # stopped reading would otherwise block the loop, and with it every request and the
        # answer timer that is there to kill that writer.
        sending = self._loop.run_in_executor(None, conn.send_bytes, payload)
        sending.add_done_callback(lambda done: self._group_written(done, group))

    def _group_written(self, done: asyncio.Future[None], group: list[_Waiting]) -> None:
        if done.cancelled():  # the loop is closing: `close` has answered what waited
            return
        if done.exception() is not None and self._sent is group:
            self._sent = None
            self._lost(group, "the ledger's writer process stopped")

    def _answered(self) -> None:
        group, self._sent = self._sent, None
        self._cancel_timer()
        assert self._conn is not None
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            self._lost(group or [], "the ledger's writer process stopped")
            return
        try:
            if group is None:  # an answer nobody waits for: cannot happen, but never wedge
                log.error("the writer process answered a group it was not sent")
                return
            try:
                recorded: list[Outcome] | ErasureNotOverwritten = answer_of(kind, value)
            except ErasureNotOverwritten as busy:
                recorded = busy
            except Exception as error:
                _fail(group, error)
                return
            shares = answers([(len(items), single) for items, _, single in group], recorded)
            for (_, future, _), (result, refused) in zip(group, shares, strict=True):
                if future.done():  # cancelled: the request went away meanwhile
                    continue
                if refused is not None:
                    future.set_exception(refused)
                else:
                    future.set_result(result)
        finally:
            self._pump()

    def _too_slow(self, group: list[_Waiting]) -> None:
        if self._sent is not group:
            return
        self._sent = None
        self._timer = None
        self._unwatch()
        self._process.kill()
        _fail(group, WriterUnavailable("the ledger's writer process did not answer"))
        self._pump()

    def _lost(self, group: list[_Waiting], why: str) -> None:
        self._unwatch()
        self._process.lost()
        _fail(group, WriterUnavailable(why))
        self._pump()

    def _start_writer(self) -> None:
        """Start a writer off the loop; the group goes when it is up."""
        self._unwatch()
        self._starting = True
        assert self._loop is not None
        started = self._loop.run_in_executor(None, self._process.ensure_started)
        started.add_done_callback(self._writer_started)

    def _writer_started(self, started: asyncio.Future[Connection]) -> None:
        self._starting = False
        if self._closed or started.cancelled():  # cancelled: the loop is closing, as above
            return
        error = started.exception()
        if error is not None:
            # No writer: what waits gets the reason, and the next request tries again.
            waiting = list(self._waiting)
            self._waiting.clear()
            _fail(waiting, error)
            return
        self._watch(started.result())
        self._pump()

    def _watch(self, conn: Connection) -> None:
        assert self._loop is not None
        self._conn = conn
        self._loop.add_reader(conn.fileno(), self._answered)
        # uvloop (uvicorn's loop when installed) makes a watched descriptor non-blocking;
        # the connection's send and recv are blocking calls, and a group or an answer larger
        # than the socket's buffer would fail half-written. The loop only polls the
        # descriptor for readiness, which works either way; the reading is ours.
        os.set_blocking(conn.fileno(), True)

    def _unwatch(self) -> None:
        self._cancel_timer()
        if self._conn is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self._conn.fileno())
        self._conn = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _fail(group: Sequence[_Waiting], error: BaseException) -> None:
    error = settable(error)
    for _, future, _ in group:
        if not future.done():
            future.set_exception(error)
