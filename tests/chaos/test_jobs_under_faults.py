"""Whole ``run_inference`` jobs under faults, on one real local Ray head (one ``ray.init`` for the module).

* a fault-free reference run; every other run's masks and scores must equal it row for row;
* model actors killed mid-batch several times at seeded random points (``VRSHQ_CHAOS_KILL_FILE``);
* the driver of ``python -m jobs.infer`` SIGKILLed mid-run, then rerun to completion;
* the S3 test server behind a proxy that fails / delays / drops a share of requests; a permanently
  unreadable frame becomes an error row;
* hostile inputs in one job: each bad video gives an ``errors/`` row, every good one is scored;
* ids with ``..``, absolute paths and odd characters never write outside the output root;
* credentials never appear in run.json, logs or error rows; a second run on a locked output is refused.

A killed training worker is covered by ``tests/pipelines/test_training_ray.py`` (the training helper's).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.inference.config import ComputeConfig, DatasetConfig, InferenceConfig
from pipelines.inference.run import run_inference
from pipelines.inference.manifest import records_to_manifest
from pipelines.io.output_lock import OutputLock, OutputLockedError
from pipelines.io.pair_index import KEY_COLUMNS, SEP, read_committed
from pipelines.inference.segment_actor import CHAOS_KILL_FILE_ENV
from pipelines.io.writers import list_parts, read_output
from tests.chaos.figures import FIGURES
from tests.chaos.s3_proxy import FaultyS3Proxy
from tests.ray_cluster import ray_driver, ray_head  # noqa: F401 - ray_head: pytest fixture
from vrshq.data import read_revos, write_synthetic_revos

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
SMALL = ComputeConfig(num_actors=1, num_cpus_per_actor=1.0, read_num_cpus=0.25, writer_num_cpus=0.25, videos_per_file=1)
DATA = dict(num_videos=6, num_frames=4, height=32, width=48, seed=21, split="valid")
SECRET_KEY, SECRET = "AKIACHAOS0KEY0ID0XYZ", "chaos-Secret-9f3Kq7/ZzTop+Never-Log-Me"


@pytest.fixture(scope="module")
def chaos_ray(ray_head, tmp_path_factory):  # noqa: F811
    """This process as a driver of the session's Ray head, with the actor-kill hook's file path in
    every worker's environment (the file stays absent unless a test writes kill counts into it)."""
    kill_file = tmp_path_factory.mktemp("chaos") / "kill_counts"
    with ray_driver(ray_head, runtime_env={"env_vars": {CHAOS_KILL_FILE_ENV: str(kill_file)}}):
        yield dataclasses.make_dataclass("ChaosRay", ["head", "kill_file"])(ray_head, kill_file)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos_data") / "ReVOS"
    write_synthetic_revos(str(root), **DATA)
    return root


def _cfg(output, *, root=None, manifest=None, storage_options=None, **kw) -> InferenceConfig:
    source = {"manifest": str(manifest)} if manifest else {"dataset": DatasetConfig(format="revos", root=str(root))}
    return InferenceConfig(out=str(output), preset="tiny", seed=3, compute=SMALL, code_version="chaos",
                           progress_every=1, storage_options=storage_options or {}, **source, **kw)


def canonical(output: str, storage_options=None) -> tuple[list, list]:
    """Masks and scores rows without run-specific columns, sorted; duplicates kept (so they show)."""
    masks = read_output(output, "masks", columns=["video_id", "exp_id", "frame_index", "rle_counts", "is_keyframe"],
                        storage_options=storage_options)
    scores = read_output(output, "scores", columns=["video_id", "exp_id", "j", "f", "jf", "keyframe_index"],
                         storage_options=storage_options)
    return (sorted(tuple(r.values()) for r in masks.to_pylist()),
            sorted(tuple(r.values()) for r in scores.to_pylist()))


def assert_same_rows(got: tuple[list, list], want: tuple[list, list], what: str, *, drop_videos=()) -> None:
    masks, scores = got
    want_masks = [r for r in want[0] if r[0] not in drop_videos]
    want_scores = [r for r in want[1] if r[0] not in drop_videos]
    keys = [r[:3] for r in masks]
    duplicates = len(keys) - len(set(keys))
    lost = len({r[:3] for r in want_masks} - set(keys))
    FIGURES.add("rows lost", what, lost)
    FIGURES.add("duplicate rows", what, duplicates)
    FIGURES.add("jobs completed", what)
    FIGURES.add("mask rows checked", what, len(masks))
    assert duplicates == 0 and lost == 0, f"{what}: {duplicates} duplicate and {lost} missing mask rows"
    assert masks == want_masks, f"{what}: masks differ from the fault-free run"
    assert len(scores) == len(want_scores) and all(
        g[:2] == w[:2] and g[5] == w[5] and np.allclose(g[2:5], w[2:5]) for g, w in zip(scores, want_scores)), what


@pytest.fixture(scope="module")
def reference(chaos_ray, dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("ref") / "out"
    summary = run_inference(_cfg(output, root=dataset))
    assert summary.ok and summary.videos_processed == DATA["num_videos"]
    rows = canonical(str(output))
    assert rows[0] and len(rows[1]) == summary.scores_rows
    FIGURES.add("jobs completed", "fault-free reference")
    REFERENCE_OUTPUT["path"] = output
    return rows


REFERENCE_OUTPUT: dict = {}


def test_model_actor_killed_mid_batch(chaos_ray, dataset, reference, tmp_path):
    rng = random.Random(8)
    counts = [rng.randint(1, 2) for _ in range(3)]  # three kills, at seeded random calls
    chaos_ray.kill_file.write_text(" ".join(map(str, counts)))
    try:
        summary = run_inference(_cfg(tmp_path / "out", root=dataset))
    finally:
        left = chaos_ray.kill_file.read_text().split()
        chaos_ray.kill_file.unlink()
    assert left == [], f"not every planned kill happened (left {left}, planned {counts})"
    FIGURES.add("faults", "model actor os._exit mid-batch", len(counts))
    assert summary.ok, summary
    assert_same_rows(canonical(str(tmp_path / "out")), reference, "actor kills")


def test_driver_killed_then_rerun(chaos_ray, dataset, reference, tmp_path):
    output = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": chaos_ray.head.address, **chaos_ray.head.env, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "jobs.infer", "--dataset.format", "revos", "--dataset.root", str(dataset),
               "--dataset.split", "valid", "--out", str(output), "--preset", "tiny", "--seed", "3", "--code-version", "chaos",
               "--progress-every", "1", "compute.read_num_cpus=0.25", "compute.writer_num_cpus=0.25",
               "compute.videos_per_file=1"]
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    try:
        # Mid-run: the lock is held and the pipeline runs. Small videos reach the writers a block of
        # videos at a time, so the kill may come before or after the first commit; both must resume.
        while not (output / "_lock.json").exists() or not list(output.glob("runs/*.json")):
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the driver started no run in 180 s"
            time.sleep(0.2)
        time.sleep(1.0)
        assert driver.poll() is None, "the run ended before the kill"
        driver.send_signal(signal.SIGKILL)  # a crash: no cleanup, the lock stays behind
    finally:
        driver.wait(30)
    partial = len(list_parts(str(output), "scores"))
    FIGURES.add("faults", "infer driver SIGKILL", 1)
    assert (output / "_lock.json").exists(), "a killed driver leaves its lock (taken over by the rerun)"
    killed_run = json.loads((output / "_lock.json").read_text())["run_id"]
    assert json.loads((output / "runs" / f"{killed_run}.json").read_text())["status"] == "running"
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    killed_record = json.loads((output / "runs" / f"{killed_run}.json").read_text())
    assert killed_record["status"] == "interrupted", killed_record  # the rerun took its lock over
    assert json.loads((output / "run.json").read_text())["status"] == "completed"
    assert partial < DATA["num_videos"] or "0 video(s)" in rerun.stderr + rerun.stdout
    assert_same_rows(canonical(str(output)), reference, "driver kill + rerun")
    assert SECRET not in rerun.stdout + rerun.stderr
    # The killed run's parts (never folded) were read by the rerun's resume; now the pair index covers every
    # committed pair exactly once.
    committed = read_committed(str(output))
    scores = read_output(str(output), "scores", columns=KEY_COLUMNS)
    assert committed.parts_read == 0 and committed.index_files == 1
    assert sorted(committed.pairs.to_pylist()) == sorted(SEP.join(r) for r in zip(*(scores[c].to_pylist()
                                                                                     for c in KEY_COLUMNS)))


def test_transient_and_permanent_s3_faults(chaos_ray, s3_server, reference, tmp_path):
    bucket = s3_server.make_bucket()
    root, output = f"{bucket}/ReVOS", f"{bucket}/runs/chaos"
    write_synthetic_revos(root, storage_options=s3_server.storage_options, **DATA)
    videos = read_revos(root, split="valid", storage_options=s3_server.storage_options)
    lost = videos[2]
    lost_frame = f"/JPEGImages/{lost.video_id}/{lost.frame_names[1]}.jpg"
    with FaultyS3Proxy(s3_server.endpoint_url, seed=13, fault_rate=0.12, delay_rate=0.1, max_faults=80,
                       permanent=(lost_frame,)) as proxy:
        options = {"key": SECRET_KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": proxy.endpoint_url},
                   "config_kwargs": {"retries": {"max_attempts": 8, "mode": "standard"}}}
        summary = run_inference(_cfg(output, root=root, storage_options=options))
    FIGURES.add("faults", "S3 5xx/dropped connections during infer", proxy.counts["faults"])
    FIGURES.add("faults", "S3 slow responses during infer", proxy.counts["delay"])
    FIGURES.add("faults", "S3 permanent 403 on one frame during infer", 1)
    assert proxy.counts["faults"] >= 5 and proxy.counts["permanent"] >= 1, proxy.counts
    assert summary.status == "completed" and summary.videos_processed == DATA["num_videos"]
    errors = read_output(output, "errors", storage_options=s3_server.storage_options).to_pylist()
    # one row per expression the lost video cost, each naming its expression and the file
    assert sorted((e["video_id"], e["exp_id"], e["stage"], e["error_type"]) for e in errors) == sorted(
        (lost.video_id, x.exp_id, "read", "PermissionError") for x in lost.expressions), errors
    assert all(e["message"].startswith(f"{root}{lost_frame}") for e in errors), errors  # names the file
    assert_same_rows(canonical(output, s3_server.storage_options), reference, "S3 faults", drop_videos={lost.video_id})
    # no credentials in run.json or error rows
    fs = s3_server.filesystem()
    for path in [f"{output}/run.json".removeprefix("s3://"), *fs.find(f"{output}/runs".removeprefix("s3://"))]:
        text = fs.cat_file(path).decode()
        assert SECRET not in text and SECRET_KEY not in text, path
    assert SECRET not in json.dumps(errors) and SECRET_KEY not in json.dumps(errors)
    # ... nor in any log file of the Ray head (driver, workers, raylet, Ray Data logs)
    scanned = 0
    for path in pathlib.Path(chaos_ray.head.temp_dir).rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ".json"):
            data = path.read_bytes()
            scanned += 1
            assert SECRET.encode() not in data and SECRET_KEY.encode() not in data, f"credential in {path}"
    assert scanned > 0
    FIGURES.set("log/run.json/error files scanned for credentials (S3 job)", scanned + 2)


def test_hostile_inputs_in_one_job(chaos_ray, dataset, reference, tmp_path):
    import shutil

    from PIL import Image

    root = tmp_path / "ReVOS"
    shutil.copytree(dataset, root)
    videos = read_revos(str(root), split="valid")
    truncated, resized, gray, cmyk, long_text, fine = videos
    jpg = lambda v, i: root / "JPEGImages" / v.video_id / f"{v.frame_names[i]}.jpg"  # noqa: E731
    jpg(truncated, 2).write_bytes(jpg(truncated, 2).read_bytes()[:60])
    Image.open(jpg(resized, 1)).resize((40, 30)).save(jpg(resized, 1))
    Image.open(jpg(gray, 0)).convert("L").save(jpg(gray, 0))  # valid: decoded as RGB
    Image.open(jpg(cmyk, 3)).convert("CMYK").save(jpg(cmyk, 3))  # valid
    texts = dataclasses.replace(long_text.expressions[0], text="the object " * 1000)  # 11k characters
    long_text = dataclasses.replace(long_text, expressions=(texts, *long_text.expressions[1:]))
    table = records_to_manifest([truncated, resized, gray, cmyk, long_text, fine])
    rows = table.to_pylist()
    rows.append(dict(rows[-1]))  # a duplicate (video, expression) row
    empty = dict(rows[0], video_id="empty/video", frame_names=[], frames_uri=str(root / "JPEGImages" / "nothing"))
    rows.append(empty)  # a zero-frame video
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(table.from_pylist(rows, schema=table.schema), manifest)
    FIGURES.add("inputs", "hostile videos/rows through a whole infer job", 5)

    summary = run_inference(_cfg(tmp_path / "out", manifest=manifest))
    FIGURES.add("jobs completed", "hostile inputs")

    errors = read_output(str(tmp_path / "out"), "errors").to_pylist()
    got = sorted((e["video_id"], e["stage"]) for e in errors)
    assert (truncated.video_id, "decode") in got and (resized.video_id, "decode") in got, got
    assert (fine.video_id, "read") in got and any(v == "empty/video" for v, _ in got), got
    assert all(e["message"] for e in errors)
    bad = {truncated.video_id, resized.video_id, "empty/video"}
    scores = read_output(str(tmp_path / "out"), "scores").to_pylist()
    scored = {(r["video_id"], r["exp_id"]) for r in scores}
    want = {(v.video_id, e.exp_id) for v in (gray, cmyk, long_text, fine) for e in v.expressions}
    assert scored == want, f"good videos not all scored: missing {want - scored}, extra {scored - want}"
    assert summary.status == "completed" and not summary.ok  # errors happened: jobs.infer exits nonzero
    masks = read_output(str(tmp_path / "out"), "masks", columns=["video_id", "exp_id", "frame_index"]).to_pylist()
    assert len(masks) == sum(v.num_frames * len(v.expressions) for v in (gray, cmyk, long_text, fine))
    assert not bad & {m["video_id"] for m in masks}


EVIL_IDS = ["../../escaped", "/abs/outside", "a/../../b", "odd name ;$`|&<>\"'\\ ü 🐈", "UVO/all/2E4T", "..", "./x"]


def test_ids_are_data_not_paths(chaos_ray, dataset, tmp_path):
    videos = read_revos(str(dataset), split="valid")
    base = videos[0]
    records = [dataclasses.replace(base, video_id=vid, foreground_uri=None, expressions=tuple(
        dataclasses.replace(e, exp_id=eid) for e, eid in zip(base.expressions, ["../../../x", "/etc/y", "ok"])))
        for vid in EVIL_IDS]
    manifest = tmp_path / "m.parquet"
    pq.write_table(records_to_manifest(records), manifest)
    sandbox = tmp_path / "sandbox"
    output = sandbox / "a" / "b" / "out"
    before = {p for p in tmp_path.rglob("*")}
    summary = run_inference(_cfg(output, manifest=manifest))
    FIGURES.add("jobs completed", "path-like ids")
    FIGURES.add("inputs", "path-like video/expression ids", len(EVIL_IDS) * 3)
    created = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in created if output not in p.parents and p != output and p not in output.parents]
    assert not outside, f"files written outside the output root: {outside}"
    assert not pathlib.Path("/abs/outside").exists() and not pathlib.Path("/etc/y").exists()
    scores = {(r["video_id"], r["exp_id"]) for r in read_output(str(output), "scores").to_pylist()}
    errors = read_output(str(output), "errors", columns=["video_id", "exp_id", "message"]).to_pylist()
    assert len(scores) == len(EVIL_IDS) * len(base.expressions[:3]) and summary.errors_rows == 0, errors

    from pipelines.evaluation.export import export_zip

    zip_path = sandbox / "export" / "submission.zip"
    with pytest.raises(ValueError, match="unsafe id"):
        export_zip(str(output / "masks"), str(zip_path), layout=_first_layout())
    assert not zip_path.exists() and not list((sandbox / "export").glob("*partial*"))


def _first_layout() -> str:
    from pipelines.evaluation.export import LAYOUTS

    return sorted(LAYOUTS)[0]


def test_second_run_on_a_locked_output_is_refused(chaos_ray, dataset, reference):
    output = REFERENCE_OUTPUT["path"]
    before = canonical(str(output))
    with OutputLock(str(output), run_id="other-live-run"):  # another live run holds the output
        with pytest.raises(OutputLockedError, match="locked by run 'other-live-run'"):
            run_inference(_cfg(output, root=dataset))
    FIGURES.add("faults", "second writer on a locked output (refused)", 1)
    assert canonical(str(output)) == before == reference
