"""JSON objects that name a member twice: refused, never read one way of two.

RFC 8259 leaves an object with a repeated name to each parser: orjson keeps the last value,
other parsers the first, some refuse. A publisher whose library read `{"purposes":
["support"], "purposes": ["marketing"]}` one way would find the ledger had recorded the
other, and a record of proof cannot rest on that (I-JSON, RFC 7493, makes unique names a
MUST). So every fact and every document of facts is checked, cheaply: each member of an
object has its name followed by a colon, so a document with no more `"` `:` pairs than the
parsed objects have members repeats no name (the pairs a string's contents add only make
the count larger). Only when the counts differ is the document parsed again, by the
standard library, which sees every pair, to find the objects that really repeat a name.

The walk that counts the members also measures how deep the document nests: past MAX_DEPTH
levels it is refused (no fact needs that many, and the standard library's parser recurses).
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class TooDeep(ValueError):
    """A document nests objects and arrays deeper than MAX_DEPTH."""


class Repeated(dict[str, Any]):
    """An object, as the standard library parsed it, that names some member twice."""


def _shape(value: dict[str, Any] | list[Any]) -> tuple[int, int]:
    """How many members the objects in `value` have, and how deep it nests. A loop, not
    recursion: orjson reads documents 1,024 levels deep, past Python's recursion limit."""
    members = depth = 0
    level: list[Any] = [value]
    while level:  # level by level, so the depth is the number of levels
        depth += 1
        below: list[Any] = []
        for container in level:
            if type(container) is dict:
                members += len(container)
                container = container.values()
            for inner in container:
                if type(inner) is dict or type(inner) is list:
                    below.append(inner)
        level = below
    return members, depth


def depth_of(value: dict[str, Any] | list[Any]) -> int:
    """How many levels of objects and arrays `value` nests (1 for a flat one)."""
    return _shape(value)[1]


def _names_then_colons(raw: bytes) -> int:
    """How many times a `"` is followed by a colon, with or without whitespace between.

    JSON's whitespace deleted first (whatever that does inside strings only adds to the
    count): two passes in C, a third of what the equivalent regular expression takes."""
    return raw.translate(None, b" \t\n\r").count(b'":')


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    return Repeated(found) if len(found) != len(pairs) else found


def marked(raw: bytes, parsed: Any) -> Any | None:
    """None if no object in `raw` (which orjson parsed as `parsed`) names a member twice;
    otherwise `raw` parsed again, each object that repeats a name a `Repeated`.

    Raises TooDeep for a document nested deeper than MAX_DEPTH, which the standard
    library's parser (it recurses) might not read, and no fact needs."""
    if type(parsed) is not dict and type(parsed) is not list:
        return None
    members, depth = _shape(parsed)
    if depth > MAX_DEPTH:
        raise TooDeep(f"nested deeper than {MAX_DEPTH} levels")
    if _names_then_colons(raw) == members:
        return None
    return json.loads(raw, object_pairs_hook=_pairs)


def repeats_a_name(value: Any) -> bool:
    """Whether `value` (from `marked`) is or holds an object that names a member twice."""
    if isinstance(value, Repeated):
        return True
    if isinstance(value, dict):
        return any(repeats_a_name(v) for v in value.values())
    if isinstance(value, list):
        return any(repeats_a_name(v) for v in value)
    return False
