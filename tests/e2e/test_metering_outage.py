"""Usage survives a metering outage and a sidecar crash, with real processes and SIGKILL.

The stack runs as in a Kubernetes pod: embed service -> metering sidecar (durable spool) ->
central metering. Clients keep calling the gateway while central metering is killed and
restarted, then while the sidecar is killed and restarted; afterwards the ledger must hold the
usage the clients were answered for, once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import requests

from devstack.stack import Ports, Stack
from tests.support.logs import unparsed_lines
from tests.support.metrics import scraped_value
from tests.support.waiting import until


@pytest.fixture(scope="module")
def pod_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict]]:
    stack = Stack(
        data_dir=Path(tmp_path_factory.mktemp("pod")),
        ports=Ports.free(),
        sidecar=True,
        # Short retry pauses so the spool drains quickly after central comes back.
        extra_env={
            "METERING_FORWARD_INTERVAL_S": "0.2",
            # Load from one org for minutes: no per-org limit may answer 429 here.
            "GATEWAY_RATE_LIMIT_RPM": "0",
            "GATEWAY_RATE_LIMIT_TPM": "0",
        },
    )
    demo = stack.ensure_demo()
    stack.start(timeout=240)
    yield stack, demo
    stack.stop()


class Load:
    """A few clients calling the gateway until stopped; counts what they were answered."""

    def __init__(self, stack: Stack, key: str, clients: int = 6) -> None:
        self.url = f"{stack.gateway_url}/v2/embeddings"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered_tokens = 0
        self.failed_tokens_upper_bound = 0
        self.statuses: dict[int, int] = {}
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def run(self, i: int) -> None:
        n = 0
        with requests.Session() as session:
            while not self.stop.is_set() and n < 2000:
                text = f"where is my package number {i}-{n}"
                reply = session.post(
                    self.url,
                    headers=self.headers,
                    json={"input": text, "model": "intent-embed"},
                    timeout=30,
                )
                with self.lock:
                    self.statuses[reply.status_code] = self.statuses.get(reply.status_code, 0) + 1
                    if reply.status_code == 200:
                        self.answered_tokens += reply.json()["usage"]["prompt_tokens"]
                    else:
                        # Unanswered work may still have reached the spool; it is bounded by
                        # the longest such input (8 words, well under 20 tokens).
                        self.failed_tokens_upper_bound += 20
                n += 1

    def answered(self) -> int:
        """Requests answered 200 so far."""
        with self.lock:
            return self.statuses.get(200, 0)

    def calls(self) -> int:
        """Requests answered so far, whatever the status."""
        with self.lock:
            return sum(self.statuses.values())

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def wait_for_ledger(stack: Stack, org: str, at_least: int, timeout: float = 60) -> int:
    total = 0

    def reached() -> bool:
        nonlocal total
        try:
            total = stack.ledger_tokens(org)
        except grpc.RpcError:
            total = 0
        return total >= at_least

    try:
        until(reached, timeout, "ledger total")
    except AssertionError:
        pass
    return total


def spool_drained(stack: Stack) -> None:
    """Waits until the sidecar has forwarded everything: no late delivery can follow."""
    url = f"http://{stack.host}:{stack.ports.sidecar_metrics}/metrics"
    until(lambda: scraped_value(url, "metering_sidecar_spool_depth") == 0, 60, "empty spool")


def kill_and_restart(
    stack: Stack, name: str, load: Load, count: Callable[[], int], while_down: int
) -> int:
    """Under load: SIGKILL service `name`, wait until `count()` grew by `while_down` while it
    was dead, restart it, and wait for answers again; returns what `count()` grew by."""
    until(lambda: load.answered() >= 20, what=f"answers before {name} is killed")
    stack.services[name].signal(signal.SIGKILL)
    stack.services[name].process.wait(10)  # type: ignore[union-attr]
    at_kill = count()
    until(lambda: count() >= at_kill + while_down, what=f"calls while {name} is down")
    grew = count() - at_kill
    stack.restart(name)
    at_restart = load.answered()
    until(lambda: load.answered() >= at_restart + 20, what=f"answers after {name} is back")
    return grew


def test_central_metering_outage_loses_and_doubles_nothing(pod_stack: tuple[Stack, dict]) -> None:
    stack, demo = pod_stack
    org = str(demo["org_id"])
    before = stack.ledger_tokens(org)
    with Load(stack, str(demo["api_key"])) as load:
        # Embedding keeps being served from the sidecar's spool while metering is down.
        answered_during_outage = kill_and_restart(stack, "metering", load, load.answered, 40)
    assert load.statuses.get(200, 0) > 0 and set(load.statuses) == {200}, load.statuses
    assert answered_during_outage > 0
    expected = before + load.answered_tokens
    assert wait_for_ledger(stack, org, expected) == expected
    spool_drained(stack)  # a late duplicate would have arrived by now
    assert stack.ledger_tokens(org) == expected


def test_sidecar_killed_and_restarted_loses_and_doubles_nothing(
    pod_stack: tuple[Stack, dict],
) -> None:
    stack, demo = pod_stack
    org = str(demo["org_id"])
    before = stack.ledger_tokens(org)
    with Load(stack, str(demo["api_key"])) as load:
        kill_and_restart(stack, "sidecar", load, load.calls, 6)
    # While the sidecar is down the embed service refuses work rather than serve it unbilled.
    assert set(load.statuses) <= {200, 503}, load.statuses
    answered = before + load.answered_tokens
    wait_for_ledger(stack, org, answered)
    spool_drained(stack)
    total = stack.ledger_tokens(org)
    # Every answered token is there once; unanswered calls cut off by the kill may have been
    # spooled before it (billed work the client then retried or saw fail), nothing beyond.
    assert answered <= total <= answered + load.failed_tokens_upper_bound


def test_every_log_line_of_the_pod_parses_with_one_parser(pod_stack: tuple[Stack, dict]) -> None:
    """After outages and kills, the sidecar's and central metering's logs (restarts included)
    are still one format, as the three services' are in tests/e2e/test_logs.py."""
    stack, _ = pod_stack
    for name in ("sidecar", "metering", "embed"):
        assert unparsed_lines(stack.services[name].log_path) == [], name
