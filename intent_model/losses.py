"""The training objective: supervised contrastive loss over a P x K batch, a term that holds the
layout of different intents near the frozen base model's, and Matryoshka prefixes so that a
vector cut to its first d values (the API's `dimensions`) is trained too."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_contrastive_loss(
    z: torch.Tensor, label_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over anchors of -mean log p(positive | anchor), softmax over all other in-batch
    rows; z must be L2-normalised. Rows without a positive are not anchors."""
    sims = (z @ z.T) / temperature
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sims = sims.masked_fill(self_mask, float("-inf"))
    log_prob = sims - torch.logsumexp(sims, dim=1, keepdim=True)
    positives = (label_ids[:, None] == label_ids[None, :]) & ~self_mask
    pos_count = positives.sum(dim=1)
    has_pos = pos_count > 0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    return -(pos_log_prob[has_pos] / pos_count[has_pos]).mean()


def relational_preserve_loss(
    z: torch.Tensor, z_base: torch.Tensor, label_ids: torch.Tensor, same: bool = False
) -> torch.Tensor:
    """Mean squared difference between the student's and the frozen base model's in-batch
    cosine similarities. Over pairs of different intents only by default: same-intent pairs
    are the contrastive loss's to tighten, while the layout of intents relative to each other,
    which is what carries over to intents never trained on, stays near the base's. With `same`
    every pair of different rows counts, so the neighbourhoods inside an intent are held too
    (distillation of the base's similarities). Invariant to rotations; rows must be
    L2-normalised."""
    n = z.shape[0]
    if same:
        pairs = ~torch.eye(n, dtype=torch.bool, device=z.device)
    else:
        pairs = label_ids[:, None] != label_ids[None, :]
    if not bool(pairs.any()):
        return z.new_zeros(())
    diff = (z @ z.T) - (z_base @ z_base.T)
    return diff.pow(2)[pairs].mean()


def intent_loss(
    pooled: torch.Tensor,
    label_ids: torch.Tensor,
    base: torch.Tensor | None,
    temperature: float,
    preserve: float,
    dims: tuple[int, ...],
    preserve_same: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, preserving term at full width) of pooled, not yet normalised vectors.

    Each width in `dims` (the full width first) adds its contrastive and preserving terms,
    averaged over widths; each prefix is re-normalised as the service does for `dimensions`.
    """
    total = pooled.new_zeros(())
    kept_full = pooled.new_zeros(())
    for i, d in enumerate(dims):
        z = F.normalize(pooled[:, :d], dim=1)
        loss = supervised_contrastive_loss(z, label_ids, temperature)
        if base is not None and preserve > 0:
            kept = relational_preserve_loss(
                z, F.normalize(base[:, :d], dim=1), label_ids, preserve_same
            )
            loss = loss + preserve * kept
            if i == 0:
                kept_full = kept.detach()
        total = total + loss
    return total / len(dims), kept_full


def views_loss(pooled: torch.Tensor, temperature: float, dims: tuple[int, ...]) -> torch.Tensor:
    """Contrastive loss of two views per utterance, pooled as rows [first views; second views]
    of equal halves: each row's positive is its other view, every other row a negative. The
    views differ by dropout only (SimCSE), so this needs no labels; averaged over `dims`."""
    half = pooled.shape[0] // 2
    if pooled.shape[0] != 2 * half or half < 2:
        raise ValueError("views need an even number of rows, at least four")
    label_ids = torch.arange(half, device=pooled.device).repeat(2)
    loss, _ = intent_loss(pooled, label_ids, None, temperature, 0.0, dims)
    return loss


def held_layout_loss(
    pooled: torch.Tensor, base: torch.Tensor, dims: tuple[int, ...]
) -> torch.Tensor:
    """`relational_preserve_loss` over every pair of different rows of unlabeled utterances
    (a distillation of the base's similarities on them), averaged over the renormalised
    prefixes in `dims`; `base` holds the frozen base's vectors of the same rows."""
    if pooled.shape != base.shape or pooled.shape[0] < 2:
        raise ValueError("held rows need one base vector each, at least two rows")
    rows = torch.arange(pooled.shape[0], device=pooled.device)
    total = pooled.new_zeros(())
    for d in dims:
        z = F.normalize(pooled[:, :d], dim=1)
        total = total + relational_preserve_loss(z, F.normalize(base[:, :d], dim=1), rows)
    return total / len(dims)


def neighbour_distill_loss(
    pooled: torch.Tensor, base: torch.Tensor, dims: tuple[int, ...], temperature: float
) -> torch.Tensor:
    """KL divergence from the frozen base's to the model's distribution over each row's other
    rows, softmax of cosines / `temperature`, averaged over rows and the renormalised prefixes
    in `dims`. A low temperature puts the weight on each row's nearest rows, so this holds
    which utterances are neighbours (what 1-NN reads) rather than every cosine's value."""
    n = pooled.shape[0]
    if pooled.shape != base.shape or n < 3:
        raise ValueError("neighbour rows need one base vector each, at least three rows")
    others = ~torch.eye(n, dtype=torch.bool, device=pooled.device)
    total = pooled.new_zeros(())
    for d in dims:
        z = F.normalize(pooled[:, :d], dim=1)
        zb = F.normalize(base[:, :d], dim=1)
        student = F.log_softmax(((z @ z.T) / temperature)[others].view(n, n - 1), dim=1)
        teacher = F.log_softmax(((zb @ zb.T) / temperature)[others].view(n, n - 1), dim=1)
        total = total + F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return total / len(dims)
