"""Reading the spans OpenTelemetry's console exporter printed (a log, a process's stdout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def printed_spans(log: Path) -> list[dict[str, Any]]:
    """The spans the console exporter wrote into a service's log."""
    return spans_in(log.read_text(errors="replace"))


def spans_in(text: str) -> list[dict[str, Any]]:
    """The console exporter's spans in `text`: JSON objects whose lines start with ``{`` and
    end with ``}`` in the first column, between other lines."""
    spans: list[dict[str, Any]] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                spans.append(json.loads("\n".join(block)))
                block = None
    return spans
