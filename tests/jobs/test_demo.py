"""The README's demo and the committed checkpoint it runs: the checkpoint loads through the
inference loader, has learnt the synthetic task (well above the same architecture at random init),
and the demo builds its data from the task the checkpoint records."""
from __future__ import annotations

import argparse
import re

import pytest

from jobs import demo
from research.learnability import TASK_FILE, heldout_videos
from tests.ray_cluster import ray_head, ray_on_head  # noqa: F401 - pytest fixtures

CHECKPOINT = demo.DEFAULT_CHECKPOINT


def _model(checkpoint: str | None):
    from pipelines.inference.config import InferenceConfig
    from pipelines.inference.model_loader import build_model

    cfg = InferenceConfig(out="o", manifest="m.parquet", checkpoint=checkpoint, device="cpu", seed=0,
                          preset="tiny")
    return build_model(cfg)


def test_committed_checkpoint_is_small_and_records_its_task():
    assert CHECKPOINT.is_dir(), "checkpoints/tiny-synthetic is the demo's default model"
    weights = CHECKPOINT / "model.safetensors"
    assert weights.stat().st_size < 20 * 2**20  # the limit for a checkpoint kept in git
    payload = demo.read_task_file(str(CHECKPOINT))
    assert payload["task"] == {"frames": 16, "size": (64, 64), "expression_types": (0, 1)}
    assert 0 < payload["heldout"]["jf"] <= 1 and payload["heldout"]["videos"] >= 32


def test_committed_checkpoint_segments_unseen_videos_far_better_than_random_init():
    import torch

    from pipelines.training.train_loop import validate

    torch.manual_seed(0)
    # Videos of the held-out stream beyond the 64 the checkpoint was scored on: unseen by training and scoring.
    videos = heldout_videos(seed=0, count=70, num_frames=16, size=64)[64:68]
    trained = validate(_model(str(CHECKPOINT)), videos)
    from vrshq.builders import build_vrshq
    from vrshq.checkpoint.load import load_vrshq_config

    torch.manual_seed(0)  # the same architecture (the checkpoint's config.json), random weights
    random_model = build_vrshq(load_vrshq_config(str(CHECKPOINT))).eval()
    untrained = validate(random_model, videos)
    assert trained["jf"] >= 0.4, trained
    assert untrained["jf"] <= 0.3, untrained
    assert trained["jf"] - untrained["jf"] >= 0.2
    # Masks follow the text: two expressions of a video do not get the same region.
    assert trained["pred_pair_iou"] < 0.7


def _args(**flags) -> argparse.Namespace:
    base = {"size": None, "frames": None, "expression_types": None, "videos": 3, "seed": 1}
    return argparse.Namespace(**{**base, **flags})


def test_demo_data_follows_flags_then_the_checkpoint_task_then_defaults(tmp_path):
    task = demo.read_task_file(str(CHECKPOINT))["task"]
    assert demo.demo_data(_args(), task) == demo.DemoData(3, 16, 64, 64, 1, (0, 1))
    assert demo.demo_data(_args(size=(48, 80), expression_types=(0, 1, 2)), task) == demo.DemoData(
        3, 16, 48, 80, 1, (0, 1, 2))
    assert demo.demo_data(_args(), {}) == demo.DemoData(3, 16, 128, 160, 1, (0, 1, 2))  # random weights
    assert demo.read_task_file(str(tmp_path)) == {}  # a checkpoint of another origin
    (tmp_path / TASK_FILE).write_text('{"task": {"video_size": "big"}}')
    with pytest.raises(SystemExit, match=f"{TASK_FILE} is unreadable"):
        demo.read_task_file(str(tmp_path))


@pytest.mark.slow
def test_demo_end_to_end_with_the_committed_checkpoint(ray_on_head, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--videos", "3"]) == 0
    printed = capsys.readouterr().out
    overall = re.search(r"^overall\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)", printed, re.M)
    assert overall, printed
    assert float(overall.group(3)) >= 35  # J&F in percent: a trained model (random weights score < 10)
    assert "published held-out scores of this checkpoint (64 unseen videos)" in printed
    assert "3 videos, 16 frames of 64x64, expression types 0,1" in printed
    assert demo.DemoData(3, 16, 64, 64, 2025, (0, 1)).matches(out / "data")
    # A second run on other data starts a clean run folder (infer would otherwise resume by repeated ids).
    assert demo.main(["--out", str(out), "--videos", "2", "--expression-types", "0"]) == 0
    printed = capsys.readouterr().out
    assert demo.DemoData(2, 16, 64, 64, 2025, (0,)).matches(out / "data")  # rewritten, not mixed
    rows = dict(re.findall(r"^(referring|reasoning|overall)\s+.*?(\d+)$", printed, re.M))
    assert int(rows["overall"]) == int(rows["referring"]) > 0, printed  # referring expressions only


def test_published_scores_compare_like_with_the_printed_table():
    """The report's ``overall`` row is the mean of the type rows; the published line must offer that mean too."""
    heldout = {"videos": 64, "j": 0.6, "f": 0.7, "jf": 0.65, "jf_referring": 0.8, "jf_reasoning": 0.4}
    printed = demo._published_scores({"heldout": heldout})
    assert "J&F referring 80.0  reasoning 40.0  overall 60.0 (the mean of the two" in printed
    assert "per expression: J 0.600  F 0.700  J&F 0.650" in printed
    committed = demo.read_task_file(str(CHECKPOINT))
    assert f"overall {100 * committed['heldout']['jf_revos']:.1f}" in demo._published_scores(committed)
    assert demo._published_scores({"heldout": {"jf": 0.5}}) == ""  # no scores, no line


def test_a_local_demo_runs_one_model_actor_per_core_and_a_submitted_one_keeps_the_defaults(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert demo.local_compute_args(16, cpus=1) == []
    assert demo.local_compute_args(16, cpus=2) == ["--compute.num-actors", "2", "--compute.num-cpus-per-actor",
                                                   "0.75", "--compute.read-num-cpus", "0.25",
                                                   "--compute.writer-num-cpus", "0.25"]
    assert demo.local_compute_args(3, cpus=8)[:2] == ["--compute.num-actors", "3"]  # no more actors than videos
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert demo.local_compute_args(16, cpus=8) == []


def test_the_demo_parses_its_flags_with_the_shared_job_parser(capsys):
    args = demo._parse(["--size", "48x80", "--expression-types", "1,0", "--frames", "8", "--out", "o"])
    assert (args.size, args.expression_types, args.frames, args.videos, args.seed, args.out) == (
        (48, 80), (0, 1), 8, 16, 2025, "o")
    defaults = demo._parse([])
    assert (defaults.out, defaults.size, defaults.expression_types, defaults.checkpoint) == ("out/demo", None, None, None)
    with pytest.raises(SystemExit) as info:
        demo._parse(["--size", "12", "--expression-types", "0,5", "--videos", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "size='12'" in err and "expression_types='0,5'" in err and "videos=0" in err  # every problem at once


def test_a_local_demo_starts_its_ray_without_the_dashboard_and_a_submitted_one_starts_none(monkeypatch, tmp_path):
    from jobs import infer

    calls: list[dict] = []
    monkeypatch.setattr(demo, "init_ray", lambda **options: calls.append(options))
    monkeypatch.setattr(demo, "local_compute_args", lambda videos: [])
    monkeypatch.setattr(infer, "main", lambda argv: infer.EXIT_USAGE)  # stop after the Ray start
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert demo.main(["--out", str(tmp_path / "demo"), "--videos", "1"]) == infer.EXIT_USAGE
    assert calls == [{"include_dashboard": False}]
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # ray job submit: the cluster is given
    assert demo.main(["--out", str(tmp_path / "demo"), "--videos", "1"]) == infer.EXIT_USAGE
    assert calls == [{"include_dashboard": False}]
