"""One log format for every entry point, parsed by one parser (`parse_line`).

Each line is ``key=value`` pairs (or one JSON object, ``*_LOG_FORMAT=json``): ``time`` (UTC),
``level``, ``logger``, then the message: written as ``event key=value ...`` with plain values
it becomes fields of the line (``event=serving port=50051``); any other message is one quoted
``msg``. Then the trace and span ids when the line belongs to a traced call, and ``exc`` for a
traceback, escaped onto the same line: one record, one line, whatever the message holds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, Literal

from intent_embed import tracing

LogFormat = Literal["keyvalue", "json"]
LOG_FORMAT_HELP = "log lines: keyvalue (key=value pairs) or json (one object per line)"
# Libraries whose INFO lines are noise in a service log.
_QUIET = ("stripe", "alembic.runtime.plugins", "httpx")
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+<>=,%-]+$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_OWN_KEYS = frozenset({"time", "level", "logger", "msg", "exc", "trace_id", "span_id"})
_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|\S*)(?:\s+|$)')


def _value(text: str) -> str:
    return text if text and _BARE.match(text) else json.dumps(text, ensure_ascii=False)


def message_fields(message: str) -> dict[str, str] | None:
    """A message written as ``event key=value ...`` (or ``event=... key=value ...``), with
    plain values, as fields of the line; None for any other message (it goes in ``msg``)."""
    words = message.split(" ")
    fields: dict[str, str] = {}
    if words and "=" not in words[0]:
        if not _KEY.match(words[0]):
            return None
        fields["event"] = words.pop(0)
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not _KEY.match(key) or key in _OWN_KEYS or key in fields:
            return None
        if value and not _BARE.match(value):
            return None
        fields[key] = value
    return fields if fields else None


class OneLineFormatter(logging.Formatter):
    """A record as one line of ``key=value`` pairs or one JSON object."""

    converter = staticmethod(time.gmtime)  # type: ignore[assignment]  # UTC, as the Z says

    def __init__(self, style: LogFormat = "keyvalue") -> None:
        super().__init__()
        self.json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        message = record.getMessage()
        fields.update(message_fields(message) or {"msg": message})
        fields.update(tracing.current_ids())
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps(fields, ensure_ascii=False)
        return " ".join(f"{k}={_value(str(v))}" for k, v in fields.items())


def parse_line(line: str) -> dict[str, str]:
    """The fields of one log line of either format; ValueError when it is not one."""
    if line.startswith("{"):
        parsed = json.loads(line)
        if not isinstance(parsed, dict):
            raise ValueError(f"not a log line: {line!r}")
        return {k: str(v) for k, v in parsed.items()}
    fields: dict[str, str] = {}
    position = 0
    for match in _PAIR.finditer(line):
        if match.start() != position:
            raise ValueError(f"not a log line: {line!r}")
        key, raw = match.group(1), match.group(2)
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
        position = match.end()
    if position != len(line) or not {"time", "level", "logger"} <= fields.keys():
        raise ValueError(f"not a log line: {line!r}")
    return fields


def configure_logging(level: str = "INFO", style: LogFormat = "keyvalue") -> None:
    """Root logging to stderr in the one format, at `level` (a name such as INFO or warning);
    Python's warnings become log lines too, and libraries' progress bars stay off, so that
    nothing else lands between the lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(style))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
