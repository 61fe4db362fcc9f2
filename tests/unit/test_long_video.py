"""Long videos with bounded memory (docs/reliability.md), on the tiny preset.

* SAM2 features from uint8 frames letterboxed chunk by chunk equal those of the whole letterboxed video.
* Masks streamed chunk by chunk (`SegmentationResult.iter_mask_chunks`), `.masks` and the actor's RLE
  all equal a whole-video reference of method §5.3 step 6, for any chunk size.
* A 300-frame video through `segment_video` + RLE never creates a full-resolution tensor (or numpy
  array) holding more than one chunk of frames.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pipelines.inference.segment_actor import segment_video_item
from pipelines.inference.video_io import item_to_json
from vrshq.builders import build_vrshq, tiny_config
from vrshq.data.records import ExpressionRecord, VideoRecord
from vrshq.model.lazy_masks import LazyMasks
from vrshq.model.letterbox import letterbox
from vrshq.model.outputs import SegmentationResult

T, H, W = 13, 36, 52
EXPRESSIONS = ["the red circle", "a small blue square moving left"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_vrshq(tiny_config(trainable="none"))


def _video(num_frames: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    video = rng.integers(0, 60, size=(num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):  # a bright square moving right
        x = (2 * t) % max(1, width - 12)
        video[t, 4:16, x : x + 12] = (220, 40, 40)
    return video


def _item(num_frames: int, height: int, width: int, texts: list[str]) -> str:
    expressions = tuple(
        ExpressionRecord(exp_id=str(i), text=text, obj_ids=(), anno_ids=(), type_id=0) for i, text in enumerate(texts)
    )
    return item_to_json(VideoRecord(
        dataset="synthetic", split="valid", video_id="long", frame_names=tuple(f"{i:05d}" for i in range(num_frames)),
        frames_uri="memory://unused", video_uri=None, height=height, width=width, expressions=expressions,
    ))


@pytest.fixture()
def smooth_track(model):
    """Replace the propagated logits by a smooth random field: the random-init tiny model's masks are all
    full, which would make every chunking look right."""
    track = model.sam2.track
    captured = {}

    def recording_track(*args, **kwargs):
        result = track(*args, **kwargs)
        gen = torch.Generator().manual_seed(1)
        flat = result.low_res_logits.flatten(0, 1)[:, None]
        smooth = F.avg_pool2d(torch.randn(flat.shape, generator=gen), 5, 1, 2)[:, 0].reshape(result.low_res_logits.shape)
        captured["track"] = dataclasses.replace(result, low_res_logits=smooth.to(result.low_res_logits.device))
        return captured["track"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.sam2, "track", recording_track)
        yield captured


def _reference_masks(low_res: torch.Tensor, *, size: int, resized_hw, output_hw) -> np.ndarray:
    """Method §5.3 step 6 on the whole video at once (the pre-chunking implementation)."""
    high = F.interpolate(low_res.float()[:, None], size=(size, size), mode="bilinear", align_corners=False)
    crop = high[:, :, : resized_hw[0], : resized_hw[1]]
    return (F.interpolate(crop, size=output_hw, mode="bilinear", align_corners=False)[:, 0] > 0).numpy()


def test_encode_frames_equals_encoding_the_whole_letterboxed_video(model):
    frames = torch.from_numpy(_video(11, H, W))  # not a multiple of the encode chunk size
    whole = model.sam2.encode_video(letterbox(frames, image_size=model.sam2.image_size).images)
    chunked = model.sam2.encode_frames(frames)
    assert len(whole.backbone_fpn) == len(chunked.backbone_fpn)
    for a, b in zip(whole.backbone_fpn + whole.vision_pos_enc, chunked.backbone_fpn + chunked.vision_pos_enc):
        assert a.shape == b.shape and torch.equal(a, b)
    with pytest.raises(ValueError, match="uint8"):
        model.sam2.encode_frames(frames.float())


@pytest.mark.parametrize("on_device", [False, True])
def test_mask_chunks_equal_whole_video_reference(model, smooth_track, on_device):
    frames = _video(T, H, W)
    out_hw = (2 * H + 3, 3 * W - 1)  # not an integer factor of the frames' size
    results = model.segment_video(frames, EXPRESSIONS, output_hw=out_hw, masks_on_device=on_device, mask_chunk_size=4)
    size = model.sam2.image_size
    resized_hw = letterbox(torch.from_numpy(frames[:1]), image_size=size).resized_hw
    for e, result in enumerate(results):
        want = _reference_masks(smooth_track["track"].low_res_logits[e], size=size, resized_hw=resized_hw,
                                output_hw=out_hw)
        assert want.any() and not want.all(), "need masks with edges"
        assert isinstance(result.mask_source, LazyMasks) and result.mask_shape == (T, *out_hw)
        for chunk_frames in (None, 1, 5, T, T + 7):
            chunks = list(result.iter_mask_chunks(chunk_frames))
            step = 4 if chunk_frames is None else chunk_frames
            assert [s for s, _ in chunks] == list(range(0, T, step))
            assert all(isinstance(c, torch.Tensor if on_device else np.ndarray) for _, c in chunks)
            got = np.concatenate([np.asarray(c) for _, c in chunks])
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.asarray(result.masks), want)
        assert result.masks is result.masks  # built once, then kept
        # once built, chunks are slices of the kept stack (same values)
        np.testing.assert_array_equal(np.concatenate([np.asarray(c) for _, c in result.iter_mask_chunks(3)]), want)
    with pytest.raises(ValueError, match="chunk_frames"):
        next(results[0].iter_mask_chunks(0))


@pytest.mark.parametrize("mask_chunk_frames", [3, 64])
def test_actor_rle_chunked_equals_whole_video_encoding(model, smooth_track, mask_chunk_frames):
    frames = _video(T, H, W)
    out_hw = (2 * H, 2 * W)
    row = segment_video_item(model, _item(T, *out_hw, EXPRESSIONS), frames, original_hw=out_hw, max_side=W,
                             mask_chunk_frames=mask_chunk_frames)
    assert row["errors_json"] == "[]" and len(row["results"]) == len(EXPRESSIONS)
    size = model.sam2.image_size
    resized_hw = letterbox(torch.from_numpy(frames[:1]), image_size=size).resized_hw
    for e, result in enumerate(row["results"]):
        want = _reference_masks(smooth_track["track"].low_res_logits[e], size=size, resized_hw=resized_hw,
                                output_hw=out_hw)
        whole = [r["counts"] for r in mask_utils.encode(np.asfortranarray(want.transpose(1, 2, 0).astype(np.uint8)))]
        assert result["rle_counts"] == whole


def test_segmentation_result_given_whole_masks():
    masks = np.zeros((5, 2, 3), dtype=bool)
    masks[[1, 4], 1, 2] = True
    result = SegmentationResult(masks=masks, keyframe_idx=1, keyframe_scores=np.zeros(1), frame_indices=[1],
                                object_scores=np.zeros(5))
    assert result.masks is masks and result.mask_shape == (5, 2, 3)
    chunks = list(result.iter_mask_chunks(2))
    assert [s for s, _ in chunks] == [0, 2, 4]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), masks)
    with pytest.raises(TypeError, match="masks"):
        SegmentationResult(masks=masks[0], keyframe_idx=1, keyframe_scores=np.zeros(1), frame_indices=[1],
                           object_scores=np.zeros(5))


class _LargestFullResTensor(TorchDispatchMode):
    """Records, over every tensor any aten op returns, the most full-resolution planes (numel / (h*w)) it holds."""

    def __init__(self, full_res: set[tuple[int, int]]):
        super().__init__()
        self.full_res = full_res
        self.max_frames = 0
        self.shape: tuple[int, ...] = ()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.dim() >= 2 and tuple(leaf.shape[-2:]) in self.full_res:
                frames = leaf.numel() // (leaf.shape[-1] * leaf.shape[-2])
                if frames > self.max_frames:
                    self.max_frames, self.shape = frames, tuple(leaf.shape)
        return out


@pytest.mark.slow
def test_long_video_never_holds_all_frames_at_full_resolution(model):
    num_frames, height, width = 300, 48, 40
    out_hw = (4 * height, 4 * width)  # masks at an "original size" larger than the frames the model sees
    frames = _video(num_frames, height, width)
    size = model.sam2.image_size
    chunk = 32
    # Chunks of frames legitimately at full resolution: SAM2 encode, CLIP-336 anchor batches (as float
    # (n, 3, H, W) before their resize), masks; 3 planes (RGB) per frame at most.
    max_planes = 3 * max(chunk, model.sam2.cfg.encode_chunk_size, model.anchor.cfg.image_batch_size)
    assert max_planes < num_frames, "the video must be longer than any chunk for this test to mean anything"
    recorder = _LargestFullResTensor({(size, size), (height, width), out_hw})
    tracemalloc.start()
    try:
        with recorder:
            row = segment_video_item(model, _item(num_frames, *out_hw, EXPRESSIONS), frames,
                                     original_hw=out_hw, max_side=width, mask_chunk_frames=chunk)
        _, numpy_peak = tracemalloc.get_traced_memory()  # host arrays (numpy) and Python objects
    finally:
        tracemalloc.stop()
    assert row["errors_json"] == "[]"
    assert [len(r["rle_counts"]) for r in row["results"]] == [num_frames] * len(EXPRESSIONS)
    # Full-resolution tensors (letterboxed S×S images or logits, (H, W) masks) hold one chunk of frames at
    # most, never the video (the whole-video code made (300, 3, S, S) images and (300, H, W) masks).
    assert 0 < recorder.max_frames <= max_planes, recorder.shape
    # No numpy stack of a whole video's masks either (one is 300*192*160 B = 9.2 MB per expression; the
    # peak of everything tracemalloc sees, SAM2's per-frame Python state included, stays under half of it).
    assert numpy_peak < num_frames * out_hw[0] * out_hw[1] // 2, numpy_peak
