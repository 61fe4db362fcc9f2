"""Temporal Dynamic Aggregation (method §3): fuse the per-frame `[SEG]` embeddings into `[TAK]`.

    c_t = cos(SEG_t, TAK),  w = softmax_t(c) (temperature 1),  TAK' = TAK + alpha * sum_t w_t SEG_t

The weights `w` are also the token term of keyframe selection (method §4). The result is not
re-normalised. Computed in float32 whatever the autocast dtype, so that batched and single
expressions give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TdaResult", "temporal_dynamic_aggregation"]


@dataclass(frozen=True)
class TdaResult:
    """Output of `temporal_dynamic_aggregation` (leading batch dims `...` as in the input).

    Attributes:
        fused_tak: (..., D) the aggregated TAK', float32.
        weights: (..., n) softmax over frames of the cosine similarities (0 where masked out).
        similarity: (..., n) cosine similarity of each SEG with TAK.
    """

    fused_tak: torch.Tensor
    weights: torch.Tensor
    similarity: torch.Tensor


def temporal_dynamic_aggregation(
    seg_embeds: torch.Tensor,
    tak_embed: torch.Tensor,
    *,
    alpha: float,
    frame_mask: torch.Tensor | None = None,
) -> TdaResult:
    """Aggregate per-frame SEG embeddings into the TAK embedding (method §3).

    Args:
        seg_embeds: (..., n, D) one embedding per MLLM frame, in frame order.
        tak_embed: (..., D) the TAK embedding.
        alpha: fusion strength (0.1 in the official code, `MethodConfig.tda_alpha`).
        frame_mask: optional (..., n) bool, False for padded frames of shorter expressions.

    Returns:
        TdaResult with the fused TAK, the weights and the cosine similarities.

    Example:
        >>> seg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> out = temporal_dynamic_aggregation(seg, torch.tensor([1.0, 0.0]), alpha=0.1)
        >>> [round(v, 4) for v in out.weights.tolist()]
        [0.7311, 0.2689]
    """
    if (
        seg_embeds.dim() < 2
        or seg_embeds.shape[:-2] != tak_embed.shape[:-1]
        or seg_embeds.shape[-1] != tak_embed.shape[-1]
    ):
        raise ValueError(
            f"seg_embeds (..., n, D) and tak_embed (..., D) do not match: {tuple(seg_embeds.shape)} vs "
            f"{tuple(tak_embed.shape)}"
        )
    if seg_embeds.shape[-2] < 1:
        raise ValueError("seg_embeds has no frame (n = 0); TDA needs at least one [SEG]")
    seg = seg_embeds.float()
    tak = tak_embed.float()
    similarity = F.cosine_similarity(seg, tak.unsqueeze(-2).expand_as(seg), dim=-1)
    logits = similarity
    if frame_mask is not None:
        if frame_mask.shape != similarity.shape:
            raise ValueError(f"frame_mask shape {tuple(frame_mask.shape)} != {tuple(similarity.shape)}")
        if not bool(frame_mask.any(-1).all()):
            raise ValueError("frame_mask has a row without any valid frame")
        logits = similarity.masked_fill(~frame_mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    fused = tak + alpha * (weights.unsqueeze(-1) * seg).sum(-2)
    return TdaResult(fused_tak=fused, weights=weights, similarity=similarity)
