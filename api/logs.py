"""Structured JSON logs for the service: one object per line, never personal data.

Only what the code puts in a record's message (route templates, status, timings, codes) is
written; exceptions are logged by type, not text, because their text may hold a value.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # Structured by the caller (`extra={"fields": {...}}`): no message text to parse.
            entry.update(fields)
        else:
            message = record.getMessage()
            try:
                parsed = orjson.loads(message)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                entry.update(parsed)
            else:
                entry["message"] = message
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return orjson.dumps(entry).decode()


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("consent_ledger")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
