"""The shared `[SEG]`/`[TAK]` projection (method §2, official `text_hidden_fcs[0]`).

Linear(H -> H), ReLU, Linear(H -> D), Dropout(0.0): LLM hidden size H (4096) to the SAM2 prompt
size D (256). One MLP serves both token kinds.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SegHead"]


class SegHead(nn.Module):
    """MLP from LLM hidden states to SAM2 prompt embeddings.

    Parameter names: `mlp.0.{weight,bias}` and `mlp.2.{weight,bias}` (official
    `text_hidden_fcs.0.0.*` / `text_hidden_fcs.0.2.*`).

    Args:
        in_dim: LLM hidden size.
        out_dim: SAM2 prompt dimension.
        hidden_dim: inner size (default `in_dim`, as officially).
        dropout: final dropout (0.0 officially).

    Example:
        >>> SegHead(8, 4)(torch.zeros(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = in_dim if hidden_dim is None else hidden_dim
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SegHead.{name} must be a positive int, got {value!r}")
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.Dropout(dropout))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.mlp(hidden_states)
