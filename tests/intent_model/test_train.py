"""A tiny training run writes an adapter directory the embed service loads, whose vectors are
the training-time encoder's, and its evaluation and model card name what was loaded."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from embed_service.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterConfig, write_adapter
from embed_service.model import EmbeddingModel
from encoder.layout import UnpaddedBatch
from encoder.unpadded import live_forward
from intent_model import model_card, training_data
from intent_model.config import complete_record
from intent_model.lora import LoRALinear, adapter_tensors, add_adapters
from intent_model.model_card import write_model_card
from intent_model.report import evaluate_training_run
from intent_model.train import TrainConfig, main, train

TEXTS = ["what is my balance", "set a timer", "hello there", "play some jazz please"]


def _config(
    tiny_model_dir: Path, clinc: Path, pretrain: Path, out: Path, **kw: object
) -> TrainConfig:
    settings: dict[str, object] = dict(
        out=out, base=tiny_model_dir, clinc=clinc, pretrain=pretrain, steps=3, lr=1e-2,
        batch_intents=2, per_intent=2, dims=[32, 16], device="cpu", evaluate=False, cache=None,
        clinc_share=0.5, delta_scale=1.0,
    )  # fmt: skip
    settings.update(kw)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def test_tiny_training_writes_an_adapter_the_embed_service_loads(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "trained"
    report = train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, out))
    assert (out / ADAPTER_CONFIG).is_file() and (out / ADAPTER_WEIGHTS).is_file()
    assert not (out / "model.safetensors").exists()  # only what training changed is written
    assert report["examples"] == {"clinc150": 24, "pretrain": 15}
    assert report["intents"] == {"clinc150": 4, "pretrain": 5}
    assert report["served_min_cosine"] >= 0.9999
    base = EmbeddingModel.from_directory(tiny_model_dir, device="cpu", dtype="float32")
    tuned = EmbeddingModel.from_directory(out, device="cpu", dtype="float32")
    assert tuned.revision != base.revision and len(tuned.revision) == 12
    vectors = tuned.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors, base.encode(TEXTS), atol=1e-4)  # training changed it
    assert json.loads((out / "metrics.json").read_text())["config"]["steps"] == 3


def test_a_run_started_in_process_trains_with_the_recipes_threads(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    """As `python -m intent_model.leaveout` starts it: without train's command line."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        report = train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, tmp_path, threads=1))
    finally:
        torch.set_num_threads(before)
    assert report["threads"] == 1


def test_adapter_vectors_equal_the_training_time_encoder(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    embedder = EmbeddingModel.from_directory(tiny_model_dir, device="cpu", dtype="float32",
                                             unpadded=False)  # fmt: skip
    model = embedder.model
    add_adapters(model, rank=4, alpha=8.0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):  # a trained-looking, non-zero delta
                module.lora_B.copy_(0.05 * torch.randn(module.lora_B.shape, generator=gen))
        for layer in model.encoder.layer:
            layer.output.LayerNorm.weight.mul_(1.1)
    model.eval()
    ids = embedder.tokenize(TEXTS)
    with torch.no_grad():
        tokens = UnpaddedBatch.of(ids, embedder.framing, embedder.device)
        trained = torch.nn.functional.normalize(live_forward(model, tokens, "mean"), dim=1)
    config = AdapterConfig(base_package=None, base_path=str(tiny_model_dir),
                           base_sha256=_sha(tiny_model_dir), rank=4)  # fmt: skip
    write_adapter(tmp_path, config, adapter_tensors(model))
    for dtype, bar in (("float32", 0.99999), ("bfloat16", 0.999)):
        served = EmbeddingModel.from_directory(tmp_path, device="cpu", dtype=dtype).encode(TEXTS)
        cosines = (served * trained.numpy()).sum(axis=1)
        assert cosines.min() >= bar, (dtype, cosines)


def _sha(directory: Path) -> str:
    from embed_service.adapter import file_sha256, weight_file

    return file_sha256(weight_file(directory))


def test_evaluation_and_card_of_a_run_name_the_loaded_revision(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tiny_hint3: Path, tmp_path: Path
) -> None:
    out = tmp_path / "trained"
    train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, out, hint3=tiny_hint3))
    results = evaluate_training_run(out)
    assert list(results) == ["base", "trained"]
    shots = ("", "/1-shot", "/5-shot", "/10-shot")
    sets = ("clinc150/test", "hint3/sofmattress", "hint3/curekart", "hint3/powerplay11")
    assert set(results["trained"]) == {s + k for s in sets for k in shots} | {"pretrain/val"}
    scores = results["trained"]["clinc150/test"]
    assert 0.0 <= scores["nearest_centroid_accuracy"] <= 1.0  # type: ignore[operator]
    write_model_card(out)
    card = (out / "README.md").read_text()
    revision = EmbeddingModel.from_directory(out, device="cpu").revision
    assert f"Revision `{revision}`" in card
    centroid = f"{scores['nearest_centroid_accuracy']:.4f}"
    assert "| clinc150/test | centroid | " in card and centroid in card
    assert "24 utterances of 4 intents" in card
    assert "## Few-shot: a new user's first intents" in card
    assert "1 x the same contrastive loss over two dropout views of 32 pretraining" in card
    assert "| hint3/curekart | " in card
    assert "not gated: no cross-source run" in card  # no leave-out run of this recipe yet


def test_cli_trains_evaluates_and_writes_the_card(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--base", str(tiny_model_dir), "--clinc", str(tiny_clinc),
            "--pretrain", str(tiny_pretrain), "--steps", "2", "--batch-intents", "2",
            "--per-intent", "2", "--dims", "32", "--device", "cpu", "--holdout", "clinc150",
            "--cache", ""]  # fmt: skip
    assert main(argv) == 0
    body = json.loads((out / "eval.json").read_text())
    assert body["holdout"] == "clinc150"
    assert "clinc150/val" in body["results"]["base"]  # judged on the source it never saw
    assert json.loads((out / "metrics.json").read_text())["examples"] == {"pretrain": 15}
    assert "CLINC150 left out as a whole" in (out / "README.md").read_text()


def test_cli_rejects_an_unknown_holdout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holdout must be one of"):
        main(["--out", str(tmp_path), "--holdout", "banking77"])


def test_leaveout_checks_train_the_recipe_without_each_group_and_reuse_finished_runs(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    from intent_model.leaveout import main as leaveout_main

    model = tmp_path / "model"
    train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, model, steps=2, holdout_share=0.4))
    work = tmp_path / "work"
    argv = [str(model), "--checks", "clinc150,pretrain-intents", "--work", str(work)]
    assert leaveout_main(argv) == 0
    results = json.loads((model / "leaveout.json").read_text())
    assert set(results) == {"clinc150", "pretrain-intents"}
    assert set(results["pretrain-intents"]["trained"]) == {"pretrain/held-out-intents"}
    held = json.loads((work / "pretrain-intents" / "metrics.json").read_text())
    assert held["examples"]["pretrain"] == 9  # two of five intents (3 utterances each) left out
    card = (model / "README.md").read_text()
    assert "## Leave-out checks" in card and "### clinc150:" in card
    adapter = work / "clinc150" / ADAPTER_WEIGHTS
    evaluation = work / "clinc150" / "eval.json"
    before, evaluated = adapter.stat().st_mtime_ns, evaluation.stat().st_mtime_ns
    assert leaveout_main([str(model), "--checks", "clinc150", "--work", str(work)]) == 0
    assert adapter.stat().st_mtime_ns == before  # the same recipe already ran: not retrained
    assert evaluation.stat().st_mtime_ns == evaluated  # and its evaluation is read back
    assert json.loads((model / "leaveout.json").read_text())["clinc150"] == results["clinc150"]
    with pytest.raises(SystemExit):
        leaveout_main([str(model), "--checks", "banking77"])


def test_first_layer_keeps_the_lower_blocks_the_bases(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "upper"
    train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, out, first_layer=1))
    from safetensors.torch import load_file

    changed = {key.split(".")[2] for key in load_file(out / ADAPTER_WEIGHTS)}
    assert changed == {"1"}  # the tiny model's second (last) block only
    card_cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert card_cfg["first_layer"] == 1


def test_views_term_changes_the_run_and_repeats_byte_for_byte(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    """Dropout views of pretraining utterances: a new term in the loss, drawn from its own
    random stream and the seeded torch generator, so the run is still reproducible."""
    weights = {}
    runs = {
        "plain": {"views": 0.0},
        "views": {},
        "again": {},
        "held": {"view_preserve": 50.0},
        "neighbours": {"view_neighbours": 2.0},
        "warm": {"view_temperature": 0.5},
        # 0 is the supervised term's temperature; naming it changes nothing.
        "named": {"view_temperature": 0.1},
        "all": {"view_text": "all", "view_preserve": 50.0},
        # Without CLINC150 the views read the pretraining set only, as "views" does.
        "cross": {"holdout": "clinc150"},
        "cross-all": {"holdout": "clinc150", "view_text": "all"},
        # CLINC150 not trained on, its text tokenized for the views alone.
        "unlabeled": {"clinc_share": 0.0, "view_preserve": 50.0},
        "unlabeled-all": {"clinc_share": 0.0, "view_text": "all", "view_preserve": 50.0},
    }
    for name, knobs in runs.items():
        out = tmp_path / name
        settings = {"views": 1.0, "view_rows": 4, "threads": 1} | knobs
        train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, out, **settings))
        weights[name] = (out / ADAPTER_WEIGHTS).read_bytes()
    assert weights["views"] != weights["plain"]
    assert weights["views"] == weights["again"]
    named = ("plain", "views", "held", "all", "neighbours", "warm")
    assert len({weights[n] for n in named}) == len(named)
    assert weights["named"] == weights["views"]
    assert weights["cross-all"] == weights["cross"]
    assert weights["unlabeled-all"] != weights["unlabeled"]
    held_cfg = json.loads((tmp_path / "held" / "metrics.json").read_text())["config"]
    held_text = "".join(model_card._views(held_cfg))
    assert "50 x the preserving term over every pair of those" in held_text
    warm_cfg = json.loads((tmp_path / "warm" / "metrics.json").read_text())["config"]
    assert "loss at temperature 0.5 over two dropout views" in "".join(model_card._views(warm_cfg))
    near_cfg = json.loads((tmp_path / "neighbours" / "metrics.json").read_text())["config"]
    assert "2 x a distillation of the base's nearest neighbours" in "".join(
        model_card._views(near_cfg)
    )
    assert "preserving" not in "".join(model_card._views(complete_record({"views": 1.0})))
    all_cfg = json.loads((tmp_path / "all" / "metrics.json").read_text())["config"]
    assert "pretraining and CLINC150 training utterances" in "".join(model_card._views(all_cfg))
    with pytest.raises(ValueError, match="pretraining set"):
        _config(tiny_model_dir, tiny_clinc, tiny_pretrain, tmp_path, views=1.0,
                clinc_share=1.0).validate()  # fmt: skip
    with pytest.raises(ValueError, match="view_preserve needs"):
        _config(tiny_model_dir, tiny_clinc, tiny_pretrain, tmp_path, views=1.0, preserve=0.0,
                view_preserve=10.0).validate()  # fmt: skip
    with pytest.raises(ValueError, match="view_neighbours needs the views"):
        _config(tiny_model_dir, tiny_clinc, tiny_pretrain, tmp_path, views=0.0,
                view_neighbours=1.0).validate()  # fmt: skip
    with pytest.raises(ValueError, match="view_temperature must be"):
        _config(tiny_model_dir, tiny_clinc, tiny_pretrain, tmp_path, views=1.0,
                view_temperature=-1.0).validate()  # fmt: skip
    with pytest.raises(ValueError, match="neighbour_temperature > 0"):
        _config(tiny_model_dir, tiny_clinc, tiny_pretrain, tmp_path, views=1.0,
                view_neighbours=1.0, neighbour_temperature=0.0).validate()  # fmt: skip


def test_the_base_vectors_cache_is_reused_and_a_failed_save_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[int] = []

    def pooled(model: object, embedder: object, ids: list[list[int]]) -> torch.Tensor:
        passes.append(len(ids))
        return torch.ones(len(ids), 4)

    monkeypatch.setattr(training_data, "pooled", pooled)
    embedder = SimpleNamespace(revision="r1")
    ids = [[1, 2], [3]]
    first = training_data._base_vectors(None, embedder, ids, tmp_path)
    again = training_data._base_vectors(None, embedder, ids, tmp_path)
    assert passes == [2] and torch.equal(first, again)
    assert [p.suffix for p in tmp_path.iterdir()] == [".pt"]

    def full_disk(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(training_data.torch, "save", full_disk)
    other = tmp_path / "other"
    with pytest.raises(OSError, match="No space"):
        training_data._base_vectors(None, embedder, ids, other)
    assert list(other.iterdir()) == []
