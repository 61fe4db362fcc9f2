"""Letterbox (method §1.5) and its inverse: hand-computed values and round trips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vrshq.model.letterbox import (
    SAM2_PIXEL_MEAN,
    SAM2_PIXEL_STD,
    letterbox,
    letterbox_shape,
    unletterbox_logits,
)


def test_letterbox_shape_rounds_like_resize_longest_side():
    # scale 1024/1920: 1080 * 0.5333 = 576.0 ; 720 -> 384
    assert letterbox_shape(1080, 1920, 1024) == (576, 1024)
    assert letterbox_shape(720, 1280, 1024) == (576, 1024)
    # 333 * 1024/500 = 681.98 -> 682 (int(x + 0.5))
    assert letterbox_shape(500, 333, 1024) == (1024, 682)
    with pytest.raises(ValueError, match="positive"):
        letterbox_shape(0, 4, 16)


def test_letterbox_normalises_then_pads_with_zero():
    frames = np.zeros((2, 4, 8, 3), dtype=np.uint8)
    frames[..., 0] = 200
    frames[..., 1] = 10
    frames[1, :, :, 2] = 255
    out = letterbox(frames, image_size=8)
    assert out.images.shape == (2, 3, 8, 8)
    assert out.images.dtype == torch.float32
    assert out.resized_hw == (4, 8) and out.original_hw == (4, 8)
    valid = out.images[:, :, :4, :]
    expected_r = (200 - SAM2_PIXEL_MEAN[0]) / SAM2_PIXEL_STD[0]
    expected_g = (10 - SAM2_PIXEL_MEAN[1]) / SAM2_PIXEL_STD[1]
    expected_b1 = (255 - SAM2_PIXEL_MEAN[2]) / SAM2_PIXEL_STD[2]
    torch.testing.assert_close(valid[:, 0], torch.full((2, 4, 8), expected_r))
    torch.testing.assert_close(valid[:, 1], torch.full((2, 4, 8), expected_g))
    torch.testing.assert_close(valid[1, 2], torch.full((4, 8), expected_b1))
    # padding is exactly 0 after normalisation (not the normalised value of black)
    assert torch.equal(out.images[:, :, 4:, :], torch.zeros(2, 3, 4, 8))


def test_letterbox_resizes_longest_side_and_pads_right():
    frames = torch.zeros(1, 8, 4, 3, dtype=torch.uint8)
    frames[:, :4] = 255  # top half white
    out = letterbox(frames, image_size=16)
    assert out.resized_hw == (16, 8)
    white = (255 - SAM2_PIXEL_MEAN[0]) / SAM2_PIXEL_STD[0]
    black = (0 - SAM2_PIXEL_MEAN[0]) / SAM2_PIXEL_STD[0]
    # away from the edge between halves, a 2x upscale keeps the constant values exactly
    torch.testing.assert_close(out.images[0, 0, :7, :8], torch.full((7, 8), white))
    torch.testing.assert_close(out.images[0, 0, 9:, :8], torch.full((7, 8), black))
    assert torch.equal(out.images[0, :, :, 8:], torch.zeros(3, 16, 8))


def test_letterbox_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        letterbox(torch.zeros(1, 4, 4, 3), image_size=8)
    with pytest.raises(ValueError, match="uint8"):
        letterbox(np.zeros((4, 4, 3), dtype=np.uint8), image_size=8)


def test_unletterbox_identity_crop():
    logits = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)
    out = unletterbox_logits(logits, resized_hw=(4, 8), original_hw=(4, 8), image_size=8)
    assert torch.equal(out, logits[:, :4, :])


def test_unletterbox_scales_crop_for_low_res_logits():
    # S=16, S'=4: the valid 8x16 region is 2x4 at low resolution
    low = torch.full((2, 1, 4, 4), -5.0)
    low[..., :2, :] = 3.0
    out = unletterbox_logits(low, resized_hw=(8, 16), original_hw=(8, 16), image_size=16)
    assert out.shape == (2, 1, 8, 16)
    assert torch.equal(out, torch.full((2, 1, 8, 16), 3.0))


def test_mask_round_trip():
    mask = np.zeros((30, 50), dtype=bool)
    mask[5:20, 10:40] = True
    mask[22:28, 3:8] = True
    frame = np.repeat((mask * 255).astype(np.uint8)[None, :, :, None], 3, axis=3)
    box = letterbox(frame, image_size=64)
    assert box.resized_hw == (38, 64)
    # back to a logit: > 0 where the letterboxed pixel is brighter than mid-grey
    logits = box.images[0, 0] * SAM2_PIXEL_STD[0] + SAM2_PIXEL_MEAN[0] - 127.5
    logits[box.resized_hw[0]:, :] = -127.5  # padding is background
    back = unletterbox_logits(logits, resized_hw=box.resized_hw, original_hw=(30, 50), image_size=64) > 0
    assert back.shape == (30, 50)
    disagree = back.numpy() != mask
    # only pixels on mask edges may differ (interpolation), interior and far background exact
    kernel = np.ones((3, 3), np.uint8)
    m8 = mask.astype(np.uint8)
    edge = (cv2.dilate(m8, kernel) > 0) & ~(cv2.erode(m8, kernel) > 0)
    assert not (disagree & ~edge).any()
    assert disagree.sum() <= 0.2 * edge.sum()
