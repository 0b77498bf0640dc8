"""One log format for every entry point: ``time level=... logger=... event=... key=value``.

Services log their messages as ``event key=value ...`` so the lines can be grepped and parsed
alike, whichever process wrote them.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
# Libraries whose INFO lines are noise in a service log.
_QUIET = ("stripe", "alembic.runtime.plugins", "httpx")


def configure_logging(level: str = "INFO") -> None:
    """Root logging to stderr in the one format, at `level` (a name such as INFO or warning)."""
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr, force=True)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
