"""``python -m jobs.infer --checkpoint <release folder> --anchor <CLIP-336 folder>``: the released format
end to end on CPU (tiny sizes), and missing release files refused before any work with exit status 2."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import jobs.infer as infer
from pipelines.io.rle import decode_masks
from pipelines.inference.video_io import resize_frames
from pipelines.io.writers import read_output
from tests.ray_cluster import ray_head, ray_on_head  # noqa: F401 - pytest fixtures
from tests.release_fixture import build_source_model, write_anchor_folder, write_release_folder
from vrshq.data import load_frames, read_revos, write_synthetic_revos
from vrshq.checkpoint.official_names import VRSHQ_ANCHOR_PREFIX


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release-job")
    source = build_source_model(seed=7)
    data = root / "ReVOS"
    write_synthetic_revos(str(data), num_videos=1, num_frames=6, height=64, width=96, seed=4, split="valid")
    return {"source": source, "root": root, "data": data,
            "checkpoint": write_release_folder(root / "VRS-HQ", source),
            "anchor": write_anchor_folder(root / "clip-vit-large-patch14-336", source)}


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("jobs.infer reached ray.init although the run should have been refused")

    monkeypatch.setattr(infer, "init_ray", refuse)


def _argv(release, out, checkpoint=None, anchor=None) -> list[str]:
    argv = ["--dataset.format", "revos", "--dataset.root", str(release["data"]), "--dataset.split", "valid",
            "--out", str(out), "--preset", "tiny", "--device", "cpu",
            "--checkpoint", str(checkpoint or release["checkpoint"])]
    return argv + (["--anchor", str(anchor)] if anchor is not None else [])


def test_missing_release_files_stop_the_job_before_any_work(release, no_ray, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer.main(_argv(release, out)) == infer.EXIT_USAGE  # no --anchor
    err = capsys.readouterr().err
    assert "--anchor" in err and "openai/clip-vit-large-patch14-336" in err and "--anchor random" in err

    broken = tmp_path / "VRS-HQ"
    shutil.copytree(release["checkpoint"], broken)
    (broken / "tokenizer.model").unlink()
    assert infer.main(_argv(release, out, checkpoint=broken, anchor=release["anchor"])) == infer.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{broken}/tokenizer.model" in err and "VRS-HQ" in err

    assert infer.main(_argv(release, out, anchor=tmp_path / "no-clip")) == infer.EXIT_USAGE
    err = capsys.readouterr().err
    assert str(tmp_path / "no-clip") in err and "openai/clip-vit-large-patch14-336" in err

    anchor = tmp_path / "clip"
    shutil.copytree(release["anchor"], anchor)
    (anchor / "pytorch_model.bin").unlink()
    assert infer.main(_argv(release, out, anchor=anchor)) == infer.EXIT_USAGE
    assert f"{anchor}/pytorch_model.bin" in capsys.readouterr().err
    assert not (out / "masks").exists() and not (out / "run.json").exists()


@pytest.mark.slow
def test_release_folder_runs_end_to_end(release, ray_on_head, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert infer.main(_argv(release, out, anchor=release["anchor"]) + ["--compute.num-actors", "1"]) == infer.EXIT_OK
    masks = read_output(str(out), "masks").to_pylist()
    scores = read_output(str(out), "scores").to_pylist()
    (video,) = read_revos(str(release["data"]), split="valid")
    assert {(r["video_id"], r["exp_id"]) for r in scores} == {(video.video_id, e.exp_id) for e in video.expressions}

    # The same weights by hand: the source model with what the release stores in bf16 rounded to bf16.
    model = release["source"]
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.startswith(("sam2.", "seg_head.", VRSHQ_ANCHOR_PREFIX)):
                tensor.copy_(tensor.to(torch.bfloat16).float())
    frames = load_frames(video)
    results = model.segment_video(resize_frames(frames, max_side=64), [e.text for e in video.expressions],
                                  output_hw=(64, 96))
    for expression, result in zip(video.expressions, results, strict=True):
        rows = sorted((r for r in masks if r["exp_id"] == expression.exp_id), key=lambda r: r["frame_index"])
        got = decode_masks([r["rle_counts"] for r in rows], height=64, width=96)
        np.testing.assert_array_equal(got, result.masks, err_msg=expression.exp_id)
        assert [r["is_keyframe"] for r in rows].index(True) == result.keyframe_idx


def test_anchor_and_sam2_need_a_checkpoint(no_ray, tmp_path, capsys):
    code = infer.main(["--manifest", str(tmp_path), "--out", str(tmp_path / "o"), "--anchor", "random",
                       "--sam2", "/models/sam2_hiera_large.pt"])
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE
    assert "anchor='random' applies to a released checkpoint" in err and "sam2=" in err
