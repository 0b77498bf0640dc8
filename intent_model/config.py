"""`TrainConfig`: every knob of a training run, with the help text its command-line flag shows
(`intent_model.cli` derives the parser from it). The defaults are the recipe of the shipped
adapter; a run records its config verbatim in metrics.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from intent_model.holdout import Holdout


@dataclass
class TrainConfig:
    """Every knob of a run; recorded verbatim in metrics.json and the model card."""

    out: Path = field(
        default=Path("models/intent-embed"),
        metadata={"help": "output directory (make train-intent: the shipped one)"},
    )
    base: Path | None = field(
        default=None, metadata={"help": "base model directory (default: packaged MiniLM)"}
    )
    clinc: Path | None = field(default=None, metadata={"help": "CLINC150 data_full.json"})
    pretrain: Path | None = field(
        default=None, metadata={"help": "intent pretraining directory (train.txt, val.txt)"}
    )
    hint3: Path | None = field(
        default=None,
        metadata={"help": "HINT3 directory, measured after training, never trained on "
                  "(default: ../shared/data/hint3)"},
    )  # fmt: skip
    steps: int = field(default=500, metadata={"help": "optimizer steps"})
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})
    rank: int = field(default=16, metadata={"help": "adapter rank"})
    first_layer: int = field(
        default=0,
        metadata={"help": "lowest transformer block adapted; the blocks below stay the base's"},
    )
    alpha: float = field(
        default=32.0, metadata={"help": "adapter scale numerator (scale alpha/rank)"}
    )
    batch_intents: int = field(default=32, metadata={"help": "intents per batch (P)"})
    per_intent: int = field(default=4, metadata={"help": "utterances per intent (K)"})
    names: bool = field(default=True, metadata={"help": "add each intent's name as a positive"})
    clinc_share: float = field(
        default=0.0,
        metadata={"help": "share of batches from CLINC150, the rest from the pretraining set "
                  "(0: CLINC150 is not trained on)"},
    )  # fmt: skip
    intent_power: float = field(
        default=0.5, metadata={"help": "intent drawn with weight size**power within a source"}
    )
    hard_share: float = field(
        default=0.5,
        metadata={"help": "share of each batch filled with neighbourhoods of confusable intents"},
    )
    neighbourhood: int = field(
        default=4, metadata={"help": "intents per neighbourhood (an intent and its nearest)"}
    )
    temperature: float = field(default=0.1, metadata={"help": "contrastive temperature"})
    preserve: float = field(
        default=100.0, metadata={"help": "weight of the geometry-preserving term (0: off)"}
    )
    preserve_pairs: str = field(
        default="all",
        metadata={"help": "pairs the preserving term holds: cross (different intents) | all"},
    )
    views: float = field(
        default=1.0,
        metadata={"help": "weight of the unsupervised term: two dropout views of each of "
                  "--view-rows pretraining utterances as positives, SimCSE style (0: off)"},
    )  # fmt: skip
    view_temperature: float = field(
        default=0.0,
        metadata={"help": "temperature of the views term (0: --temperature); a higher one "
                  "pushes apart the nearest of the other utterances less"},
    )  # fmt: skip
    view_rows: int = field(
        default=32, metadata={"help": "pretraining utterances per step for the views term"}
    )
    view_text: str = field(
        default="pretrain",
        metadata={"help": "utterances the views term draws from: pretrain | all (the "
                  "pretraining set and CLINC150 train, labels unused; the holdout applies)"},
    )  # fmt: skip
    view_preserve: float = field(
        default=0.0,
        metadata={"help": "weight of the preserving term over the views' utterances, encoded "
                  "without dropout: their cosines held near the base's (0: off)"},
    )  # fmt: skip
    view_neighbours: float = field(
        default=0.0,
        metadata={"help": "weight of a distillation of the base's nearest neighbours among "
                  "the views' utterances, encoded without dropout: KL from the base's softmax "
                  "over their cosines to the model's (0: off)"},
    )  # fmt: skip
    neighbour_temperature: float = field(
        default=0.05, metadata={"help": "temperature of --view-neighbours' softmax"}
    )
    dims: list[int] = field(
        default_factory=lambda: [384, 256, 128, 64],
        metadata={"help": "Matryoshka widths trained (the full width first)"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' inputs"})
    warmup: float = field(default=0.1, metadata={"help": "share of steps warming up"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=48, metadata={"help": "tokens per utterance in training"})
    holdout: str = field(
        default="none",
        metadata={"help": "leave-out check: none | clinc-domains | pretrain-intents | clinc150"},
    )
    holdout_domains: list[str] = field(
        default_factory=lambda: ["banking", "travel", "small_talk"],
        metadata={"help": "CLINC150 domains left out by --holdout clinc-domains"},
    )
    holdout_share: float = field(
        default=0.2, metadata={"help": "share of pretraining intents left out (pretrain-intents)"}
    )
    delta_scale: float = field(
        default=0.8,
        metadata={
            "help": "share of the trained change kept in the written adapter: base + s x delta "
            "(intent_model.interpolate; 1: all of it)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of batches, initialisation, holdout"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when present), cpu, cuda"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch default)"})
    cache: Path | None = field(
        default=Path(".data/cache"),
        metadata={"help": "where the base model's vectors of the training data are kept"},
    )
    evaluate: bool = field(
        default=True, metadata={"help": "evaluate the written adapter and the base after training"}
    )

    def validate(self) -> None:
        """Fails before training on a knob no run could use."""
        self.holdout_spec().validate()
        if not 0.0 <= self.clinc_share <= 1.0:
            raise ValueError(f"clinc_share must be in [0, 1], not {self.clinc_share}")
        if self.holdout == "clinc150" and self.clinc_share >= 1.0:
            raise ValueError("holdout clinc150 with clinc_share 1 leaves nothing to train on")
        if self.preserve_pairs not in ("cross", "all"):
            raise ValueError(f"preserve_pairs must be cross or all, not {self.preserve_pairs!r}")
        if self.views < 0 or self.view_rows < 2 or self.view_preserve < 0:
            raise ValueError("views and view_preserve must be >= 0, view_rows >= 2")
        if self.view_text not in ("pretrain", "all"):
            raise ValueError(f"view_text must be pretrain or all, not {self.view_text!r}")
        if self.view_temperature < 0:
            raise ValueError("view_temperature must be >= 0 (0: --temperature)")
        if self.view_neighbours < 0 or self.neighbour_temperature <= 0:
            raise ValueError("view_neighbours must be >= 0, neighbour_temperature > 0")
        if self.view_neighbours > 0 and self.view_rows < 3:
            raise ValueError("view_neighbours needs view_rows >= 3")
        for knob in ("view_preserve", "view_neighbours"):
            if getattr(self, knob) > 0 and (self.views <= 0 or self.preserve <= 0):
                raise ValueError(f"{knob} needs the views term and the base vectors (preserve)")
        if self.views > 0 and self.clinc_share >= 1.0:
            raise ValueError("the views term draws from the pretraining set: clinc_share < 1")
        if not 0.0 < self.delta_scale <= 1.0:
            raise ValueError(f"delta_scale must be in (0, 1], not {self.delta_scale}")

    def views_held(self) -> bool:
        """Whether a views term compares with the base's vectors of the views' utterances."""
        return self.view_preserve > 0 or self.view_neighbours > 0

    def holdout_spec(self) -> Holdout:
        return Holdout(self.holdout, tuple(self.holdout_domains), self.holdout_share, self.seed)


# Fields that do not change the weights a run writes (with one thread).
NOT_RECIPE = frozenset({"out", "evaluate", "hint3", "threads", "cache"})


# Knobs added after runs that do not record them, with what those runs did where that is not
# the knob's default today. Each was added off and turned on in the recipe later: runs from
# before it held only different-intent pairs, drew no hard negatives, kept their whole change
# and trained without dropout views.
UNRECORDED: dict[str, Any] = {
    "preserve_pairs": "cross",
    "hard_share": 0.0,
    "delta_scale": 1.0,
    "views": 0.0,
}


def complete_record(recorded: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json `config` with every knob: one a run does not record was added after it,
    and the run did what `UNRECORDED` says, or else what the knob's default does."""
    return config_record(TrainConfig()) | UNRECORDED | recorded


def same_recipe(recorded: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a metrics.json `config` records `cfg`'s recipe."""
    before = complete_record(recorded)
    wanted = config_record(cfg)
    return {k: v for k, v in before.items() if k not in NOT_RECIPE} == {
        k: v for k, v in wanted.items() if k not in NOT_RECIPE
    }


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    """The config as metrics.json records it (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
