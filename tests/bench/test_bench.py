"""The benchmark's own arithmetic and plumbing: the limit's FLOPs by hand, the gRPC frame h2load
sends, h2load's log read without its warm-up, a load run that completed nothing, and the GPU
script's code run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import loadgen
from bench.limits import ModelShape, matmul_rate
from bench.loadgen import _log_durations_ms, grpc_frame
from intent_embed.v1 import embed_pb2


def test_flops_per_query_of_minilm_by_hand() -> None:
    shape = ModelShape(hidden=384, intermediate=1536, layers=6)
    # Per token and block: 2 x (384*1152 + 384*384 + 384*1536 + 1536*384) = 3,538,944;
    # attention: 4 x n^2 x 384 per block.
    assert shape.flops_per_query(10) == 6 * (3_538_944 * 10 + 4 * 100 * 384)
    assert 0.2e9 < shape.flops_per_query(11) < 0.25e9


def test_matmul_rate_is_a_positive_rate() -> None:
    rate = matmul_rate(ModelShape(hidden=32, intermediate=64, layers=2), "float32", rows=64)
    assert rate > 0.0


def test_grpc_frame_is_flag_length_and_message() -> None:
    request = embed_pb2.EmbedRequest(inputs=["hello"], packed=True)
    frame = grpc_frame(request)
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(frame) - 5
    assert embed_pb2.EmbedRequest.FromString(frame[5:]) == request


def test_h2load_log_skips_the_warm_up_second_and_failed_streams() -> None:
    log = "\n".join([
        "1000000\t200\t5000",  # warm-up: the first second
        "2000000\t200\t7000",
        "2100000\t-1\t9000",  # a failed stream
        "2200000\t200\t3000",
    ])  # fmt: skip
    assert _log_durations_ms(log) == [3.0, 7.0]


def test_h2load_run_that_completed_nothing_is_retried_once_then_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([
        "requests: 64 total, 64 started, 0 done, 0 succeeded",
        "requests: 900 total, 900 started, 900 done, 900 succeeded",
        "requests: 64 total, 64 started, 0 done, 0 succeeded",
        "requests: 64 total, 64 started, 0 done, 0 succeeded",
    ])  # fmt: skip
    runs: list[list[str]] = []

    def fake_run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        runs.append(args)
        Path(args[args.index("--log-file") + 1]).write_text("")
        return subprocess.CompletedProcess(args, 0, next(answers), "connection closed early")

    monkeypatch.setattr(loadgen.subprocess, "run", fake_run)
    load = loadgen.h2load("127.0.0.1:1", b"x", 64, 1.0, os.getpid())
    assert load.ok == 900 and len(runs) == 2
    with pytest.raises(RuntimeError, match=r"(?s)no call at C=64:.*connection closed early"):
        loadgen.h2load("127.0.0.1:1", b"x", 64, 1.0, os.getpid())
    assert len(runs) == 4


@pytest.mark.slow
def test_gpu_script_runs_its_cuda_code_on_the_cpu(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.gpu import main

    assert main(["--device", "cpu", "--quick", "--model", str(tiny_model_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["matmul_gflops"] > 0
    for name in ("sweep_short", "sweep_long"):
        assert all(row["inputs_per_s"] > 0 and row["fraction_of_limit"] > 0 for row in out[name])
    assert out["service"]["inputs_per_s"] > 0 and out["service"]["request_inputs"] == 2048


def test_noop_forward_is_one_fresh_unit_vector_per_input() -> None:
    from types import SimpleNamespace

    from bench.noop_embed import fixed_vectors

    model: Any = SimpleNamespace(dimensions=16)
    first = fixed_vectors(model, [[1, 2], [3]])
    second = fixed_vectors(model, [[4]])
    assert first.shape == (2, 16) and first.dtype.name == "float32"
    assert [float(x) for x in (first**2).sum(axis=1)] == pytest.approx([1.0, 1.0])
    first[0, 0] = 5.0  # the batcher writes into what it is given: never a shared buffer
    assert float(second[0, 0]) == pytest.approx(0.25)


def test_profile_records_a_flame_graph_of_a_busy_process_while_the_load_runs(
    tmp_path: Path,
) -> None:
    from bench.profiles import record

    busy = subprocess.Popen(
        [sys.executable, "-c", "def spin():\n    while True:\n        sum(range(1000))\nspin()"]
    )
    try:
        ran = []

        def load() -> loadgen.Load:
            time.sleep(1.5)
            ran.append(True)
            return loadgen.Load("x", 1.0, 1.0, 1.0, 1, "0", 0.0)

        svg = tmp_path / "busy.svg"
        assert record(busy.pid, svg, 1, load).name == "x" and ran
    finally:
        busy.kill()
        busy.wait()
    picture = svg.read_text()
    assert picture.startswith("<?xml") and "spin" in picture


def test_node_ceiling_from_cpu_per_call() -> None:
    from bench.ceiling import NodeCeiling

    node = NodeCeiling(embed_calls_per_s=4000, embed_bulk_inputs_per_s=80_000, gateway_cpu_us=250)
    assert node.gateway_calls_per_core == pytest.approx(4000)
    assert node.gateway_cores_needed() == pytest.approx(1.0)
    assert "4,000 single-input calls/s" in node.lines()[0]


def test_tracing_off_leaves_only_checks_that_cost_well_under_a_microsecond() -> None:
    from bench.tracing import _off_checks_ns

    # A call costs hundreds of µs outside the model; the off path must stay far below that.
    assert 0 < _off_checks_ns() < 5_000


def test_wakeup_cost_times_the_same_work_hot_and_after_a_sleep() -> None:
    from bench.limits import wakeup_cost

    started = time.monotonic()
    hot, cold = wakeup_cost(idle_s=0.002, repeats=20)
    elapsed = time.monotonic() - started
    assert 0 < hot < 100_000 and 0 < cold < 100_000
    assert elapsed >= 20 * 0.002  # the second pass did sleep before each run
