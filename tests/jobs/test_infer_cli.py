"""``python -m jobs.infer``: help, bad configs, bad checkpoints and a locked output fail fast, before Ray."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

import jobs.infer as infer
from pipelines.io.output_lock import OutputLock


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the job gets as far as connecting to Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("jobs.infer reached ray.init although the run should have been refused")

    monkeypatch.setattr(infer, "init_ray", refuse)


def test_help_lists_the_config_fields():
    result = subprocess.run([sys.executable, "-m", "jobs.infer", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--manifest", "--dataset.format", "--dataset.root", "--dataset.split", "--out", "--checkpoint", "--preset", "--seed",
                 "--compute.num-actors", "--compute.num-gpus-per-actor", "ray job submit"):
        assert flag in result.stdout


def test_bad_config_lists_every_problem(no_ray, capsys):
    code = infer.main(["--out", "/tmp/x", "--manifest", "/tmp/m", "--dataset.root", "/d", "--preset", "huge",
                       "--dataset.split", "../up", "unknown_key=1"])
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE
    assert "unknown key unknown_key" in err and "preset='huge'" in err and "dataset.split='../up'" in err
    assert "exactly one input" in err
    code = infer.main(["--out", "/tmp/x", "--manifest", "/tmp/m", "compute.num_actors=0"])
    assert code == infer.EXIT_USAGE and "compute.num_actors must be an integer >= 1" in capsys.readouterr().err


def test_missing_checkpoint_fails_before_any_work(no_ray, tmp_path, capsys):
    out = tmp_path / "out"
    code = infer.main(["--manifest", str(tmp_path), "--out", str(out), "--checkpoint", str(tmp_path / "nope")])
    assert code == infer.EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert not (out / "masks").exists() and not (out / "run.json").exists()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['VRSHQ_PWNED_MARKER']}",))


def test_pickle_payload_and_garbage_checkpoints_are_refused(no_ray, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VRSHQ_PWNED_MARKER", str(marker))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": _Payload()}))
    code = infer.main(["--manifest", str(tmp_path), "--out", str(tmp_path / "o1"), "--checkpoint", str(evil)])
    assert code == infer.EXIT_USAGE and not marker.exists()  # refused, and the payload never ran
    err = capsys.readouterr().err
    assert "evil.pt" in err and ("refused" in err or "weights-only" in err)
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    code = infer.main(["--manifest", str(tmp_path), "--out", str(tmp_path / "o2"), "--checkpoint", str(garbage)])
    assert code == infer.EXIT_USAGE
    assert "safetensors" in capsys.readouterr().err


def test_a_second_run_on_a_locked_output_is_refused(monkeypatch, tmp_path, capsys, synthetic_revos_local):
    monkeypatch.setattr(infer, "init_ray", lambda *a, **k: None)  # refused before any Ray work anyway
    out = tmp_path / "out"
    with OutputLock(str(out), run_id="the-other-run", stale_after_s=600):
        code = infer.main(["--dataset.format", "revos", "--dataset.root", str(synthetic_revos_local), "--out", str(out)])
    assert code == infer.EXIT_LOCKED
    assert "locked by run 'the-other-run'" in capsys.readouterr().err
    assert not (out / "masks").exists()


@pytest.mark.parametrize("name", ["infer_revos.yaml", "infer_tiny_demo.yaml"])
def test_shipped_configs_parse(name):
    from jobs._cli import parse_config
    from pipelines.inference.config import InferenceConfig

    path = os.path.join(os.path.dirname(infer.__file__), "configs", name)
    cfg = parse_config(InferenceConfig, ["--config", path], prog="jobs.infer", description="")
    assert cfg.dataset.format == "revos" and cfg.dataset.split == "valid" and cfg.compute.num_actors >= 1


@pytest.mark.parametrize("argv, expected", [
    (["--output", "/tmp/x", "--manifest", "/tmp/m"], ["--output was renamed --out"]),
    (["--output=/tmp/x", "--manifest", "/tmp/m"], ["--output was renamed --out"]),
    (["--dataset", "revos", "--root", "/d", "--split", "valid", "--out", "/tmp/x"],
     ["--dataset was renamed --dataset.format", "--root was renamed --dataset.root",
      "--split was renamed --dataset.split"]),
    (["output=/tmp/x", "root=/d", "dataset=mevis"],
     ["key output was renamed out", "key root was renamed dataset.root", "key dataset was renamed dataset.format"]),
])
def test_old_names_fail_and_name_the_new_ones(no_ray, capsys, argv, expected):
    code = infer.main(argv)
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE
    for text in expected:
        assert text in err
    assert "unrecognized arguments" not in err and "unknown key" not in err  # the rename is the one message


def test_old_names_still_get_the_other_problems_checked(no_ray, capsys):
    code = infer.main(["--output", "/tmp/x", "--dataset.root", "/d", "--preset", "huge"])
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE
    assert "--output was renamed --out" in err and "preset='huge'" in err
    assert "missing required key out" not in err  # checked as if --out had been given


def test_old_keys_in_a_config_file_name_the_new_ones(tmp_path):
    from jobs._cli import ConfigError, parse_config
    from pipelines.inference.config import InferenceConfig

    old = tmp_path / "old.yaml"
    old.write_text("dataset: revos\nroot: /data/ReVOS\nsplit: valid\noutput: /tmp/o\n")
    with pytest.raises(ConfigError) as info:
        parse_config(InferenceConfig, ["--config", str(old)], prog="jobs.infer", description="")
    assert sorted(info.value.problems) == ["key dataset was renamed dataset.format", "key output was renamed out",
                                           "key root was renamed dataset.root", "key split was renamed dataset.split"]


def test_one_dataset_spec_and_exactly_one_input(tmp_path):
    from jobs._cli import ConfigError, DatasetConfig, parse_config
    from pipelines.inference.config import DatasetConfig as PipelinesDatasetConfig
    from pipelines.inference.config import InferenceConfig

    assert DatasetConfig is PipelinesDatasetConfig  # the jobs share one class
    cfg = parse_config(InferenceConfig, ["--dataset.format", "mevis", "--dataset.root", "/m", "--dataset.split",
                                         "valid_u", "--dataset.name", "mevis_u", "--out", "/o"], prog="p", description="")
    assert cfg.dataset == DatasetConfig(format="mevis", root="/m", split="valid_u", name="mevis_u")
    assert cfg.dataset.table_name == "mevis_u" and cfg.public_dict()["dataset"]["root"] == "/m"
    with pytest.raises(ConfigError, match="exactly one input"):
        parse_config(InferenceConfig, ["--dataset.root", "/d", "--manifest", "/m", "--out", "/o"], prog="p",
                     description="")
    with pytest.raises(ConfigError, match="dataset.root is required"):
        parse_config(InferenceConfig, ["--dataset.split", "valid", "--out", "/o"], prog="p", description="")
    with pytest.raises(ConfigError, match=r"dataset.format='davis': must be one of \['revos', 'mevis'\]"):
        parse_config(InferenceConfig, ["--dataset.format", "davis", "--dataset.root", "/d", "--out", "/o"],
                     prog="p", description="")
    # the scheduled-annotation example: a cluster config with a dataset, its input replaced by a manifest
    path = os.path.join(os.path.dirname(infer.__file__), "configs", "infer_revos.yaml")
    cfg = parse_config(InferenceConfig, ["--config", path, "dataset=null", "--manifest", "s3://b/new.parquet"],
                       prog="p", description="")
    assert cfg.dataset is None and cfg.manifest == "s3://b/new.parquet"
