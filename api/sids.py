"""How a sid may be written in a URL, in one place for the routes (`api.deps.parse_sid`), the
access log (`api.access_log.a_sid`) and the OpenAPI document."""

from __future__ import annotations

import re

# 32 hex digits as the ledger gives a sid out, or as a UUID is written (hyphens, braces,
# `urn:uuid:`), in either case: the spellings the routes have always served. `UUID(hex=...)`
# alone also took a hyphen anywhere, a sign, and digits grouped by underscores; those are
# not a sid (404).
SID_PATTERN = (
    r"^(urn:uuid:)?\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}"
    r"-?[0-9a-fA-F]{12}\}?$"
)
_SID = re.compile(SID_PATTERN)
# A sid in a request body (the campaign check's `sids`): as the ledger gives it out only.
HEX_SID_PATTERN = "^[0-9a-fA-F]{32}$"


def is_sid_spelling(text: str) -> bool:
    return _SID.match(text) is not None
