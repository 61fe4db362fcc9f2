"""Image samples (1-frame clips, method §1.3, §3, §5.4, §6 data mix): sampling, prompt and training path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.training.clip_sampling import sample_synthetic_clip, samples_to_batch
from pipelines.training.train_config import SamplingConfig
from vrshq.builders import build_vrshq, tiny_config
from vrshq.data import generate_synthetic_video
from vrshq.model.letterbox import letterbox, unletterbox_logits
from vrshq.model.losses import mask_losses
from vrshq.model.prompts import SEG_TOKEN, TAK_TOKEN

SIZE = 48


def _video(i: int):
    return generate_synthetic_video(np.random.default_rng([7, i]), num_frames=10, height=SIZE, width=SIZE)


def _clips(sampling: SamplingConfig, ids) -> list:
    out = []
    for s in ids:
        clip = sample_synthetic_clip(_video(s), sample_id=s, seed=3, sampling=sampling)
        if clip is not None:
            out.append(clip)
    return out


def test_image_samples_hold_one_frame_referring_expressions_and_a_bare_seg_answer():
    clips = _clips(SamplingConfig(image_ratio=1.0), range(12))
    assert len(clips) >= 8
    for clip in clips:
        video = _video(clip.sample_id)
        assert clip.frames.shape == (1, SIZE, SIZE, 3) and clip.masks.shape[1] == 1
        frame = clip.frame_indices[0]
        np.testing.assert_array_equal(clip.frames[0], video.frames[frame])
        by_text = {e.text.strip(): e for e in video.expressions}
        for text, mask, prompt in zip(clip.expressions, clip.masks, clip.prompt_texts):
            expr = by_text[text]
            assert expr.type_id == 0  # referring only: one frame cannot show motion
            np.testing.assert_array_equal(mask[0], video.target_masks(expr)[frame])
            # official image datasets: "(0)<image>" and a bare [SEG] (not "(0) [SEG]")
            assert "(0)<image>" in prompt and "(1)<image>" not in prompt
            assert prompt.count(SEG_TOKEN) == 1 and "(0) [SEG]" not in prompt and prompt.count(TAK_TOKEN) == 1


def test_image_ratio_mixes_images_and_clips_deterministically_and_zero_keeps_clips():
    mixed = SamplingConfig(image_ratio=0.5)
    first = _clips(mixed, range(40))
    again = _clips(mixed, range(40))
    lengths = [c.frames.shape[0] for c in first]
    assert [c.frames.shape[0] for c in again] == lengths
    assert all(np.array_equal(a.masks, b.masks) and a.prompt_texts == b.prompt_texts for a, b in zip(first, again))
    images = sum(n == 1 for n in lengths)
    assert 10 <= images <= 30 and all(n == 1 or 8 <= n <= 10 for n in lengths)
    assert all(c.frames.shape[0] >= 8 for c in _clips(SamplingConfig(), range(20)))


def test_image_ratio_is_validated():
    with pytest.raises(ValueError, match="image_ratio=-0.1"):
        SamplingConfig(image_ratio=-0.1)
    with pytest.raises(ValueError, match="image_expression_types"):
        SamplingConfig(image_expression_types=(5,))


def test_training_forward_decodes_image_samples_alone_with_the_unfused_tak():
    torch.manual_seed(0)
    model = build_vrshq(tiny_config()).train()
    mixed = _clips(SamplingConfig(image_ratio=0.5, min_frames=3, max_frames=4), range(10))
    assert {c.frames.shape[0] == 1 for c in mixed} == {True, False}
    out = model(samples_to_batch(mixed))
    rows = [(c, e) for c in mixed for e in range(len(c.expressions))]
    for b, (clip, e) in enumerate(rows):
        if clip.frames.shape[0] == 1:
            assert out.window_positions[b].tolist() == [0, -1, -1]
            assert tuple(out.mask_logits[b].shape) == (1, SIZE, SIZE)
            torch.testing.assert_close(out.fused_tak[b], out.tak_embed[b].float())  # no TDA fusion (§3)
        else:
            assert -1 not in out.window_positions[b].tolist() and out.mask_logits[b].shape[0] == 3
            assert not torch.allclose(out.fused_tak[b], out.tak_embed[b].float())
    out.loss.backward()

    # an image-only batch: the mask loss is SAM2-as-image on the letterboxed frame with the TAK as prompt
    model.zero_grad()
    images = [c for c in mixed if c.frames.shape[0] == 1]
    out = model(samples_to_batch(images))
    boxes = [letterbox(torch.from_numpy(c.frames), image_size=model.sam2.image_size) for c in images]
    owners = [i for i, c in enumerate(images) for _ in c.expressions]
    direct = model.sam2.train_image_forward(torch.stack([boxes[i].images[0] for i in owners]), out.fused_tak)
    pred = [
        unletterbox_logits(direct.logits[b], resized_hw=boxes[i].resized_hw, original_hw=boxes[i].original_hw,
                           image_size=model.sam2.image_size)
        for b, i in enumerate(owners)
    ]
    gt = [torch.from_numpy(c.masks[e]) for c in images for e in range(len(c.expressions))]
    bce, dice = mask_losses(pred, gt)
    torch.testing.assert_close(out.bce_loss, bce, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.dice_loss, dice, rtol=1e-4, atol=1e-5)
    # the mask loss of image samples reaches the text path (seg head, LLM) through the prompt
    (2.0 * out.bce_loss + 0.5 * out.dice_loss).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("seg_head.") and p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
