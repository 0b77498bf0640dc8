"""Every line the three services write to their logs parses with one parser
(`intent_embed.logs.parse_line`), after start-up, a served request and refused ones."""

from __future__ import annotations

import requests

from devstack.stack import Stack
from tests.support.logs import unparsed_lines


def test_every_log_line_of_every_service_parses_with_one_parser(
    stack: Stack, demo: dict[str, object]
) -> None:
    url = f"{stack.gateway_url}/v2/embeddings"
    good = {"Authorization": f"Bearer {demo['api_key']}"}
    assert requests.post(url, json={"input": "hi", "model": "intent-embed"}, headers=good,
                         timeout=30).status_code == 200  # fmt: skip
    assert requests.post(url, json={"input": ""}, headers=good, timeout=30).status_code == 400
    bad = {"Authorization": "Bearer sk-not-a-key"}
    assert requests.post(url, json={"input": "hi", "model": "intent-embed"}, headers=bad,
                         timeout=30).status_code == 401  # fmt: skip
    for name, service in stack.services.items():
        lines = service.log_path.read_text(errors="replace").splitlines()
        assert lines, name
        assert unparsed_lines(service.log_path) == [], name
