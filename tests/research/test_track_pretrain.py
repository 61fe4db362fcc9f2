"""Stage 0 of the learnability run: tracking pretraining of SAM2 (research.track_pretrain)."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from research.config import TrackPretrainConfig
from research.track_pretrain import (
    STATE_FILE,
    WEIGHTS_FILE,
    TrackClip,
    pretrain_tracking,
    sample_track_clip,
    track_batch,
    track_clip_stream,
    track_losses,
)
from vrshq.data import generate_synthetic_video
from vrshq.sam2_config import sam2_tiny
from vrshq.model.sam2_segmenter import Sam2Segmenter

SIZE = 64


class _Holder(torch.nn.Module):
    """What pretrain_tracking needs of a VrshqModel: its ``sam2``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.sam2 = Sam2Segmenter(sam2_tiny(image_size=SIZE))


def _clips(count: int, *, window: int = 4, start: int = 0) -> list[TrackClip]:
    stream = track_clip_stream(seed=0, start_sample=start, window=window, num_frames=8, size=48)
    return [next(stream) for _ in range(count)]


def test_a_window_follows_one_expression_target_forward_or_backward_from_a_visible_frame():
    directions = set()
    for i in range(30):
        rng = np.random.default_rng([7, i])
        video = generate_synthetic_video(np.random.default_rng([5, i]), num_frames=10, height=48, width=48)
        clip = sample_track_clip(video, rng, window=5, sample_id=i)
        assert clip is not None and clip.frames.shape == (5, 48, 48, 3) and clip.masks.shape == (5, 48, 48)
        assert clip.masks[0].sum() >= 4  # the prompt shows the target
        # the frames are consecutive video frames, in one direction
        matches = [[t for t in range(10) if np.array_equal(video.frames[t], f)] for f in clip.frames]
        order = [m[0] for m in matches]
        step = order[1] - order[0]
        directions.add(step)
        assert step in (1, -1) and order == list(range(order[0], order[0] + 5 * step, step))
        # and the masks are one expression's target at those frames
        targets = [video.target_masks(e)[order] for e in video.expressions if e.obj_ids]
        assert any(np.array_equal(clip.masks, t) for t in targets)
    assert directions == {1, -1}


def test_windows_without_objects_are_the_same_windows_without_the_aids_data():
    full = itertools.islice(track_clip_stream(seed=0, start_sample=0, window=4, num_frames=8, size=32), 6)
    lean = itertools.islice(track_clip_stream(seed=0, start_sample=0, window=4, num_frames=8, size=32,
                                              with_objects=False), 6)
    for a, b in zip(full, lean, strict=True):
        assert a.sample_id == b.sample_id
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
        assert a.object_masks is not None and a.attributes is not None
        assert b.object_masks is None and b.attributes is None


def test_the_prompt_frame_outputs_the_prompt_and_the_tracked_frames_depend_on_it():
    holder = _Holder()
    seg = holder.sam2.train()
    images, masks = track_batch(_clips(2), image_size=SIZE, device=torch.device("cpu"))
    assert images.shape == (2, 4, 3, SIZE, SIZE) and masks.shape == (2, 4, SIZE, SIZE)
    torch.manual_seed(1)
    out = seg.train_track_forward(images, masks[:, 0] > 0.5)
    assert out.logits.shape == (2, 4, SIZE, SIZE) and out.object_score_logits.shape == (2, 4)
    # position 0 is the mask prompt itself (inserted as inference inserts a keyframe)
    assert torch.equal(out.logits[:, 0] > 0, masks[:, 0] > 0.5)
    # the memory carries the prompt: another first mask changes the tracked frames
    torch.manual_seed(1)
    other = seg.train_track_forward(images, torch.zeros_like(masks[:, 0], dtype=torch.bool).index_fill_(1, torch.arange(8), True))
    assert (out.logits[:, 1:] - other.logits[:, 1:]).abs().max() > 1e-3


def test_the_loss_trains_the_memory_path_and_the_image_encoder():
    holder = _Holder()
    seg = holder.sam2.train()
    images, masks = track_batch(_clips(2), image_size=SIZE, device=torch.device("cpu"))
    out = seg.train_track_forward(images, masks[:, 0] > 0.5)
    track_losses(out.logits, out.object_score_logits, masks, TrackPretrainConfig())["loss"].backward()
    for module in (seg.memory_attention, seg.memory_encoder, seg.image_encoder, seg.mask_decoder):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), type(module).__name__


def test_losses_score_tracked_frames_only_and_masks_only_where_the_target_is_visible():
    cfg = TrackPretrainConfig(bce_weight=1.0, dice_weight=1.0, object_weight=1.0)
    masks = torch.zeros(1, 3, 8, 8)
    masks[0, 1, 2:5, 2:5] = 1  # frame 2: the target is hidden
    perfect = masks * 40 - 20
    scores = torch.tensor([[0.0, 20.0, -20.0]])
    terms = track_losses(perfect, scores, masks, cfg)
    assert float(terms["bce_loss"]) < 1e-6 and float(terms["dice_loss"]) < 1e-6 and float(terms["object_loss"]) < 1e-6
    # position 0 (the prompt) is not scored, a hidden frame's mask is not scored
    garbage = perfect.clone()
    garbage[0, 0] = 20.0
    garbage[0, 2] = 20.0
    scores_bad = scores.clone()
    scores_bad[0, 0] = -20.0
    same = track_losses(garbage, scores_bad, masks, cfg)
    assert float(same["loss"]) == pytest.approx(float(terms["loss"]), abs=1e-6)
    # but a hidden frame said present is an object-score error
    assert float(track_losses(perfect, torch.tensor([[0.0, 20.0, 20.0]]), masks, cfg)["object_loss"]) > 5


def test_a_stopped_stage_resumes_where_it_stopped_and_a_complete_one_is_only_loaded(tmp_path, monkeypatch):
    import research.track_pretrain as tp

    cfg = TrackPretrainConfig(steps=3, window=4, clips_per_step=2, warmup_steps=1)
    firsts: list[int] = []

    def batches_from(first: int):
        firsts.append(first)
        stream = track_clip_stream(seed=0, start_sample=first, window=4, num_frames=8, size=48)
        while True:
            yield [next(stream), next(stream)]

    holder = _Holder()
    evals: list[int] = []

    def on_eval(step: int) -> dict:
        evals.append(step)
        return {"j_true_keyframe": 0.5}

    assert not pretrain_tracking(holder, cfg, batches_from, folder=str(tmp_path), on_eval=on_eval, deadline=-1.0)
    summary = json.loads((tmp_path / "track.json").read_text())
    assert summary["steps"] == 1 and not summary["complete"] and (tmp_path / STATE_FILE).exists()
    weights_after_1 = {k: v.clone() for k, v in holder.sam2.sam2.state_dict().items()}

    resumed = _Holder(seed=1)  # other init: the weights must come from the folder
    assert pretrain_tracking(resumed, cfg, batches_from, folder=str(tmp_path), on_eval=on_eval)
    assert firsts[1] > firsts[0] == 0  # the data position moved on: no window is trained twice
    summary = json.loads((tmp_path / "track.json").read_text())
    assert summary["complete"] and summary["steps"] == 3 and evals == [1, 3]
    assert [e["step"] for e in summary["evaluations"]] == [1, 3]
    assert len((tmp_path / "log.csv").read_text().strip().splitlines()) == 4
    changed = any(not torch.equal(weights_after_1[k], v) for k, v in resumed.sam2.sam2.state_dict().items())
    assert changed

    monkeypatch.setattr(tp, "track_batch", lambda *a, **k: pytest.fail("a complete stage trained again"))
    loaded = _Holder(seed=2)
    assert pretrain_tracking(loaded, cfg, batches_from, folder=str(tmp_path))
    for k, v in loaded.sam2.sam2.state_dict().items():
        torch.testing.assert_close(v, resumed.sam2.sam2.state_dict()[k])
    assert (tmp_path / WEIGHTS_FILE).exists()


def test_other_settings_start_the_stage_again(tmp_path):
    holder = _Holder()

    def batches_from(first: int):
        stream = track_clip_stream(seed=0, start_sample=first, window=4, num_frames=8, size=48)
        while True:
            yield [next(stream)]

    cfg = TrackPretrainConfig(steps=1, window=4, clips_per_step=1, warmup_steps=1)
    assert pretrain_tracking(holder, cfg, batches_from, folder=str(tmp_path))
    longer = TrackPretrainConfig(steps=2, window=4, clips_per_step=1, warmup_steps=1)
    assert pretrain_tracking(holder, longer, batches_from, folder=str(tmp_path))
    assert json.loads((tmp_path / "track.json").read_text())["steps"] == 2


def test_bad_settings_are_refused_with_their_names():
    with pytest.raises(ValueError, match="window=1") as info:
        TrackPretrainConfig(window=1, lr=-1.0)
    assert "lr=-1.0" in str(info.value)


def test_cell_targets_name_the_object_covering_each_cell():
    from research.track_pretrain import cell_attribute_targets
    from vrshq.data.synthetic import COLOURS, SHAPES, SIZES

    clips = _clips(2)
    targets = cell_attribute_targets(clips, image_size=SIZE, grid=4, device=torch.device("cpu"))
    assert targets.shape == (2, 4, 4, 4, 3)
    for clip, target in zip(clips, targets):
        # 48 px square frames fill the letterbox: a 4x4 grid has 12x12 px cells
        cover = clip.object_masks.reshape(len(clip.attributes), 4, 4, 12, 4, 12).mean(axis=(3, 5))  # (O, W, 4, 4)
        for t, r, c in np.ndindex(4, 4, 4):
            best = int(cover[:, t, r, c].argmax())
            expected = clip.attributes[best] if cover[best, t, r, c] >= 0.5 + 0.05 else (0, 0, 0)
            if abs(cover[best, t, r, c] - 0.5) > 0.05:  # away from the resampling's rounding at the threshold
                assert target[t, r, c].tolist() == list(expected), (t, r, c)
        assert (target > 0).any()
    assert clips[0].attributes[:, 0].max() <= len(COLOURS) and clips[0].attributes[:, 1].max() <= len(SHAPES)
    assert clips[0].attributes.min() >= 1 and clips[0].attributes[:, 2].max() <= len(SIZES)


def test_the_attribute_aid_trains_a_head_on_the_image_embedding_and_resumes_it(tmp_path):
    cfg = TrackPretrainConfig(steps=12, window=3, clips_per_step=2, warmup_steps=1, lr=3e-3, attribute_weight=1.0)

    def batches_from(first: int):
        stream = track_clip_stream(seed=0, start_sample=first, window=3, num_frames=8, size=48)
        while True:
            yield [next(stream), next(stream)]

    def rng_after_one_step(weight: float, folder) -> torch.Tensor:
        holder = _Holder()
        torch.manual_seed(5)
        one = TrackPretrainConfig(steps=12, window=3, clips_per_step=2, warmup_steps=1, attribute_weight=weight)
        assert not pretrain_tracking(holder, one, batches_from, folder=str(folder), deadline=-1.0)
        return torch.get_rng_state()

    # the head's init draws from its own generator: the run draws the same global numbers with or without it
    assert torch.equal(rng_after_one_step(0.0, tmp_path / "plain"), rng_after_one_step(1.0, tmp_path / "aid"))
    assert not pretrain_tracking(_Holder(), cfg, batches_from, folder=str(tmp_path), deadline=-1.0)
    state = torch.load(tmp_path / STATE_FILE, weights_only=False)
    assert state["attribute_head"] is not None
    assert pretrain_tracking(_Holder(seed=1), cfg, batches_from, folder=str(tmp_path))
    import csv

    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    losses = [float(r["attribute_loss"]) for r in rows]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])  # the head and the encoder learn it


def test_a_complete_stage_written_before_a_setting_existed_still_loads(tmp_path, monkeypatch):
    import research.track_pretrain as tp

    cfg = TrackPretrainConfig(steps=1, window=4, clips_per_step=1, warmup_steps=1)

    def batches_from(first: int):
        stream = track_clip_stream(seed=0, start_sample=first, window=4, num_frames=8, size=48)
        while True:
            yield [next(stream)]

    assert pretrain_tracking(_Holder(), cfg, batches_from, folder=str(tmp_path))
    summary = json.loads((tmp_path / "track.json").read_text())
    del summary["config"]["attribute_weight"]  # as written before the attribute aid existed
    (tmp_path / "track.json").write_text(json.dumps(summary))
    monkeypatch.setattr(tp, "track_batch", lambda *a, **k: pytest.fail("a complete stage trained again"))
    assert pretrain_tracking(_Holder(seed=2), cfg, batches_from, folder=str(tmp_path))
