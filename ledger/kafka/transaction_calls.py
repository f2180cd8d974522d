"""The producer's transactional calls (commit, abort, a batch's consumed offsets), begun
here and waited for by the caller a step at a time.

kafka-python's `commit_transaction`, `abort_transaction` and `send_offsets_to_transaction`
each enqueue a request, wake the sender, and wait for its result without a bound. The
writer waited for them in a thread of its own per call, so that it could give up on a
broker gone away; but a result is never completed once its producer is closed, so each
outage left that thread waiting for good (a process through a daily outage held 365 after
a year), and every transaction started one or two threads. Begun here, the caller waits
on the result itself (`Begun.done(ms)`), and nothing is left waiting when it stops.

This reaches into kafka-python 3.0's producer (`_transaction_manager`, `_sender`), as its
public calls do in three lines each. Where another version keeps them otherwise, the public
call runs in a thread of its own as before (`tests/test_kafka_transaction_calls.py` checks
that this version is the first kind).
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError


class Begun(Protocol):
    """A transactional call on its way to the broker."""

    def done(self, ms: int) -> bool:
        """Whether the call has ended (waiting up to `ms` for it to)."""

    def result(self) -> None:
        """Raise what the ended call failed with, if it did."""


def begin_commit(producer: KafkaProducer) -> Begun:
    return _begun(producer, "begin_commit", "commit_transaction")


def begin_abort(producer: KafkaProducer) -> Begun:
    return _begun(producer, "begin_abort", "abort_transaction")


def begin_offsets(producer: KafkaProducer, offsets: Any, group: Any) -> Begun:
    """The consumed offsets of an intake batch, added to the producer's transaction."""
    return _begun(
        producer, "send_offsets_to_transaction", "send_offsets_to_transaction", offsets, group
    )


def direct(producer: KafkaProducer) -> bool:
    """Whether this kafka-python lets a call be begun without a thread to wait in it."""
    manager = getattr(producer, "_transaction_manager", None)
    return all(
        callable(getattr(manager, name, None))
        for name in ("begin_commit", "begin_abort", "send_offsets_to_transaction")
    ) and callable(getattr(getattr(producer, "_sender", None), "wakeup", None))


def held_error(producer: KafkaProducer) -> BaseException | None:
    """The error that put the producer's transactions in an error state, if one did.

    Once the sender has met an error in the background (a fence found while adding a
    partition to the transaction), every transactional call raises a plain KafkaError that
    names it in words only: the fenced writer was then told the broker was unavailable."""
    error = getattr(getattr(producer, "_transaction_manager", None), "last_error", None)
    return error if isinstance(error, BaseException) else None


def as_kafka_error(error: BaseException) -> BaseException:
    """A failed call's error as the KafkaError it stands for.

    kafka-python's sender fails a transactional call with a KafkaError, save where an answer
    comes that it did not expect: then a `RuntimeError("Detected more than one in-flight
    transactional request.")`, its producer dead from then on all the same. The writer took
    that for a bug that one of the batch's records tripped: it isolated the batch in halves,
    each half's transaction failed the same way while the fault lasted, and valid facts were
    rejected as `processing_failed` (`tests/test_kafka_intake.py`). A transactional call
    fails for the client or the broker, never for a record, so every failure of one is
    raised as a KafkaError: the producer is dropped and the batch retried, as for any other
    refusal.
    """
    if isinstance(error, KafkaError) or not isinstance(error, Exception):
        return error
    wrapped: BaseException = KafkaError(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def _begun(producer: KafkaProducer, begin: str, public: str, *args: Any) -> Begun:
    if direct(producer):
        # What the public call does before it waits: the request enqueued, the sender woken.
        result = getattr(producer._transaction_manager, begin)(*args)
        producer._sender.wakeup()
        return _Result(result)
    return _InThread(getattr(producer, public), args)


class _Result:
    """kafka-python's TransactionalRequestResult: completed by the producer's sender."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def done(self, ms: int) -> bool:
        if not self._result.is_done:
            # One that ended with an error raises it here: `result` raises it again.
            with contextlib.suppress(Exception):
                self._result.wait(timeout_ms=ms)
        return bool(self._result.is_done)

    def result(self) -> None:
        if self._result.failed:
            raise as_kafka_error(self._result.exception)


class _InThread:
    """The public call, made in a daemon thread of its own (left waiting if it never ends)."""

    def __init__(self, call: Any, args: tuple[Any, ...]) -> None:
        self._future: Future[None] = Future()

        def run() -> None:
            try:
                call(*args)
            except BaseException as error:  # raised again by `result`, in the caller's thread
                self._future.set_exception(error)
            else:
                self._future.set_result(None)

        threading.Thread(target=run, name="ledger-transaction-call", daemon=True).start()

    def done(self, ms: int) -> bool:
        return bool(futures_wait([self._future], timeout=ms / 1000).done)

    def result(self) -> None:
        try:
            self._future.result()
        except Exception as error:
            raise as_kafka_error(error)  # noqa: B904 (its cause is set when it is wrapped)
