"""`record` reads JSON Lines a batch at a time (`fact_batches`): whatever the input, it must
read the same facts, with the same lines and indexes, as reading it whole (`read_facts`)."""

from __future__ import annotations

import tempfile
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
