"""``segment_video`` on a CUDA device: float32 and bf16 on the tiny preset, and the vrshq-7b sizes on one
short 720p video (random init, the tokenizer built in code)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.gpu._agreement import mask_iou

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


def test_float32_tracking_on_cuda_equals_cpu(exact_float32):
    """The same tiny SAM2 weights and keyframes on the CPU and on CUDA in float32: the same masks."""
    import copy

    from vrshq.sam2_config import sam2_tiny
    from vrshq.model.sam2_segmenter import Sam2Segmenter

    torch.manual_seed(0)
    cpu = Sam2Segmenter(sam2_tiny(image_size=128), device=torch.device("cpu")).eval()
    with torch.no_grad():
        cpu.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(3.0)  # objects present: masks not gated away
    gpu = copy.deepcopy(cpu).to("cuda")
    images = torch.rand(10, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    keyframes = [0, 4, 9, 4]
    masks = torch.zeros(len(keyframes), 128, 128, dtype=torch.bool)
    for i in range(len(keyframes)):
        masks[i, 10 + 8 * i : 60 + 4 * i, 20 : 90 - 6 * i] = True
    with torch.inference_mode():
        ref = cpu.track(cpu.encode_video(images), keyframes, masks).low_res_logits
        out = gpu.track(gpu.encode_video(images.cuda()), keyframes, masks.cuda()).low_res_logits.cpu()
    iou = mask_iou(ref, out)
    assert float((iou >= 0.99).float().mean()) >= 0.99
    assert float((out - ref).abs().max()) <= 1e-2 * max(float(ref.abs().max()), 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_video_on_cuda(dtype, exact_float32):
    """The whole call on CUDA, float32 (autocast off) and bf16 (bf16 weights and autocast, as deployed)."""
    frames = _video(10, 72, 96)
    results = _tiny("cuda", dtype).segment_video(frames, _TEXTS, masks_on_device=True)
    assert len(results) == len(_TEXTS)
    for result in results:
        assert result.masks.shape == (10, 72, 96) and result.masks.device.type == "cuda"
        assert np.isfinite(np.asarray(result.object_scores)).all()
        assert 0 <= result.keyframe_idx < 10 and result.keyframe_idx in result.frame_indices


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
