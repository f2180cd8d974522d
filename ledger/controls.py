"""Characters that act instead of showing: refused in identifiers, made visible on display.

A publisher's text reaches a compliance officer's terminal (the CLI's tables), a spreadsheet
(the CSV trail) and an inquiry's paperwork. A control character in it acts there instead of
showing: ESC starts a terminal sequence that can recolour, erase or rewrite what was printed
before it, a newline forges a row of the trail, and the bidirectional formatting characters
of "Trojan Source" (CVE-2021-42574) make text read in another order than it is stored. So:

- identifiers and one-line fields of the envelope (`event_id`, `subject`, `source`,
  `request_id`, `policy_version`, ...) refuse them (`control_character`): no publisher means
  a NUL or an ESC in an id, and `"ali@example.uz\\n"` would quietly be another person (another
  `sid`) than `"ali@example.uz"`;
- free text (a `reason`) may span lines (tab, newline and carriage return) and refuses the rest;
- what stays unchecked (personal data, evidence, a policy's text, facts recorded before the
  rule) is escaped wherever it is shown to a person (`visible`), while the JSON answers keep
  every value exactly.

The refused set is fixed here, not taken from Unicode's categories, so a fact refused today is
refused after any upgrade of Python's Unicode tables, and one accepted stays accepted.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls; the Arabic letter mark, the left-to-right and right-to-left
# marks, the line and paragraph separators, the bidirectional embeddings, overrides and
# isolates (U+202A-U+202E, U+2066-U+2069).
_BEYOND_C0 = r"\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_IN_LINE = re.compile(rf"[\x00-\x1f{_BEYOND_C0}]")
# The same but tab, newline and carriage return.
_IN_TEXT = re.compile(rf"[\x00-\x08\x0b\x0c\x0e-\x1f{_BEYOND_C0}]")


def first_control(value: str, *, multiline: bool = False) -> str | None:
    """The first refused character of `value`, if any; with `multiline`, tab, newline and
    carriage return are allowed."""
    found = (_IN_TEXT if multiline else _IN_LINE).search(value)
    return found.group() if found else None


def code_point(char: str) -> str:
    return f"U+{ord(char):04X}"


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str, *, lines: bool = False) -> str:
    """`text` with every character that does not print (`str.isprintable`: controls, format
    characters, separators other than the space) written as a JSON escape (`\\n`, `\\u001b`,
    a surrogate pair above the BMP), so it shows instead of acting; with `lines`, newlines
    stay (output that is lines of its own making, such as indented JSON).

    JSON escapes keep JSON valid: `visible(orjson.dumps(x).decode())` reads back as `x`.
    A backslash already in the text is left as is: a person can still tell the two apart in
    the JSON answer, which keeps every value exactly.
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or (lines and char == "\n"):
            out.append(char)
        else:
            out.append(_SHORT.get(char) or json_escape(char))
    return "".join(out)


def json_escape(char: str) -> str:
    """`char` as JSON writes it escaped: `\\u001b`, or a surrogate pair above the BMP."""
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
