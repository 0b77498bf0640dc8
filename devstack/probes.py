"""Readiness probes for local processes: a free port, gRPC health, an HTTP 200, the wait for
one of them while watching that the process has not died, and the stop (SIGTERM, then SIGKILL).

The stack launcher (`make run`), the end-to-end and process tests and the benchmarks all start
servers as processes and wait for them through these.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grpc_serving(address: str, service: str = "", timeout: float = 1.0) -> bool:
    """True when the gRPC health service at `address` says SERVING."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class NotReady(RuntimeError):
    """The process exited, or did not become ready in time."""


def wait_ready(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    within_s: float = 120.0,
    what: str = "the service",
) -> None:
    """Polls `ready()` until it holds; NotReady when `process` exits (with the end of its
    stderr, when that is a pipe) or time runs out."""
    deadline = time.monotonic() + within_s
    while not ready():
        if process is not None and process.poll() is not None:
            raise NotReady(
                f"{what} exited with status {process.returncode} during start-up"
                + _stderr_tail(process)
            )
        if time.monotonic() > deadline:
            raise NotReady(f"{what} not ready after {within_s:.0f}s")
        time.sleep(0.1)


def _stderr_tail(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> str:
    """The end of what an exited process wrote to its stderr pipe, if it has one."""
    if process.stderr is None:
        return ""
    tail = process.stderr.read()[-2000:]
    return "\n" + (tail.decode(errors="replace") if isinstance(tail, bytes) else tail)


def wait_serving(
    address: str,
    process: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    within_s: float = 120.0,
    service: str = "",
) -> None:
    """Waits until the gRPC server at `address` reports SERVING (for `service`)."""
    wait_ready(lambda: grpc_serving(address, service), process, within_s, f"gRPC {address}")


def stop_process(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 30.0
) -> int:
    """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid=%d did not stop in %.0fs; killing it", process.pid, timeout)
            process.kill()
            process.wait()
    return process.returncode
