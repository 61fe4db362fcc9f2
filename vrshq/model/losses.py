"""VRS-HQ training losses (method §6): 1.0 CE + 2.0 BCE + 0.5 DICE, plus an optional object-presence BCE.

The mask losses follow LISA/VRS-HQ exactly: per mask, BCE-with-logits averaged over pixels and
`1 - (2 Σ p g / s + eps) / ((Σ p + Σ g) / s + eps)` with s = 1000, eps = 1e-6; both are summed over
masks and divided by the number of GT masks in the batch (+1e-8). Masks are compared at the original GT
resolution, so every sample may have its own size: pass one tensor per sample.

The object-presence term (weight 0 by default, not in the method) is a BCE on SAM2's object-score
logits against "the GT mask is non-empty"; from-scratch training needs it because SAM2 gates masks by
that score (docs/research/learnability.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vrshq.model.tokens import IGNORE_INDEX

__all__ = [
    "LossTerms",
    "combine_losses",
    "dice_loss",
    "mask_losses",
    "object_presence_loss",
    "sigmoid_bce_loss",
    "token_ce_loss",
]

_NUM_MASKS_EPS = 1e-8  # LISA's `num_masks + 1e-8` (method §6)


def token_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Shifted next-token cross-entropy averaged over supervised tokens (method §6 "CE").

    Args:
        logits: (B, L, V) LM logits.
        labels: (B, L) target ids, `IGNORE_INDEX` where unsupervised.

    Returns:
        Scalar float32 loss (0 with no supervised token).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits (B, L, V) {tuple(logits.shape)} and labels (B, L) {tuple(labels.shape)} differ")
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    if not bool((shift_labels != IGNORE_INDEX).any()):
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over masks of the pixel-mean BCE-with-logits. logits/targets: (N, H, W). Returns a scalar."""
    _check_masks(logits, targets)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return loss.flatten(1).mean(1).sum()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, *, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """Sum over masks of `1 - (2Σpg/scale + eps) / ((Σp + Σg)/scale + eps)`, p = sigmoid(logits)."""
    _check_masks(logits, targets)
    p = logits.float().sigmoid().flatten(1)
    g = targets.float().flatten(1)
    numerator = 2 * (p / scale * g).sum(-1)
    denominator = (p / scale).sum(-1) + (g / scale).sum(-1)
    return (1 - (numerator + eps) / (denominator + eps)).sum()


def mask_losses(
    logits: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    dice_scale: float = 1000.0,
    dice_eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE and DICE averaged over all GT masks of the batch (method §6).

    Args:
        logits: per sample, (N_i, H_i, W_i) mask logits at the GT resolution.
        targets: per sample, (N_i, H_i, W_i) bool/0-1 GT masks.

    Returns:
        `(bce, dice)` scalars: sums over all masks divided by `sum N_i + 1e-8`.
    """
    if len(logits) != len(targets) or not logits:
        raise ValueError(
            f"need the same non-zero number of logit and target tensors, got {len(logits)}, {len(targets)}"
        )
    num_masks = sum(int(t.shape[0]) for t in targets)
    # samples of one resolution are scored in one call (the per-mask terms are summed either way)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (lg, tg) in enumerate(zip(logits, targets)):
        _check_masks(lg, tg)
        groups.setdefault(tuple(lg.shape[1:]), []).append(i)
    bce, dice = 0.0, 0.0
    for idx in groups.values():
        lg = torch.cat([logits[i] for i in idx]) if len(idx) > 1 else logits[idx[0]]
        tg = torch.cat([targets[i] for i in idx]) if len(idx) > 1 else targets[idx[0]]
        bce = bce + sigmoid_bce_loss(lg, tg)
        dice = dice + dice_loss(lg, tg, scale=dice_scale, eps=dice_eps)
    return bce / (num_masks + _NUM_MASKS_EPS), dice / (num_masks + _NUM_MASKS_EPS)


def object_presence_loss(object_score_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits of SAM2 object scores (N,) against GT presence (N,) (mask non-empty)."""
    if object_score_logits.shape != targets.shape:
        raise ValueError(
            f"object_score_logits {tuple(object_score_logits.shape)} and targets {tuple(targets.shape)} differ"
        )
    return F.binary_cross_entropy_with_logits(object_score_logits.float(), targets.float())


@dataclass(frozen=True)
class LossTerms:
    """Weighted total and its unweighted parts (scalars)."""

    loss: torch.Tensor
    ce_loss: torch.Tensor
    bce_loss: torch.Tensor
    dice_loss: torch.Tensor
    object_loss: torch.Tensor


def combine_losses(
    *,
    ce: torch.Tensor,
    bce: torch.Tensor,
    dice: torch.Tensor,
    object_presence: torch.Tensor,
    ce_weight: float,
    bce_weight: float,
    dice_weight: float,
    object_weight: float,
) -> LossTerms:
    """`ce_weight·CE + bce_weight·BCE + dice_weight·DICE + object_weight·OBJ` (method §6 weights 1, 2, 0.5, 0)."""
    total = ce_weight * ce + bce_weight * bce + dice_weight * dice
    if object_weight:
        total = total + object_weight * object_presence
    return LossTerms(loss=total, ce_loss=ce, bce_loss=bce, dice_loss=dice, object_loss=object_presence)


def _check_masks(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 3 or logits.shape != targets.shape:
        raise ValueError(
            f"mask logits and targets must both be (N, H, W), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
