"""jobs._cli: --config YAML + dotted overrides + flags -> typed config, all problems at once."""
from __future__ import annotations

import dataclasses

import pytest

from jobs._cli import ConfigError, DatasetConfig, build_config, parse_config
from jobs.evaluate import EvaluateConfig
from jobs.report import ReportConfig


def test_precedence_file_then_overrides_then_flags(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("dataset:\n  root: /data/ReVOS\n  split: train\nout: /out/a\nmasks: /runs/r1\n"
                      "progress_every: 5\nstorage_options:\n  anon: false\n")
    cfg = parse_config(EvaluateConfig, ["--config", str(config), "dataset.split=valid", "out=/out/b",
                                        "--out", "/out/c", "--overwrite"], prog="t", description="t")
    assert cfg.dataset == DatasetConfig(format="revos", root="/data/ReVOS", split="valid")
    assert (cfg.out, cfg.masks, cfg.progress_every, cfg.overwrite) == ("/out/c", "/runs/r1", 5, True)
    assert cfg.storage_options == {"anon": False}


def test_string_fields_keep_raw_text_and_lists_repeat():
    cfg = parse_config(ReportConfig, ["--scores", "yes", "--out", "0123", "--overlay", "a/b:1", "--overlay", "c:2",
                                      "--masks", "m", "--dataset.root", "r",
                                      "--storage-options", '{"key": "k", "client_kwargs": {"endpoint_url": "x"}}'],
                       prog="t", description="t")
    assert cfg.scores == "yes" and cfg.out == "0123"  # not YAML's True / 123
    assert cfg.overlay == ("a/b:1", "c:2")
    assert cfg.storage_options["client_kwargs"] == {"endpoint_url": "x"}


def test_every_problem_is_reported_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config(EvaluateConfig, ["--config", str(tmp_path / "missing.yaml")], prog="t", description="t")
    assert "cannot read" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_config(EvaluateConfig, {"dataset": {"format": "davis", "rooot": 1}, "progress_every": "often",
                                      "engine": "spark"})
    problems = info.value.problems
    assert "unknown key dataset.rooot (known: format, name, root, split)" in problems
    assert "dataset.format='davis': must be one of ['revos', 'mevis']" in problems
    assert "progress_every: expected an integer, got 'often'" in problems
    assert "engine='spark': must be one of ['local', 'ray']" in problems
    assert len(problems) == len(set(problems))


def test_config_is_frozen():
    cfg = build_config(EvaluateConfig, {"dataset": {"root": "/d"}, "out": "/o", "pngs": "/p"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.out = "/elsewhere"  # type: ignore[misc]


def test_help_lists_fields(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(ReportConfig, ["--help"], prog="python -m jobs.report", description="d")
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--scores", "--overlay", "--dataset.root", "--storage-options", "(repeatable)"):
        assert flag in text


def test_renamed_flags_are_refused_by_every_job():
    with pytest.raises(ConfigError) as info:
        parse_config(EvaluateConfig, ["--dataset", "revos", "--root", "/d", "--output", "/o", "--masks", "/m"],
                     prog="t", description="t")
    assert info.value.problems == ["--dataset was renamed --dataset.format", "--root was renamed --dataset.root",
                                   "--output was renamed --out"]
    # jobs.report has a --split of its own (the scores partition): it is not a renamed flag there
    cfg = parse_config(ReportConfig, ["--scores", "/s", "--out", "/o", "--split", "valid"], prog="t", description="t")
    assert cfg.split == "valid"
