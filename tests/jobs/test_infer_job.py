"""``ray job submit -- python -m jobs.infer`` on a real local Ray head, data and outputs on the S3 test
server: killed mid-run, rerun to completion, outputs checked row by row against the same model run
in-process and against ``vrshq.metrics``; a corrupt input gives error rows and a nonzero exit."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import time
import uuid

import numpy as np
import pytest

from pipelines.inference.config import InferenceConfig
from pipelines.inference.model_loader import build_model
from pipelines.io.rle import decode_masks
from pipelines.inference.video_io import resize_frames
from pipelines.io.writers import list_parts, read_output
from tests.ray_cluster import ray_head  # noqa: F401 - pytest fixture
from vrshq import metrics
from vrshq.data import load_expression_masks, load_frames, load_mask_dict, read_revos, write_synthetic_revos

pytestmark = pytest.mark.slow

REPO = str(pathlib.Path(__file__).resolve().parents[2])


def _wait_status(client, job_id: str, wanted: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id)).rsplit(".", 1)[-1]
        if status in wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_infer_job_submit_kill_rerun_and_check_rows(ray_head, s3_server):  # noqa: F811
    from ray.job_submission import JobSubmissionClient

    bucket = s3_server.make_bucket()
    root, output = f"{bucket}/ReVOS", f"{bucket}/runs/tiny"
    write_synthetic_revos(root, num_videos=8, num_frames=8, height=64, width=96, seed=11, split="valid",
                          storage_options=s3_server.storage_options)
    videos = read_revos(root, split="valid", storage_options=s3_server.storage_options)
    corrupt = videos[-1]
    fs = s3_server.filesystem()
    fs.pipe(f"{root}/JPEGImages/{corrupt.video_id}/{corrupt.frame_names[0]}.jpg".removeprefix("s3://"), b"not a jpeg")

    # Credentials reach the job as AWS_* variables of its runtime env (the default provider chain), never
    # on the command line; only the endpoint is a storage option.
    endpoint = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url, "region_name": "us-east-1"}}
    runtime_env = {
        "env_vars": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "VRSHQ_TEST": "1"},
        "excludes": [".venv", ".git", "*.parquet", "__pycache__"],
    }
    entrypoint = [
        "python", "-m", "jobs.infer", "--dataset.format", "revos", "--dataset.root", root, "--dataset.split", "valid",
        "--out", output, "--preset", "tiny", "--seed", "5", "--storage-options", json.dumps(endpoint),
        "--code-version", "test-sha", "--progress-every", "1",
        "compute.read_num_cpus=0.25", "compute.writer_num_cpus=0.25", "compute.videos_per_file=1",
    ]
    client = JobSubmissionClient(ray_head.dashboard_url)

    # -- run 1: killed as soon as it has committed its first video
    first = f"infer-killed-{uuid.uuid4().hex[:6]}"
    submitted = ray_head.submit_job(entrypoint, working_dir=REPO, runtime_env=runtime_env, no_wait=True,
                                    submission_id=first)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    deadline = time.monotonic() + 180
    while not list_parts(output, "scores", storage_options=s3_server.storage_options):
        assert time.monotonic() < deadline, client.get_job_logs(first)[-3000:]
        assert _wait_status(client, first, {"FAILED", "SUCCEEDED"}, timeout=0) not in {"FAILED", "SUCCEEDED"}, \
            client.get_job_logs(first)[-3000:]
        time.sleep(0.3)
    driver = client.get_job_info(first).driver_info
    assert driver is not None and driver.pid, "the job's driver has not registered with Ray"
    os.kill(int(driver.pid), signal.SIGKILL)  # a crash: no cleanup, the lock stays behind
    assert _wait_status(client, first, {"STOPPED", "FAILED", "SUCCEEDED"}) == "FAILED"
    killed = json.loads(fs.cat(f"{output}/run.json".removeprefix("s3://")))
    assert killed["status"] == "running"  # the driver died without finishing
    assert fs.exists(f"{output}/_lock.json".removeprefix("s3://"))

    # -- run 2: `ray job submit` (blocking) completes the work; the corrupt video makes it exit nonzero
    result = ray_head.submit_job(entrypoint, working_dir=REPO, runtime_env=runtime_env, timeout=300)
    logs = result.stdout + result.stderr
    assert result.returncode != 0, logs[-3000:]
    assert f"finished with {len(corrupt.expressions)} error row(s)" in logs, logs[-3000:]  # one per expression
    assert "progress: " in logs and " completed in " in logs
    run = json.loads(fs.cat(f"{output}/run.json".removeprefix("s3://")))
    assert run["status"] == "completed" and run["run_id"] != killed["run_id"]
    killed_record = json.loads(fs.cat(f"{output}/runs/{killed['run_id']}.json".removeprefix("s3://")))
    assert killed_record["status"] == "interrupted" and killed_record["interrupted_by"] == run["run_id"]
    assert run["counts"]["pairs_skipped"] >= 1  # run 1's committed work was not redone
    assert run["code_version"] == "test-sha" and run["model"] == "tiny-seed5" and run["checkpoint"] is None
    assert "testing" not in json.dumps(run) and "testing" not in logs  # no credentials

    # -- outputs, row by row
    opts = s3_server.storage_options
    masks = read_output(output, "masks", storage_options=opts)
    keys = list(zip(*(masks.column(c).to_pylist() for c in ("video_id", "exp_id", "frame_index"))))
    assert len(keys) == len(set(keys)), "duplicate mask rows after kill + rerun"
    scores = {(r["video_id"], r["exp_id"]): r for r in read_output(output, "scores", storage_options=opts).to_pylist()}
    good = videos[:-1]
    assert set(scores) == {(v.video_id, e.exp_id) for v in good for e in v.expressions}
    errors = read_output(output, "errors", storage_options=opts).to_pylist()
    assert {(e["video_id"], e["exp_id"], e["stage"]) for e in errors} == {
        (corrupt.video_id, e.exp_id, "decode") for e in corrupt.expressions}  # each expression it cost, named
    assert errors[-1]["uri"].endswith(f"{corrupt.frame_names[0]}.jpg")

    rows: dict[tuple[str, str], list[dict]] = {}
    for row in masks.to_pylist():
        rows.setdefault((row["video_id"], row["exp_id"]), []).append(row)
    model = build_model(InferenceConfig(out="unused", manifest="unused", preset="tiny", seed=5), device="cpu")
    mask_dict = load_mask_dict(videos[0].mask_dict_uri, storage_options=opts)
    for video in good:
        frames = load_frames(video, storage_options=opts)
        results = model.segment_video(resize_frames(frames, max_side=64), [e.text for e in video.expressions],
                                      output_hw=(64, 96))
        for expression, result in zip(video.expressions, results):
            key = (video.video_id, expression.exp_id)
            frame_rows = sorted(rows[key], key=lambda r: r["frame_index"])
            assert [r["frame_index"] for r in frame_rows] == list(range(video.num_frames))
            assert [r["frame_name"] for r in frame_rows] == list(video.frame_names)
            got = decode_masks([r["rle_counts"] for r in frame_rows], height=64, width=96)
            want = result.masks
            np.testing.assert_array_equal(got, want, err_msg=str(key))
            np.testing.assert_allclose([r["score"] for r in frame_rows], result.object_scores, rtol=1e-5, atol=1e-5)
            assert [r["is_keyframe"] for r in frame_rows].index(True) == result.keyframe_idx
            reference = metrics.score_expression(load_expression_masks(video, expression, mask_dict=mask_dict,
                                                                       storage_options=opts), want)
            assert (scores[key]["j"], scores[key]["f"], scores[key]["jf"]) == pytest.approx(
                (reference.j, reference.f, reference.jf))
