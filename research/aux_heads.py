"""Throw-away heads of the from-scratch pretraining stages (``research.track_pretrain``, ``vision_pretrain``,
``grounding_pretrain``): each stage trains a model part through a linear head that is dropped afterwards."""
from __future__ import annotations

import torch

__all__ = ["throwaway_linear_head"]


def throwaway_linear_head(in_features: int, out_features: int, *, seed: int, device: torch.device | str) -> torch.nn.Linear:
    """A linear head with weights ``N(0, 1/in_features)`` from its own generator seeded ``seed`` and a zero bias.

    Why its own generator: ``nn.Linear``'s init draws from the global RNG, so a stage that is switched on would
    change every random number drawn after it (dropout, later inits) and with them the later stages' results.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        head = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * in_features**-0.5)
        head.bias.zero_()
    return head.to(device)
