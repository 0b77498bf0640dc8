"""The recipe's parts do what the model card says: one-source P x K batches, leave-out checks
that remove exactly their intents, the losses by hand, and a command line that follows the
config."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from intent_model.cli import config_from_args, dataclass_parser
from intent_model.config import config_record, same_recipe
from intent_model.data import Split, intent_name, intents_of
from intent_model.holdout import Holdout
from intent_model.leaveout import recipe_of
from intent_model.losses import (
    held_layout_loss,
    intent_loss,
    neighbour_distill_loss,
    relational_preserve_loss,
    supervised_contrastive_loss,
    views_loss,
)
from intent_model.sampler import SourceSampler, mixed_batches
from intent_model.train import TrainConfig


def _labels(sizes: dict[str, int]) -> list[str]:
    return [label for label, n in sizes.items() for _ in range(n)]


def test_batches_come_from_one_source_with_k_utterances_of_p_distinct_intents() -> None:
    rng = random.Random(0)
    sources = {
        "a": _labels({"a1": 8, "a2": 8, "a3": 8}),
        "b": _labels({"b1": 30, "b2": 3, "b3": 5, "b4": 1}),
    }
    samplers = {name: SourceSampler(labels, 4, 0.5, rng) for name, labels in sources.items()}
    assert samplers["b"].intents == ["b1", "b2", "b3"]  # one utterance: no positive, no anchor
    batches = list(mixed_batches(samplers, {"a": 0.5, "b": 0.5}, 2, 200, rng))
    assert {b.source for b in batches} == {"a", "b"}
    for batch in batches:
        labels = sources[batch.source]
        assert len(batch.intents) == len(set(batch.intents)) == 2
        assert [labels[r] for r in batch.rows] == sorted(
            (labels[r] for r in batch.rows), key=batch.intents.index
        )  # grouped by intent, in the order of `intents`
        counts = Counter(labels[r] for r in batch.rows)
        for intent in batch.intents:
            assert counts[intent] == min(4, labels.count(intent))
        assert len(set(batch.rows)) == len(batch.rows)


def test_an_intent_hands_out_every_utterance_before_repeating_one() -> None:
    labels = _labels({"x": 10, "y": 10})
    sampler = SourceSampler(labels, 5, 1.0, random.Random(1))
    taken = [r for _ in range(2) for r in sampler.batch("s", 2).rows]
    assert sorted(taken) == list(range(20))


def test_hard_share_fills_batches_with_neighbourhoods_of_confusable_intents() -> None:
    labels = _labels({f"i{n}": 4 for n in range(12)})
    ring = {f"i{n}": [f"i{(n + d) % 12}" for d in (1, 2, 3)] for n in range(12)}
    sampler = SourceSampler(labels, 2, 0.0, random.Random(0), ring, hard_share=0.5,
                            neighbourhood=3)  # fmt: skip
    seeds = set()
    for _ in range(50):
        batch = sampler.batch("s", 6)
        seed = int(batch.intents[0][1:])
        seeds.add(seed)
        # The first half: an intent and its two nearest; the rest drawn as without hard share.
        assert batch.intents[1:3] == [f"i{(seed + 1) % 12}", f"i{(seed + 2) % 12}"]
        assert len(set(batch.intents)) == 6
    assert len(seeds) > 6  # neighbourhoods start from every part of the ring
    plain = SourceSampler(labels, 2, 0.0, random.Random(0), ring, hard_share=0.0)
    batches = [plain.batch("s", 6).intents for _ in range(50)]
    next_to_seed = sum(b[1] == f"i{(int(b[0][1:]) + 1) % 12}" for b in batches)
    assert next_to_seed < 25  # without hard share, the neighbour follows by chance only


def test_source_shares_decide_how_often_each_source_is_drawn() -> None:
    rng = random.Random(0)
    samplers = {n: SourceSampler(_labels({f"{n}1": 4, f"{n}2": 4}), 2, 0.5, rng) for n in "ab"}
    drawn = Counter(b.source for b in mixed_batches(samplers, {"a": 0.2, "b": 0.8}, 2, 2000, rng))
    assert 0.17 < drawn["a"] / 2000 < 0.23


def test_holdouts_remove_exactly_their_intents() -> None:
    clinc = Split(["a", "b", "c"], ["balance", "book_flight", "alarm"])
    pretrain = Split([f"u{i}" for i in range(20)], [f"name {i % 10}" for i in range(20)])
    none = Holdout("none", (), 0.2, 0).training_data(clinc, pretrain)
    assert none == {"clinc150": clinc, "pretrain": pretrain}
    domains = Holdout("clinc-domains", ("banking",), 0.2, 0).training_data(clinc, pretrain)
    assert domains["clinc150"].labels == ["book_flight", "alarm"]
    assert Holdout("clinc150", (), 0.2, 0).training_data(clinc, pretrain) == {"pretrain": pretrain}
    fifth = Holdout("pretrain-intents", (), 0.2, 7)
    held = fifth.pretrain_intents(pretrain.labels)
    assert len(held) == 2 and held == Holdout("pretrain-intents", (), 0.2, 7).pretrain_intents(
        pretrain.labels
    )  # drawn by seed: the same every time
    kept = fifth.training_data(clinc, pretrain)["pretrain"]
    assert not held & set(kept.labels) and len(kept) == 16
    with pytest.raises(ValueError, match="unknown domain"):
        Holdout("clinc-domains", ("nope",), 0.2, 0).validate()
    assert "balance" in intents_of(["banking"]) and intent_name("book_flight") == "book flight"


def test_contrastive_loss_matches_hand_computation() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # Each anchor: positive similarity 1, two negatives 0, temperature 1:
    # -log(e / (e + 2)) = log(e + 2) - 1.
    loss = supervised_contrastive_loss(z, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    assert float(loss) == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)
    swapped = supervised_contrastive_loss(z, torch.tensor([0, 1, 0, 1]), temperature=1.0)
    assert float(swapped) > float(loss)  # pulling apart same-intent pairs costs more


def test_views_loss_takes_each_rows_other_view_as_its_only_positive() -> None:
    a, b = [1.0, 0.0], [0.0, 1.0]
    # Rows [first views; second views]: each anchor's positive (cos 1) is its other view, the
    # other utterance's two views (cos 0) its negatives, as in the hand computation above.
    same = views_loss(torch.tensor([a, b, a, b]), temperature=1.0, dims=(2,))
    assert float(same) == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)
    crossed = views_loss(torch.tensor([a, b, b, a]), temperature=1.0, dims=(2,))
    assert float(crossed) > float(same)  # views that moved apart cost more
    # Each prefix renormalised and averaged, as for the supervised term.
    both = views_loss(torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]] * 2), 1.0, (3, 2))
    wide = views_loss(torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]] * 2), 1.0, (3,))
    assert float(both) == pytest.approx((float(wide) + float(same)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="even number"):
        views_loss(torch.ones(5, 2), 1.0, (2,))


def test_held_layout_loss_holds_every_pair_of_unlabeled_rows_at_every_width() -> None:
    a, b, c = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]
    assert float(held_layout_loss(torch.tensor([a, b]), torch.tensor([a, b]), (3,))) == 0.0
    # A rotation of the base is its layout too.
    assert float(held_layout_loss(torch.tensor([b, a]), torch.tensor([a, b]), (3,))) == 0.0
    # The base had the two rows at cosine 0.6, the model at 0: both ordered pairs are 0.6 off.
    drift = held_layout_loss(torch.tensor([a, b]), torch.tensor([a, c]), (3,))
    assert float(drift) == pytest.approx(0.36, rel=1e-6)
    # Prefixes renormalised and averaged: the third values (cosine 0.5 at full width) move
    # the full width only.
    wide = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert float(held_layout_loss(wide, torch.tensor([a, b]), (3, 2))) == pytest.approx(
        (0.25 + 0.0) / 2, rel=1e-6
    )
    with pytest.raises(ValueError, match="one base vector each"):
        held_layout_loss(torch.ones(3, 2), torch.ones(2, 2), (2,))


def test_neighbour_distillation_holds_which_rows_are_nearest_not_the_cosines() -> None:
    a, b, c = [1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]
    base = torch.tensor([a, b, c])
    assert float(neighbour_distill_loss(base, base, (3,), 0.05)) == 0.0
    # A rotation keeps every neighbour: nothing to pay.
    turn = torch.tensor([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    assert float(neighbour_distill_loss(base @ turn, base, (3,), 0.05)) == pytest.approx(
        0.0, abs=1e-6
    )
    # b moved away from a but still nearest to it costs next to nothing at a low temperature;
    # b moved so that c is its nearest costs much more.
    kept = torch.tensor([a, [0.6, 0.8, 0.0], c])
    swapped = torch.tensor([a, [0.0, 0.6, 0.8], c])
    assert float(neighbour_distill_loss(kept, base, (3,), 0.05)) < 1e-3
    assert float(neighbour_distill_loss(swapped, base, (3,), 0.05)) > 1.0
    # By hand: row i's KL over its two other rows, averaged over rows.
    z = torch.nn.functional.normalize(swapped, dim=1)
    expected = 0.0
    for i in range(3):
        j = [k for k in range(3) if k != i]
        p = torch.softmax(base[i] @ base[j].T / 0.5, dim=0)
        q = torch.softmax(z[i] @ z[j].T / 0.5, dim=0)
        expected += float((p * (p / q).log()).sum()) / 3
    assert float(neighbour_distill_loss(swapped, base, (3,), 0.5)) == pytest.approx(expected)
    # Prefixes renormalised and averaged, as for every other term.
    assert float(neighbour_distill_loss(swapped, base, (3, 2), 0.5)) == pytest.approx(
        (expected + float(neighbour_distill_loss(swapped[:, :2], base[:, :2], (2,), 0.5))) / 2
    )
    with pytest.raises(ValueError, match="one base vector each"):
        neighbour_distill_loss(torch.ones(2, 2), torch.ones(2, 2), (2,), 0.05)


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
    # Unless every pair is held (distillation of the base's similarities): then it costs the
    # same as for two intents, whatever the labels.
    for labels_2 in (torch.tensor([0, 0]), torch.tensor([0, 1])):
        held = relational_preserve_loss(collapsed, e, labels_2, same=True)
        assert float(held) == pytest.approx(1.0)


def test_matryoshka_loss_averages_the_terms_of_each_renormalised_prefix() -> None:
    gen = torch.Generator().manual_seed(3)
    pooled, base = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])

    def one(d: int) -> torch.Tensor:
        z = torch.nn.functional.normalize(pooled[:, :d], dim=1)
        zb = torch.nn.functional.normalize(base[:, :d], dim=1)
        return supervised_contrastive_loss(z, labels, 0.1) + 10 * relational_preserve_loss(
            z, zb, labels
        )

    total, kept = intent_loss(pooled, labels, base, 0.1, 10.0, (8, 4))
    assert float(total) == pytest.approx(float((one(8) + one(4)) / 2), rel=1e-6)
    full_z = torch.nn.functional.normalize(pooled, dim=1)
    full_b = torch.nn.functional.normalize(base, dim=1)
    assert float(kept) == pytest.approx(float(relational_preserve_loss(full_z, full_b, labels)))
    alone, _ = intent_loss(pooled, labels, None, 0.1, 10.0, (8,))
    assert float(alone) == pytest.approx(
        float(supervised_contrastive_loss(full_z, labels, 0.1)), rel=1e-6
    )


def test_the_command_line_follows_the_config_fields() -> None:
    parser = dataclass_parser(TrainConfig, "train", "test")
    text = parser.format_help()
    for name in ("--steps", "--rank", "--dims", "--names", "--no-names", "--holdout-domains"):
        assert name in text
    cfg = config_from_args(TrainConfig, parser.parse_args(
        ["--steps", "7", "--dims", "384,64", "--no-names", "--holdout-domains", "meta,work"]
    ))  # fmt: skip
    assert (cfg.steps, cfg.dims, cfg.names, cfg.holdout_domains) == (7, [384, 64], False,
                                                                      ["meta", "work"])  # fmt: skip
    assert config_from_args(TrainConfig, parser.parse_args([])) == TrainConfig()


def test_a_record_without_a_later_knob_is_the_recipe_that_run_trained(tmp_path: Path) -> None:
    """Runs from before the views term do not record it, and trained without it, although the
    recipe has it on now: their leave-out checks are not the recipe's, and retraining one of
    them (leaveout) trains it without the term."""
    record = config_record(TrainConfig())
    del record["views"], record["view_rows"]
    assert not same_recipe(record, TrainConfig())
    assert same_recipe(record, TrainConfig(views=0.0))
    (tmp_path / "metrics.json").write_text(json.dumps({"config": record}))
    recipe = recipe_of(tmp_path)
    assert (recipe["views"], recipe["view_rows"]) == (0.0, 32)
    assert TrainConfig(**recipe) == TrainConfig(views=0.0, out=TrainConfig().out)


def test_a_record_from_before_every_later_knob_is_the_recipe_of_that_time(
    tmp_path: Path,
) -> None:
    """The knobs added off and turned on in the recipe later: a run that records none of them
    held different-intent pairs, drew no hard negatives and kept its whole change."""
    later = ("preserve_pairs", "hard_share", "delta_scale", "views", "view_rows")
    record = {k: v for k, v in config_record(TrainConfig()).items() if k not in later}
    then = TrainConfig(preserve_pairs="cross", hard_share=0.0, delta_scale=1.0, views=0.0)
    assert same_recipe(record, then)
    assert not same_recipe(record, TrainConfig())
    (tmp_path / "metrics.json").write_text(json.dumps({"config": record}))
    assert TrainConfig(**recipe_of(tmp_path)) == dataclasses.replace(then, out=TrainConfig().out)
