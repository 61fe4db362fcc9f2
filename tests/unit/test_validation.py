"""One validator for every config: each lists its problems, ``vrshq.validation.validate`` raises them all at once."""
from __future__ import annotations

import pytest

from vrshq.validation import ConfigError, ConfigTypeError, validate


def test_three_bad_fields_are_reported_in_one_error():
    from pipelines.training.train_config import OptimConfig

    with pytest.raises(ConfigError) as info:
        OptimConfig(lr=-1.0, warmup_steps=-5, grad_accum_steps=0)
    problems = info.value.problems
    assert len(problems) == 3, problems
    for field in ("lr=-1.0", "warmup_steps=-5", "grad_accum_steps=0"):
        assert sum(p.startswith(field) for p in problems) == 1, (field, problems)
        assert field in str(info.value)
    assert str(info.value).startswith("invalid OptimConfig:")


def test_a_model_config_reports_every_bad_field_not_the_first_only():
    from vrshq.config import LlmConfig

    with pytest.raises(ConfigError) as info:
        LlmConfig(vocab_size=0, rms_norm_eps=-1.0, attn_implementation="flash")
    assert [p.split()[0].split("=")[0] for p in info.value.problems] == [
        "vocab_size", "rms_norm_eps", "attn_implementation"]


def test_nested_problems_carry_their_field_path():
    from pipelines.training.train_config import TrainConfig, TrainDataConfig

    cfg = TrainConfig(storage_path="/runs", data=TrainDataConfig(root="/d"))
    # A nested config changed behind the frozen dataclass: validate walks into it and names the path.
    object.__setattr__(cfg.optim, "lr", 0.0)
    object.__setattr__(cfg.data.sampling, "max_expressions", 0)
    object.__setattr__(cfg, "max_steps", 0)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    problems = info.value.problems
    assert any(p.startswith("optim.lr=0.0") for p in problems), problems
    assert any(p.startswith("data.sampling.max_expressions=0") for p in problems), problems
    assert any(p.startswith("max_steps=0") for p in problems), problems
    assert len(problems) == 3


def test_a_wrong_type_is_a_type_error_and_still_a_config_error():
    from vrshq.vision_config import TokenMergeConfig

    with pytest.raises(ConfigTypeError) as info:
        TokenMergeConfig(cluster_counts=[4], knn_k=(0,), centroid_position_scale=-1.0)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert len(info.value.problems) == 3, info.value.problems


def test_the_command_line_lists_bad_fields_of_several_nested_configs_at_once():
    from jobs._cli import parse_config
    from pipelines.training.train_config import TrainConfig

    with pytest.raises(ConfigError) as info:
        parse_config(TrainConfig, ["--storage-path", "/r", "--data.root", "/d", "--optim.lr", "-1",
                                   "--data.sampling.max-expressions", "0", "--max-steps", "0"],
                     prog="t", description="t")
    problems = info.value.problems
    assert any(p.startswith("optim.lr=-1.0") for p in problems), problems
    assert any(p.startswith("data.sampling.max_expressions=0") for p in problems), problems
    assert any(p.startswith("max_steps=0") for p in problems), problems
