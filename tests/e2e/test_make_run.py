"""`make run`'s launcher: the example it prints works as printed, Ctrl-C stops everything
cleanly, and a second run reuses the same ledger and demo key."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from devstack.stack import Ports
from embed_service.adapter import ModelSource
from embed_service.settings import default_model_path


def start_devstack(data_dir: Path, ports: Ports) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env.update(
        {
            "EMBED_PORT": str(ports.embed),
            "EMBED_METRICS_PORT": str(ports.embed_metrics),
            "METERING_PORT": str(ports.metering),
            "METERING_METRICS_PORT": str(ports.metering_metrics),
            "GATEWAY_PORT": str(ports.gateway),
            "GATEWAY_METRICS_PORT": str(ports.gateway_metrics),
            "PYTHONUNBUFFERED": "1",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            return proc, "".join(lines)
    proc.kill()
    pytest.fail("devstack never printed its example:\n" + "".join(lines))


def stop_devstack(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    return out


def assert_serves_the_default_model(curl: str) -> None:
    """The answer came from the default model: /v2/models names the revision of its weights."""
    base_url = re.search(r"(http://\S+)/v2/embeddings", curl)
    key = re.search(r"Bearer (\S+?)'", curl)
    assert base_url is not None and key is not None, curl
    listed = requests.get(f"{base_url.group(1)}/v2/models", timeout=30,
                          headers={"Authorization": f"Bearer {key.group(1)}"}).json()  # fmt: skip
    revision = ModelSource.of(Path(default_model_path())).revision
    assert [m["revision"] for m in listed["data"]] == [revision], listed


@pytest.mark.slow
def test_printed_examples_work_and_a_second_run_reuses_the_key(tmp_path: Path) -> None:
    ports = Ports.free()
    proc, printed = start_devstack(tmp_path, ports)
    try:
        curl = printed[printed.index("curl -s") : printed.index("or with the openai")].strip()
        reply = subprocess.run(
            ["bash", "-c", curl], capture_output=True, text=True, timeout=60, check=True
        )
        body = json.loads(reply.stdout)
        assert len(body["data"][0]["embedding"]) == 384, body
        assert_serves_the_default_model(curl)

        snippet = printed[printed.index("python - <<'PY'") : printed.index("\nPY\n") + 4]
        ran = subprocess.run(
            ["bash", "-c", snippet.replace("python -", f"{sys.executable} -", 1)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert "2 vectors of 384 dims" in ran.stdout

        # The dashboard is served where the banner says, and the usage it reads has the calls.
        dashboard = re.search(r"dashboard (http://\S+/dashboard)", printed)
        assert dashboard is not None, printed
        page = requests.get(dashboard.group(1), timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/dashboard/app.js" in page.text
        usage_line = printed[printed.index("Usage so far: ") + len("Usage so far: "):]
        usage_curl = usage_line.split("\n", 1)[0]
        usage = subprocess.run(["bash", "-c", usage_curl], capture_output=True, text=True,
                               timeout=60, check=True)  # fmt: skip
        assert json.loads(usage.stdout)["period"]["requests"] >= 2
    finally:
        out = stop_devstack(proc)
    assert "stopped: gateway exit 0, embed exit 0, metering exit 0" in out

    key = re.search(r"Bearer (\S+?)'", printed)
    assert key is not None
    proc2, printed2 = start_devstack(tmp_path, Ports.free())
    stop_devstack(proc2)
    assert f"Bearer {key.group(1)}'" in printed2
