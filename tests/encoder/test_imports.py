"""`encoder` is a library the embed service and the training code share: it imports neither
(nor any other service), so either can change without the other's internals leaking in."""

from __future__ import annotations

import ast
from pathlib import Path

import encoder

SERVICES = {"embed_service", "intent_model", "metering", "gateway", "devstack", "bench"}


def test_encoder_imports_no_service() -> None:
    found = []
    for path in sorted(Path(encoder.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in SERVICES]
    assert not found, found
