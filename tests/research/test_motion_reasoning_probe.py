"""research/motion_reasoning_probe.py: its oracle questions carry the answer, and its reasoner can fit them."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch


def _load():
    return importlib.import_module("research.motion_reasoning_probe")


def test_oracle_questions_carry_their_answer_in_the_object_tracks():
    probe = _load()
    data = probe.questions(7, 40, lambda video: probe.oracle_tokens(video, slice(None, None, 2), 1.0))
    tokens, kinds, present, targets = data["tokens"], data["kind"], data["present"], data["target"]
    assert tokens.shape[1:] == (8, 4, 26) and set(kinds.tolist()) == {0, 1}
    assert present[torch.arange(len(targets)), targets].all()  # the target is one of the video's objects
    right = []
    for row in range(len(targets)):
        slots = tokens[row, 0, :, :24].sum(-1) > 0
        spread = tokens[row][:, slots, 24:].std(dim=0).sum(-1)  # per object: spread of its centres over frames
        triples = tokens[row, 0, slots, :24].argmax(-1)
        answer = triples[spread.argmin() if kinds[row] == 0 else spread.argmax()]
        right.append(bool(answer == targets[row]))
    assert sum(right) / len(right) >= 0.95, sum(right) / len(right)


def test_the_reasoner_fits_a_few_questions():
    probe = _load()
    torch.manual_seed(0)
    data = probe.questions(7, 12, lambda video: probe.oracle_tokens(video, slice(None, None, 2), 10.0))
    model = probe.MotionReasoner(26, 8, width=32, layers=1)
    before = probe.accuracy(model, data)
    history = probe.train(model, data, data, steps=300, batch=len(data["kind"]), lr=3e-3, eval_every=300)
    assert min(history[-1]["static"], history[-1]["fastest"]) == 1.0, (before, history)


def test_questions_record_each_objects_speed_class():
    probe = _load()
    data = probe.questions(7, 40, lambda video: probe.oracle_tokens(video, slice(None, None, 2), 1.0))
    speed = data["speed"]
    assert speed.shape == (len(data["kind"]), 4)
    slots = data["tokens"][:, 0, :, :24].sum(-1) > 0  # occupied object slots
    assert ((speed >= 0) == slots).all()
    # "never moves": the target is the one static object; its centre never changes over the frames
    for row in torch.nonzero(data["kind"] == 0).flatten().tolist():
        target_slot = data["tokens"][row, 0, :, :24].argmax(-1).eq(data["target"][row]) & slots[row]
        assert speed[row][target_slot].tolist() == [0]
        assert (speed[row][slots[row] & ~target_slot] > 0).all()
        assert data["tokens"][row][:, target_slot, 24:].std(dim=0).max() == 0


def test_the_dense_speed_target_trains_and_needs_oracle_tokens():
    probe = _load()
    torch.manual_seed(0)
    data = probe.questions(7, 12, lambda video: probe.oracle_tokens(video, slice(None, None, 2), 10.0))
    model = probe.MotionReasoner(26, 8, width=32, layers=1)
    outputs = model.encode(data["tokens"], data["kind"])
    before = probe.speed_loss(model, outputs, data["speed"]).item()
    probe.train(model, data, data, steps=200, batch=len(data["kind"]), lr=3e-3, eval_every=200, aux_weight=1.0)
    after = probe.speed_loss(model, model.encode(data["tokens"], data["kind"]), data["speed"]).item()
    assert after < 0.3 * before, (before, after)
    merged_like = dict(data, tokens=torch.zeros(len(data["kind"]), 8, 28, 32))
    with pytest.raises(ValueError, match="oracle tokens"):
        probe.train(probe.MotionReasoner(32, 8, width=32, layers=1), merged_like, merged_like, steps=1, batch=4,
                    lr=1e-3, eval_every=1, aux_weight=1.0)


def test_remerge_gives_the_tokens_of_a_tower_built_with_that_merge():
    from vrshq.model.vision import VisualTokenizer
    from vrshq.vision_config import tiny_vision_tower

    probe = _load()
    torch.manual_seed(0)
    vision = VisualTokenizer(tiny_vision_tower(centroid_position_scale=1.0)).eval()
    other = VisualTokenizer(tiny_vision_tower(centroid_position_scale=10.0, knn_k=(2, 2, 2))).eval()
    other.load_state_dict(vision.state_dict())
    video = probe.generate_synthetic_video(np.random.default_rng(3), num_frames=4, height=64, width=64)
    own = probe.merged_tokens(vision, video.frames)
    assert probe.remerge(vision) is vision and torch.equal(probe.merged_tokens(vision, video.frames), own)
    probe.remerge(vision, knn_k=(2, 2, 2), position_scale=10.0)
    assert vision.cfg.merge == other.cfg.merge
    remerged = probe.merged_tokens(vision, video.frames)
    assert torch.allclose(remerged, probe.merged_tokens(other, video.frames), atol=1e-5)
    assert not torch.allclose(remerged, own, atol=1e-2)


def test_preset_tower_is_the_presets_random_tower_or_a_stage_v_one(tmp_path):
    from safetensors.torch import save_file

    probe = _load()
    torch.manual_seed(0)
    random_tower = probe.preset_tower("learn-256-pos-p4")
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert probe.merged_tokens(random_tower, frames).shape == (2, 28, 32)  # 256 patches of 4 px -> 28 tokens
    pretrained = {k: torch.randn_like(v) for k, v in random_tower.vision_tower.state_dict().items()
                  if not k.endswith("position_ids")}
    save_file(pretrained, str(tmp_path / "tower.safetensors"))
    loaded = probe.preset_tower("learn-256-pos-p4", str(tmp_path))
    weight = "embeddings.patch_embedding.weight"
    assert torch.equal(loaded.vision_tower.state_dict()[weight], pretrained[weight])
    assert not torch.equal(probe.merged_tokens(loaded, frames), probe.merged_tokens(random_tower, frames))
