"""The event loop's group commit to the writer process: groups, answers, and a writer that
dies, hangs, fails or cannot start (real child processes, real SQLite files)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar, cast

import orjson
import pytest

from api.process_committer import ProcessCommitter
from api.writer_process import WriterProcess, WriterUnavailable
from ledger.application import ConsentLedger
from ledger.envelope import Fact, Item, parse_fact
from ledger.errors import FactRejected
from ledger.receipt import Outcome, Receipt
from ledger.settings import Settings, SettingsError
from tests.facts import grant

T = TypeVar("T")


@pytest.fixture
def writer(settings: Settings) -> Iterator[WriterProcess]:
    ledger = ConsentLedger(settings)
    ledger.init_demo()
    ledger.close()
    process = WriterProcess(settings)
    yield process
    process.close()


def run(work: Coroutine[Any, Any, T]) -> T:
    """A request left waiting for ever fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(work, 120))


def facts(prefix: str, n: int) -> list[Fact]:
    return [parse_fact(grant(f"{prefix}-{i}", event_id=f"{prefix}-{i}")) for i in range(n)]


def test_requests_waiting_together_share_a_group_and_keep_their_outcomes(
    writer: WriterProcess,
) -> None:
    committer = ProcessCommitter(writer)
    singles = facts("single", 200)
    refused = parse_fact(grant("refused", event_id="refused", purposes=("lottery",)))

    async def main() -> tuple[list[Outcome], list[Outcome], Outcome]:
        batch = committer.outcomes(facts("batch", 300))
        *ones, rejected = await asyncio.gather(*(committer.outcome(f) for f in [*singles, refused]))
        return await batch, ones, rejected

    try:
        batch, ones, rejected = run(main())
    finally:
        committer.close()
    assert [getattr(o, "event_id", None) for o in ones] == [f"single-{i}" for i in range(200)]
    assert [getattr(o, "event_id", None) for o in batch] == [f"batch-{i}" for i in range(300)]
    assert isinstance(rejected, FactRejected) and rejected.code.value == "unknown_purpose"
    positions = {o.position for o in [*ones, *batch] if isinstance(o, Receipt)}
    assert len(positions) == 500
    assert writer.restarts == 0


def test_a_writer_that_died_idle_is_replaced_before_the_next_group(
    writer: WriterProcess,
) -> None:
    committer = ProcessCommitter(writer)

    async def main() -> tuple[Outcome, Outcome]:
        first = await committer.outcome(facts("before", 1)[0])
        dead = writer.process
        os.kill(dead.pid, signal.SIGKILL)
        await asyncio.get_running_loop().run_in_executor(None, dead.join, 30)
        return first, await committer.outcome(facts("after", 1)[0])

    try:
        first, after = run(main())
    finally:
        committer.close()
    assert isinstance(first, Receipt) and isinstance(after, Receipt)
    assert writer.restarts == 1 and writer.process.is_alive()


def test_a_writer_that_does_not_answer_in_time_is_killed_and_replaced(
    writer: WriterProcess,
) -> None:
    committer = ProcessCommitter(writer)
    stuck = writer.process
    writer.answer_timeout_s = 0.001  # no group of 500 is that fast
    many = facts("slow", 500)

    async def main() -> list[Outcome]:
        with pytest.raises(WriterUnavailable, match="did not answer"):
            await committer.outcomes(many)
        writer.answer_timeout_s = 120.0
        return await committer.outcomes(many)  # committed the first time or not: either

    try:
        outcomes = run(main())
    finally:
        committer.close()
    assert not stuck.is_alive() and writer.process is not stuck
    assert all(isinstance(o, Receipt) for o in outcomes)


def test_a_writer_that_stops_reading_leaves_the_event_loop_free(writer: WriterProcess) -> None:
    """A batch larger than the socket's buffer is written off the loop: with the writer
    stopped (SIGSTOP) the loop keeps serving, and the answer timer kills that writer."""
    committer = ProcessCommitter(writer)
    stuck = writer.process
    evidence = {"user_agent": "Mozilla/5.0 " + "x" * 300}
    big = [  # about 500 KB pickled: more than a socket's buffer
        parse_fact(
            orjson.loads(orjson.dumps(grant(f"big-{i}", event_id=f"big-{i}", evidence=evidence)))
        )
        for i in range(1000)
    ]
    writer.answer_timeout_s = 2.0
    result: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sending = asyncio.ensure_future(committer.outcomes(big))
        started = loop.time()
        await asyncio.sleep(0.2)  # a timer of the loop, due while the group is being written
        result["lag"] = loop.time() - started
        with pytest.raises(WriterUnavailable, match="did not answer"):
            await sending
        writer.answer_timeout_s = 120.0
        result["after"] = await committer.outcome(facts("after", 1)[0])

    os.kill(stuck.pid, signal.SIGSTOP)
    serving = threading.Thread(target=asyncio.run, args=(main(),))
    serving.start()
    serving.join(60)
    blocked = serving.is_alive()
    if blocked:  # the loop itself is stuck in the write: free it, then fail
        os.kill(stuck.pid, signal.SIGKILL)
        serving.join(60)
    committer.close()
    assert not blocked, "the event loop was blocked writing to a writer that stopped reading"
    assert result["lag"] < 1.5
    assert isinstance(result["after"], Receipt) and not stuck.is_alive()


def test_an_error_the_writer_answers_with_reaches_every_request_of_its_group(
    writer: WriterProcess,
) -> None:
    committer = ProcessCommitter(writer)
    not_an_item = cast(Item, 42)  # the writer's ledger refuses to record it at all

    async def main() -> list[Any]:
        return list(
            await asyncio.gather(
                committer.outcomes([facts("with-it", 1)[0], not_an_item]),
                committer.outcome(facts("alone", 1)[0]),
                return_exceptions=True,
            )
        )

    try:
        first, second = run(main())
        after = run(committer.outcome(facts("later", 1)[0]))
    finally:
        committer.close()
    assert isinstance(first, Exception) and not isinstance(first, WriterUnavailable)
    # The lone fact was sent with the first group or the next: its own outcome either way.
    assert isinstance(second, Receipt) or type(second) is type(first)
    assert isinstance(after, Receipt) and writer.restarts == 0


def test_a_group_that_cannot_be_sent_fails_its_requests_and_not_the_next(
    writer: WriterProcess,
) -> None:
    """An item that cannot be pickled fails the group it was sent with (every request in
    it, as a failed append would), whether it is sent at once or after the writer's last
    answer; the writer is untouched and the next group records."""
    committer = ProcessCommitter(writer)
    unpicklable = cast(Item, lambda: None)

    async def main() -> tuple[list[Outcome], list[Any], Outcome]:
        busy = asyncio.ensure_future(committer.outcomes(facts("busy", 300)))
        await asyncio.sleep(0)  # sent: the next requests wait and go together
        grouped = await asyncio.gather(
            committer.outcomes([facts("unsent", 1)[0], unpicklable]),
            committer.outcome(facts("beside", 1)[0]),
            return_exceptions=True,
        )
        return await busy, list(grouped), await committer.outcome(facts("sent", 1)[0])

    try:
        busy, grouped, sent = run(main())
    finally:
        committer.close()
    assert all(isinstance(o, Receipt) for o in busy)
    assert [type(r) for r in grouped] == [type(grouped[0])] * 2
    assert isinstance(grouped[0], Exception) and not isinstance(grouped[0], WriterUnavailable)
    assert isinstance(sent, Receipt) and writer.restarts == 0


def test_a_writer_that_cannot_start_again_fails_the_waiting_requests_with_why(
    writer: WriterProcess,
) -> None:
    committer = ProcessCommitter(writer)
    wrong = base64.b64encode(os.urandom(32)).decode()
    writer._settings = dataclasses.replace(writer._settings, master_key=wrong)
    dead = writer.process
    os.kill(dead.pid, signal.SIGKILL)
    dead.join(timeout=30)

    async def main() -> None:
        with pytest.raises(SettingsError, match="master key does not open"):
            await committer.outcome(facts("no-writer", 1)[0])

    try:
        run(main())
    finally:
        committer.close()


def test_a_request_on_another_event_loop_is_handed_to_the_serving_one(
    writer: WriterProcess,
) -> None:
    """A test client may run its own loop; while the serving loop has a group out, a request
    from another loop is recorded through the serving one."""
    committer = ProcessCommitter(writer)
    sent = threading.Event()
    other_done = threading.Event()
    served: list[list[Outcome]] = []

    async def serving() -> None:
        loop = asyncio.get_running_loop()
        batch = asyncio.ensure_future(committer.outcomes(facts("serving", 500)))
        await asyncio.sleep(0)  # the batch is submitted and sent
        sent.set()
        served.append(await batch)
        await loop.run_in_executor(None, other_done.wait, 60)  # keep serving until then

    thread = threading.Thread(target=asyncio.run, args=(serving(),))
    thread.start()
    try:
        assert sent.wait(60)
        other = run(committer.outcome(facts("other-loop", 1)[0]))
    finally:
        other_done.set()
        thread.join(timeout=60)
        committer.close()
    assert isinstance(other, Receipt) and other.event_id == "other-loop-0"
    assert len(served) == 1 and all(isinstance(o, Receipt) for o in served[0])


def test_closing_tells_the_waiting_requests_the_writer_is_unavailable(
    writer: WriterProcess,
) -> None:
    committer = ProcessCommitter(writer)

    async def main() -> None:
        waiting = asyncio.ensure_future(committer.outcomes(facts("closing", 500)))
        await asyncio.sleep(0)  # submitted and sent
        committer.close()
        with pytest.raises(WriterUnavailable, match="stopping"):
            await waiting
        with pytest.raises(WriterUnavailable, match="stopping"):
            await committer.outcome(facts("after-close", 1)[0])

    run(main())


def test_work_cancelled_with_a_closing_loop_is_left_to_close(writer: WriterProcess) -> None:
    """A loop shutting down cancels what its executor was doing for the committer (starting a
    writer, writing a batch); the callbacks must not read a cancelled future for its
    exception, which raises CancelledError out of the callback."""
    committer = ProcessCommitter(writer)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for callback in (
            committer._writer_started,
            lambda done: committer._group_written(done, []),
        ):
            cancelled: asyncio.Future[Any] = loop.create_future()
            cancelled.cancel()
            callback(cancelled)  # raises CancelledError if it reads the exception
        assert not committer._starting

    run(main())
    committer.close()
