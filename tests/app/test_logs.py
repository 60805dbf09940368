from __future__ import annotations

import json
import logging

import pytest

from app.logs import JsonFormatter, KeyValueFormatter, request_id_var


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("test", logging.INFO, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_key_value_lines_quote_what_needs_quoting() -> None:
    line = KeyValueFormatter().format(record('job "7" done', job_id=7, color_message="\x1b[36mx"))
    assert 'msg="job \\"7\\" done"' in line and "job_id=7" in line
    assert "color_message" not in line and line.startswith("ts=") and "level=info" in line


@pytest.mark.parametrize("formatter", [KeyValueFormatter(), JsonFormatter()])
def test_request_id_is_attached_while_set(formatter: logging.Formatter) -> None:
    token = request_id_var.set("req-42")
    try:
        assert "req-42" in formatter.format(record("hello"))
    finally:
        request_id_var.reset(token)
    assert "req-42" not in formatter.format(record("hello"))


def test_json_lines_parse() -> None:
    fields = json.loads(JsonFormatter().format(record("naïve ✓", n=1)))
    assert fields["msg"] == "naïve ✓" and fields["n"] == 1 and fields["level"] == "info"
