"""TDA (method §3) and TKS (method §4) against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from vrshq.model.tda import temporal_dynamic_aggregation
from vrshq.model.tks import inference_keyframe, largest_target_keyframe, tks_scores, train_keyframe, train_window


def test_tda_orthogonal_frames():
    seg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = temporal_dynamic_aggregation(seg, torch.tensor([1.0, 0.0]), alpha=0.1)
    e = math.e
    w = [e / (e + 1), 1 / (e + 1)]  # softmax of cos = [1, 0]
    torch.testing.assert_close(out.similarity, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out.weights, torch.tensor(w))
    torch.testing.assert_close(out.fused_tak, torch.tensor([1 + 0.1 * w[0], 0.1 * w[1]]))


def test_tda_scaled_frames_not_renormalised():
    seg = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    tak = torch.tensor([1.0, 1.0])
    out = temporal_dynamic_aggregation(seg, tak, alpha=0.1)
    c = 1 / math.sqrt(2)  # cosines: c, c, -c
    z = 2 * math.exp(c) + math.exp(-c)
    w = [math.exp(c) / z, math.exp(c) / z, math.exp(-c) / z]
    torch.testing.assert_close(out.weights, torch.tensor(w))
    expected = [1 + 0.1 * (2 * w[0] - w[2]), 1 + 0.1 * (3 * w[1])]
    torch.testing.assert_close(out.fused_tak, torch.tensor(expected))
    # alpha reaches the result
    out0 = temporal_dynamic_aggregation(seg, tak, alpha=0.0)
    torch.testing.assert_close(out0.fused_tak, tak)


def test_tda_mask_and_batch_equal_single():
    seg = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[0.3, 0.1], [0.2, -0.4], [0.5, 0.5]]])
    tak = torch.tensor([[1.0, 0.0], [0.1, 0.2]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = temporal_dynamic_aggregation(seg, tak, alpha=0.1, frame_mask=mask)
    first = temporal_dynamic_aggregation(seg[0, :2], tak[0], alpha=0.1)
    second = temporal_dynamic_aggregation(seg[1], tak[1], alpha=0.1)
    torch.testing.assert_close(out.fused_tak[0], first.fused_tak)
    torch.testing.assert_close(out.weights[0, :2], first.weights)
    assert out.weights[0, 2] == 0
    torch.testing.assert_close(out.fused_tak[1], second.fused_tak)


def test_tda_shape_errors():
    with pytest.raises(ValueError, match="do not match"):
        temporal_dynamic_aggregation(torch.zeros(3, 4), torch.zeros(5), alpha=0.1)
    with pytest.raises(ValueError, match="without any valid frame"):
        temporal_dynamic_aggregation(
            torch.zeros(1, 2, 4), torch.ones(1, 4), alpha=0.1, frame_mask=torch.zeros(1, 2, dtype=torch.bool)
        )


def test_train_keyframe_is_argmax_without_grad():
    w = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], requires_grad=True)
    k = train_keyframe(w)
    assert k.tolist() == [1, 0] and not k.requires_grad


def test_largest_target_keyframe_follows_the_target_and_falls_back_to_tda_without_one():
    w = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.1, 0.2, 0.7]], requires_grad=True)
    areas = torch.tensor([[40.0, 10.0, 0.0], [0.0, 0.0, 0.0], [5.0, 30.0, 0.0]])  # row 2: padded 3rd frame
    k = largest_target_keyframe(w, areas)
    assert k.tolist() == [0, 0, 1] and not k.requires_grad  # row 1 has no target: the TDA argmax
    with pytest.raises(ValueError, match="must match"):
        largest_target_keyframe(w, areas[:, :2])


def test_tks_scores_hand_computed():
    logits = torch.tensor([0.0, math.log(3.0)])  # softmax = [0.25, 0.75]
    weights = torch.tensor([0.6, 0.4])
    scores = tks_scores(logits, weights, sam_weight=1.0, token_weight=1.0)
    torch.testing.assert_close(scores, torch.tensor([0.85, 1.15]))
    torch.testing.assert_close(tks_scores(logits, weights, sam_weight=2.0, token_weight=1.0), torch.tensor([1.1, 1.9]))
    idx, scores = inference_keyframe(logits, weights, sam_weight=1.0, token_weight=1.0)
    assert idx == 1 and scores.shape == (2,)
    assert inference_keyframe(logits, weights, sam_weight=0.0, token_weight=1.0)[0] == 0
    with pytest.raises(ValueError, match=r"\(n,\)"):
        tks_scores(logits, weights[:1], sam_weight=1.0, token_weight=1.0)


@pytest.mark.parametrize(
    ("keyframe", "positions", "cond"),
    [(0, (0, 1, 2), 0), (1, (0, 1, 2), 1), (4, (3, 4, 5), 1), (6, (5, 6, 7), 1), (7, (5, 6, 7), 2)],
)
def test_train_window_official_cases(keyframe, positions, cond):
    window = train_window(keyframe, 8, window=3)
    assert window.positions == positions and window.cond_pos == cond


def test_train_window_errors():
    with pytest.raises(ValueError, match="shorter"):
        train_window(0, 2, window=3)
    with pytest.raises(ValueError, match="outside"):
        train_window(8, 8, window=3)
