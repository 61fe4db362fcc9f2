"""research/decode_diagnostics.py: the per-cell probe must tell encoded attributes from absent ones."""
from __future__ import annotations

import importlib
import pathlib

import torch


def _load():
    return importlib.import_module("research.decode_diagnostics")


def test_cell_probe_reads_encoded_attributes_and_not_absent_ones():
    diagnostics = _load()
    gen = torch.Generator().manual_seed(0)
    n = 1200
    labels = torch.stack([torch.randint(0, 5, (n,), generator=gen), torch.randint(0, 4, (n,), generator=gen),
                          torch.randint(0, 3, (n,), generator=gen)], dim=1)
    # colour and size one-hot in the features (scaled, with noise), shape absent: only noise stands for it
    colour = torch.nn.functional.one_hot(labels[:, 0], 5).float() * 3
    size = torch.nn.functional.one_hot(labels[:, 2], 3).float() * 3
    features = torch.cat([colour, size, torch.randn(n, 8, generator=gen)], dim=1)
    features = features + 0.3 * torch.randn(features.shape, generator=gen)
    with torch.no_grad():  # as a caller holding the model's features would
        accuracy = diagnostics.cell_probe_accuracy(features, labels)
    assert accuracy["colour"] > 0.95 and accuracy["size"] > 0.95
    assert accuracy["shape"] < 0.5  # three object shapes: chance is 1/3


def _videos_with_motion_questions(count: int):
    import numpy as np

    from vrshq.data import generate_synthetic_video

    videos = [generate_synthetic_video(np.random.default_rng([0, 11, i]), num_frames=16, height=64, width=64)
              for i in range(count)]
    return [v for v in videos if any(e.kind in ("static", "fastest") for e in v.expressions)]


def test_speed_rule_answers_motion_questions_from_true_tracks_only():
    import numpy as np

    diagnostics = _load()
    videos = _videos_with_motion_questions(24)
    true = [np.stack([o.centers for o in v.objects]) for v in videos]
    assert diagnostics.speed_rule_accuracy(videos, true) == {"static": 1.0, "fastest": 1.0}
    swapped = [np.roll(track, 1, axis=0) for track in true]  # every object gets another one's track
    accuracy = diagnostics.speed_rule_accuracy(videos, swapped)
    assert accuracy["static"] < 0.5 and accuracy["fastest"] < 0.5, accuracy
    assert np.isnan(diagnostics.speed_rule_accuracy([], [])["static"])  # no question, no score


def test_spread_rule_survives_noise_that_defeats_the_step_rule():
    import numpy as np

    diagnostics = _load()
    videos = _videos_with_motion_questions(60)
    rng = np.random.default_rng(0)
    noisy = [np.stack([o.centers for o in v.objects])[:, ::2] + rng.normal(0, 4, (len(v.objects), 8, 2))
             for v in videos]
    step = diagnostics.speed_rule_accuracy(videos, noisy)
    spread = diagnostics.speed_rule_accuracy(videos, noisy, "spread")
    assert spread["static"] > step["static"] + 0.1 and spread["fastest"] > step["fastest"], (step, spread)
    swapped = [np.roll(np.stack([o.centers for o in v.objects]), 1, axis=0) for v in videos]
    assert diagnostics.speed_rule_accuracy(videos, swapped, "spread")["static"] < 0.5


def test_motion_probe_runs_on_the_committed_model_and_keeps_the_rule_ceiling(tmp_path):
    from pipelines.inference.config import InferenceConfig
    from pipelines.inference.model_loader import build_model

    diagnostics = _load()
    checkpoint = pathlib.Path(__file__).resolve().parents[2] / "checkpoints" / "tiny-synthetic"
    model = build_model(InferenceConfig(out=str(tmp_path), manifest="m.parquet", checkpoint=str(checkpoint),
                                        device="cpu")).float().eval()
    frames = _videos_with_motion_questions(4)[0].frames
    tokens = diagnostics.visual_tokens(model, frames, patches=False)
    assert tokens.shape[:2] == (16, model.vision.tokens_per_frame)
    patches = diagnostics.visual_tokens(model, frames, patches=True)
    assert patches.shape[1] == (model.vision.cfg.image_size // model.vision.cfg.patch_size) ** 2
    report = diagnostics.motion_from_tokens(model, train_videos=12, heldout_videos=12, steps=30, patches=False)
    assert report["speed_rule_true_centres"] == {"static": 1.0, "fastest": 1.0}
    assert report["spread_rule_true_centres"]["static"] == 1.0 and set(report["spread_rule_probe"]) == {"static", "fastest"}
    assert -1.0 < report["centre_r2"] <= 1.0 and report["centre_rmse_px"] > 0


def test_landed_object_is_the_best_overlap_or_none():
    import numpy as np

    diagnostics = _load()
    objects = np.zeros((3, 8, 8), dtype=bool)
    objects[0, :4, :4] = True
    objects[1, 4:, 4:] = True
    objects[2, :2, 6:] = True
    assert diagnostics.landed_object(objects[1], objects) == 1
    almost = objects[0].copy()
    almost[0, :] = True  # object 0 and a strip over object 2: still object 0 best
    assert diagnostics.landed_object(almost, objects) == 0
    assert diagnostics.landed_object(np.zeros((8, 8), bool), objects) == -1  # empty mask
    assert diagnostics.landed_object(np.ones((8, 8), bool), objects) == -1  # spread over all: IoU <= 0.25 each
    # two objects of 16 cells each: IoU 0.5 with each
    assert diagnostics.landed_object(objects[0] | objects[1], objects, min_iou=0.6) == -1
    assert diagnostics.landed_object(objects[0] | objects[1], objects, min_iou=0.5) == 0  # ...reached at 0.5


def test_landing_follows_the_committed_model_on_referring_expressions(tmp_path):
    from pipelines.inference.config import InferenceConfig
    from pipelines.inference.model_loader import build_model

    diagnostics = _load()
    checkpoint = pathlib.Path(__file__).resolve().parents[2] / "checkpoints" / "tiny-synthetic"
    model = build_model(InferenceConfig(out=str(tmp_path), manifest="m.parquet", checkpoint=str(checkpoint),
                                        device="cpu")).float().eval()
    head = diagnostics.fit_tak_head(model, train_clips=48)
    report = diagnostics.keyframe_landing(model, head, 4)
    assert "_select_keyframes" not in vars(model)  # the spy is gone
    referring = report["referring"]
    assert referring["expressions"] >= 5 and referring["on_target"] >= 0.8, report
    for row in report.values():
        assert row["named_but_missed"] <= row["named"] and row["on_none"] <= 1 - row["on_target"] + 1e-9


def test_retention_scores_the_model_and_stage_g_with_stage_gs_head(tmp_path):
    import itertools

    import numpy as np
    import torch

    from pipelines.training.train_config import ModelSpec, SamplingConfig
    from pipelines.training.train_loop import build_training_model
    from research.config import GroundingPretrainConfig
    from research.grounding_pretrain import grounding_sample, pretrain_grounding
    from vrshq.data import generate_synthetic_video

    diagnostics = _load()
    torch.set_num_threads(1)
    sampling = SamplingConfig(image_ratio=0.0, expression_types=(0, 1))
    videos = (generate_synthetic_video(np.random.default_rng([12, i]), num_frames=16, height=64, width=64)
              for i in itertools.count())
    train = list(itertools.islice(filter(None, (grounding_sample(v, sample_id=i, seed=0, sampling=sampling)
                                                for i, v in enumerate(videos))), 4))
    torch.manual_seed(0)
    model = build_training_model(ModelSpec(preset="tiny", seed=0), device="cpu")
    folder = str(tmp_path / "grounding_pretrain")
    pretrain_grounding(model, GroundingPretrainConfig(steps=20, videos_per_step=4, lr=3e-3, warmup_steps=2,
                                                      eval_every=20),
                       lambda first, share: itertools.repeat(train), heldout=train, folder=folder)
    kept = diagnostics.grounding_retention(model.eval(), folder, heldout_videos=3)
    assert kept["model"] == kept["stage_g"]  # the model is stage G's text path: it keeps all of it
    with torch.no_grad():  # stage 1 moving the LLM: the model's scores are no longer stage G's
        for name, parameter in model.named_parameters():
            if name.startswith("mllm."):
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    moved = diagnostics.grounding_retention(model, folder, heldout_videos=3)
    assert moved["stage_g"] == kept["stage_g"] and moved["model"] != kept["model"], moved
