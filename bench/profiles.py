"""`python -m bench.profiles`: py-spy flame graphs of the serving path under load, the pictures
behind `bench.ceiling`'s numbers (docs/profiles/, docs/performance.md).

The same processes as the serving-ceiling section: the no-op embed service (`bench.noop_embed`,
the forward replaced by fixed vectors) recording usage to an in-process metering, and the real
gateway in front of it. Each picture is py-spy sampling one process while `h2load` or `wrk`
loads it for the same time:

- `embed-noop-grpc-c64.svg`: the embed service, single-input gRPC calls at C=64;
- `embed-noop-grpc-256.svg`: the embed service, 256-input calls at C=8;
- `gateway-rest-c64.svg`: the gateway, single-query REST calls at 64 connections.

py-spy must be allowed to read the other processes (root, or ptrace permitted).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.ceiling import BULK_CONCURRENCY, call_frames, noop_embed
from bench.embed import short_queries
from bench.loadgen import Load, ensure_tool, h2load, wrk, wrk_script
from bench.rest import BENCH_KEY, bench_metering, gateway_process
from devstack.probes import free_port


def _py_spy() -> str:
    """py-spy of this environment (a dev dependency), else the one on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.is_file() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[dev]'")
    return found


def record(pid: int, svg: Path, seconds: float, load: Callable[[], Load]) -> Load:
    """Samples `pid` into `svg` while `load` runs (it should last `seconds`)."""
    spy = subprocess.Popen(
        [_py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--output", str(svg), "--format", "flamegraph", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        result = load()
    finally:
        _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed on pid {pid}: {err.decode(errors='replace')[-500:]}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profiles",
        description="py-spy flame graphs of the no-op embed service and the gateway under load",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("docs/profiles"),
                        help="directory the SVG files are written to")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time per picture")
    args = parser.parse_args(argv)
    if not ensure_tool("h2load") or not ensure_tool("wrk"):
        raise SystemExit("h2load or wrk is missing and could not be installed")
    args.out.mkdir(parents=True, exist_ok=True)
    queries = short_queries()
    single, bulk = call_frames(queries)
    seconds = args.seconds

    def picture(pid: int, name: str, load: Callable[[], Load]) -> None:
        print(f"{name}: {record(pid, args.out / name, seconds, load).line()}", flush=True)

    with (
        bench_metering() as metering,
        noop_embed(metering.server.address) as (embed, embed_pid),
    ):
        h2load(embed, single, 4, 1, embed_pid)  # warm-up
        picture(embed_pid, "embed-noop-grpc-c64.svg",
                lambda: h2load(embed, single, 64, seconds, embed_pid))  # fmt: skip
        picture(embed_pid, "embed-noop-grpc-256.svg",
                lambda: h2load(embed, bulk, BULK_CONCURRENCY, seconds, embed_pid))  # fmt: skip
        port = free_port()
        with (
            gateway_process(port, embed, metering.server.address) as gateway_pid,
            tempfile.TemporaryDirectory() as tmp,
        ):
            script = Path(tmp) / "post.lua"
            wrk_script(queries, BENCH_KEY, script)
            url = f"http://127.0.0.1:{port}/v2/embeddings"
            wrk(url, script, 4, 1, gateway_pid)  # warm-up
            picture(gateway_pid, "gateway-rest-c64.svg",
                    lambda: wrk(url, script, 64, seconds, gateway_pid))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
