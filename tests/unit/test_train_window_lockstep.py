"""The lockstep SAM2 training window equals the per-conditioning-group loop (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.train_window_reference import reference_train_window_forward
from vrshq.sam2_config import sam2_tiny
from vrshq.model.sam2_segmenter import Sam2Segmenter

SIZE = 64


def _no_dropout(seg: Sam2Segmenter) -> None:
    """Dropout draws would differ between two call orders; the comparison is of the computation."""
    for module in seg.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_p"):
            module.dropout_p = 0.0


@pytest.mark.parametrize(
    "cond, window",
    [([0, 1, 2, 1, 0], 3), ([1, 1], 3), ([2], 3), ([0, 2, 2], 3),
     ([0, 4, 2, 1, 3], 5), ([3, 3], 5), ([1, 0], 2), ([0, 0], 1)],  # longer windows: the from-scratch aid
)
def test_lockstep_window_equals_the_grouped_loop(cond, window):
    torch.manual_seed(0)
    seg = Sam2Segmenter(sam2_tiny(image_size=SIZE))
    seg.set_trainable("all")
    _no_dropout(seg)
    seg.train()
    batch = len(cond)
    images = torch.randn(batch, window, 3, SIZE, SIZE)
    prompts = torch.randn(batch, seg.prompt_embed_dim) * 3
    results = []
    for forward in (seg.train_window_forward, lambda *a: reference_train_window_forward(seg, *a)):
        seg.zero_grad()
        p = prompts.clone().requires_grad_(True)
        out = forward(images, torch.tensor(cond), p)
        # a loss that weighs every frame and row differently, so misplaced outputs change it
        weights = torch.arange(1, batch * window + 1, dtype=torch.float32).reshape(batch, window)
        loss = (out.logits.sigmoid().mean((2, 3)) * weights).sum() + (out.object_score_logits * weights).sum()
        loss.backward()
        decoder_grad = seg.mask_decoder.output_upscaling[0].weight.grad.clone()
        memory_grad = next(seg.sam2.memory_attention.parameters()).grad
        memory_grad = memory_grad.clone() if memory_grad is not None else None  # window 1: no tracking
        results.append((out.logits.detach(), out.object_score_logits.detach(), p.grad, decoder_grad, memory_grad))
    assert results[0][0].shape[:2] == (batch, window)
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert results[0][2].abs().sum() > 0  # the prompt gets gradient through every frame


def test_window_passes_cover_every_other_frame_once_from_the_conditioning_frame():
    from vrshq.model.sam2_train_window import window_passes

    assert [window_passes(c, 3) for c in range(3)] == [  # method §5.4
        ((False, (1, 2)),), ((False, (2,)), (True, (0,))), ((True, (1, 0)),)]
    for window in range(1, 8):
        for cond in range(window):
            passes = window_passes(cond, window)
            frames = [f for _, fs in passes for f in fs]
            assert sorted(frames + [cond]) == list(range(window))
            for reverse, fs in passes:  # each pass walks away from the conditioning frame one step at a time
                step = -1 if reverse else 1
                assert list(fs) == list(range(cond + step, cond + step * (len(fs) + 1), step))
    with pytest.raises(ValueError, match="outside a window of 3"):
        window_passes(3, 3)
