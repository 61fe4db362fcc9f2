"""SAM2-L tracking on a CUDA device: projected memory with cuDNN row chunks against stock SAM2 memory attention.

Random init at the real SAM2-L sizes (1024 px), objects present (object-score bias +3, so the masks are
not gated away), keyframes spread over the video so that forward and backward rows of many lengths share
the lockstep steps.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tests.gpu._agreement import mask_iou
from vrshq.model import projected_memory

pytestmark = pytest.mark.gpu

_FRAMES, _KEYFRAMES = 12, [0, 3, 5, 5, 8, 11, 6]


@pytest.fixture(scope="module")
def sam2_large():
    from vrshq.builders import vrshq_7b_config
    from vrshq.model.sam2_segmenter import Sam2Segmenter

    torch.manual_seed(0)
    segmenter = Sam2Segmenter(vrshq_7b_config().sam2, device=torch.device("cuda")).eval()
    with torch.no_grad():
        segmenter.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(3.0)
    return segmenter


def _inputs(segmenter, dtype=torch.float32):
    size = segmenter.sam2.image_size
    gen = torch.Generator(device="cuda").manual_seed(1)
    images = torch.rand(_FRAMES, 3, size, size, device="cuda", generator=gen)
    masks = torch.zeros(len(_KEYFRAMES), size, size, dtype=torch.bool, device="cuda")
    for i in range(len(_KEYFRAMES)):
        y0 = (i * size // 11) % (size // 2)
        masks[i, y0 : y0 + size // 3, size // 5 : size // 5 + size // (3 + i % 3)] = True
    return images.to(dtype), masks


def _track_both(segmenter, images, masks):
    with torch.inference_mode():
        features = segmenter.encode_video(images)
        stock = segmenter.track(features, _KEYFRAMES, masks, project_memory_once=False).low_res_logits.float()
        ours = segmenter.track(features, _KEYFRAMES, masks).low_res_logits.float()
    return stock, ours


def test_projected_memory_in_cudnn_chunks_equals_stock_in_float32(sam2_large, exact_float32):
    """Float32: the masks are identical (min IoU 1.0) and the logits equal up to rounding."""
    assert projected_memory.CUDNN_ROWS_PER_CALL is not None  # the chunked path is what runs
    images, masks = _inputs(sam2_large)
    stock, ours = _track_both(sam2_large, images, masks)
    iou = mask_iou(stock, ours)
    assert float(iou.min()) == 1.0
    scale = float(stock.abs().max())
    assert float((ours - stock).abs().max()) <= 1e-3 * max(scale, 1.0)


def test_projected_memory_agrees_with_stock_in_bf16(sam2_large):
    """bf16 weights and autocast, as deployed: rounding flips the near-ties of the random-init model (objects
    whose logits sit near 0), so only a floor is checked (80% of masks with IoU >= 0.99 on an H100); the
    float32 test above is the test of equal behaviour."""
    segmenter = copy.deepcopy(sam2_large).to(torch.bfloat16)
    images, masks = _inputs(segmenter, torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        stock, ours = _track_both(segmenter, images, masks)
    iou = mask_iou(stock, ours)
    assert float((iou >= 0.99).float().mean()) >= 0.75
    assert float(iou.mean()) >= 0.9
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_layer_work_against_eager(sam2_large, exact_float32, dtype, monkeypatch):
    """``COMPILE_LAYER_WORK`` (the layers' work between attention calls under ``torch.compile``) against
    the eager path it replaces: float32 identical masks; bf16 the same floor as projected vs stock."""
    segmenter = sam2_large if dtype == torch.float32 else copy.deepcopy(sam2_large).to(dtype)
    images, masks = _inputs(segmenter, dtype)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with torch.inference_mode(), autocast:
        features = segmenter.encode_video(images)
        eager = segmenter.track(features, _KEYFRAMES, masks).low_res_logits.float()
        monkeypatch.setattr(projected_memory, "COMPILE_LAYER_WORK", True)
        monkeypatch.setattr(projected_memory, "_COMPILED", {})
        compiled = segmenter.track(features, _KEYFRAMES, masks).low_res_logits.float()
    iou = mask_iou(eager, compiled)
    if dtype == torch.float32:
        assert float(iou.min()) == 1.0
    else:
        assert float((iou >= 0.99).float().mean()) >= 0.75 and float(iou.mean()) >= 0.9
