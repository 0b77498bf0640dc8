"""`python -m embed_service` as a real process: --help lists every setting, and SIGTERM while
calls are in flight lets them finish, refuses new ones and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from devstack import probes
from embed_service.settings import Settings
from intent_embed.v1 import embed_pb2, embed_pb2_grpc
from tests.support.clinc150 import REPO_ROOT
from tests.support.waiting import until


def test_help_lists_every_setting_with_env_var() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "embed_service", "--help"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=True,
    ).stdout
    for name in Settings.model_fields:
        assert f"EMBED_{name.upper()}" in out


def _inflight(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    match = re.search(r"^embed_inflight_requests (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_sigterm_drains_in_flight_calls_and_exits_zero(
    tiny_model_dir: Path, free_port: int, tmp_path: Path
) -> None:
    metrics_port = probes.free_port()
    env = dict(os.environ)
    env.update(
        EMBED_HOST="127.0.0.1", EMBED_PORT=str(free_port), EMBED_METRICS_PORT=str(metrics_port),
        EMBED_MODEL_PATH=str(tiny_model_dir), EMBED_METERING_ADDR="", EMBED_DTYPE="float32",
        EMBED_SHUTDOWN_GRACE_S="30", EMBED_NUM_THREADS="1",
        # Tiny batches make the in-flight work last long enough to signal in the middle of it.
        EMBED_MAX_BATCH_SIZE="1",
    )
    log_path = tmp_path / "embed.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "embed_service"], env=env, cwd=REPO_ROOT,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{free_port}"
    try:
        probes.wait_serving(address, process, within_s=120)
        texts = [f"message number {i} about my card" for i in range(1000)]
        with grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        ) as channel:
            stub = embed_pb2_grpc.EmbedServiceStub(channel)
            calls = [
                stub.Embed.future(embed_pb2.EmbedRequest(inputs=texts), timeout=60)
                for _ in range(2)
            ]
            deadline = time.monotonic() + 30
            while _inflight(f"http://127.0.0.1:{metrics_port}/metrics") < 2:
                assert time.monotonic() < deadline, "the calls never reached the service"
                time.sleep(0.02)
            assert not any(c.done() for c in calls), "calls finished before the signal"
            process.send_signal(signal.SIGTERM)
            # Draining begins with health NOT_SERVING: from then on a new call must be refused.
            until(lambda: not probes.grpc_serving(address), within_s=10, what="NOT_SERVING")
            try:
                stub.Embed(embed_pb2.EmbedRequest(inputs=["late"]), timeout=10)
                raise AssertionError("a call that arrived while draining was answered")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            replies = [c.result() for c in calls]
            assert [len(r.embeddings) for r in replies] == [1000, 1000]
        code = process.wait(timeout=60)
        assert code == 0, log_path.read_text()[-3000:]
        assert "shutdown_done" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
