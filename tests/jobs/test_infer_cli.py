"""``python -m jobs.infer``: help, bad configs, bad checkpoints and a locked output fail fast, before Ray."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

import jobs.infer as infer
from pipelines.output_lock import OutputLock


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the job gets as far as connecting to Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("jobs.infer reached ray.init although the run should have been refused")

    monkeypatch.setattr(infer, "init_ray", refuse)


def test_help_lists_the_config_fields():
    result = subprocess.run([sys.executable, "-m", "jobs.infer", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--manifest", "--dataset", "--output", "--checkpoint", "--preset", "--seed",
                 "--compute.num-actors", "--compute.num-gpus-per-actor", "ray job submit"):
        assert flag in result.stdout


def test_bad_config_lists_every_problem(no_ray, capsys):
    code = infer.main(["--output", "/tmp/x", "--preset", "huge", "--split", "../up", "unknown_key=1"])
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE
    assert "unknown key unknown_key" in err and "preset='huge'" in err and "split='../up'" in err
    assert "exactly one input" in err
    code = infer.main(["--output", "/tmp/x", "--manifest", "/tmp/m", "compute.num_actors=0"])
    assert code == infer.EXIT_USAGE and "compute.num_actors must be an integer >= 1" in capsys.readouterr().err


def test_missing_checkpoint_fails_before_any_work(no_ray, tmp_path, capsys):
    out = tmp_path / "out"
    code = infer.main(["--manifest", str(tmp_path), "--output", str(out), "--checkpoint", str(tmp_path / "nope")])
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
    code = infer.main(["--manifest", str(tmp_path), "--output", str(tmp_path / "o1"), "--checkpoint", str(evil)])
    assert code == infer.EXIT_USAGE and not marker.exists()  # refused, and the payload never ran
    err = capsys.readouterr().err
    assert "evil.pt" in err and ("refused" in err or "weights-only" in err)
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    code = infer.main(["--manifest", str(tmp_path), "--output", str(tmp_path / "o2"), "--checkpoint", str(garbage)])
    assert code == infer.EXIT_USAGE
    assert "safetensors" in capsys.readouterr().err


def test_a_second_run_on_a_locked_output_is_refused(monkeypatch, tmp_path, capsys, synthetic_revos_local):
    monkeypatch.setattr(infer, "init_ray", lambda *a, **k: None)  # refused before any Ray work anyway
    out = tmp_path / "out"
    with OutputLock(str(out), run_id="the-other-run", stale_after_s=600):
        code = infer.main(["--dataset", "revos", "--root", str(synthetic_revos_local), "--output", str(out)])
    assert code == infer.EXIT_LOCKED
    assert "locked by run 'the-other-run'" in capsys.readouterr().err
    assert not (out / "masks").exists()


@pytest.mark.parametrize("name", ["infer_revos.yaml", "infer_tiny_demo.yaml"])
def test_shipped_configs_parse(name):
    from jobs._cli import parse_config
    from pipelines.config import InferenceConfig

    path = os.path.join(os.path.dirname(infer.__file__), "configs", name)
    cfg = parse_config(InferenceConfig, ["--config", path], prog="jobs.infer", description="")
    assert cfg.dataset == "revos" and cfg.compute.num_actors >= 1
