"""One log format: whatever a message holds (quotes, newlines, an '=' in prose, a traceback),
its record is one line that `parse_line` reads back, in either format; messages written as
``event key=value`` become fields of the line."""

from __future__ import annotations

import logging
import sys

import pytest

from intent_embed.logs import OneLineFormatter, parse_line

MESSAGES = [
    "serving port=50051 warmup_s=1.20",
    "event=billing_run_failed",
    "backend_probe chosen=onnxruntime<=4+torch-unpadded min_cosine=0.999974",
    'a "quoted" word, a = sign and\na second line',
    "METERING_CENTRAL_ADDR is empty: the sidecar has nowhere to forward usage",
    "level=spoofed time=spoofed",
    "",
]


def _record(message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            info = sys.exc_info()
    return logging.LogRecord("svc", logging.WARNING, __file__, 1, message, None, info)


@pytest.mark.parametrize("style", ["keyvalue", "json"])
@pytest.mark.parametrize("message", MESSAGES)
def test_any_message_is_one_line_that_parses_back(style: str, message: str) -> None:
    line = OneLineFormatter(style).format(_record(message))  # type: ignore[arg-type]
    assert "\n" not in line
    fields = parse_line(line)
    assert (fields["level"], fields["logger"]) == ("WARNING", "svc")
    assert fields["time"].endswith("Z")
    if "msg" in fields:
        assert fields["msg"] == message
    else:
        rebuilt = " ".join(f"{k}={v}" for k, v in fields.items() if k not in (
            "time", "level", "logger", "event"))  # fmt: skip
        assert message.endswith(rebuilt)


def test_event_style_messages_become_fields() -> None:
    fields = parse_line(OneLineFormatter().format(_record("serving port=50051 warmup_s=1.20")))
    assert fields["event"] == "serving" and fields["port"] == "50051"
    # A message cannot overwrite the line's own fields: it stays one quoted msg.
    spoof = parse_line(OneLineFormatter().format(_record("level=spoofed")))
    assert spoof["level"] == "WARNING" and spoof["msg"] == "level=spoofed"


def test_a_traceback_stays_on_its_line() -> None:
    line = OneLineFormatter().format(_record("event=failed", exc=True))
    assert "\n" not in line
    assert "RuntimeError: boom" in parse_line(line)["exc"]


@pytest.mark.parametrize("line", ["", "free text", "Loading weights: 100%|####|", "a=1 b"])
def test_what_is_not_a_log_line_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)
