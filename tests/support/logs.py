"""Reading the services' logs as their operators' tools would: one parser for every line."""

from __future__ import annotations

from pathlib import Path

from intent_embed.logs import parse_line


def unparsed_lines(log: Path) -> list[str]:
    """The lines of `log` that the one log parser does not read (expected: none)."""
    bad = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            parse_line(line)
        except ValueError:
            bad.append(line)
    return bad
