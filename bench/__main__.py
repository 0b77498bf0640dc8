"""Runs every benchmark section in order and prints one report.

A section is a module in `SECTIONS` exposing `run(report) -> None`; it writes lines with
`report.line(text)` (and may open a heading with `report.section(title)`). A section that
fails is reported as failed and the others still run. `python -m bench embed rest` runs only
the sections named; `--help` lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

SECTIONS = ["bench.embed", "bench.metering", "bench.rest", "bench.ceiling", "bench.tracing"]


@dataclass
class Report:
    """Collects the report's lines and echoes them as they come (a long run shows progress)."""

    lines: list[str] = field(default_factory=list)
    # What one section measured that a later one reuses (the limit, the raw model, gRPC rates).
    shared: dict[str, Any] = field(default_factory=dict)

    def section(self, title: str) -> None:
        self.line("")
        self.line(f"== {title} ==")

    def line(self, text: str = "") -> None:
        self.lines.append(text)
        print(text, flush=True)

    def text(self) -> str:
        return "\n".join(self.lines)


def main(argv: list[str]) -> int:
    names = [name.removeprefix("bench.") for name in SECTIONS]
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput and latency of the served paths against the raw model, "
        "measured in one run on this machine (`make bench` runs every section).",
    )
    parser.add_argument(
        "sections", nargs="*", metavar="SECTION",
        help=f"sections to run, in order (default: all of {', '.join(names)})",
    )
    chosen = parser.parse_args(argv).sections
    unknown = [name for name in chosen if name not in names]
    if unknown:
        parser.error(f"no section {', '.join(unknown)}; the sections are {', '.join(names)}")
    wanted = [f"bench.{name}" for name in chosen] or SECTIONS
    report = Report()
    outcome: list[str] = []
    for name in wanted:
        started = time.monotonic()
        module = importlib.import_module(name)
        report.section(name)
        try:
            module.run(report)
            outcome.append(f"{name}: ran in {time.monotonic() - started:.0f} s")
        except Exception:
            report.line(traceback.format_exc())
            outcome.append(f"{name}: FAILED after {time.monotonic() - started:.0f} s")
    report.section("summary")
    for line in outcome:
        report.line(line)
    print("\n\n######## full report ########\n" + report.text(), flush=True)
    return 1 if any("FAILED" in line for line in outcome) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
