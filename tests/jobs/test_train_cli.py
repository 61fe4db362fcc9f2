"""``jobs.train`` command line: bad configurations fail before any Ray work."""
from __future__ import annotations

import pytest

from tests.job_help import assert_help_lists_every_setting


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


def test_yaml_exponent_numbers_without_a_dot_are_floats(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; float fields take it as the number it means."""
    from jobs._cli import ConfigError, parse_config
    from pipelines.training.train_config import TrainConfig

    config = tmp_path / "train.yaml"
    config.write_text("storage_path: /tmp/runs\ndata:\n  root: /d\noptim:\n  lr: 1e-3\n  text_lr: 2E-4\n")
    cfg = parse_config(TrainConfig, ["--config", str(config), "--optim.sam2-lr", "5e-5"], prog="t", description="t")
    assert (cfg.optim.lr, cfg.optim.text_lr, cfg.optim.sam2_lr) == (0.001, 0.0002, 5e-05)
    config.write_text("storage_path: /tmp/runs\ndata:\n  root: /d\noptim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="lr.*expected a number, got 'fast'"):
        parse_config(TrainConfig, ["--config", str(config)], prog="t", description="t")


@pytest.mark.parametrize("job", ["jobs.train", "jobs.infer", "jobs.evaluate", "jobs.report", "jobs.export",
                                 "jobs.compact", "jobs.demo"])
def test_help_lists_every_setting(job, capsys):
    """Every job parses with the shared parser, whose --help lists each setting."""
    assert_help_lists_every_setting(job, capsys)


def test_the_revos_recipe_parses_validates_and_holds_the_methods_numbers():
    """``jobs/configs/train_revos.yaml`` is what ``python -m jobs.train --config`` reads; nothing trains here."""
    import pathlib

    from jobs._cli import parse_config
    from pipelines.training.train_config import TrainConfig, model_config_from_spec

    recipe = pathlib.Path(__file__).resolve().parents[2] / "jobs" / "configs" / "train_revos.yaml"
    cfg = parse_config(TrainConfig, ["--config", str(recipe)], prog="python -m jobs.train", description="")
    assert (cfg.model.preset, cfg.model.trainable, cfg.model.train_window) == ("vrshq-7b", "lora", 3)
    optim = cfg.optim
    assert (optim.lr, optim.betas, optim.weight_decay, optim.warmup_steps, optim.clip_grad_norm) == (
        3e-4, (0.9, 0.95), 0.0, 100, 1.0)
    assert cfg.num_workers * optim.grad_accum_steps * cfg.data.videos_per_batch == 128  # samples a step
    assert (cfg.max_steps, cfg.decay_steps) == (15000, 15000)
    sampling = cfg.data.sampling
    assert (sampling.min_frames, sampling.max_frames, sampling.max_expressions) == (8, 12, 3)
    assert (cfg.data.format, cfg.data.split, cfg.validation.split, cfg.validation.expression_types) == (
        "revos", "train", "valid", (0, 1))
    assert cfg.use_gpu and cfg.validation.every_steps > 0
    lora = model_config_from_spec(cfg.model).trainable  # the preset's LoRA, method §6
    assert (lora.mode, lora.lora_r, lora.lora_alpha, lora.lora_dropout) == ("lora", 8, 16, 0.05)
