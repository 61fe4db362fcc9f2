"""`VrshqModel.segment_video` on the tiny preset: shapes at the original size, batched == one at a time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vrshq.builders import build_vrshq, tiny_config
from vrshq.model.frame_sampling import sample_frame_indices

T, H, W = 14, 36, 52  # T > 11 so that the strided MLLM frames depend on each expression's anchor
EXPRESSIONS = ["the red circle", "a small blue square moving left", "What is the thing on the right?", "green ball"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_vrshq(tiny_config(trainable="none"))


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 60, size=(T, H, W, 3), dtype=np.uint8)
    for t in range(T):  # a bright square moving right, so frames differ
        video[t, 8:20, 2 + 2 * t : 14 + 2 * t] = (220, 40, 40)
    return video


def _distinct_anchor_stub(frames, expressions):
    """Deterministic per-expression anchors (the random tiny CLIP tends to pick one frame for all)."""
    return [sample_frame_indices(len(frames), len(e) % len(frames), max_frames=12) for e in expressions]


@pytest.fixture(scope="module")
def stubbed_anchor(model):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.anchor, "select_frames", _distinct_anchor_stub)
        yield model


@pytest.fixture(scope="module")
def batched(model, frames):
    return model.segment_video(frames, EXPRESSIONS)


@pytest.fixture(scope="module")
def batched_distinct(stubbed_anchor, frames):
    return stubbed_anchor.segment_video(frames, EXPRESSIONS)


def test_one_mask_per_frame_at_original_size(batched):
    assert len(batched) == len(EXPRESSIONS)
    for result in batched:
        assert result.masks.shape == (T, H, W) and result.masks.dtype == np.bool_
        assert result.object_scores.shape == (T,)
        assert result.frame_indices == sorted(result.frame_indices)
        assert result.keyframe_idx in result.frame_indices
        assert result.keyframe_scores.shape == (len(result.frame_indices),)
        assert result.frame_indices[int(np.argmax(result.keyframe_scores))] == result.keyframe_idx
        # the MLLM frames are the strided set around some anchor (method §1.4)
        assert any(result.frame_indices == sample_frame_indices(T, a, max_frames=12) for a in result.frame_indices)
    assert any(r.masks.any() for r in batched), "random-init masks should not all be empty on this video"


def test_batched_equals_one_expression_at_a_time_real_anchor(model, frames, batched):
    for expression, shared in zip(EXPRESSIONS[:2], batched[:2]):
        (alone,) = model.segment_video(frames, [expression])
        assert alone.frame_indices == shared.frame_indices and alone.keyframe_idx == shared.keyframe_idx
        np.testing.assert_allclose(alone.keyframe_scores, shared.keyframe_scores, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(alone.masks, shared.masks)


def test_batched_equals_one_expression_at_a_time(stubbed_anchor, frames, batched_distinct):
    model, batched = stubbed_anchor, batched_distinct
    frame_sets = {tuple(r.frame_indices) for r in batched}
    assert len(frame_sets) > 1, "the test needs expressions with different MLLM frames (shared-union path)"
    for expression, shared in zip(EXPRESSIONS, batched):
        (alone,) = model.segment_video(frames, [expression])
        assert alone.frame_indices == shared.frame_indices
        assert alone.keyframe_idx == shared.keyframe_idx
        np.testing.assert_allclose(alone.keyframe_scores, shared.keyframe_scores, atol=1e-5, rtol=0)
        np.testing.assert_allclose(alone.object_scores, shared.object_scores, atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(alone.masks, shared.masks)


def test_llm_batch_size_does_not_change_results(stubbed_anchor, frames, batched_distinct):
    chunked = stubbed_anchor.segment_video(frames, EXPRESSIONS, llm_batch_size=3, mask_chunk_size=5)
    for a, b in zip(chunked, batched_distinct):
        assert a.keyframe_idx == b.keyframe_idx
        np.testing.assert_allclose(a.keyframe_scores, b.keyframe_scores, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(a.masks, b.masks)


def test_segment_video_input_errors(model, frames):
    with pytest.raises(ValueError, match="uint8"):
        model.segment_video(frames.astype(np.float32), ["x"])
    with pytest.raises(ValueError, match="non-empty list"):
        model.segment_video(frames, [])
    with pytest.raises(ValueError, match="non-empty list"):
        model.segment_video(frames, "the red circle")


def test_segment_video_keeps_training_mode(model, frames):
    model.train()
    try:
        model.segment_video(frames[:3], ["red"])
        assert model.training and model.sam2.training
    finally:
        model.eval()


def test_output_hw_resizes_logits_bilinearly_then_thresholds(model, frames):
    """`output_hw`: crop the letterbox, bilinear straight to the requested size, > 0 (method §5.3 step 6)."""
    import torch.nn.functional as F

    from vrshq.model.letterbox import letterbox

    captured = {}
    track = model.sam2.track

    def recording_track(*args, **kwargs):
        # The random-init tiny model's masks are all full: swap in logits with edges (a smooth random
        # field) so that the resize and the threshold are exercised.
        result = track(*args, **kwargs)
        gen = torch.Generator().manual_seed(1)
        smooth = F.avg_pool2d(torch.randn(result.low_res_logits.flatten(0, 1)[:, None].shape, generator=gen), 5, 1, 2)
        logits = smooth[:, 0].reshape(result.low_res_logits.shape)
        captured["track"] = dataclasses.replace(result, low_res_logits=logits)
        return captured["track"]

    out_hw = (2 * H + 3, 3 * W - 1)  # upscaled, not an integer factor of the frames' size
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.sam2, "track", recording_track)
        results = model.segment_video(frames, EXPRESSIONS[:2], output_hw=out_hw)
        on_device = model.segment_video(frames, EXPRESSIONS[:2], output_hw=out_hw, masks_on_device=True)
    size = model.sam2.image_size
    new_h, new_w = letterbox(torch.from_numpy(frames[:1]), image_size=size).resized_hw
    for e, (result, tensor_result) in enumerate(zip(results, on_device)):
        low = captured["track"].low_res_logits[e].float()  # (T, S/4, S/4)
        high = F.interpolate(low[:, None], size=(size, size), mode="bilinear", align_corners=False)
        want = F.interpolate(high[:, :, :new_h, :new_w], size=out_hw, mode="bilinear", align_corners=False)[:, 0] > 0
        assert result.masks.shape == (T, *out_hw) and result.masks.dtype == np.bool_
        np.testing.assert_array_equal(result.masks, want.numpy())
        assert isinstance(tensor_result.masks, torch.Tensor) and tensor_result.masks.dtype == torch.bool
        np.testing.assert_array_equal(tensor_result.masks.numpy(), want.numpy())
    assert all(r.masks.any() and not r.masks.all() for r in results), "need masks with edges to test the resize"


def test_output_hw_default_is_the_frames_size(model, frames, batched):
    results = model.segment_video(frames, EXPRESSIONS, output_hw=(H, W))
    for a, b in zip(results, batched):
        np.testing.assert_array_equal(a.masks, b.masks)


@pytest.mark.parametrize("bad", [(0, 5), (5,), (5.0, 6), "36x52", (True, 4)])
def test_output_hw_errors(model, frames, bad):
    with pytest.raises(ValueError, match="output_hw"):
        model.segment_video(frames[:2], ["red"], output_hw=bad)


def test_inference_attention_leaves_cudnn_out_by_default(model):
    with model.inference_attention():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored
    try:
        model.inference_sdpa_backends = ("flash", "warp")
        with pytest.raises(ValueError, match="inference_sdpa_backends"):
            model.inference_attention()
        model.inference_sdpa_backends = None  # PyTorch's own choice
        with model.inference_attention():
            assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        del model.inference_sdpa_backends  # back to the class default
