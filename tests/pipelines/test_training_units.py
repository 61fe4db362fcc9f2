"""Training building blocks without Ray: config checks, clip sampling (method §1.4), the schedule and
optimiser groups (method §6), the training step, training checkpoints, export and validation."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from pipelines.training.clip_sampling import (
    _from_row,
    _to_row,
    choose_expressions,
    rows_to_batch,
    sample_clip_from_record,
    sample_synthetic_clip,
    uniform_frame_indices,
    video_index_for_sample,
)
from pipelines.training.train_config import (
    ModelSpec,
    OptimConfig,
    SamplingConfig,
    TrainConfig,
    TrainDataConfig,
    ValidationConfig,
)
from pipelines.training.train_loop import (
    EvalVideo,
    TrainState,
    build_optimizer,
    build_scheduler,
    build_training_model,
    export_model,
    load_train_checkpoint,
    lr_factor,
    param_group_name,
    save_train_checkpoint,
    train_step,
    validate,
)


# --------------------------------------------------------------------------------- configs


def test_configs_report_every_problem_with_the_field_name():
    with pytest.raises(ValueError) as err:
        OptimConfig(lr=-1, betas=(0.9, 1.5), grad_accum_steps=0)
    assert "lr=-1" in str(err.value) and "betas" in str(err.value) and "grad_accum_steps=0" in str(err.value)
    with pytest.raises(ValueError, match="min_frames/max_frames=\\(9, 8\\)"):
        SamplingConfig(min_frames=9, max_frames=8)
    with pytest.raises(ValueError, match="image_ratio=1.5"):
        SamplingConfig(image_ratio=1.5)
    with pytest.raises(ValueError, match="root is required when every_steps > 0"):
        ValidationConfig(every_steps=5)
    with pytest.raises(TypeError, match="fail_at_step"):  # fault injection is a test's run_training(on_step=...)
        TrainConfig(storage_path="/r", data=TrainDataConfig(root="/d"), fail_at_step=3)
    with pytest.raises(ValueError, match="preset='nope'"):
        ModelSpec(preset="nope")
    cfg = TrainConfig(storage_path="s3://b/runs/", name="exp", data=TrainDataConfig(root="/d"), max_steps=50)
    assert (cfg.run_uri, cfg.final_uri, cfg.decay_steps) == ("s3://b/runs/exp", "s3://b/runs/exp/final", 50)


# --------------------------------------------------------------------------- clip sampling


def test_uniform_frame_indices_draw_one_frame_per_bin():
    rng = np.random.default_rng(3)
    for length, count in ((100, 10), (37, 8), (12, 12), (13, 12)):
        idx = uniform_frame_indices(length, count, rng)
        edges = np.linspace(0, length, count + 1).astype(int)
        assert len(idx) == count
        assert all(lo <= i < hi for i, lo, hi in zip(idx, edges[:-1], edges[1:]))
    assert uniform_frame_indices(5, 8, rng) == [0, 1, 2, 3, 4]  # L <= T: every frame
    # the draws differ between bins' positions, not always the bin start
    draws = {tuple(uniform_frame_indices(100, 10, np.random.default_rng(s))) for s in range(5)}
    assert len(draws) == 5


def test_each_epoch_visits_every_video_once_in_a_seeded_order():
    n = 7
    epoch0 = [video_index_for_sample(s, n, seed=1) for s in range(n)]
    epoch1 = [video_index_for_sample(s, n, seed=1) for s in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1 or epoch0 != list(range(n))
    assert epoch0 == [video_index_for_sample(s, n, seed=1) for s in range(n)]  # deterministic


def test_choose_expressions_respects_types_and_the_cap():
    sampling = SamplingConfig(max_expressions=3, expression_types=(0, 1))
    types = [2, 0, 1, 0, 2, 1, 0]
    for seed in range(10):
        chosen = choose_expressions(types, sampling, np.random.default_rng(seed))
        assert len(chosen) == 3 and len(set(chosen)) == 3 and all(types[i] in (0, 1) for i in chosen)
    assert choose_expressions([2, 2], sampling, np.random.default_rng(0)) == []
    assert sorted(choose_expressions([0, 1], sampling, np.random.default_rng(0))) == [0, 1]


def test_record_clip_masks_are_the_union_of_the_expression_objects(synthetic_revos_local, synthetic_revos_args):
    """Masks against an independent reference: the generator's own per-object masks (not the RLE files)."""
    from vrshq.data import generate_synthetic_video, read_revos

    records = read_revos(os.fspath(synthetic_revos_local), split="valid")
    sampling = SamplingConfig(min_frames=3, max_frames=4, max_expressions=2)
    seen_multi_object = False
    for sample_id in range(8):
        index = video_index_for_sample(sample_id, len(records), seed=5)
        record = records[index]
        clip = sample_clip_from_record(record, sample_id=sample_id, seed=5, sampling=sampling)
        assert clip is not None and clip.video_id == record.video_id
        t = len(clip.frame_indices)
        assert 3 <= t <= 4 and list(clip.frame_indices) == sorted(clip.frame_indices)
        assert clip.frames.shape == (t, 64, 96, 3) and clip.frames.dtype == np.uint8
        assert clip.masks.shape == (len(clip.expressions), t, 64, 96) and 1 <= len(clip.expressions) <= 2
        video = generate_synthetic_video(
            np.random.default_rng([synthetic_revos_args["seed"], index]),
            num_frames=synthetic_revos_args["num_frames"], height=64, width=96,
        )
        by_text = {e.text: e for e in video.expressions}
        for text, masks, prompt in zip(clip.expressions, clip.masks, clip.prompt_texts):
            expected = video.target_masks(by_text[text])[list(clip.frame_indices)]
            np.testing.assert_array_equal(masks, expected)
            seen_multi_object |= len(by_text[text].obj_ids) > 1
            assert text in prompt and prompt.count("[SEG]") == t and prompt.count("[TAK]") == 1
        # the frames are the video's frames at those indices (JPEG round trip: close, not equal)
        assert np.abs(clip.frames.astype(int) - video.frames[list(clip.frame_indices)].astype(int)).mean() < 4
        again = sample_clip_from_record(record, sample_id=sample_id, seed=5, sampling=sampling)
        assert again.frame_indices == clip.frame_indices and again.prompt_texts == clip.prompt_texts
    assert seen_multi_object  # group/reasoning expressions with several objects were covered


def test_record_image_samples_are_one_frame_with_referring_expressions(synthetic_revos_local, synthetic_revos_args):
    """The Ray path's sampler (records on storage) draws image samples by the same rule as synthetic videos."""
    from vrshq.data import generate_synthetic_video, read_revos

    records = read_revos(os.fspath(synthetic_revos_local), split="valid")
    sampling = SamplingConfig(image_ratio=1.0)
    for sample_id in range(6):
        index = video_index_for_sample(sample_id, len(records), seed=5)
        clip = sample_clip_from_record(records[index], sample_id=sample_id, seed=5, sampling=sampling)
        video = generate_synthetic_video(
            np.random.default_rng([synthetic_revos_args["seed"], index]),
            num_frames=synthetic_revos_args["num_frames"], height=64, width=96,
        )
        by_text = {e.text: e for e in video.expressions}
        if not any(e.type_id == 0 for e in video.expressions):
            assert clip is None or len(clip.frame_indices) >= 3  # no referring expression: a clip instead
            continue
        assert len(clip.frame_indices) == 1 and clip.frames.shape == (1, 64, 96, 3)
        for text, masks, prompt in zip(clip.expressions, clip.masks, clip.prompt_texts):
            assert by_text[text].type_id == 0
            np.testing.assert_array_equal(masks, video.target_masks(by_text[text])[list(clip.frame_indices)])
            assert "(0)<image>" in prompt and prompt.count("[SEG]") == 1 and "(0) [SEG]" not in prompt
        batch = rows_to_batch([_to_row(clip)])
        assert batch.videos[0].frames.shape[0] == 1 and batch.videos[0].expressions == clip.expressions


def test_rows_round_trip_into_a_train_batch():
    from vrshq.data import generate_synthetic_video

    video = generate_synthetic_video(np.random.default_rng(0), num_frames=10, height=40, width=48)
    clip = sample_synthetic_clip(video, sample_id=3, seed=0, sampling=SamplingConfig())
    back = _from_row(_to_row(clip))
    np.testing.assert_array_equal(back.frames, clip.frames)
    np.testing.assert_array_equal(back.masks, clip.masks)
    assert back.prompt_texts == clip.prompt_texts and back.frame_indices == clip.frame_indices
    batch = rows_to_batch([_to_row(clip), _to_row(clip)])
    assert batch.num_expressions == 2 * len(clip.expressions)
    assert batch.videos[0].prompts[0].text == clip.prompt_texts[0]


# --------------------------------------------------------------------- optimiser, schedule


def test_lr_schedule_is_linear_warmup_then_linear_decay():
    values = [lr_factor(s, warmup_steps=100, decay_steps=1000) for s in (0, 49, 99, 100, 550, 999, 1000, 1200)]
    assert values == pytest.approx([0.01, 0.5, 1.0, 1.0, 0.5, 1 / 900, 0.0, 0.0])
    assert lr_factor(0, warmup_steps=0, decay_steps=10) == 1.0


@pytest.fixture(scope="module")
def tiny_model():
    return build_training_model(ModelSpec(preset="tiny", object_weight=0.5, seed=3))


def test_optimizer_groups_and_scheduler(tiny_model):
    optim = OptimConfig(lr=3e-4, sam2_lr=1e-4, text_lr=1e-3, warmup_steps=2)
    opt = build_optimizer(tiny_model, optim)
    by_name = {g["name"]: g for g in opt.param_groups}
    # from scratch every trainable parameter is SAM2 or text path (the CLIP towers stay frozen)
    assert {n: g["lr"] for n, g in by_name.items()} == {"sam2": 1e-4, "text": 1e-3}
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["weight_decay"] == 0.0
    ids = {n: {id(p) for p in g["params"]} for n, g in by_name.items()}
    for name, param in tiny_model.named_parameters():
        if param.requires_grad:
            assert id(param) in ids[param_group_name(name)]
    assert param_group_name("sam2.sam2.sam_mask_decoder.x") == "sam2"
    assert param_group_name("mllm.llm.model.embed_tokens.weight") == "text"
    assert param_group_name("vision.projector.weight") == "text"
    sched = build_scheduler(opt, warmup_steps=2, decay_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(by_name["text"]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5e-3, 1e-3, 1e-3, 0.5e-3])


def _clips(n: int, seed: int = 0):
    from vrshq.data import generate_synthetic_video

    sampling = SamplingConfig(min_frames=3, max_frames=4, max_expressions=2)
    out = []
    for i in range(n):
        video = generate_synthetic_video(np.random.default_rng([seed, i]), num_frames=6, height=40, width=48)
        out.append(sample_synthetic_clip(video, sample_id=i, seed=seed, sampling=sampling))
    return out


def test_train_step_accumulates_clips_and_fits_a_fixed_batch():
    from pipelines.training.clip_sampling import samples_to_batch

    model = build_training_model(ModelSpec(preset="tiny", object_weight=0.5, seed=0))
    optim = OptimConfig(lr=1e-3, warmup_steps=0)
    opt = build_optimizer(model, optim)
    sched = build_scheduler(opt, warmup_steps=0, decay_steps=1000)
    clips = _clips(2)
    micro = [samples_to_batch([c]) for c in clips]
    first = train_step(model, opt, sched, micro, clip_grad_norm=1.0)
    assert first["num_expressions"] == sum(len(c.expressions) for c in clips)
    for _ in range(7):
        last = train_step(model, opt, sched, micro, clip_grad_norm=1.0)
    assert last["loss"] < 0.8 * first["loss"]
    assert last["bce_loss"] < first["bce_loss"]
    # clipping: the norm is reported before clipping; with a tiny max norm the update is tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt_small = build_optimizer(model, OptimConfig(lr=1e-3, warmup_steps=0))
    stats = train_step(model, opt_small, build_scheduler(opt_small, warmup_steps=0, decay_steps=10), micro,
                       clip_grad_norm=1e-6)
    assert stats["grad_norm"] > 1e-3
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters() if p.requires_grad)
    assert 0 < moved <= 1.1e-3  # Adam moves each weight by at most ~lr per step


# ------------------------------------------------------------------------- checkpoints


def test_training_checkpoint_round_trip(tmp_path, tiny_model):
    from pipelines.training.clip_sampling import samples_to_batch
    from vrshq.checkpoint.weight_files import CheckpointMismatchError

    spec = ModelSpec(preset="tiny", object_weight=0.5, seed=11)
    model = build_training_model(spec)
    opt = build_optimizer(model, OptimConfig(warmup_steps=3))
    sched = build_scheduler(opt, warmup_steps=3, decay_steps=10)
    train_step(model, opt, sched, [samples_to_batch(_clips(1, seed=4))], clip_grad_norm=1.0)
    state = TrainState(step=1, next_sample_id=17, wall_seconds=2.5)
    save_train_checkpoint(os.fspath(tmp_path / "ck"), model=model, optimizer=opt, scheduler=sched, state=state)

    fresh = build_training_model(spec)  # same seed: the frozen CLIP towers come out identical
    opt2 = build_optimizer(fresh, OptimConfig(warmup_steps=3))
    sched2 = build_scheduler(opt2, warmup_steps=3, decay_steps=10)
    loaded = load_train_checkpoint(os.fspath(tmp_path / "ck"), model=fresh, optimizer=opt2, scheduler=sched2)
    assert loaded == state
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert sched2.last_epoch == 1 and [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    key = next(iter(opt.state))
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert key is not None
    from research.presets import model_preset

    other = build_training_model(dataclasses.replace(spec, preset=model_preset("learn")))
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_train_checkpoint(os.fspath(tmp_path / "ck"), model=other)


def test_exported_model_loads_with_the_inference_loader(tmp_path, tiny_model):
    from pipelines.inference.config import InferenceConfig
    from pipelines.inference.model_loader import build_model

    export_model(tiny_model, os.fspath(tmp_path / "final"))
    cfg = InferenceConfig(out=os.fspath(tmp_path / "out"), manifest="m.parquet",
                          checkpoint=os.fspath(tmp_path / "final"), device="cpu", seed=999)
    loaded = build_model(cfg)
    assert loaded.cfg == tiny_model.cfg
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------- validation


class _StubModel:
    """``segment_video`` returning fixed masks per expression (to check the scoring, not a model)."""

    def __init__(self, answers):
        self.answers = answers

    def segment_video(self, frames, expressions):
        from types import SimpleNamespace

        return [SimpleNamespace(masks=self.answers[e], keyframe_idx=1) for e in expressions]


def test_validate_scores_through_segment_video():
    gt_a = np.zeros((2, 20, 20), bool)
    gt_a[:, 4:12, 4:12] = True
    gt_b = np.zeros((2, 20, 20), bool)
    gt_b[:, 10:18, 2:10] = True
    half = gt_b.copy()
    half[:, 14:18] = False  # half of the target: J = 0.5 on both frames
    video = EvalVideo("v", np.zeros((2, 20, 20, 3), np.uint8), ("a", "b"), (gt_a, gt_b), (0, 1))
    scores = validate(_StubModel({"a": gt_a, "b": half}), [video])
    assert scores["j_referring"] == 1.0 and scores["f_referring"] == 1.0
    assert scores["j_reasoning"] == pytest.approx(0.5)
    assert scores["j"] == pytest.approx(0.75)
    assert scores["jf_revos"] == pytest.approx((1.0 + scores["jf_reasoning"]) / 2)
    assert scores["num_expressions"] == 2
    # keyframe (frame 1) J: 1.0 and 0.5; both found their object
    assert scores["keyframe_j"] == pytest.approx(0.75) and scores["wrong_keyframe_share"] == 0.0
    # "a" answered with b's region: keyframe J 12/116 < 0.3, the wrong object
    wrong = validate(_StubModel({"a": gt_b, "b": half}), [video])
    assert wrong["keyframe_j"] == pytest.approx((12 / 116 + 0.5) / 2) and wrong["wrong_keyframe_share"] == 0.5


def test_true_keyframe_tracking_scores_tracking_alone_from_the_ground_truth_keyframe():
    """The ground-truth mask of the largest-area frame is inserted (letterboxed) and tracked; J over
    the other frames. A tracker that keeps the inserted mask scores the overlap of the two frames."""
    from pipelines.training.train_loop import true_keyframe_tracking_j
    from vrshq.model.sam2_video_features import TrackResult

    class StaticSegmenter:
        image_size = 16
        inserted = None

        def encode_frames(self, frames):
            return len(frames)

        def track(self, num_frames, keyframe_idx, keyframe_masks):
            self.inserted = (list(keyframe_idx), keyframe_masks.clone())
            logits = keyframe_masks.float()[:, None].repeat(1, num_frames, 1, 1) * 2 - 1  # S x S "low-res" logits
            return TrackResult(low_res_logits=logits, object_score_logits=torch.ones(len(keyframe_idx), num_frames))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sam2 = StaticSegmenter()

    gt = np.zeros((3, 8, 8), bool)
    gt[0, 0:4, 0:4] = True        # 16 px
    gt[1, 0:4, 2:7] = True        # 20 px: the keyframe
    gt[2, 0:4, 2:7] = True
    video = EvalVideo("v", np.zeros((3, 8, 8, 3), np.uint8), ("a",), (gt,), (0,))
    model = Model().train()
    scores = true_keyframe_tracking_j(model, [video])
    keys, masks = model.sam2.inserted
    assert keys == [1] and masks.shape == (1, 16, 16) and int(masks.sum()) == 4 * 20  # letterboxed 2x
    # frame 0: 8 / 28; frame 2: the same mask, 1.0
    assert scores == [pytest.approx((8 / 28 + 1.0) / 2)]
    assert model.training  # eval mode only inside
