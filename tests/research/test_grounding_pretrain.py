"""Stage G of the learnability run: grounding pretraining of the text path (research.grounding_pretrain)."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from pipelines.training.train_config import ModelSpec, SamplingConfig
from pipelines.training.train_loop import build_training_model
from research.config import GroundingPretrainConfig
from research.grounding_pretrain import (
    SUMMARY_FILE,
    TARGET_TRIPLES,
    TEXT_PATH_PREFIXES,
    focus_share_at,
    grounding_sample,
    load_text_path,
    pretrain_grounding,
    read_summary,
)
from research.presets import model_preset
from vrshq.data import generate_synthetic_video

_SAMPLING = SamplingConfig(image_ratio=0.0, expression_types=(0, 1))


def _samples(count: int, *, frames: int = 6, size: int = 40):
    out = []
    for i in itertools.count():
        video = generate_synthetic_video(np.random.default_rng([11, i]), num_frames=frames, height=size, width=size)
        sample = grounding_sample(video, sample_id=i, seed=0, sampling=_SAMPLING)
        if sample is not None:
            out.append((video, sample))
        if len(out) == count:
            return out


def test_targets_mark_the_expression_objects_among_the_video_objects():
    for video, sample in _samples(6, frames=8, size=64):
        present = {(o.size, o.colour, o.shape): o.obj_id for o in video.objects}
        by_text = {e.text.strip(): e for e in video.expressions}
        assert sample.targets.shape == (len(sample.clip.expressions), 24)
        for row, text in enumerate(sample.clip.expressions):
            expression = by_text[text]
            assert sample.kinds[row] == expression.kind
            for column, triple in enumerate(TARGET_TRIPLES):
                expected = -1.0 if triple not in present else float(present[triple] in expression.obj_ids)
                assert sample.targets[row, column] == expected, (text, triple)
            assert sample.targets[row].max() == 1.0  # every trained expression has a target among the objects


def _model(preset: str = "tiny"):
    torch.manual_seed(0)
    return build_training_model(ModelSpec(preset=model_preset(preset), seed=0), device="cpu")


def test_stage_g_learns_to_name_the_targets_and_a_complete_folder_reloads_it(tmp_path):
    torch.set_num_threads(1)
    train = [s for _, s in _samples(4)]
    model = _model()
    untouched = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith(TEXT_PATH_PREFIXES)}
    cfg = GroundingPretrainConfig(steps=80, videos_per_step=4, lr=3e-3, warmup_steps=5, eval_every=80)
    from research.grounding_pretrain import grounding_scores

    head = torch.nn.Linear(model.cfg.method.seg_embed_dim, 24)
    before = grounding_scores(model, head, train)[0]["all"]
    rng_state = torch.get_rng_state()
    summary = pretrain_grounding(model, cfg, lambda first, share: itertools.repeat(train), heldout=train,
                                 folder=str(tmp_path))
    assert torch.equal(torch.get_rng_state(), rng_state)  # later stages draw the same numbers with or without it
    after = summary["evaluations"][-1]["accuracy"]["all"]
    assert before < 0.5 and after >= 0.9, (before, after)  # fits its own clips: the signal reaches TAK'
    for name, value in untouched.items():  # SAM2 and the tower are not this stage's
        assert torch.equal(dict(model.named_parameters())[name], value), name
    assert read_summary(str(tmp_path))["complete"] and (tmp_path / SUMMARY_FILE).exists()

    fresh = _model()
    again = pretrain_grounding(fresh, cfg, lambda first, share: iter(()), heldout=train,
                               folder=str(tmp_path))  # loads only
    assert again["steps"] == 80
    trained = dict(model.named_parameters())
    for name, value in fresh.named_parameters():
        assert torch.equal(value, trained[name]), name


def _numbered_batches(samples, *, per_step: int, log: list[int], shares: list[float] | None = None):
    """batches_from for pretrain_grounding: sample ids from first_sample on (the clips repeat), logging the first
    (and in ``shares`` the focus share asked for)."""

    def batches_from(first: int, focus_share: float):
        log.append(first)
        if shares is not None:
            shares.append(focus_share)
        for start in itertools.count(first, per_step):
            yield [dataclasses.replace(samples[i % len(samples)], clip=dataclasses.replace(
                samples[i % len(samples)].clip, sample_id=i)) for i in range(start, start + per_step)]

    return batches_from


def test_a_stage_stopped_by_its_deadline_resumes_to_the_uninterrupted_weights(tmp_path):
    torch.set_num_threads(1)
    train = [s for _, s in _samples(4)]
    cfg = GroundingPretrainConfig(steps=6, videos_per_step=2, lr=3e-3, warmup_steps=2, eval_every=3)
    straight = _model()
    pretrain_grounding(straight, cfg, _numbered_batches(train, per_step=2, log=[]), heldout=train,
                       folder=str(tmp_path / "straight"))

    starts: list[int] = []
    stopped = _model()
    first = pretrain_grounding(stopped, cfg, _numbered_batches(train, per_step=2, log=starts), heldout=train,
                               folder=str(tmp_path / "cut"), deadline=0.0)  # past: stops after step 1, saved
    assert not first["complete"] and first["steps"] == 1 and read_summary(str(tmp_path / "cut"))["steps"] == 1
    resumed = _model()
    second = pretrain_grounding(resumed, cfg, _numbered_batches(train, per_step=2, log=starts), heldout=train,
                                folder=str(tmp_path / "cut"))
    assert starts == [0, 2]  # the data position: sample 2 on, after step 1 used 0 and 1
    assert second["complete"] and second["steps"] == 6 and [e["step"] for e in second["evaluations"]] == [3, 6]
    expected = dict(straight.named_parameters())
    for name, value in resumed.named_parameters():
        if name.startswith(TEXT_PATH_PREFIXES):
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_constant_schedule_stage_continues_to_more_steps_as_one_longer_run(tmp_path):
    torch.set_num_threads(1)
    train = [s for _, s in _samples(4)]
    long = GroundingPretrainConfig(steps=6, videos_per_step=2, lr=3e-3, warmup_steps=2, eval_every=3,
                                   lr_schedule="constant")
    straight = _model()
    pretrain_grounding(straight, long, _numbered_batches(train, per_step=2, log=[]), heldout=train,
                       folder=str(tmp_path / "straight"))

    starts: list[int] = []
    short = dataclasses.replace(long, steps=3)
    first = pretrain_grounding(_model(), short, _numbered_batches(train, per_step=2, log=starts), heldout=train,
                               folder=str(tmp_path / "extended"))
    assert first["complete"] and first["steps"] == 3
    extended = _model()
    second = pretrain_grounding(extended, long, _numbered_batches(train, per_step=2, log=starts), heldout=train,
                                folder=str(tmp_path / "extended"))
    assert starts == [0, 6]  # continued after the 3 steps of 2 samples, not started again
    assert second["complete"] and second["steps"] == 6 and [e["step"] for e in second["evaluations"]] == [3, 6]
    expected = dict(straight.named_parameters())
    for name, value in extended.named_parameters():
        if name.startswith(TEXT_PATH_PREFIXES):
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_lr_schedule_must_be_known():
    with pytest.raises(ValueError, match="lr_schedule='cosine'"):
        GroundingPretrainConfig(lr_schedule="cosine")


@pytest.mark.parametrize("change", [{"lr": 5e-4}, {"steps": 6}], ids=["other-lr", "linear-schedule-other-steps"])
def test_an_incomplete_stage_of_other_settings_starts_again(tmp_path, caplog, change):
    # other steps count as other settings under the linear schedule: its rate at a step depends on the length
    train = [s for _, s in _samples(2)]
    cfg = GroundingPretrainConfig(steps=4, videos_per_step=2, warmup_steps=0, eval_every=2)
    pretrain_grounding(_model(), cfg, _numbered_batches(train, per_step=2, log=[]), heldout=train,
                       folder=str(tmp_path), deadline=0.0)
    starts: list[int] = []
    other = dataclasses.replace(cfg, **change)
    with caplog.at_level("WARNING"):
        summary = pretrain_grounding(_model(), other, _numbered_batches(train, per_step=2, log=starts),
                                     heldout=train, folder=str(tmp_path))
    assert starts == [0] and summary["complete"] and summary["steps"] == other.steps
    assert "other settings" in caplog.text


def test_loading_a_text_path_of_another_size_is_refused(tmp_path):
    cfg = GroundingPretrainConfig(steps=1, videos_per_step=1, warmup_steps=0, eval_every=1)
    train = [s for _, s in _samples(1)]
    pretrain_grounding(_model(), cfg, lambda first, share: itertools.repeat(train), heldout=train, folder=str(tmp_path))
    with pytest.raises(ValueError, match="do not fit|other sizes"):
        load_text_path(_model("learn"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no pretrained text path"):
        load_text_path(_model(), str(tmp_path / "missing"))


def test_config_rejects_bad_values_with_every_problem():
    with pytest.raises(ValueError) as info:
        GroundingPretrainConfig(steps=-1, videos_per_step=0, lr=float("nan"))
    message = str(info.value)
    assert "steps=-1" in message and "videos_per_step=0" in message and "lr=nan" in message


def _stream(**focus):
    from research.grounding_pretrain import grounding_sample_stream

    return grounding_sample_stream(seed=0, start_sample=0, num_frames=8, size=48, sampling=_SAMPLING, **focus)


def test_focused_clips_keep_only_the_focus_kinds_and_share_zero_is_the_plain_stream():
    focused = list(itertools.islice(_stream(focus_kinds=("static", "fastest"), focus_share=1.0), 8))
    assert all(set(s.kinds) <= {"static", "fastest"} for s in focused)
    plain = list(itertools.islice(_stream(), 8))
    assert any(set(s.kinds) - {"static", "fastest"} for s in plain)  # the test could fail: the whole task is wider
    unfocused = list(itertools.islice(_stream(focus_kinds=("static",), focus_share=0.0), 8))
    assert [s.clip.expressions for s in unfocused] == [s.clip.expressions for s in plain]
    half = list(itertools.islice(_stream(focus_kinds=("static", "fastest"), focus_share=0.5), 24))
    mixed = [set(s.kinds) <= {"static", "fastest"} for s in half]
    assert any(mixed) and not all(mixed)
    again = list(itertools.islice(_stream(focus_kinds=("static", "fastest"), focus_share=0.5), 24))
    assert [s.clip.expressions for s in again] == [s.clip.expressions for s in half]  # drawn per sample id


def test_focus_config_problems_are_named():
    with pytest.raises(ValueError) as info:
        GroundingPretrainConfig(focus_kinds=("static", "slowest"), focus_share=1.5)
    assert "slowest" in str(info.value) and "focus_share=1.5" in str(info.value)
    with pytest.raises(ValueError, match="needs focus_kinds"):
        GroundingPretrainConfig(focus_share=0.5)
    assert GroundingPretrainConfig(focus_kinds=("static",), focus_share=0.5).focus_share == 0.5


def test_focus_share_after_needs_a_focus_phase_and_kinds():
    with pytest.raises(ValueError) as info:
        GroundingPretrainConfig(focus_kinds=("static",), focus_share_after=0.5, focus_steps=-2)
    assert "focus_steps=-2" in str(info.value)
    with pytest.raises(ValueError, match="no effect without focus_steps"):
        GroundingPretrainConfig(focus_kinds=("static",), focus_share_after=0.5)
    with pytest.raises(ValueError, match="focus_share_after=2"):
        GroundingPretrainConfig(focus_kinds=("static",), focus_steps=3, focus_share_after=2)
    with pytest.raises(ValueError, match="focus_share_after=0.5: needs focus_kinds"):
        GroundingPretrainConfig(focus_steps=3, focus_share_after=0.5)


def test_the_focus_phase_ends_after_focus_steps_and_a_resume_keeps_the_phase(tmp_path):
    cfg = GroundingPretrainConfig(steps=4, videos_per_step=2, warmup_steps=0, eval_every=4, lr_schedule="constant",
                                  focus_kinds=("static",), focus_share=1.0, focus_steps=2, focus_share_after=0.25)
    assert [focus_share_at(cfg, step) for step in (1, 2, 3, 4)] == [1.0, 1.0, 0.25, 0.25]
    assert focus_share_at(dataclasses.replace(cfg, focus_steps=0, focus_share_after=0.0), 4) == 1.0
    train = [s for _, s in _samples(2)]
    starts, shares = [], []
    summary = pretrain_grounding(_model(), cfg, _numbered_batches(train, per_step=2, log=starts, shares=shares),
                                 heldout=train, folder=str(tmp_path / "straight"))
    assert summary["steps"] == 4 and starts == [0, 4] and shares == [1.0, 0.25]  # after step 2, from sample 4 on

    starts, shares = [], []
    pretrain_grounding(_model(), cfg, _numbered_batches(train, per_step=2, log=starts, shares=shares),
                       heldout=train, folder=str(tmp_path / "cut"), deadline=0.0)  # stops after step 1
    pretrain_grounding(_model(), dataclasses.replace(cfg, steps=3), _numbered_batches(
        train, per_step=2, log=starts, shares=shares), heldout=train, folder=str(tmp_path / "cut"))
    assert starts == [0, 2, 4] and shares == [1.0, 1.0, 0.25]  # resumed in the phase, then past it


def test_pick_counts_a_ranked_first_target_that_exact_misses(monkeypatch):
    from pipelines.training.clip_sampling import ClipSample
    from research.grounding_pretrain import GroundingSample, grounding_scores

    targets = np.full((3, 24), -1.0, dtype=np.float32)
    targets[:, :3] = 0.0
    targets[0, 0] = 1.0  # one target, ranked first but unsure (no positive score): pick yes, exact no
    targets[1, 1] = 1.0  # one target, another object ranked first: pick no
    targets[2, :2] = 1.0  # two targets: exact only
    logits = torch.full((3, 24), -5.0)
    logits[0, :3] = torch.tensor([-0.1, -0.5, -0.6])
    logits[1, :3] = torch.tensor([2.0, 1.0, -1.0])
    logits[2, :3] = torch.tensor([1.0, 1.0, -1.0])

    class _TextPath(torch.nn.Module):
        def text_path(self, batch):
            return logits, None

    clip = ClipSample(frames=np.zeros((1, 8, 8, 3), np.uint8), masks=np.zeros((3, 1, 8, 8), bool),
                      expressions=("a", "b", "c"), prompt_texts=("a", "b", "c"), prompt_instructions=("", "", ""),
                      frame_indices=(0,), video_id="v", sample_id=0)
    sample = GroundingSample(clip, targets, ("static", "fastest", "group"))
    monkeypatch.setattr("research.grounding_pretrain.samples_to_batch", lambda clips: None)
    exact, pick = grounding_scores(_TextPath(), torch.nn.Identity(), [sample])
    assert exact == {"all": 1 / 3, "fastest": 0.0, "group": 1.0, "static": 0.0}
    assert pick == {"all": 0.5, "fastest": 0.0, "static": 1.0}


def test_softmax_target_is_a_cross_entropy_over_the_present_objects_and_reads_sets_by_rank():
    from research.grounding_pretrain import _predicted_sets, _target_loss

    targets = torch.full((3, 24), -1.0)
    targets[:, :3] = 0.0
    targets[0, 0] = 1.0  # one target
    targets[1, 1:3] = 1.0  # two targets: the wanted distribution is half on each
    # row 2: no target (a no-target expression): left out of the softmax loss
    scored = targets >= 0
    logits = torch.randn(3, 24)
    loss = _target_loss(logits, targets, scored, "softmax")
    log_p0 = logits[0, :3].log_softmax(0)
    log_p1 = logits[1, :3].log_softmax(0)
    expected = (-log_p0[0] - 0.5 * (log_p1[1] + log_p1[2])) / 2
    assert torch.allclose(loss, expected, atol=1e-6)
    changed = logits.clone()
    changed[:, 3:] += 100.0  # absent objects' scores do not count
    changed[2] += 7.0  # nor does a row without a target
    assert torch.allclose(_target_loss(changed, targets, scored, "softmax"), expected, atol=1e-6)
    bce = _target_loss(logits, targets, scored, "bce")
    assert torch.allclose(bce, torch.nn.functional.binary_cross_entropy_with_logits(logits[scored], targets[scored]))

    ranked = torch.full((3, 24), 50.0)  # absent objects ranked first: never part of a predicted set
    ranked[:, :3] = torch.tensor([[-1.0, -2.0, -3.0], [-3.0, -1.0, -2.0], [-1.0, -2.0, -3.0]])
    assert _predicted_sets(ranked, targets, scored, "softmax").tolist() == [True, True, True]
    assert _predicted_sets(ranked, targets, scored, "bce").tolist() == [False, False, True]  # all scores negative
    ranked[1, :3] = torch.tensor([-1.0, -2.0, -3.0])  # a non-target among the two best
    assert _predicted_sets(ranked, targets, scored, "softmax").tolist() == [True, False, True]


def test_stage_g_with_the_softmax_target_learns_to_name_the_targets(tmp_path):
    torch.set_num_threads(1)
    train = [s for _, s in _samples(4)]
    model = _model()
    cfg = GroundingPretrainConfig(steps=80, videos_per_step=4, lr=3e-3, warmup_steps=5, eval_every=80,
                                  target_loss="softmax")
    from research.grounding_pretrain import grounding_scores

    before = grounding_scores(model, torch.nn.Linear(model.cfg.method.seg_embed_dim, 24), train,
                              target_loss="softmax")[0]["all"]
    summary = pretrain_grounding(model, cfg, lambda first, share: itertools.repeat(train), heldout=train,
                                 folder=str(tmp_path))
    last = summary["evaluations"][-1]
    # ranks read at chance are often right with 2-4 objects, hence the loss: ln(2..4) >= 0.69 when untrained
    assert before < 0.7 and last["accuracy"]["all"] >= 0.9 and last["pick"]["all"] >= 0.9, (before, last)
    assert last["loss"] < 0.3, last
    assert read_summary(str(tmp_path))["config"]["target_loss"] == "softmax"


def test_target_loss_must_be_known():
    with pytest.raises(ValueError, match="target_loss='hinge'"):
        GroundingPretrainConfig(target_loss="hinge")


def test_the_saved_head_scores_a_model_as_stage_g_scored_it(tmp_path):
    from research.grounding_pretrain import grounding_scores, load_grounding_head

    torch.set_num_threads(1)
    train = [s for _, s in _samples(4)]
    model = _model()
    cfg = GroundingPretrainConfig(steps=30, videos_per_step=4, lr=3e-3, warmup_steps=5, eval_every=30)
    summary = pretrain_grounding(model, cfg, lambda first, share: itertools.repeat(train), heldout=train,
                                 folder=str(tmp_path))
    head = load_grounding_head(model, str(tmp_path))
    exact, pick = grounding_scores(model, head, train)
    assert exact == summary["evaluations"][-1]["accuracy"] and pick == summary["evaluations"][-1]["pick"]
    untrained = grounding_scores(_model(), head, train)[0]["all"]
    assert untrained < exact["all"], (untrained, exact)  # the head reads what stage G taught, not any TAK'
    with pytest.raises(FileNotFoundError, match="no stage G state"):
        load_grounding_head(model, str(tmp_path / "missing"))
