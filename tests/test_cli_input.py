"""`record` reads JSON Lines a batch at a time (`fact_batches`): whatever the input, it must
read the same facts, with the same lines and indexes, as reading it whole (`read_facts`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.cli import common, pipe_lines
from ledger.cli.common import CliError, InputFacts, fact_batches, read_facts
from ledger.errors import FactRejected
from tests.examples import examples

FACT = orjson.dumps({"event_id": "e", "type": "consent.granted", "subject": "s"})
PIECES = [
    FACT,
    FACT + b" ",
    b"",  # a blank line
    b"   ",
    b"not json",
    b"{",  # the start of a document over several lines
    b"  [",
    b"\x0c{",  # a form feed: whitespace to bytes.strip, not to JSON
    b'{"event_id": "e"',
    b"{not json",
    b'"event_id": "e"',
    b"}",
    b"[",
    b"]",
    b"[]",
    b"{}",
    b"12",
    b'"a string"',
    orjson.dumps([{"event_id": "a"}, {"event_id": "b"}]),
    b",",  # lines that make values on lines of their own one document
    FACT + b",",
    b"true",
    b"null",
]
ENDS = [b"\n", b"\r\n", b"\r"]


def outcome(read: Any) -> Any:
    """What a reader gave: each fact with its answer (index, and line for JSON Lines), or the
    refusal of the whole input."""
    try:
        batches: list[InputFacts] = list(read())
    except CliError as error:
        return ("refused", str(error))
    out = []
    for batch in batches:
        for offset, item in enumerate(batch.items):
            shown = item.as_dict() if isinstance(item, FactRejected) else item
            out.append((batch.answer(batch.first + offset), shown))
    return out


def both(data: bytes, size: int) -> tuple[Any, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "facts"
        path.write_bytes(data)
        return (
            outcome(lambda: fact_batches(str(path), size)),
            outcome(lambda: [read_facts(data)]),
        )


def from_a_pipe(data: bytes, size: int, chunk: int) -> Any:
    """What `fact_batches` reads of a pipe that holds `data` and is closed, `chunk` bytes a
    read: every line is at hand, so no batch ends early and nothing differs from a file."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)  # smaller than the pipe's buffer
        os.close(write_end)
        with mock.patch.object(pipe_lines, "CHUNK", chunk):
            return outcome(lambda: fact_batches(f"/dev/fd/{read_end}", size))
    finally:
        os.close(read_end)


@settings(max_examples=examples(300), deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(PIECES), st.sampled_from(ENDS)), min_size=0, max_size=12
    ),
    last_end=st.booleans(),
    bom=st.booleans(),
    size=st.integers(1, 4),
    chunk=st.integers(1, 9),
    look=st.integers(1, 12),
)
@example(
    lines=[(b"{", b"\n"), (b'"event_id": "e"', b"\n"), (b"}", b"\n")],
    last_end=True,
    bom=True,
    size=1,
    chunk=2,
    look=12,
)
@example(
    lines=[(b"", b"\r\n"), (FACT, b"\r"), (FACT, b"\n")],
    last_end=False,
    bom=False,
    size=1,
    chunk=1,
    look=12,
)
@example(
    lines=[(b"  [", b"\n"), (FACT, b"\n"), (b"]", b"\n")],
    last_end=True,
    bom=False,
    size=1,
    chunk=3,
    look=12,
)
@example(
    lines=[(b"\x0c{", b"\n"), (b'"event_id": "e"', b"\n"), (b"}", b"\n")],
    last_end=False,
    bom=False,
    size=2,
    chunk=9,
    look=12,
)
@example(
    lines=[(b"[", b"\n"), (FACT, b"\n"), (b",", b"\n"), (b"null", b"\n"), (b"]", b"\n")],
    last_end=True,
    bom=False,
    size=1,
    chunk=4,
    look=12,
)
@example(
    lines=[(b"{not json", b"\n"), (b"true", b"\n"), (FACT, b"\n"), (FACT, b"\n")],
    last_end=True,
    bom=False,
    size=1,
    chunk=5,
    look=2,
)
def test_a_batched_reading_reads_what_a_whole_one_does(
    lines: list[tuple[bytes, bytes]], last_end: bool, bom: bool, size: int, chunk: int, look: int
) -> None:
    """Whatever the input, and however far (`look`) a first line that opens a document is
    looked past for two lines in turn that are each a value."""
    data = b"".join(text + end for text, end in lines)
    if not last_end and lines:
        data = data[: -len(lines[-1][1])]
    if bom:
        data = b"\xef\xbb\xbf" + data
    with mock.patch.object(common, "LOOK_AHEAD", look):
        batched, whole = both(data, size)
        assert batched == whole
        assert from_a_pipe(data, size, chunk) == whole


@pytest.mark.parametrize("size", [1, 2, 1000])
def test_json_lines_come_in_batches_of_the_size_asked(size: int, tmp_path: Path) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_bytes(b"\n".join([FACT] * 5) + b"\n")
    batches = list(fact_batches(str(path), size))
    assert [len(b.items) for b in batches] == [min(size, 5 - i) for i in range(0, 5, size)]
    assert [b.first for b in batches] == list(range(0, 5, size))


def test_json_lines_whose_first_line_is_bad_are_read_a_batch_at_a_time(tmp_path: Path) -> None:
    """A first line that is not JSON, and does not open an object or an array, cannot begin
    a document: the input is JSON Lines, answered a batch at a time as the pipe is fed (it
    was read whole, to its end)."""
    with fed_fifo(tmp_path, b"not json\n" + FACT + b"\n" + FACT + b"\n", FACT + b"\n") as (
        batches,
        more,
        fed,
    ):
        first = next(batches(2))
        assert not fed.is_set(), "the input was read to its end before the first batch"
        assert first.items[0] == b"not json" and first.lines == [1, 2]
        more.set()
        rest = list(batches(2))
    assert [item for batch in rest for item in batch.items] == [FACT, FACT]
    assert all(len(batch.items) <= 2 for batch in rest)


def test_json_lines_whose_first_line_opens_an_object_are_read_a_batch_at_a_time(
    tmp_path: Path,
) -> None:
    """A first line cut off in an object may open a document over several lines, but two
    lines after it that are each a value cannot be in one: the input is JSON Lines, answered
    a batch at a time as the pipe is fed (it was read whole, to its end)."""
    cut = FACT[:20]
    with fed_fifo(tmp_path, cut + b"\n" + FACT + b"\n" + FACT + b"\n", FACT + b"\n") as (
        batches,
        more,
        fed,
    ):
        first = next(batches(2))
        assert not fed.is_set(), "the input was read to its end before the first batch"
        assert first.items[0] == cut and first.lines == [1, 2]
        more.set()
        rest = list(batches(2))
    assert [item for batch in rest for item in batch.items] == [FACT, FACT]
    assert [line for batch in rest for line in batch.lines or []] == [3, 4]


def test_a_pipe_s_batch_ends_where_its_next_line_has_not_come(tmp_path: Path) -> None:
    """A service that writes a fact and waits for its answer gets it: the batch ends where
    the pipe has nothing more yet, not at its size (it waited for 1,000 facts or the end)."""
    with fed_fifo(tmp_path, FACT + b"\n\n" + FACT + b"\r\n" + FACT, b"\n" + FACT + b"\n") as (
        batches,
        more,
        fed,
    ):
        reading = batches(1000)
        first = next(reading)
        assert not fed.is_set(), "the batch waited for the input's end"
        # The third line has no end yet: it may go on, so it is not taken.
        assert (first.items, first.lines, first.idle) == ([FACT, FACT], [1, 3], True)
        more.set()
        rest = list(reading)
    assert [(b.items, b.lines, b.first) for b in rest] == [([FACT, FACT], [4, 5], 2)]


def test_a_pipe_s_lone_first_fact_is_answered_before_the_next_comes(tmp_path: Path) -> None:
    """A first line on its own, the next not come, is not waited on to tell a document from
    JSON Lines: it cannot begin a document over several lines. Its answer names line 1."""
    with fed_fifo(tmp_path, FACT + b"\n", FACT + b"\n") as (batches, more, fed):
        reading = batches(1000)
        first = next(reading)
        assert not fed.is_set(), "the first line waited for the next"
        assert (first.items, first.lines, first.idle) == ([FACT], [1], True)
        more.set()
        rest = list(reading)
    assert [(b.items, b.lines) for b in rest] == [([FACT], [2])]


def test_a_pipe_is_not_ready_with_only_the_start_of_a_line() -> None:
    """Bytes there without a line end (a writer that flushed mid-line) are not a line at
    hand: taken as one, the batch before them waited for the writer to end that line."""
    read_end, write_end = os.pipe()
    lines = pipe_lines.PipeLines(read_end, owned=True)
    try:
        os.write(write_end, FACT + b"\n")
        reading = iter(lines)
        assert next(reading) == FACT + b"\n"
        os.write(write_end, FACT[:5])
        assert not lines.ready()
        os.write(write_end, FACT[5:] + b"\n")
        assert lines.ready()
        assert next(reading) == FACT + b"\n"
        os.close(write_end)
        write_end = -1
        assert lines.ready() and list(reading) == []
    finally:
        lines.close()
        if write_end >= 0:
            os.close(write_end)


Reading = Callable[[int], Iterator[InputFacts]]  # a FIFO's batches of the size asked


@contextlib.contextmanager
def fed_fifo(
    tmp_path: Path, first: bytes, then: bytes
) -> Iterator[tuple[Reading, threading.Event, threading.Event]]:
    """A FIFO written `first`, held open until the test sets `more`, then written `then`
    (`fed` is set) and closed; and a way to read it in batches (the reader opens it once)."""
    fifo = tmp_path / "facts"
    os.mkfifo(fifo)
    more = threading.Event()
    fed = threading.Event()

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(first)
            pipe.flush()
            more.wait(timeout=60)  # the pipe stays open until the test has read
            pipe.write(then)
            fed.set()  # before the pipe closes: a reader that waits for its end comes after

    opened: list[Iterator[InputFacts]] = []

    def batches(size: int) -> Iterator[InputFacts]:
        if not opened:
            opened.append(fact_batches(str(fifo), size))
        return opened[0]

    # A daemon, joined with a bound: a reader that never opened the FIFO leaves the feeder
    # waiting in its open, which must fail the test, not hang it.
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield batches, more, fed
    finally:
        more.set()
        feeder.join(timeout=60)
