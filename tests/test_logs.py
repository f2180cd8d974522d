"""The JSON log line: the message, the caller's `extra` fields, an exception by type only."""

from __future__ import annotations

import logging
import sys

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
