"""The load generators of the served-path benchmarks, both written in C so that on a 2-core
machine the load costs as little CPU as possible, and that CPU is reported: `h2load` (Debian's
nghttp2-client) sends framed unary gRPC calls over HTTP/2, `wrk` sends REST requests. Both
binaries are installed with apt-get when missing, as `make bench` does on a fresh machine.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from intent_embed.v1 import embed_pb2

_PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}


def ensure_tool(binary: str) -> bool:
    """True when `binary` is on PATH, installing its Debian package first if it is not."""
    if shutil.which(binary):
        return True
    package = _PACKAGES[binary]
    for cmd in (["apt-get", "install", "-y", package], ["apt-get", "update"],
                ["apt-get", "install", "-y", package]):  # fmt: skip
        subprocess.run(cmd, capture_output=True, timeout=600, check=False)
        if shutil.which(binary):
            return True
    return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Load:
    """One load run: answered calls per second, latency percentiles, and what the load
    generator itself took of the machine (its CPU seconds / (seconds x CPUs))."""

    name: str
    per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: str
    loadgen_share: float
    server_cpu_ms: float | None = None  # CPU of the measured server per answered call

    def line(self) -> str:
        cpu = "" if self.server_cpu_ms is None else f"  server CPU {self.server_cpu_ms:.2f} ms/call"
        return (
            f"{self.name:<16} {self.per_s:8.1f}/s  p50 {self.p50_ms:7.2f} ms  "
            f"p99 {self.p99_ms:7.2f} ms  ok {self.ok}  errors {self.errors}  "
            f"load generator {self.loadgen_share:.0%} of the CPUs{cpu}"
        )


def grpc_frame(request: embed_pb2.EmbedRequest) -> bytes:
    """A unary gRPC request body: uncompressed flag, 4-byte big-endian length, the message."""
    message = request.SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(address: str, body: bytes, concurrency: int, seconds: float, server_pid: int) -> Load:
    """`concurrency` concurrent Embed calls on one HTTP/2 connection (as one gateway replica's
    channel) for `seconds` after a one-second warm-up. gRPC errors travel in trailers, which
    h2load does not read: callers count them from the service's metrics. A run in which no
    call completed is not a measurement: it is run once more, then reported with h2load's
    own output."""
    load, out = _h2load_once(address, body, concurrency, seconds, server_pid)
    if load.ok == 0:
        load, out = _h2load_once(address, body, concurrency, seconds, server_pid)
    if load.ok == 0:
        raise RuntimeError(f"h2load completed no call at C={concurrency}:\n{out[-2000:]}")
    return load


def _h2load_once(
    address: str, body: bytes, concurrency: int, seconds: float, server_pid: int
) -> tuple[Load, str]:
    with tempfile.TemporaryDirectory() as tmp:
        body_file, log_file = Path(tmp) / "body", Path(tmp) / "log"
        body_file.write_bytes(body)
        cpu0, server0 = _children_cpu(), cpu_seconds(server_pid)
        run = subprocess.run(
            ["h2load", "-D", f"{seconds:g}", "--warm-up-time=1", "-c", "1", "-m", str(concurrency),
             "-d", str(body_file), "-H", "content-type: application/grpc", "-H", "te: trailers",
             "--log-file", str(log_file),
             f"http://{address}/intent_embed.v1.EmbedService/Embed"],
            capture_output=True, text=True, timeout=seconds + 120, check=True,
        )  # fmt: skip
        out = run.stdout + "\n" + run.stderr
        loadgen, server = _children_cpu() - cpu0, cpu_seconds(server_pid) - server0
        durations = _log_durations_ms(log_file.read_text())
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    ok = int(done.group(2)) if done else 0
    per_s = ok / seconds
    load = Load(
        name=f"gRPC C={concurrency}",
        per_s=per_s,
        p50_ms=_percentile(durations, 0.50),
        p99_ms=_percentile(durations, 0.99),
        ok=ok,
        errors=str(int(done.group(1)) - ok) if done else "?",
        loadgen_share=loadgen / (seconds * (os.cpu_count() or 1)),
        server_cpu_ms=1000 * server / max(ok, 1),
    )
    return load, out


def _log_durations_ms(log: str) -> list[float]:
    """Sorted durations (ms) from h2load's --log-file rows (start us, status, duration us),
    leaving out the first second (h2load's warm-up)."""
    rows = [row.split("\t") for row in log.splitlines() if row]
    if not rows:
        return []
    start = min(int(r[0]) for r in rows) + 1_000_000
    return sorted(int(r[2]) / 1000 for r in rows if int(r[0]) >= start and r[1] != "-1")


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


_LUA = """
local bodies = {%s}
local n = #bodies
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
ok, overloaded, other, retry_after = 0, 0, 0, 0
function request()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i %% n) + 1])
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 429 then
    overloaded = overloaded + 1
    if headers["Retry-After"] or headers["retry-after"] then retry_after = retry_after + 1 end
  else other = other + 1 end
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local a, b, c, d = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("ok"); b = b + t:get("overloaded"); c = c + t:get("other")
    d = d + t:get("retry_after")
  end
  io.write(string.format("STATUS ok=%%d 429=%%d other=%%d retry_after=%%d\\n", a, b, c, d))
end
"""


def wrk_script(queries: list[str], key: str, path: Path) -> None:
    """A wrk Lua script posting one of up to 1,000 queries per request with `key`."""
    picked = random.Random(7).sample(queries, min(1000, len(queries)))
    bodies = ",".join(
        "[==[" + json.dumps({"input": q, "model": "intent-embed"}) + "]==]" for q in picked
    )
    path.write_text(_LUA % (bodies, key))


def _ms(text: str) -> float:
    value = float(re.sub(r"[a-z]+$", "", text))
    unit = re.sub(r"^[0-9.]+", "", text)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(url: str, script: Path, connections: int, seconds: float, server_pid: int) -> Load:
    """`connections` keep-alive connections posting for `seconds`; only 200s count as answered,
    and a 429 without Retry-After or any other status is an error."""
    threads = min(2, connections)
    cpu0, server0 = _children_cpu(), cpu_seconds(server_pid)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    loadgen, server = _children_cpu() - cpu0, cpu_seconds(server_pid) - server0
    # Anchored: the "+/- Stdev" column can end in "50%" too (e.g. "87.50%").
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    status = re.search(r"STATUS ok=(\d+) 429=(\d+) other=(\d+) retry_after=(\d+)", out)
    ok, over, other, with_retry = (int(x) for x in status.groups()) if status else (0, 0, 0, 0)
    sock = re.search(r"Socket errors: (.*)", out)
    errors = f"429:{over} (Retry-After on {with_retry}), other:{other}"
    return Load(
        name=f"REST c={connections}",
        per_s=ok / seconds,
        p50_ms=p50,
        p99_ms=p99,
        ok=ok,
        errors=errors + (f", socket: {sock.group(1)}" if sock else ""),
        loadgen_share=loadgen / (seconds * (os.cpu_count() or 1)),
        server_cpu_ms=1000 * server / max(ok + over + other, 1),
    )
