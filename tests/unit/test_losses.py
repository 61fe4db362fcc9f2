"""Losses of method §6 on known logits, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from vrshq.model.losses import (
    combine_losses,
    dice_loss,
    mask_losses,
    object_presence_loss,
    sigmoid_bce_loss,
    token_ce_loss,
)

LN2, LN4 = math.log(2.0), math.log(4.0)


def test_token_ce_shifted_mean_over_supervised():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [9.0, -9.0]]])
    labels = torch.tensor([[-100, 0, 1]])
    # position 0 predicts label 0 with p=1/2; position 1 predicts label 1 with p=1/4; position 2 predicts nothing
    torch.testing.assert_close(token_ce_loss(logits, labels), torch.tensor((LN2 + LN4) / 2))
    assert token_ce_loss(logits, torch.full((1, 3), -100)).item() == 0.0


def test_bce_and_dice_single_mask():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # sigmoid = [0.5, 0.75]
    target = torch.tensor([[[1.0, 0.0]]])
    torch.testing.assert_close(sigmoid_bce_loss(logits, target), torch.tensor((LN2 + LN4) / 2))
    num = 2 * 0.5 / 1000 + 1e-6
    den = (0.5 + 0.75 + 1.0) / 1000 + 1e-6
    torch.testing.assert_close(dice_loss(logits, target), torch.tensor(1 - num / den))


def test_mask_losses_average_over_all_masks_of_different_sizes():
    a_logits = torch.tensor([[[0.0, math.log(3.0)]]])
    a_target = torch.tensor([[[True, False]]])
    b_logits = torch.zeros(2, 1, 1)
    b_target = torch.tensor([[[False]], [[True]]])
    bce, dice = mask_losses([a_logits, b_logits], [a_target, b_target])
    expected_bce = ((LN2 + LN4) / 2 + 2 * LN2) / (3 + 1e-8)
    dice_a = 1 - (2 * 0.5 / 1000 + 1e-6) / (2.25 / 1000 + 1e-6)
    dice_b0 = 1 - 1e-6 / (0.5 / 1000 + 1e-6)  # empty GT, p = 0.5
    dice_b1 = 1 - (2 * 0.5 / 1000 + 1e-6) / (1.5 / 1000 + 1e-6)
    torch.testing.assert_close(bce, torch.tensor(expected_bce))
    torch.testing.assert_close(dice, torch.tensor((dice_a + dice_b0 + dice_b1) / 3))


def test_object_presence_and_combination():
    obj = object_presence_loss(torch.tensor([0.0, math.log(3.0)]), torch.tensor([True, False]))
    torch.testing.assert_close(obj, torch.tensor((LN2 + LN4) / 2))
    one = torch.tensor(1.0)
    terms = combine_losses(
        ce=one, bce=one * 2, dice=one * 3, object_presence=one * 4,
        ce_weight=1.0, bce_weight=2.0, dice_weight=0.5, object_weight=0.0,
    )
    assert terms.loss.item() == pytest.approx(1 + 4 + 1.5)
    terms = combine_losses(
        ce=one, bce=one * 2, dice=one * 3, object_presence=one * 4,
        ce_weight=1.0, bce_weight=2.0, dice_weight=0.5, object_weight=0.25,
    )
    assert terms.loss.item() == pytest.approx(1 + 4 + 1.5 + 1)


def test_mask_loss_shape_errors():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        sigmoid_bce_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same non-zero number"):
        mask_losses([torch.zeros(1, 2, 2)], [])
