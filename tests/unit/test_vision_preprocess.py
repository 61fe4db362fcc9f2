"""CLIP preprocessing on torch tensors vs transformers' PIL CLIPImageProcessor; tiny CLIP tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vrshq.model.clip_preprocess import (
    build_tiny_clip_tokenizer,
    clip_preprocess,
    load_clip_tokenizer,
    resized_hw,
    tokenize_texts,
)
from vrshq.vision_config import CLIP_STD, ClipImageConfig


# One uint8 step after normalisation, for the channel with the smallest std (PIL rounds in 22-bit fixed point).
ONE_STEP = 1.0 / 255.0 / min(CLIP_STD) + 1e-6


def _natural_like_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour regions plus noise: exercises both the interpolation and the rounding."""
    coarse = torch.from_numpy(rng.integers(0, 256, (1, 3, height // 8 + 2, width // 8 + 2)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0].permute(1, 2, 0)
    noisy = smooth.numpy() + rng.normal(0.0, 20.0, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _reference_processor(size: int):
    try:  # transformers >= 5 names the PIL implementation explicitly
        from transformers import CLIPImageProcessorPil as PilProcessor
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as PilProcessor

    # Explicit arguments = the preprocessor_config.json of openai/clip-vit-large-patch14(-336).
    return PilProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [
        (480, 854, 224),  # landscape video frame, downscale
        (300, 200, 224),  # portrait, mild downscale
        (60, 90, 224),  # upscale
        (224, 224, 224),  # identity resize
        (720, 1280, 336),  # anchor model size
    ],
)
def test_matches_hf_clip_image_processor(height, width, size):
    rng = np.random.default_rng(height * 7 + width)
    images = [_natural_like_image(rng, height, width) for _ in range(2)]
    ref = _reference_processor(size)(images=images, return_tensors="pt")["pixel_values"]
    ours = clip_preprocess(torch.from_numpy(np.stack(images)), ClipImageConfig(shortest_edge=size, crop_size=size))
    assert ours.shape == ref.shape == (2, 3, size, size)
    diff = (ours - ref).abs()
    assert diff.max().item() <= ONE_STEP
    assert (diff > 1e-4).float().mean().item() < 0.01  # almost all pixels agree exactly


def test_resize_rule_truncates_long_side():
    assert resized_hw(480, 854, 224) == (224, 398)  # int(224 * 854 / 480) = 398.5 -> 398
    assert resized_hw(854, 480, 224) == (398, 224)
    assert resized_hw(100, 100, 336) == (336, 336)
    with pytest.raises(ValueError, match="positive"):
        resized_hw(0, 10, 224)


def test_numpy_and_tensor_inputs_agree_and_dtype():
    rng = np.random.default_rng(0)
    frames = np.stack([_natural_like_image(rng, 50, 70) for _ in range(3)])
    cfg = ClipImageConfig(shortest_edge=28, crop_size=28)
    a = clip_preprocess(frames, cfg)
    b = clip_preprocess(torch.from_numpy(frames), cfg, dtype=torch.bfloat16)
    assert b.dtype == torch.bfloat16
    torch.testing.assert_close(a.to(torch.bfloat16), b)
    # constant frames normalise to exactly (v/255 - mean) / std
    grey = clip_preprocess(np.full((1, 40, 30, 3), 128, dtype=np.uint8), cfg)
    expected = (128 / 255 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(grey[0, :, 5, 5], expected)


def test_bad_frames_raise():
    cfg = ClipImageConfig()
    with pytest.raises(TypeError, match="uint8"):
        clip_preprocess(torch.zeros(1, 8, 8, 3), cfg)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        clip_preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), cfg)
    with pytest.raises(ValueError, match="at least one"):
        clip_preprocess(torch.zeros(0, 8, 8, 3, dtype=torch.uint8), cfg)


def test_image_config_validation():
    with pytest.raises(ValueError, match="crop_size"):
        ClipImageConfig(shortest_edge=224, crop_size=336)
    with pytest.raises(TypeError, match="shortest_edge"):
        ClipImageConfig(shortest_edge=224.0)


def test_tiny_tokenizer_ids_case_unknown_and_truncation():
    tok = build_tiny_clip_tokenizer(["red", "Circle", "red", "left"])
    expected_vocab = ["<|startoftext|>", "<|endoftext|>", "[UNK]", "red", "circle", "left"]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4, 5]) == expected_vocab
    assert len(tok) == 6 and tok.eos_token_id == 1 and tok.pad_token_id == 1 and tok.bos_token_id == 0
    assert tok("The RED circle, left!")["input_ids"] == [0, 2, 3, 4, 2, 5, 2, 1]
    ids, mask = tokenize_texts(tok, ["red", "red circle " * 50], max_length=7)
    assert ids.tolist() == [[0, 3, 1, 1, 1, 1, 1], [0, 3, 4, 3, 4, 3, 1]]  # EOS kept last when truncating
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7]


def test_tokenize_texts_and_loader_errors(tmp_path):
    tok = build_tiny_clip_tokenizer(["a"])
    with pytest.raises(TypeError, match="list of strings"):
        tokenize_texts(tok, "a", max_length=8)
    with pytest.raises(TypeError, match="strings"):
        tokenize_texts(tok, ["a", 3], max_length=8)
    with pytest.raises(FileNotFoundError, match=r"vocab\.json"):
        load_clip_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="non-empty"):
        build_tiny_clip_tokenizer(["ok", " "])
