"""`python -m gateway` as a real process: --help lists every setting, /metrics is on its own
port and not on the API's, SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from devstack.probes import free_port, http_ok, wait_ready
from gateway.settings import Settings
from tests.gateway.harness import GOOD_KEY, Fakes

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_setting_with_env_and_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    ).stdout  # fmt: skip
    out = " ".join(out.split())  # argparse wraps lines at the terminal width
    for name in Settings.model_fields:
        assert f"GATEWAY_{name.upper()}" in out, name
    assert "(default: 8080)" in out and "(default: dns:///127.0.0.1:50051)" in out


def test_serves_then_stops_cleanly_on_sigterm(fakes: Fakes) -> None:
    port, metrics_port = free_port(), free_port()
    settings = fakes.settings()
    env = {
        **os.environ,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": str(metrics_port),
        "GATEWAY_EMBED_ADDR": settings.embed_addr,
        "GATEWAY_METERING_ADDR": settings.metering_addr,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(lambda: http_ok(url + "/readyz"), proc, within_s=30, what="gateway")
        reply = requests.post(
            url + "/v2/embeddings",
            json={"input": "hello", "model": "intent-embed"},
            headers={"Authorization": f"Bearer {GOOD_KEY}"},
            timeout=10,
        )
        assert reply.status_code == 200
        # Business volume is for Prometheus, on its own port: the public port has no /metrics.
        assert requests.get(url + "/metrics", timeout=10).status_code == 404
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'gateway_requests_total{route="/v2/embeddings",status="200"} 1.0' in scraped
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None
    assert b"Traceback" not in proc.stdout.read()
