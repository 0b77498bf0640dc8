"""The evaluation protocols: few-shot support drawn per intent and seed, the self-split of a set
without a train split, each text embedded once, and the eval command over real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from intent_model.benchmarks import CachedEncoder, FewShot, SelfSplit, capped, run_all
from intent_model.data import Split
from intent_model.eval import main as eval_main


class _CountingEncoder:
    """Each text's vector is one-hot on its intent (read from a 'label:' prefix), so every
    protocol that keeps an intent's support and queries apart scores 1.0."""

    def __init__(self, intents: list[str]) -> None:
        self.intents = intents
        self.seen: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        out = np.zeros((len(texts), len(self.intents) + 1), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, self.intents.index(text.split(":")[0])] = 1.0
            out[row, -1] = 0.1 * (hash(text) % 7)
        return out

    def describe(self) -> str:
        return "counting"


def _split(intents: list[str], per_intent: int) -> Split:
    texts = [f"{i}:{n}" for i in intents for n in range(per_intent)]
    return Split(texts, [t.split(":")[0] for t in texts])


def test_few_shot_draws_k_per_intent_by_seed_and_averages() -> None:
    intents = ["a", "b", "c"]
    bench = FewShot("fs", _split(intents, 20), _split(intents, 3), None, shots=5, seeds=3)
    drawn = [bench._draw(seed) for seed in range(3)]
    for support in drawn:
        assert sorted(set(support.labels)) == intents and len(support) == 15
    assert drawn[0].texts != drawn[1].texts  # each seed its own draw
    assert bench._draw(0) == drawn[0]  # and the same draw every time
    scores = bench.run(CachedEncoder(_CountingEncoder(intents)))
    assert scores["nearest_centroid_accuracy"] == 1.0 and scores["oos_auroc"] is None


def test_self_split_sets_intents_aside_as_out_of_scope_and_halves_the_rest() -> None:
    intents = [f"i{n}" for n in range(10)]
    encoder = _CountingEncoder(intents)
    scores = SelfSplit("self", _split(intents, 6), seeds=5).run(CachedEncoder(encoder))
    # One-hot intents: a held-out intent's queries have similarity 0 to every known centroid.
    assert scores["nearest_centroid_accuracy"] == 1.0
    assert scores["oos_auroc"] == 1.0 and scores["oos_recall_at_95"] == 1.0
    assert scores["v_measure"] == pytest.approx(1.0)


def test_every_text_is_embedded_once_across_benchmarks() -> None:
    intents = ["a", "b"]
    encoder = _CountingEncoder(intents)
    data = _split(intents, 12)
    run_all([FewShot("5", data, data, None, 5), FewShot("10", data, data, None, 10),
             SelfSplit("s", data)], encoder)  # fmt: skip
    assert sorted(encoder.seen) == sorted(data.texts)


def test_capped_keeps_at_most_n_per_intent() -> None:
    data = Split([f"t{i}" for i in range(30)], ["big"] * 25 + ["small"] * 5)
    kept = capped(data, 10, seed=1)
    assert kept.labels.count("big") == 10 and kept.labels.count("small") == 5


def test_eval_command_compares_models_on_a_clinc_format_file(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.json"
    argv = [str(tiny_model_dir), "--no-base", "--data", str(tiny_clinc), "--pretrain",
            str(tiny_pretrain), "--json", str(out)]  # fmt: skip
    assert eval_main(argv) == 0
    body = json.loads(out.read_text())
    results = body["results"][tiny_model_dir.name]
    assert set(results) == {"clinc150/test", "clinc150/test/1-shot", "clinc150/test/5-shot",
                            "clinc150/test/10-shot", "pretrain/val"}  # fmt: skip
    assert 0.0 <= results["clinc150/test"]["oos_auroc"] <= 1.0


def test_eval_command_runs_a_file_without_val_or_out_of_scope(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "other.json"
    rows = [[f"{w} {n}", w] for w in ("alpha", "beta") for n in range(6)]
    data.write_text(json.dumps({"train": rows, "test": rows[::2]}))
    out = tmp_path / "scores.json"
    assert (
        eval_main([str(tiny_model_dir), "--no-base", "--data", str(data), "--json", str(out)]) == 0
    )
    results = json.loads(out.read_text())["results"][tiny_model_dir.name]
    assert set(results) == {"other/test", "other/test/1-shot", "other/test/5-shot",
                            "other/test/10-shot"}  # fmt: skip
    assert results["other/test"]["oos_auroc"] is None
