"""Stage V of the learnability run: pretraining of the random vision tower (research.vision_pretrain)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from research.config import VisionPretrainConfig
from research.vision_pretrain import (
    SUMMARY_FILE,
    WEIGHTS_FILE,
    load_pretrained_tower,
    merged_token_position_r2,
    patch_targets,
    pretrain_vision_tower,
)
from vrshq.data import generate_synthetic_video
from vrshq.data.synthetic import COLOURS, SHAPES, SIZES
from vrshq.model.vision import VisualTokenizer
from vrshq.vision_config import tiny_vision_tower


def test_patch_targets_name_the_object_covering_each_patch_and_its_position():
    video = generate_synthetic_video(np.random.default_rng(3), num_frames=4, height=64, width=64)
    targets = patch_targets(video, grid=8)
    assert targets.colour.shape == targets.shape.shape == targets.size.shape == (4, 64)
    cells = video.object_masks.reshape(len(video.objects), 4, 8, 8, 8, 8).mean(axis=(3, 5))  # (O, T, 8, 8) cover
    for t in range(4):
        for p in range(64):
            cover = cells[:, t, p // 8, p % 8]
            if cover.max() < 0.25:
                assert targets.colour[t, p] == targets.shape[t, p] == targets.size[t, p] == 0
            else:
                obj = video.objects[int(cover.argmax())]
                assert targets.colour[t, p] == list(COLOURS).index(obj.colour) + 1
                assert targets.shape[t, p] == SHAPES.index(obj.shape) + 1
                assert targets.size[t, p] == SIZES.index(obj.size) + 1
    assert (targets.colour > 0).any() and (targets.colour == 0).any()
    # patch 9 is row 1, column 1: centre at (1.5 / 8) * 2 - 1
    torch.testing.assert_close(targets.position[9], torch.tensor([-0.625, -0.625]))


def _tower() -> VisualTokenizer:
    torch.manual_seed(0)
    return VisualTokenizer(tiny_vision_tower())


def test_pretraining_puts_position_into_the_merged_tokens_then_freezes_and_reloads(tmp_path):
    vision = _tower()
    frames = np.concatenate([generate_synthetic_video(np.random.default_rng([7, i]), num_frames=8, height=48,
                                                      width=48).frames for i in range(12)])
    before = merged_token_position_r2(vision, frames)
    rng_state = torch.get_rng_state()
    cfg = VisionPretrainConfig(steps=60, videos_per_step=2, lr=3e-3, warmup_steps=5, probe_videos=4, log_every=20)
    summary = pretrain_vision_tower(vision, cfg, seed=0, folder=str(tmp_path), num_frames=8, size=48)
    assert torch.equal(torch.get_rng_state(), rng_state)  # later stages draw the same numbers with or without it
    after = merged_token_position_r2(vision, frames)
    assert before < 0.3 and after > before + 0.3, (before, after)  # a random tower keeps little of the position
    assert not vision.tower_trainable  # frozen again, as the method freezes CLIP
    written = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert written["complete"] and written["steps"] == 60 and written["position_r2_after"] > written["position_r2_before"]
    assert summary == written

    fresh = _tower()
    again = pretrain_vision_tower(fresh, cfg, seed=0, folder=str(tmp_path), num_frames=8, size=48)  # loads, no training
    assert again == written
    for (name, a), b in zip(vision.vision_tower.state_dict().items(), fresh.vision_tower.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_loading_refuses_a_missing_folder_or_a_tower_of_another_size(tmp_path):
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_pretrained_tower(_tower(), str(tmp_path))
    from safetensors.torch import save_file

    wide = VisualTokenizer(tiny_vision_tower(hidden_size=64))
    save_file({k: v.contiguous() for k, v in wide.vision_tower.state_dict().items()}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises((ValueError, RuntimeError)):
        load_pretrained_tower(_tower(), str(tmp_path))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        VisionPretrainConfig(steps=-1)
    with pytest.raises(ValueError, match="lr"):
        VisionPretrainConfig(lr=float("nan"))
