"""From-scratch training aids of the learnability run (not the method): the TAK separation loss, its
use in ``train_step``, and the shorter-prompt presets of ``learnability_model_config``."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from pipelines.training.train_config import ModelSpec, OptimConfig, SamplingConfig, model_config_from_spec
from pipelines.training.train_loop import (
    build_optimizer,
    build_scheduler,
    build_training_model,
    loss_only_forward,
    train_step,
)
from research.aids import AID_METRICS, aid_losses, tak_separation_loss
from research.presets import PRESETS, model_preset
from vrshq.model.outputs import TrainBatch, TrainVideo
from vrshq.model.prompts import training_prompt


def _video(masks: list[np.ndarray]) -> TrainVideo:
    """A 2-frame 4x4 clip with one expression per mask (the prompts only set the expression count)."""
    import random

    rng = random.Random(0)
    m = np.stack(masks).astype(bool)
    prompts = tuple(training_prompt(f"the shape {i}", 2, rng=rng) for i in range(len(masks)))
    return TrainVideo(frames=torch.zeros(2, 4, 4, 3, dtype=torch.uint8), masks=torch.from_numpy(m), prompts=prompts)


def _obj(rows: slice) -> np.ndarray:
    out = np.zeros((2, 4, 4), bool)
    out[:, rows] = True
    return out


def test_separation_loss_by_hand():
    a, b, empty = _obj(slice(0, 2)), _obj(slice(2, 4)), np.zeros((2, 4, 4), bool)
    batch = TrainBatch(videos=(
        _video([a, a.copy(), b]),  # e0 and e1 name the same object: only (0,2), (1,2) count
        _video([a, b]),  # opposite embeddings: relu(-1) = 0
        _video([a]),  # one expression: no pair
        _video([empty, empty.copy()]),  # two no-target expressions are the same target
    ))
    tak = torch.tensor([
        [1.0, 0.0], [2.0, 0.0], [0.6, 0.8],  # cos(e0, e2) = cos(e1, e2) = 0.6; cos(e0, e1) = 1 is ignored
        [1.0, 0.0], [-3.0, 0.0],
        [0.0, 1.0],
        [1.0, 0.0], [1.0, 0.0],
    ], requires_grad=True)
    loss = tak_separation_loss(tak, batch)
    # ordered pairs: 0.6 x 4 (first clip), 0 x 2 (second clip) -> 2.4 / 6
    assert math.isclose(float(loss.detach()), 0.4, rel_tol=1e-6)
    loss.backward()
    assert tak.grad[3:].abs().sum() == 0  # no gradient where relu is 0 or no pair counts
    assert tak.grad[2].abs().sum() > 0
    # a threshold above the IoU of identical masks makes (e0, e1) and the two empty targets count too
    # (cos 1, twice each), never an expression with itself: (2.4 + 2 + 0 + 2) / 10
    assert math.isclose(float(tak_separation_loss(tak, batch, same_target_iou=1.01).detach()), 0.64, rel_tol=1e-6)


def test_separation_loss_is_zero_without_pairs_and_checks_shapes():
    a = _obj(slice(0, 2))
    batch = TrainBatch(videos=(_video([a]),))
    tak = torch.ones(1, 3, requires_grad=True)
    assert float(tak_separation_loss(tak, batch).detach()) == 0.0
    with pytest.raises(ValueError, match="num_expressions=1"):
        tak_separation_loss(torch.ones(2, 3), batch)


def _clips():
    from pipelines.training.clip_sampling import sample_synthetic_clip
    from vrshq.data import generate_synthetic_video

    sampling = SamplingConfig(min_frames=3, max_frames=3, max_expressions=3, expression_types=(0,))
    out = []
    for i in range(8):
        video = generate_synthetic_video(np.random.default_rng([5, i]), num_frames=4, height=40, width=40)
        clip = sample_synthetic_clip(video, sample_id=i, seed=5, sampling=sampling)
        if clip is not None and len(clip.expressions) >= 2:
            out.append(clip)
        if len(out) == 2:
            return out
    raise AssertionError("no synthetic clip with two referring expressions")


def _step_with_aid(weight_name: str) -> tuple[dict, dict, bool]:
    """One train_step of the tiny preset with the aid off and at weight 5: (off, on, LLM weights differ)."""
    from pipelines.training.clip_sampling import samples_to_batch

    batch = samples_to_batch(_clips())
    stats = {}
    for weight in (0.0, 5.0):
        model = build_training_model(ModelSpec(preset="tiny", seed=0))
        opt = build_optimizer(model, OptimConfig(lr=1e-3, warmup_steps=0))
        sched = build_scheduler(opt, warmup_steps=0, decay_steps=10)
        stats[weight] = ({**dict.fromkeys(AID_METRICS, 0.0),
                          **train_step(model, opt, sched, [batch], clip_grad_norm=0.0,
                                       extra_losses=aid_losses(**{weight_name: weight}))},
                         model.mllm.llm.model.layers[0].self_attn.q_proj.weight.detach().clone())
    return stats[0.0][0], stats[5.0][0], not torch.equal(stats[0.0][1], stats[5.0][1])


@pytest.mark.parametrize("weight_name, term", [("tak_separation_weight", "sep_loss"),
                                                ("expression_word_weight", "word_loss")])
def test_train_step_adds_the_weighted_aid_term(weight_name, term):
    off, on, llm_moved_differently = _step_with_aid(weight_name)
    assert off[term] == 0.0 and on[term] > 0.0
    assert math.isclose(on["loss"], off["loss"], rel_tol=1e-5)  # "loss" is the method's loss alone
    assert on["grad_norm"] != off["grad_norm"]  # ... but the aid adds gradient
    assert llm_moved_differently


def test_train_step_refuses_separation_without_the_tak_graph():
    from pipelines.training.clip_sampling import samples_to_batch

    model = build_training_model(ModelSpec(preset="tiny", seed=0))
    opt = build_optimizer(model, OptimConfig(lr=1e-3, warmup_steps=0))
    sched = build_scheduler(opt, warmup_steps=0, decay_steps=10)
    batch = samples_to_batch(_clips()[:1])
    with pytest.raises(ValueError, match="loss_only_forward"):
        train_step(model, opt, sched, [batch], clip_grad_norm=1.0, extra_losses=aid_losses(tak_separation_weight=1.0),
                   forward_module=loss_only_forward(model))
    with pytest.raises(ValueError, match="tak_separation_weight"):
        train_step(model, opt, sched, [batch], clip_grad_norm=1.0, extra_losses=aid_losses(tak_separation_weight=-1.0))


@pytest.mark.parametrize(("preset", "tokens", "counts"), [
    ("learn", 28, (16, 8, 4)), ("learn-t14", 14, (8, 4, 2)), ("learn-t7", 7, (4, 2, 1)),
])
def test_learn_presets_differ_only_in_visual_tokens(preset, tokens, counts):
    assert preset in PRESETS
    cfg = model_config_from_spec(ModelSpec(preset=model_preset(preset)))
    base = model_config_from_spec(ModelSpec(preset=model_preset("learn")))
    assert cfg.vision.tokens_per_frame == tokens and cfg.vision.merge.cluster_counts == counts
    assert all(k < prev for k, prev in zip(cfg.vision.merge.knn_k, (64, *counts[:-1])))  # k < points merged
    assert (cfg.llm, cfg.sam2, cfg.method) == (base.llm, base.sam2, base.method)  # same weights, same sizes


def test_wide_preset_keeps_sam2_and_fits_the_checkpoint_limit():
    wide = model_config_from_spec(ModelSpec(preset=model_preset("learn-256-wide")))
    base = model_config_from_spec(ModelSpec(preset=model_preset("learn-256")))
    assert wide.sam2 == base.sam2  # a stage-0 SAM2 of either preset loads into both
    assert (wide.llm.hidden_size, wide.llm.num_hidden_layers, wide.vision.hidden_size) == (256, 4, 64)
    assert wide.vision.projector_out_dim == wide.llm.hidden_size
    from vrshq.builders import build_vrshq

    n_params = sum(p.numel() for p in build_vrshq(wide).parameters())
    assert 2 * n_params < 20e6  # bf16 checkpoint under the 20 MB kept in git


def test_learnability_config_rejects_a_negative_separation_weight():
    from jobs._cli import ConfigError
    from research.config import LearnabilityConfig

    assert LearnabilityConfig(out="/tmp/x").tak_separation_weight == 0.0  # the method's losses by default
    with pytest.raises(ConfigError, match="tak_separation_weight"):
        LearnabilityConfig(out="/tmp/x", tak_separation_weight=-0.5)


def test_validate_reports_how_alike_the_masks_of_two_expressions_are():
    from types import SimpleNamespace

    from pipelines.training.train_loop import EvalVideo, validate

    a, b = _obj(slice(0, 2)), _obj(slice(2, 4))
    half = np.zeros((2, 4, 4), bool)
    half[:, 0] = True  # IoU with a: 8 / 16

    class SameBlob:  # segments rows 0-1 whatever the expression
        def segment_video(self, frames, expressions):
            return [SimpleNamespace(masks=a.copy(), keyframe_idx=0) for _ in expressions]

    videos = [
        EvalVideo("v0", np.zeros((2, 4, 4, 3), np.uint8), ("x", "y", "z"), (a, b, half), (0, 0, 1)),
        EvalVideo("v1", np.zeros((2, 4, 4, 3), np.uint8), ("x",), (a,), (0,)),  # no pair
    ]
    out = validate(SameBlob(), videos)
    assert out["pred_pair_iou"] == 1.0
    assert math.isclose(out["gt_pair_iou"], (0.0 + 0.5 + 0.0) / 3)  # (a,b), (a,half), (b,half)
    assert math.isnan(validate(SameBlob(), videos[1:])["pred_pair_iou"])


def test_scale_seg_head_init_scales_the_prompt_token_exactly():
    from research.aids import scale_seg_head_init

    model = build_training_model(ModelSpec(preset="tiny", seed=0))
    hidden = torch.randn(5, model.seg_head.mlp[0].in_features)
    with torch.no_grad():
        before = model.seg_head(hidden)
        scale_seg_head_init(model, 8.0)
        after = model.seg_head(hidden)
    torch.testing.assert_close(after, before * 8.0)
    for bad in (0.0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="gain"):
            scale_seg_head_init(model, bad)


# ------------------------------------------------------------------ expression-word aid


def test_expression_word_loss_is_zero_for_bag_of_words_embeddings_and_positive_otherwise():
    from research.aids import expression_word_loss, expression_words
    from vrshq.model.outputs import TrainBatch

    texts = ("the red circle", "the red square", "Which shape moves the fastest?", "the blue square")
    video = _video(np.zeros((len(texts), 2, 4, 4), dtype=bool))
    video = TrainVideo(frames=video.frames, masks=video.masks, prompts=video.prompts[:1] * len(texts),
                       expressions=texts)
    batch = TrainBatch(videos=(video,))
    vocab = sorted(set().union(*(expression_words(t) for t in texts)))
    bow = torch.tensor([[float(w in expression_words(t)) for w in vocab] for t in texts])
    # the constrained half holds the bag of words; the free half holds anything
    tak = torch.cat([bow, torch.randn(4, len(vocab))], 1)
    assert float(expression_word_loss(tak, batch)) < 1e-10
    # "red circle" vs "red square": cos 1/2; equal embeddings (cos 1) miss that by 1/2
    same = torch.ones(4, 6)
    expected = ((1 - 0.5) ** 2 * 2 + (1 - 0.0) ** 2 * 8 + (1 - 0.5) ** 2 * 2) / 12
    assert math.isclose(float(expression_word_loss(same, batch)), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="expression texts"):
        expression_word_loss(torch.ones(4, 6), TrainBatch(videos=(_video(np.zeros((4, 2, 4, 4), dtype=bool)),)))


def test_p4_preset_reads_64_px_frames_in_256_patches_and_keeps_sam2_and_the_token_count():
    p4 = model_config_from_spec(ModelSpec(preset=model_preset("learn-256-pos-p4")))
    k2 = model_config_from_spec(ModelSpec(preset=model_preset("learn-256-pos-k2")))
    assert (p4.vision.image_size, p4.vision.patch_size, p4.vision.num_patches) == (64, 4, 256)
    assert p4.vision.tokens_per_frame == k2.vision.tokens_per_frame == 28
    assert p4.vision.merge.knn_k == (2, 2, 2) and p4.vision.merge.centroid_position_scale == 1.0
    assert (p4.llm, p4.sam2, p4.method) == (k2.llm, k2.sam2, k2.method)  # the committed SAM2 loads into it
    from vrshq.builders import build_vrshq
    from vrshq.model.vision import VisualTokenizer

    n_params = sum(p.numel() for p in build_vrshq(p4).parameters())
    assert 2 * n_params < 20e6  # bf16 checkpoint under the 20 MB kept in git
    tokens = VisualTokenizer(p4.vision).eval()
    frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    assert tokens(tokens.preprocess(frames)).shape == (3, 28, p4.llm.hidden_size)


def test_stage_one_focus_keeps_the_focus_kinds_and_share_zero_is_the_plain_stream():
    import itertools

    from research.learnability import synthetic_clip_stream
    from vrshq.data import generate_synthetic_video

    sampling = SamplingConfig(image_ratio=0.0, expression_types=(0, 1))

    def clips(count: int, **focus):
        return list(itertools.islice(synthetic_clip_stream(seed=0, start_sample=0, num_frames=8, size=48,
                                                           sampling=sampling, **focus), count))

    def kinds(clip):  # the kinds of the clip's expressions, read back from its video
        video = generate_synthetic_video(np.random.default_rng([0, 1, clip.sample_id]), num_frames=8, height=48,
                                         width=48)
        by_text = {e.text.strip(): e.kind for e in video.expressions}
        return {by_text[t] for t in clip.expressions}

    occlusion = {"hides_behind", "covers"}
    focused = clips(8, focus_kinds=tuple(occlusion), focus_share=1.0)
    assert focused and all(kinds(c) <= occlusion for c in focused)
    plain = clips(8)
    assert any(kinds(c) - occlusion for c in plain)  # the whole task is wider: the check above can fail
    assert [c.expressions for c in clips(8, focus_kinds=("covers",), focus_share=0.0)] == [c.expressions for c in plain]
    half = clips(24, focus_kinds=tuple(occlusion), focus_share=0.5)
    assert any(kinds(c) <= occlusion for c in half) and any(kinds(c) - occlusion for c in half)


def test_wide_p4_preset_widens_only_the_llm_so_p4_towers_and_sam2_load(tmp_path):
    """The wide text path runs after the committed run's stage V and base SAM2: both must load unchanged."""
    from safetensors.torch import save_file

    from research.vision_pretrain import WEIGHTS_FILE, load_pretrained_tower
    from vrshq.builders import build_vrshq
    from vrshq.model.vision import VisualTokenizer

    wide = model_config_from_spec(ModelSpec(preset=model_preset("learn-256-wide-pos-p4")))
    p4 = model_config_from_spec(ModelSpec(preset=model_preset("learn-256-pos-p4")))
    assert (wide.llm.hidden_size, wide.llm.num_hidden_layers) == (256, 4)
    assert (wide.sam2, wide.method) == (p4.sam2, p4.method)
    # the tower's settings are p4's; only the projector's output follows the LLM width
    assert wide.vision.projector_out_dim == 256
    assert dataclasses.replace(wide.vision, projector_out_dim=p4.vision.projector_out_dim) == p4.vision
    p4_tower = VisualTokenizer(p4.vision).vision_tower
    save_file({k: v.contiguous() for k, v in p4_tower.state_dict().items()}, str(tmp_path / WEIGHTS_FILE))
    wide_tokens = VisualTokenizer(wide.vision)
    load_pretrained_tower(wide_tokens, str(tmp_path))  # strict on the tower: raises on any shape change
    for name, value in p4_tower.state_dict().items():
        assert torch.equal(wide_tokens.vision_tower.state_dict()[name], value)
    n_params = sum(p.numel() for p in build_vrshq(wide).parameters())
    assert 2 * n_params < 20e6  # bf16 checkpoint under the 20 MB kept in git
