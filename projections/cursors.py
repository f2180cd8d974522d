"""The cursors of paged answers: a page's `next` holds what the pages after it answer for.

A page of the due list, of the request register or of who had consent is asked one request
at a time, minutes apart, while facts go on arriving. Each cursor carries the instant (and
whatever else) its first page answered for, so that every page after it answers the same
question, and is refused (`BadCursor`) when given with another.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson


class BadCursor(ValueError):
    """A cursor that is not the `next` of an earlier page."""


def encode_cursor(state: Any) -> str:
    """A page's `next`: its state as JSON, in URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    """The state a cursor holds (`encode_cursor`), or BadCursor."""
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        raise BadCursor from None


def cursor_instant(text: Any) -> datetime:
    """A cursor's instant, in UTC: a page's `as_of`, a moment the service lived through.
    One made up near the calendar's ends would overflow when moved to UTC or a window
    added to it, a 500 for a bad cursor, so it is refused."""
    if not isinstance(text, str):
        raise BadCursor
    try:
        instant = datetime.fromisoformat(text)
        if instant.tzinfo is None:
            raise BadCursor
        instant = instant.astimezone(UTC)
        instant + timedelta(days=MAX_CURSOR_DAYS)
        instant - timedelta(days=MAX_CURSOR_DAYS)
    except (ValueError, OverflowError):
        raise BadCursor from None
    return instant


# How far from a cursor's instant the answers reach: the due list's widest window, and a
# register's deadlines of days (both bounded well within this).
MAX_CURSOR_DAYS = 3650
