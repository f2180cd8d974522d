"""Structured JSON logs for the service: one object per line, never personal data.

Only what the code puts in a record's message and its `extra` fields (route templates,
status, timings, codes, partitions and offsets) is written; exceptions are logged by type,
not text, because their text may hold a value.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

import orjson

from ledger.codec import isoformat

_STANDARD = {*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": isoformat(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        entry["message"] = record.getMessage()
        # What the caller passed as `extra` (route, status, partition, offset...): its own
        # keys, in name order, found by one set difference rather than a test of each of the
        # record's twenty-odd attributes.
        fields = vars(record)
        for key in sorted(fields.keys() - _STANDARD):
            entry[key] = fields[key]
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """The service logs to stdout; the worker, whose stdout is for people, to stderr.

    A log record's thread, process and calling frame are looked up for every record unless
    the logging module is told not to (its documented optimisations, Logging HOWTO); the
    JSON line never writes them, and the HTTP service writes a line per request.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup: the Logging HOWTO's own advice
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("consent_ledger")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
