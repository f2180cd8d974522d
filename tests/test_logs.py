"""The JSON log line: the message, the caller's `extra` fields, an exception by type only."""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timedelta

import orjson

from api.logs import JsonFormatter


def test_a_line_carries_the_message_and_the_extra_fields() -> None:
    record = logging.LogRecord(
        "consent_ledger.kafka", logging.WARNING, __file__, 1, "skipped (partition %d)", (2,), None
    )
    record.partition = 2
    record.offset = 41
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "skipped (partition 2)"
    assert (line["level"], line["partition"], line["offset"]) == ("warning", 2, 41)
    assert "args" not in line and "msg" not in line


def test_an_exception_is_named_by_its_type_never_its_text() -> None:
    try:
        raise ValueError("+998901112233 is not a tenant")
    except ValueError:
        info = sys.exc_info()
    record = logging.LogRecord("consent_ledger", logging.ERROR, __file__, 1, "failed", (), info)
    line = JsonFormatter().format(record)
    assert orjson.loads(line)["exception"] == "ValueError"
    assert "+998901112233" not in line


def test_extra_fields_given_to_a_logger_are_written_in_name_order() -> None:
    """As the service logs a request: `extra` through a real logger, after a formatter of
    another handler has already set the record's `message`."""
    logger = logging.getLogger("consent_ledger.test_logs")
    fields = {"status": 201, "route": "/v1/facts", "ms": 1.5, "method": "POST"}
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "request", (), None, extra=fields
    )
    logging.Formatter().format(record)  # sets record.message, as another handler would
    line = JsonFormatter().format(record)
    parsed = orjson.loads(line)
    assert list(parsed) == ["ts", "level", "logger", "message", "method", "ms", "route", "status"]
    assert parsed["route"] == "/v1/facts" and parsed["status"] == 201
    assert datetime.fromisoformat(parsed["ts"]).utcoffset() == timedelta(0)
