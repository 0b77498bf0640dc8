"""Which benchmarks measure a model: the standard suite every model gets (CLINC150, the
pretraining set's val and HINT3's three unseen-domain sets), and the suite of a leave-out run
(only the intents that run never trained on)."""

from __future__ import annotations

from pathlib import Path

from intent_model.benchmarks import Benchmark, Centroids, FewShot, SelfSplit, capped
from intent_model.data import (
    DOMAINS,
    HINT3_SETS,
    Split,
    intents_of,
    load_clinc,
    load_hint3,
    load_pretrain,
)
from intent_model.holdout import Holdout

SHOTS = (1, 5, 10)
# Utterances per held-out pretraining intent in its check: the largest intents have 1,000, and
# a cap keeps the check to a few thousand texts without starving the small ones.
_HELD_OUT_CAP = 100


def _name(clinc_path: Path) -> str:
    return "clinc150" if clinc_path.name == "data_full.json" else clinc_path.stem


def labelled_suite(data_path: Path, split: str = "test", domains: list[str] | None = None,
                   shots: tuple[int, ...] = SHOTS) -> list[Benchmark]:  # fmt: skip
    """Centroid and few-shot benchmarks of a CLINC150-format file (train plus `split`, with
    `oos_<split>` where the file has it). `domains` keeps those CLINC150 domains' intents."""
    splits = load_clinc(data_path)
    if split not in splits or "train" not in splits:
        raise ValueError(f"{data_path} has no 'train' and {split!r} splits (has {sorted(splits)})")
    name = f"{_name(data_path)}/{split}"
    if domains:
        keep = intents_of(domains)
        splits = {"train": splits["train"].only(keep), split: splits[split].only(keep),
                  **{k: v for k, v in splits.items() if k.startswith("oos_")}}  # fmt: skip
        name += "/" + ("held-out-domains" if len(domains) < len(DOMAINS) else "all")
    return split_benchmarks(name, splits, split, shots)


def split_benchmarks(name: str, splits: dict[str, Split], split: str,
                     shots: tuple[int, ...]) -> list[Benchmark]:  # fmt: skip
    """`train` centroids against the `split` queries (and `oos_<split>`), then k-shot."""
    support, queries = splits["train"], splits[split]
    oos: Split | None = splits.get(f"oos_{split}")
    out: list[Benchmark] = [Centroids(name, support, queries, oos)]
    out += [FewShot(f"{name}/{k}-shot", support, queries, oos, k) for k in shots]
    return out


def hint3_suite(directory: Path, shots: tuple[int, ...] = SHOTS) -> list[Benchmark]:
    """HINT3's three sets (`hint3/<set>`): train centroids against the in-scope test queries,
    the NO_NODES_DETECTED queries as out-of-scope, and k-shot support drawn from train."""
    out: list[Benchmark] = []
    for name in HINT3_SETS:
        out += split_benchmarks(f"hint3/{name}", load_hint3(directory, name), "test", shots)
    return out


def pretrain_val(pretrain_dir: Path) -> Benchmark:
    return SelfSplit("pretrain/val", load_pretrain(pretrain_dir)["val"])


def standard_suite(clinc_path: Path, pretrain_dir: Path, hint3_dir: Path | None,
                   split: str = "test") -> list[Benchmark]:  # fmt: skip
    """What every model is measured on; `hint3_dir` None leaves HINT3 out."""
    hint3 = hint3_suite(hint3_dir) if hint3_dir is not None else []
    return [*labelled_suite(clinc_path, split), pretrain_val(pretrain_dir), *hint3]


def holdout_suite(holdout: Holdout, clinc_path: Path, pretrain_dir: Path,
                  hint3_dir: Path | None) -> list[Benchmark]:  # fmt: skip
    """What a leave-out run is judged on: the intents it never trained on, val then test."""
    if holdout.kind == "clinc-domains":
        domains = list(holdout.domains)
        return [
            *labelled_suite(clinc_path, "val", domains, shots=()),
            *labelled_suite(clinc_path, "test", domains, shots=()),
        ]
    if holdout.kind == "clinc150":
        return [*labelled_suite(clinc_path, "val", shots=()), *labelled_suite(clinc_path, "test")]
    if holdout.kind == "pretrain-intents":
        train = load_pretrain(pretrain_dir)["train"]
        held = train.only(holdout.pretrain_intents(train.labels))
        return [SelfSplit("pretrain/held-out-intents", capped(held, _HELD_OUT_CAP, holdout.seed))]
    return standard_suite(clinc_path, pretrain_dir, hint3_dir)
