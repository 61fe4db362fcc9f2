"""Stage G of the learnability run: grounding pretraining of the text path (pipelines.grounding_pretrain)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipelines.grounding_pretrain import (
    SUMMARY_FILE,
    TARGET_TRIPLES,
    TEXT_PATH_PREFIXES,
    grounding_sample,
    load_text_path,
    pretrain_grounding,
    read_summary,
)
from pipelines.train_config import GroundingPretrainConfig, ModelSpec, SamplingConfig
from pipelines.train_loop import build_training_model
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
    return build_training_model(ModelSpec(preset=preset, seed=0), device="cpu")


def test_stage_g_learns_to_name_the_targets_and_a_complete_folder_reloads_it(tmp_path):
    torch.set_num_threads(1)
    train = [s for _, s in _samples(4)]
    model = _model()
    untouched = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith(TEXT_PATH_PREFIXES)}
    cfg = GroundingPretrainConfig(steps=80, videos_per_step=4, lr=3e-3, warmup_steps=5, eval_every=80)
    from pipelines.grounding_pretrain import grounding_accuracy

    head = torch.nn.Linear(model.cfg.method.seg_embed_dim, 24)
    before = grounding_accuracy(model, head, train)["all"]
    rng_state = torch.get_rng_state()
    summary = pretrain_grounding(model, cfg, itertools.repeat(train), heldout=train, folder=str(tmp_path))
    assert torch.equal(torch.get_rng_state(), rng_state)  # later stages draw the same numbers with or without it
    after = summary["evaluations"][-1]["accuracy"]["all"]
    assert before < 0.5 and after >= 0.9, (before, after)  # fits its own clips: the signal reaches TAK'
    for name, value in untouched.items():  # SAM2 and the tower are not this stage's
        assert torch.equal(dict(model.named_parameters())[name], value), name
    assert read_summary(str(tmp_path))["complete"] and (tmp_path / SUMMARY_FILE).exists()

    fresh = _model()
    again = pretrain_grounding(fresh, cfg, iter(()), heldout=train, folder=str(tmp_path))  # loads, never trains
    assert again["steps"] == 80
    trained = dict(model.named_parameters())
    for name, value in fresh.named_parameters():
        assert torch.equal(value, trained[name]), name


def test_loading_a_text_path_of_another_size_is_refused(tmp_path):
    cfg = GroundingPretrainConfig(steps=1, videos_per_step=1, warmup_steps=0, eval_every=1)
    train = [s for _, s in _samples(1)]
    pretrain_grounding(_model(), cfg, itertools.repeat(train), heldout=train, folder=str(tmp_path))
    with pytest.raises(ValueError, match="do not fit|other sizes"):
        load_text_path(_model("learn"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no pretrained text path"):
        load_text_path(_model(), str(tmp_path / "missing"))


def test_config_rejects_bad_values_with_every_problem():
    with pytest.raises(ValueError) as info:
        GroundingPretrainConfig(steps=-1, videos_per_step=0, lr=float("nan"))
    message = str(info.value)
    assert "steps=-1" in message and "videos_per_step=0" in message and "lr=nan" in message
