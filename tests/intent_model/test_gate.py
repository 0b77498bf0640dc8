"""The unseen-domain gate: HINT3 read as the evaluation expects it, a model judged against the
base on every check with the stated tolerance, and no verdict without the cross-source run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from intent_model.data import HINT3_SETS, default_hint3_path, load_hint3
from intent_model.eval import main as eval_main
from intent_model.gate import TOLERANCE, judge

METRICS = ("nearest_centroid_accuracy", "one_nn_accuracy", "oos_auroc")


def test_hint3_sets_split_into_train_in_scope_and_out_of_scope_queries() -> None:
    sizes = {}
    for name in HINT3_SETS:
        splits = load_hint3(default_hint3_path(), name)
        assert "NO_NODES_DETECTED" not in splits["train"].labels + splits["test"].labels
        assert set(splits["test"].labels) <= set(splits["train"].labels)
        sizes[name] = (len(splits["train"]), len(splits["test"]), len(splits["oos_test"]))
    # The test rows of ../shared/data/hint3/SOURCE.md: in-scope plus out-of-scope.
    assert sizes == {
        "sofmattress": (328, 253, 144),
        "curekart": (599, 459, 532),
        "powerplay11": (471, 309, 674),
    }
    with pytest.raises(ValueError, match="unknown HINT3 set"):
        load_hint3(default_hint3_path(), "banking77")


def _results(value: float) -> dict[str, Any]:
    scores = {m: value for m in METRICS}
    out = {f"hint3/{s}": dict(scores) for s in HINT3_SETS}
    out |= {f"hint3/{s}/5-shot": dict(scores) for s in HINT3_SETS}
    return out


def _cross(base: float, trained: float) -> dict[str, Any]:
    def scores(v: float) -> dict[str, Any]:
        return {"clinc150/test": {m: v for m in METRICS},
                "clinc150/test/5-shot": {m: v for m in METRICS}}  # fmt: skip

    return {"clinc150": {"base": scores(base), "trained": scores(trained)}}


def test_the_base_passes_and_a_drop_beyond_the_tolerance_fails() -> None:
    base = _results(0.8)
    verdict = judge(base, base, _cross(0.9, 0.9))
    assert verdict.passed and len(verdict.checks) == 3 * 4 + 4
    within = _results(0.8)
    within["hint3/curekart"]["oos_auroc"] = 0.8 - TOLERANCE
    assert judge(base, within, _cross(0.9, 0.95)).passed
    worse = _results(0.85)
    worse["hint3/powerplay11/5-shot"]["nearest_centroid_accuracy"] = 0.8 - TOLERANCE - 0.001
    verdict = judge(base, worse, _cross(0.9, 0.95))
    assert not verdict.passed
    assert "hint3/powerplay11/5-shot centroid" in verdict.summary()
    # Better everywhere on HINT3 does not make up for the cross-source run.
    verdict = judge(base, _results(0.9), _cross(0.9, 0.89))
    assert not verdict.passed and "clinc150/test" in verdict.summary()


def test_no_cross_source_run_means_no_verdict() -> None:
    verdict = judge(_results(0.8), _results(0.9), None)
    assert not verdict.passed
    assert "no cross-source run" in verdict.summary()


def test_eval_measures_hint3_and_widths_and_gates_each_model(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tiny_hint3: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import intent_model.eval as eval_module

    # The tiny model stands in for the base, so the gate has a base column to judge against.
    monkeypatch.setattr(eval_module, "base_model_dir", lambda: tiny_model_dir)
    monkeypatch.setattr(eval_module, "default_data_path", lambda: tiny_clinc)
    out = tmp_path / "scores.json"
    argv = [str(tiny_model_dir), "--pretrain", str(tiny_pretrain), "--hint3", str(tiny_hint3),
            "--dims", "16", "--json", str(out)]  # fmt: skip
    assert eval_main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["base", tiny_model_dir.name]
    measured = results["base"]
    for name in HINT3_SETS:
        for bench in (f"hint3/{name}", f"hint3/{name}/1-shot", f"hint3/{name}/5-shot",
                      f"hint3/{name}@16", f"hint3/{name}/5-shot@16"):  # fmt: skip
            assert bench in measured, bench
        assert measured[f"hint3/{name}"]["oos_auroc"] is not None
    assert "clinc150/test@16" in measured
    printed = capsys.readouterr().out
    assert "Unseen-domain gate" in printed
    assert "not gated: no cross-source run" in printed  # a bare directory has no leaveout.json
