"""An object that names a member twice is refused wherever facts come in: the ledger never
records one reading of an input another parser would read the other way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.envelope import parse_fact, parse_fact_bytes
from ledger.errors import Code, FactRejected
from ledger.json_names import marked, repeats_a_name
from tests.cli_support import run
from tests.facts import grant

# ---- the check against the standard library, which sees every pair -----------------------

NAMES = st.sampled_from(["a", "b", "purposes", 'q"', "x:", "\\", "é"])
SCALARS = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=6)
SPACE = st.sampled_from(["", " ", "\t", "\n ", "\r\n"])


@st.composite
def documents(draw: st.DrawFn, depth: int = 0) -> tuple[str, bool]:
    """JSON text with random whitespace, and whether some object in it repeats a name."""
    if depth >= 3 or draw(st.booleans()):
        return json.dumps(draw(SCALARS)), False
    if draw(st.booleans()):
        items = [draw(documents(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
        return "[" + ",".join(t for t, _ in items) + "]", any(r for _, r in items)
    names = draw(st.lists(NAMES, max_size=4))
    values = [draw(documents(depth + 1)) for _ in names]
    # A name written escaped or not ("\u00e9" or "é") is the same name.
    members = [
        json.dumps(n, ensure_ascii=draw(st.booleans())) + draw(SPACE) + ":" + draw(SPACE) + v
        for n, (v, _) in zip(names, values, strict=True)
    ]
    repeated = len(set(names)) != len(names) or any(r for _, r in values)
    return "{" + draw(SPACE) + ",".join(members) + "}", repeated


@given(documents())
def test_a_repeated_name_is_found_exactly_where_the_standard_library_sees_one(
    document: tuple[str, bool],
) -> None:
    text, repeated = document
    raw = text.encode()
    exact = marked(raw, orjson.loads(raw))
    assert (exact is not None and repeats_a_name(exact)) == repeated


def test_the_names_inside_strings_do_not_make_a_repetition() -> None:
    raw = orjson.dumps({"a": 'b": 1, "a": 2', "c": ['"a" :', {"d": '":'}]})
    exact = marked(raw, orjson.loads(raw))
    assert exact is not None and not repeats_a_name(exact)  # counted more, checked, clean


# ---- a fact, over every way in --------------------------------------------------------------


def twice(fact: dict[str, Any], member: str, value: Any, space: str = "") -> bytes:
    """`fact` as JSON with `member` named a second time, with `value`."""
    return orjson.dumps(fact)[:-1] + f',"{member}"{space}:'.encode() + orjson.dumps(value) + b"}"


@pytest.mark.parametrize("space", ["", " ", "\n\t"])
def test_a_fact_that_names_a_member_twice_is_invalid_json(space: str) -> None:
    raw = twice(grant("p-1"), "purposes", ["service_improvement"], space)
    with pytest.raises(FactRejected) as refused:
        parse_fact_bytes(raw)
    assert refused.value.code is Code.INVALID_JSON
    assert "twice" in refused.value.message and "purposes" not in refused.value.message
    nested = orjson.dumps(grant("p-1", personal_data={"email": "a@b.uz"}))
    nested = nested.replace(b'"email":', b'"email":"c@d.uz","email":')
    with pytest.raises(FactRejected, match="twice"):
        parse_fact_bytes(nested)
    assert parse_fact_bytes(orjson.dumps(grant("p-1", source='"purposes":'))).source


def test_record_refuses_such_a_fact_in_its_place(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    ok = grant("c-1", event_id="ok")
    bad = twice(grant("c-2", event_id="bad"), "subject", "c-3").decode()
    as_array = "[" + orjson.dumps(ok).decode() + "," + bad + "]"
    as_lines = orjson.dumps({**ok, "event_id": "ok2"}).decode() + "\n" + bad + "\n"
    for given_input in (as_array, as_lines, bad):
        out = run(data, "record", "-", stdin=given_input)
        assert out.returncode == 1, out.stderr
        lines = [orjson.loads(line) for line in out.stdout.splitlines()]
        assert lines[-1]["rejected"]["code"] == "invalid_json"
        assert all("receipt" in line for line in lines[:-1])


# ---- how deep a fact may nest ---------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [65, 300, 1023])
def test_a_fact_nested_past_64_levels_is_invalid_json_never_a_crash(depth: int) -> None:
    """Before, a document orjson reads (up to 1,024 levels) could crash the check's walk or
    the standard library's parser, which recurse."""
    for raw in (
        orjson.dumps(grant("p-1"))[:-1] + b',"x":' + nested(depth) + b"}",
        orjson.dumps(grant("p-1", source='"a":'))[:-1] + b',"x":' + nested(depth) + b"}",
    ):
        with pytest.raises(FactRejected, match="nests deeper than 64 levels"):
            parse_fact_bytes(raw)


@pytest.mark.parametrize("depth", [17, 40, 300])
def test_evidence_nested_past_16_levels_is_refused_never_a_crash(depth: int) -> None:
    """Before, evidence 255 levels deep made orjson fail to write it: a 500 over HTTP."""
    raw = orjson.dumps(grant("p-1", evidence={"form": "x"}))

    def with_evidence_depth(levels: int) -> bytes:  # the evidence object is the first level
        return raw.replace(b'"form":"x"', b'"form":"x","d":' + nested(levels - 1))

    assert parse_fact_bytes(with_evidence_depth(16)).evidence is not None
    with pytest.raises(FactRejected) as as_bytes:
        parse_fact_bytes(with_evidence_depth(depth))
    # Past 64 levels in all, the fact is refused as a whole first (above).
    wanted = Code.INVALID_JSON if 1 + depth > 64 else Code.INVALID_FIELD
    assert as_bytes.value.code is wanted
    inner: list[Any] = []
    for _ in range(depth - 2):
        inner = [inner]
    as_read = orjson.loads(raw)  # as a batch's item or a CLI document's fact reaches it
    as_read["evidence"]["d"] = inner
    with pytest.raises(FactRejected) as as_object:
        parse_fact(as_read)
    assert as_object.value.code is Code.INVALID_FIELD and as_object.value.field == "evidence"


def test_a_cli_document_nested_past_64_levels_is_a_cli_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run(data, "init").returncode == 0
    document = b"[" + orjson.dumps(grant("c-1")) + b"," + nested(100) + b"]"
    out = run(data, "record", "-", stdin=document.decode())
    assert out.returncode == 2
    assert out.stderr == "consent-ledger: the input nests deeper than 64 levels\n"
