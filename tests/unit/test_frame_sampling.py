"""Inference frame selection: strided sampling around the CLIP-336 anchor (method §1.4)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from vrshq.model.clip_preprocess import build_tiny_clip_tokenizer
from vrshq.model.frame_sampling import AnchorFrameSampler, sample_frame_indices
from vrshq.model.vision import VisionWeightsError
from vrshq.vision_config import tiny_anchor


WORDS = ["the", "a", "red", "blue", "green", "ball", "cube", "left", "right", "moving", "which", "is"]


# ------------------------------------------------------------------------------ sample_frame_indices
def test_method_examples():
    for num_frames in range(1, 12):  # T <= 11 -> every frame, whatever the anchor
        for anchor in range(num_frames):
            assert sample_frame_indices(num_frames, anchor) == list(range(num_frames))
    assert sample_frame_indices(12, 5) == [1, 3, 5, 7, 9, 11]  # step ceil(12/11) = 2
    assert sample_frame_indices(12, 0) == [0, 2, 4, 6, 8, 10]
    assert sample_frame_indices(100, 37) == [7, 17, 27, 37, 47, 57, 67, 77, 87, 97]  # step 10
    assert len(sample_frame_indices(100, 0)) == 10


def test_max_frames_is_a_parameter():
    assert sample_frame_indices(20, 7, max_frames=5) == [2, 7, 12, 17]  # step ceil(20/4) = 5
    assert sample_frame_indices(20, 7, max_frames=1) == [7]
    assert sample_frame_indices(3, 2, max_frames=2) == [2]  # step ceil(3/1) = 3
    assert sample_frame_indices(5, 4, max_frames=30) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("max_frames", [2, 5, 12])
def test_properties_over_many_lengths(max_frames):
    for num_frames in range(1, 160):
        step = math.ceil(num_frames / (max_frames - 1))
        for anchor in {0, num_frames // 3, num_frames - 1}:
            idx = sample_frame_indices(num_frames, anchor, max_frames=max_frames)
            assert anchor in idx
            assert idx == sorted(idx) and idx[0] < step and idx[-1] + step > num_frames - 1
            assert all(b - a == step for a, b in itertools.pairwise(idx))
            assert len(idx) <= max_frames - 1


def test_sample_frame_indices_rejects_bad_arguments():
    with pytest.raises(ValueError, match="anchor"):
        sample_frame_indices(10, 10)
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(0, 0)
    with pytest.raises(ValueError, match="max_frames"):
        sample_frame_indices(10, 0, max_frames=0)
    with pytest.raises(TypeError, match="anchor"):
        sample_frame_indices(10, 1.0)
    assert sample_frame_indices(10, np.int64(3)) == list(range(10))


# ------------------------------------------------------------------------------ AnchorFrameSampler
@pytest.fixture(scope="module")
def clip_tokenizer():
    return build_tiny_clip_tokenizer(WORDS)


@pytest.fixture(scope="module")
def sampler(clip_tokenizer) -> AnchorFrameSampler:
    torch.manual_seed(0)
    return AnchorFrameSampler(tiny_anchor(image_batch_size=4), tokenizer=clip_tokenizer)


def _video(num_frames: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (num_frames, 24, 40, 3), generator=gen, dtype=torch.uint8)


def test_probs_equal_hf_clip_logits_per_image(sampler, clip_tokenizer):
    frames = _video(10)
    expressions = ["the red ball", "which cube is moving left?", "a blue thing"]
    selection = sampler(frames, expressions)
    inputs = clip_tokenizer(expressions, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = sampler.clip_model(**inputs, pixel_values=sampler.preprocess(frames))
    expected = out.logits_per_image.softmax(dim=0).T  # softmax over frames, one row per expression
    torch.testing.assert_close(selection.probs, expected, rtol=1e-5, atol=1e-6)
    assert selection.anchors == expected.argmax(dim=-1).tolist()
    assert selection.frame_indices == [sample_frame_indices(10, a, max_frames=12) for a in selection.anchors]
    assert sampler.select_frames(frames, expressions) == selection.frame_indices


def test_frames_encoded_once_per_video_in_chunks(sampler):
    calls = []
    handle = sampler.clip_model.vision_model.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        sampler.select_frames(_video(10), ["the red ball", "a cube", "the left ball", "green"])
    finally:
        handle.remove()
    assert len(calls) == math.ceil(10 / 4)  # 3 chunks of <= 4 frames, shared by the 4 expressions


def test_chunk_size_does_not_change_scores(clip_tokenizer, sampler):
    big_chunks = AnchorFrameSampler(dataclasses.replace(sampler.cfg, image_batch_size=64), tokenizer=clip_tokenizer)
    big_chunks.load_state_dict(sampler.state_dict())
    frames = _video(9, seed=1)
    torch.testing.assert_close(
        big_chunks(frames, ["the blue cube"]).probs, sampler(frames, ["the blue cube"]).probs, rtol=1e-5, atol=1e-6
    )


def test_long_expressions_are_truncated_not_crashing(sampler):
    frames = _video(6, seed=2)
    long_text = " ".join(["red", "ball"] * 100)  # 200 words, far beyond 77 positions
    truncated = " ".join(long_text.split()[:75])  # BOS + 75 words + EOS = 77
    probs = sampler(frames, [long_text, truncated]).probs
    torch.testing.assert_close(probs[0], probs[1])
    short = dataclasses.replace(sampler.cfg, text_max_length=5)
    short_sampler = AnchorFrameSampler(short, tokenizer=sampler.tokenizer)
    short_sampler.load_state_dict(sampler.state_dict())
    p = short_sampler(frames, [long_text, "red ball red"]).probs  # both become BOS red ball red EOS
    torch.testing.assert_close(p[0], p[1])


class _FixedEmbeddingSampler(AnchorFrameSampler):
    """Hand-set embeddings: frame t is e_t, expression j points at frame targets[j]."""

    targets = (3, 0, 6)

    def encode_frames(self, frames):
        return torch.eye(8)[: frames.shape[0]]

    def encode_texts(self, expressions):
        return torch.eye(8)[list(self.targets[: len(expressions)])]


def test_anchor_is_argmax_over_frames_and_always_sampled(clip_tokenizer):
    fixed = _FixedEmbeddingSampler(tiny_anchor(max_frames=3), tokenizer=clip_tokenizer)
    selection = fixed(_video(7), ["x", "y", "z"])
    assert selection.anchors == [3, 0, 6]
    # T = 7, max_frames = 3 -> step ceil(7/2) = 4; start = anchor mod 4
    assert selection.frame_indices == [[3], [0, 4], [2, 6]]
    scale = fixed.clip_model.logit_scale.exp().item()
    row = torch.full((7,), 1.0)
    row[3] = math.exp(scale)
    torch.testing.assert_close(selection.probs[0], row / row.sum())


def test_numpy_frames_and_input_errors(sampler):
    frames = _video(5, seed=3)
    assert sampler.select_frames(frames.numpy(), ["red ball"]) == sampler.select_frames(frames, ["red ball"])
    with pytest.raises(TypeError, match="uint8"):
        sampler.select_frames(frames.float(), ["red ball"])
    with pytest.raises(TypeError, match="list of strings"):
        sampler.select_frames(frames, "red ball")
    with pytest.raises(TypeError, match="list of strings"):
        sampler.select_frames(frames, [])


def test_clip_model_frozen_and_eval(sampler):
    assert all(not p.requires_grad for p in sampler.clip_model.parameters())
    sampler.train()
    assert not sampler.clip_model.training
    sampler.eval()


def test_tokenizer_and_weights_resolution(tmp_path, clip_tokenizer):
    cfg = tiny_anchor()
    with pytest.raises(ValueError, match="needs a tokenizer"):
        AnchorFrameSampler(cfg)
    with pytest.raises(ValueError, match="vocabulary has 8"):
        AnchorFrameSampler(tiny_anchor(vocab_size=8), tokenizer=clip_tokenizer)
    with pytest.raises(TypeError, match="PreTrainedTokenizerBase"):
        AnchorFrameSampler(cfg, tokenizer=lambda s: s)
    # local snapshot round trip: model + tokenizer saved to one directory, loaded from the config path
    torch.manual_seed(1)
    original = AnchorFrameSampler(cfg, tokenizer=clip_tokenizer)
    original.clip_model.save_pretrained(tmp_path / "clip336")
    clip_tokenizer.save_pretrained(tmp_path / "clip336")
    loaded = AnchorFrameSampler(dataclasses.replace(cfg, weights_path=str(tmp_path / "clip336")))
    frames = _video(8, seed=4)
    torch.testing.assert_close(loaded(frames, ["the red ball"]).probs, original(frames, ["the red ball"]).probs)
    with pytest.raises(VisionWeightsError, match="clip-vit-large-patch14-336"):
        AnchorFrameSampler(dataclasses.replace(cfg, weights_path=str(tmp_path / "none")), tokenizer=clip_tokenizer)
