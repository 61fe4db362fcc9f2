"""The benchmark's FLOP counter (benchmarks.flops) against torch's FlopCounterMode on the real tiny modules.

FlopCounterMode counts what the modules dispatch (matrix products, convolutions, attention through the
math kernel); benchmarks.flops derives the same from the module shapes and what the call decided.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import flops as F
from vrshq.builders import build_vrshq, tiny_config
from vrshq.model.clip_preprocess import tokenize_texts

_TEXTS = ["the red circle", "a blue square moving left", "the object that moves fastest"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_vrshq(tiny_config()).eval()
    model.inference_sdpa_backends = ("math",)  # attention as matrix products, which FlopCounterMode counts
    return model


def _counted(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]):
        fn()
    return counter.get_total_flops()


def test_sam2_image_encoder(model):
    sam2 = model.sam2.sam2
    images = torch.randn(2, 3, sam2.image_size, sam2.image_size)
    assert F.sam2_image_flops(sam2) * 2 == _counted(lambda: sam2.forward_image(images))


def test_clip_towers_and_llama(model):
    tower = model.vision.vision_tower
    pixels = torch.randn(3, 3, tower.config.image_size, tower.config.image_size)
    assert F.clip_vision_flops(tower.config, 3) == _counted(lambda: tower(pixel_values=pixels, output_hidden_states=True))
    llm = model.mllm.llm
    ids = torch.randint(0, 50, (2, 37))
    assert F.llama_prefill_flops(llm.config, 2, 37) == _counted(lambda: llm.model(input_ids=ids))
    frames = torch.randint(0, 255, (5, 40, 56, 3), dtype=torch.uint8)
    clip = model.anchor.clip_model.config
    ids, _ = tokenize_texts(model.anchor.tokenizer, _TEXTS, max_length=model.anchor.max_text_length, device="cpu")
    expected = (F.clip_vision_flops(clip.vision_config, 5, projection_dim=clip.projection_dim)
                + F.clip_text_flops(clip.text_config, 3, int(ids.shape[1]), projection_dim=clip.projection_dim)
                + 2 * 3 * 5 * clip.projection_dim)
    assert expected == _counted(lambda: model.anchor.frame_probs(frames, _TEXTS))


@pytest.mark.parametrize("projected", [False, True])
def test_tracking(model, projected):
    """Lockstep tracking, stock memory attention or keys and values projected once, exactly."""
    segmenter = model.sam2
    size = segmenter.sam2.image_size
    frames = 9
    with torch.inference_mode():
        features = segmenter.encode_video(torch.rand(frames, 3, size, size))
    keyframes = [0, 4, 8, 4]
    masks = torch.zeros(len(keyframes), size, size, dtype=torch.bool)
    for i in range(len(keyframes)):
        masks[i, 8 + 4 * i : 30 + 2 * i, 10 : 40 - 3 * i] = True
    counted = _counted(lambda: segmenter.track(features, keyframes, masks, project_memory_once=projected))
    assert F.tracking_flops(segmenter.sam2, frames, keyframes, projected=projected) == counted


def test_segment_video_total(model):
    """The whole call: every stage exact except the token merge's distance products (not counted, tiny)."""
    frames = torch.randint(0, 255, (7, 48, 64, 3), dtype=torch.uint8)
    results = []
    counted = _counted(lambda: results.append(model.segment_video(frames, _TEXTS)))
    stages = F.segment_video_flops(model, num_frames=7, texts=_TEXTS, frame_sets=[r.frame_indices for r in results[0]],
                                   keyframes=[r.keyframe_idx for r in results[0]])
    assert set(stages.flops) == {"clip_anchor", "clip_tokens", "mllm", "sam2_encode", "tks", "track"}
    assert stages.masks == 7 * len(_TEXTS)
    assert stages.total <= counted
    assert stages.total == pytest.approx(counted, rel=1e-3)


def test_peak_table():
    assert F.dense_bf16_peak_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert F.dense_bf16_peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert F.dense_bf16_peak_tflops("NVIDIA H100 PCIe") == pytest.approx(756.5)
    assert F.dense_bf16_peak_tflops("cpu (x86_64, 2 cores)") is None
    text = F.format_roofline({"track": int(2e12)}, {"track": 4.0, "decode": 1.0}, peak_tflops=10.0)
    line = text.splitlines()[1].split("|")
    assert float(line[4]) == pytest.approx(0.5) and float(line[5]) == pytest.approx(5.0)  # TFLOP/s, % of peak
    assert float(line[3]) == pytest.approx(80.0)  # 4 of the 5 seconds


def test_stage_timer_times_every_stage_of_segment_video(model):
    from vrshq.model.stage_timer import StageTimer

    timer = StageTimer(torch.device("cpu"))
    model.stage_timer = timer
    try:
        model.segment_video(torch.randint(0, 255, (4, 40, 56, 3), dtype=torch.uint8), _TEXTS[:2])
    finally:
        model.stage_timer = None
    seconds = timer.seconds()
    assert list(seconds) == ["clip_anchor", "clip_tokens", "mllm", "sam2_encode", "tks", "track"]
    assert all(v > 0 for v in seconds.values())
