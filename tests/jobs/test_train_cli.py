"""``jobs.train`` and ``jobs.learnability`` command lines: bad configurations fail before any Ray work,
and the learnability run writes a model that the inference loader reads."""
from __future__ import annotations

import json
import os

import pytest


def test_train_rejects_a_bad_command_line_with_every_problem(capsys, monkeypatch):
    import jobs.train as train

    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached ray.init"))
    status = train.main(["model.preset=huge", "optim.grad_accum_steps=0", "--storage-path", "/tmp/x",
                         "--data.root", "/nowhere"])
    err = capsys.readouterr().err
    assert status == train.EXIT_USAGE
    assert "preset='huge'" in err and "grad_accum_steps=0" in err


def test_train_preflight_refuses_unreadable_data(tmp_path, capsys, monkeypatch):
    import jobs.train as train

    monkeypatch.setattr("jobs.train.init_ray", lambda *a, **k: pytest.fail("reached ray.init"))
    status = train.main(["--storage-path", str(tmp_path / "runs"), "--data.root", str(tmp_path / "missing"),
                         "--data.split", "train"])
    assert status == train.EXIT_USAGE
    assert "data: cannot read" in capsys.readouterr().err


def test_learnability_smoke_run_writes_a_loadable_model(tmp_path, capsys):
    import torch

    from jobs import learnability
    from pipelines.config import InferenceConfig
    from pipelines.model_loader import build_model

    threads = torch.get_num_threads()
    out = tmp_path / "learn"
    try:
        status = learnability.main([
            "--out", str(out), "--preset", "tiny", "--steps", "3", "--videos-per-step", "1", "--video-frames", "6",
            "--video-size", "40", "--heldout-videos", "1", "--eval-every", "2", "--data-workers", "0",
            "--threads", "1", "--warmup-steps", "1",
        ])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "heldout.json").read_text())
    assert final["step"] == summary["step"] == 3 and [e["step"] for e in summary["evaluations"]] == [2, 3]
    assert 0 <= final["jf"] <= 1 and final["jf"] == summary["final"]["jf"]
    assert (out / "curve.png").stat().st_size > 1000
    assert len((out / "log.csv").read_text().strip().splitlines()) == 4  # header + 3 steps
    assert json.loads((out / "checkpoint" / "train_state.json").read_text())["step"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "curve.png", "heldout.json", "log.csv", "model"]
    model = build_model(InferenceConfig(out=str(tmp_path / "o"), manifest="m.parquet",
                                        checkpoint=os.fspath(out / "model"), device="cpu"))
    assert model.cfg.name == "tiny"


def test_learnability_keeps_the_checkpoint_of_its_last_evaluation_when_killed(tmp_path, monkeypatch):
    """Outputs are saved at every evaluation, so a run killed later (here: at step 3) can be resumed."""
    import torch

    from jobs import learnability

    import pipelines.train_loop as train_loop

    calls = {"n": 0}

    original = train_loop.train_step

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(train_loop, "train_step", dying_step)
    threads = torch.get_num_threads()
    out = tmp_path / "learn"
    args = ["--out", str(out), "--preset", "tiny", "--steps", "4", "--videos-per-step", "1", "--video-frames", "6",
            "--video-size", "40", "--heldout-videos", "1", "--eval-every", "2", "--data-workers", "0",
            "--threads", "1", "--warmup-steps", "1"]
    try:
        with pytest.raises(KeyboardInterrupt):
            learnability.main(args)
        assert json.loads((out / "checkpoint" / "train_state.json").read_text())["step"] == 2
        assert json.loads((out / "heldout.json").read_text())["step"] == 2
        monkeypatch.setattr(train_loop, "train_step", original)
        assert learnability.main([*args, "--resume", str(out / "checkpoint")]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((out / "heldout.json").read_text())
    assert summary["step"] == 4 and [e["step"] for e in summary["evaluations"]] == [2, 4]
    assert len((out / "log.csv").read_text().strip().splitlines()) == 5  # header + steps 1, 2 (kept) + 3, 4


def test_yaml_exponent_numbers_without_a_dot_are_floats(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; float fields take it as the number it means."""
    from jobs._cli import ConfigError, parse_config
    from pipelines.train_config import TrainConfig

    config = tmp_path / "train.yaml"
    config.write_text("storage_path: /tmp/runs\ndata:\n  root: /d\noptim:\n  lr: 1e-3\n  text_lr: 2E-4\n")
    cfg = parse_config(TrainConfig, ["--config", str(config), "--optim.sam2-lr", "5e-5"], prog="t", description="t")
    assert (cfg.optim.lr, cfg.optim.text_lr, cfg.optim.sam2_lr) == (0.001, 0.0002, 5e-05)
    config.write_text("storage_path: /tmp/runs\ndata:\n  root: /d\noptim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="lr.*expected a number, got 'fast'"):
        parse_config(TrainConfig, ["--config", str(config)], prog="t", description="t")


def test_a_tuple_field_takes_one_yaml_list_or_repeated_flags():
    from jobs._cli import ConfigError, parse_config
    from jobs.learnability import LearnabilityConfig

    def parse(*argv: str):
        return parse_config(LearnabilityConfig, ["--out", "o", *argv], prog="t", description="t")

    assert parse().expression_types == (0, 1)  # the held-out task, no no-target expressions
    assert parse("--expression-types", "[0, 2]").expression_types == (0, 2)
    assert parse("--expression-types", "0", "--expression-types", "1").expression_types == (0, 1)
    assert parse("--expression-types", "1").expression_types == (1,)
    with pytest.raises(ConfigError, match=r"expression_types=\(0, 3\): must be a non-empty subset"):
        parse("--expression-types", "[0, 3]")
