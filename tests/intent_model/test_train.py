"""A tiny training run writes a directory the embed service loads, and the recipe's parts
(P x K batches, supervised contrastive loss, weight mixing) do what the model card says."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from embed_service.model import EmbeddingModel
from intent_model.train import (
    TrainConfig,
    intent_batches,
    relational_preserve_loss,
    supervised_contrastive_loss,
    train,
)

_WORDS = {
    "balance": ["how much money is in my account", "what is my balance", "show my funds"],
    "transfer": ["send money to my mom", "move cash to savings", "wire fifty dollars to bob"],
    "weather": ["will it rain today", "how hot is it outside", "what is the forecast"],
    "timer": ["set a timer for ten minutes", "start a countdown", "time five minutes for me"],
}


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir: Path) -> Path:
    """The shared tiny BERT (2 layers, 32 dims, MiniLM's tokenizer) from tests/conftest.py;
    training writes only to its own output directory, so the base can be shared."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = []
    for intent, texts in _WORDS.items():
        rows += [[f"{t} please" if n else t, intent] for t in texts for n in range(2)]
    path = tmp_path_factory.mktemp("data") / "clinc.json"
    path.write_text(
        json.dumps(
            {
                "train": rows,
                "val": [[t, i] for i, ts in _WORDS.items() for t in ts[:2]],
                "oos_val": [["who won the game", "oos"], ["sing me a song", "oos"]],
            }
        )
    )
    return path


def _train(base: Path, data: Path, out: Path, mix: float, **kw: object) -> dict:
    kw.setdefault("eval_splits", ["val"])
    cfg = TrainConfig(
        base=base, out=out, data=data, max_steps=3, batch_intents=2, per_intent=2, lr=1e-3,
        mix=mix, device="cpu", **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return train(cfg)


def test_tiny_training_writes_a_directory_the_embed_service_loads(
    tiny_base: Path, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "trained"
    report = _train(tiny_base, tiny_data, out, mix=1.0)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt",
                 "modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                 "README.md", "metrics.json"):  # fmt: skip
        assert (out / name).is_file(), name
    model = EmbeddingModel.from_directory(out, device="cpu", dtype="float32")
    vectors = model.encode(["what is my balance", "set a timer", "hello there"])
    assert vectors.shape == (3, 32)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    base_vectors = EmbeddingModel.from_directory(tiny_base, device="cpu").encode(
        ["what is my balance", "set a timer", "hello there"]
    )
    assert not np.allclose(vectors, base_vectors, atol=1e-4)  # training changed the model
    assert report["steps"] == 3
    assert {"mix=0/all/val", "mix=1/all/val"} <= set(report["eval"])
    card = (out / "README.md").read_text()
    assert "CLINC150 `train` split only" in card and "| base | all | val |" in card
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3


def test_mix_zero_saves_the_base_model_and_held_out_domains_are_not_trained(
    tiny_base: Path, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mixed"
    report = _train(tiny_base, tiny_data, out, mix=0.0, exclude_domains=["utility"])
    texts = ["will it rain today", "send money to my mom"]
    saved = EmbeddingModel.from_directory(out, device="cpu").encode(texts)
    base = EmbeddingModel.from_directory(tiny_base, device="cpu").encode(texts)
    np.testing.assert_allclose(saved, base, atol=1e-6)
    assert report["examples"] == 12 and report["intents"] == 2  # weather and timer left out
    assert {"mix=0/held_out/val", "mix=0/seen/val"} <= set(report["eval"])
    assert report["eval"]["mix=0/held_out/val"]["n_intents"] == 2


def test_batches_hold_k_utterances_of_p_distinct_intents_each_once() -> None:
    labels = [f"i{n % 5}" for n in range(40)]  # 5 intents x 8 utterances
    batches = intent_batches(labels, batch_intents=2, per_intent=4, rng=random.Random(0))
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 40
    for batch in batches:
        counts: dict[str, int] = {}
        for i in batch:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
        assert len(counts) >= 2 and set(counts.values()) == {4}


def test_contrastive_loss_matches_hand_computation() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # Each anchor: positive similarity 1, two negatives 0, temperature 1:
    # -log(e / (e + 2)) = log(e + 2) - 1.
    loss = supervised_contrastive_loss(z, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    assert float(loss) == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)
    swapped = supervised_contrastive_loss(z, torch.tensor([0, 1, 0, 1]), temperature=1.0)
    assert float(swapped) > float(loss)  # pulling apart same-intent pairs costs more


def test_eval_cli_on_a_trained_directory_writes_json_and_card(
    tiny_base: Path, tiny_data: Path, tmp_path: Path
) -> None:
    from intent_model.eval import main as eval_main

    out = tmp_path / "trained"
    _train(tiny_base, tiny_data, out, mix=0.8, eval_splits=[])
    assert "(evaluation skipped)" in (out / "README.md").read_text()
    result_file = tmp_path / "scores.json"
    argv = [str(out), "--data", str(tiny_data), "--split", "val", "--json", str(result_file)]
    assert eval_main([*argv, "--card"]) == 0
    result = json.loads(result_file.read_text())
    assert result["n_test"] == 8 and result["n_oos"] == 2 and result["n_intents"] == 4
    assert 0.0 <= result["nearest_centroid_accuracy"] <= 1.0
    card = (out / "README.md").read_text()
    assert "on CLINC150 val (all intents)" in card
    assert f"| nearest-centroid accuracy     | {result['nearest_centroid_accuracy']:.3f} |" in card


def test_preserve_term_is_zero_for_the_base_geometry_and_grows_with_drift() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert float(relational_preserve_loss(base, base, labels)) == pytest.approx(0.0, abs=1e-7)
    # A rotation keeps every cosine similarity, so it is not penalised.
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    assert float(relational_preserve_loss(base @ q, base, labels)) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn(8, 16, generator=gen)
    small = torch.nn.functional.normalize(base + 0.1 * noise, dim=1)
    large = torch.nn.functional.normalize(base + 1.0 * noise, dim=1)
    assert 0.0 < float(relational_preserve_loss(small, base, labels))
    assert float(relational_preserve_loss(small, base, labels)) < float(
        relational_preserve_loss(large, base, labels)
    )
    # Hand computation on two 2-d points of different intents: cos 0 in base, cos 1 after.
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(relational_preserve_loss(collapsed, e, torch.tensor([0, 1]))) == pytest.approx(1.0)
    # Same-intent pairs are left to the contrastive loss: collapsing them costs nothing.
    assert float(relational_preserve_loss(collapsed, e, torch.tensor([0, 0]))) == 0.0


def test_training_with_the_preserve_term_reports_it_in_metrics_and_card(
    tiny_base: Path, tiny_data: Path, tmp_path: Path
) -> None:
    free = _train(tiny_base, tiny_data, tmp_path / "free", mix=1.0, eval_splits=[], preserve=0.0)
    out = tmp_path / "held"
    held = _train(tiny_base, tiny_data, out, mix=1.0, eval_splits=[], preserve=5.0)
    assert free["preserve_first"] is None
    assert math.isfinite(held["preserve_first"]) and held["preserve_first"] >= 0.0
    assert json.loads((out / "metrics.json").read_text())["config"]["preserve"] == 5.0
    card = (out / "README.md").read_text()
    assert "--preserve 5" in card and "geometry-preserving term (weight 5)" in card
