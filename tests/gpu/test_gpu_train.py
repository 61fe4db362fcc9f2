"""One training step of the tiny preset on a CUDA device, under bf16 autocast (the training precision)."""
from __future__ import annotations

import random

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_bf16_training_step_updates_the_trainable_parameters():
    from vrshq.builders import build_vrshq, tiny_config
    from vrshq.model.outputs import make_train_batch

    torch.manual_seed(0)
    model = build_vrshq(tiny_config(), device=torch.device("cuda")).train()
    assert model.cfg.autocast_dtype == "bfloat16"
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 255, (8, 30, 44, 3), dtype=torch.uint8, generator=gen)
    masks = torch.zeros(2, 8, 30, 44, dtype=torch.bool)
    masks[0, :, 4:14, 5:20] = True
    masks[1, :, 16:26, 22:40] = True
    batch = make_train_batch([(frames, ["the red circle", "which square moves?"], masks)], rng=random.Random(0))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3, weight_decay=0.0)
    out = model(batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in trainable.values() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    changed = [n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])]
    assert len(changed) >= len(trainable) // 2
    assert any(n.startswith("sam2.") for n in changed) and any(n.startswith("mllm.") for n in changed)
