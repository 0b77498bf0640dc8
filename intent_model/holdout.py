"""Leave-out checks: which intents a training run never sees, and the data it trains on instead.

A model that is better on intents it was trained on says little about the intents users bring;
these runs train the same recipe without a group of intents and are measured on exactly that
group, against the base model.

- `clinc-domains`: some CLINC150 domains (all of their intents) left out;
- `pretrain-intents`: a share of the pretraining set's intent names, drawn by seed;
- `clinc150`: CLINC150 as a whole, so the model sees one source only and is measured on
  another, which is what a user's own intents are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from intent_model.data import Split, intents_of

HOLDOUTS = ("none", "clinc-domains", "pretrain-intents", "clinc150")


@dataclass(frozen=True)
class Holdout:
    kind: str
    domains: tuple[str, ...]
    share: float
    seed: int

    def validate(self) -> None:
        """Fails before training on an unknown kind or domain."""
        if self.kind not in HOLDOUTS:
            raise ValueError(f"holdout must be one of {', '.join(HOLDOUTS)}, not {self.kind!r}")
        if self.kind == "clinc-domains":
            intents_of(list(self.domains))
        if self.kind == "pretrain-intents" and not 0.0 < self.share < 1.0:
            raise ValueError("holdout share must be between 0 and 1")

    def pretrain_intents(self, labels: list[str]) -> set[str]:
        """The pretraining intent names this holdout leaves out (empty unless pretrain-intents)."""
        if self.kind != "pretrain-intents":
            return set()
        names = sorted(set(labels))
        return set(random.Random(self.seed).sample(names, round(self.share * len(names))))

    def training_data(self, clinc: Split, pretrain: Split) -> dict[str, Split]:
        """The training split of each source once this holdout's intents are removed."""
        self.validate()
        if self.kind == "clinc150":
            return {"pretrain": pretrain}
        if self.kind == "clinc-domains":
            return {"clinc150": clinc.without(intents_of(list(self.domains))), "pretrain": pretrain}
        return {
            "clinc150": clinc,
            "pretrain": pretrain.without(self.pretrain_intents(pretrain.labels)),
        }
