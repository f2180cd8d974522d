"""`record` reads JSON Lines a batch at a time (`fact_batches`): whatever the input, it must
read the same facts, with the same lines and indexes, as reading it whole (`read_facts`)."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.cli.common import CliError, InputFacts, fact_batches, read_facts
from ledger.errors import FactRejected

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


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(PIECES), st.sampled_from(ENDS)), min_size=0, max_size=12
    ),
    last_end=st.booleans(),
    bom=st.booleans(),
    size=st.integers(1, 4),
)
@example(
    lines=[(b"{", b"\n"), (b'"event_id": "e"', b"\n"), (b"}", b"\n")],
    last_end=True,
    bom=True,
    size=1,
)
@example(lines=[(b"", b"\r\n"), (FACT, b"\r"), (FACT, b"\n")], last_end=False, bom=False, size=1)
@example(lines=[(b"  [", b"\n"), (FACT, b"\n"), (b"]", b"\n")], last_end=True, bom=False, size=1)
@example(
    lines=[(b"\x0c{", b"\n"), (b'"event_id": "e"', b"\n"), (b"}", b"\n")],
    last_end=False,
    bom=False,
    size=2,
)
def test_a_batched_reading_reads_what_a_whole_one_does(
    lines: list[tuple[bytes, bytes]], last_end: bool, bom: bool, size: int
) -> None:
    data = b"".join(text + end for text, end in lines)
    if not last_end and lines:
        data = data[: -len(lines[-1][1])]
    if bom:
        data = b"\xef\xbb\xbf" + data
    batched, whole = both(data, size)
    assert batched == whole


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
    fifo = tmp_path / "facts"
    os.mkfifo(fifo)
    more = threading.Event()
    fed = threading.Event()

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(b"not json\n" + FACT + b"\n" + FACT + b"\n")
            pipe.flush()
            more.wait(timeout=60)  # the pipe stays open until the first batch is read
            pipe.write(FACT + b"\n")
            fed.set()  # before the pipe closes: a reader that waits for its end comes after

    # A daemon, joined with a bound: a reader that never opened the FIFO leaves the feeder
    # waiting in its open, which must fail the test, not hang it.
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        batches = fact_batches(str(fifo), 2)
        first = next(batches)
        assert not fed.is_set(), "the input was read to its end before the first batch"
        assert first.items[0] == b"not json" and first.lines == [1, 2]
        more.set()
        assert [b.items for b in batches] == [[FACT, FACT]]
    finally:
        more.set()
        feeder.join(timeout=60)
