"""``segment_video`` on a CUDA device: float32 and bf16 on the tiny preset, and the vrshq-7b sizes on one
short 720p video (random init, the tokenizer built in code)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

_TEXTS = ["the red circle", "a blue square moving left", "the object that moves fastest"]


def _video(frames: int, height: int, width: int) -> torch.Tensor:
    from vrshq.data import generate_synthetic_video

    video = generate_synthetic_video(np.random.default_rng(3), num_frames=frames, height=height, width=width)
    return torch.from_numpy(np.ascontiguousarray(video.frames))


def _tiny(device: str, dtype: torch.dtype):
    from vrshq.builders import build_vrshq, tiny_config

    torch.manual_seed(0)
    model = build_vrshq(tiny_config(), device=torch.device(device)).eval().to(dtype)
    if dtype == torch.float32:
        model.cfg = dataclasses.replace(model.cfg, autocast_dtype="float32")
    return model


def test_float32_on_cuda_matches_cpu_and_bf16_runs(exact_float32):
    frames = _video(10, 72, 96)
    cpu = _tiny("cpu", torch.float32).segment_video(frames, _TEXTS)
    gpu = _tiny("cuda", torch.float32).segment_video(frames, _TEXTS)
    assert [r.keyframe_idx for r in gpu] == [r.keyframe_idx for r in cpu]
    assert [list(r.frame_indices) for r in gpu] == [list(r.frame_indices) for r in cpu]
    agree = np.mean([(g.masks == c.masks).mean() for g, c in zip(gpu, cpu)])
    assert agree >= 0.999  # pixels; float32 rounding of other kernels moves at most a few boundary pixels
    bf16 = _tiny("cuda", torch.bfloat16).segment_video(frames, _TEXTS, masks_on_device=True)
    for result in bf16:
        assert result.masks.shape == (10, 72, 96) and result.masks.device.type == "cuda"
        assert np.isfinite(np.asarray(result.object_scores)).all()
        assert 0 <= result.keyframe_idx < 10


def test_vrshq_7b_sizes_on_a_short_720p_video():
    from vrshq.builders import build_vrshq, vrshq_7b_tinytok_config

    torch.manual_seed(0)
    model = build_vrshq(vrshq_7b_tinytok_config(), device=torch.device("cuda")).eval().to(torch.bfloat16)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    params = sum(p.numel() for p in model.parameters())
    assert params > 6.5e9  # LLaMA-7B + CLIP-L towers + SAM2-L
    frames = _video(8, 720, 1280)
    results = model.segment_video(frames, _TEXTS[:2], masks_on_device=True)
    assert len(results) == 2
    for result in results:
        assert result.masks.shape == (8, 720, 1280)
        assert 0 <= result.keyframe_idx < 8
        assert np.isfinite(np.asarray(result.object_scores)).all()
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"vrshq-7b-tinytok, 8 frames at 720p, 2 expressions: peak {peak:.1f} GiB allocated, {params / 1e9:.2f}B params")
    assert peak < 40
