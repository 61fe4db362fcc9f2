"""Per-mask IoU of two stacks of logits (the agreement measure of the GPU tests)."""
from __future__ import annotations

import torch


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of the masks ``a > 0`` and ``b > 0`` per leading index pair (E, T, ...): (E, T); 1 where both are empty."""
    a, b = (a > 0).flatten(2), (b > 0).flatten(2)
    inter = (a & b).sum(-1).float()
    union = (a | b).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
