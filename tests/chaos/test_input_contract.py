"""The input contract of ``jobs.infer``, one test per way a hostile dataset was seen to break it.

1. a bad record (empty text, unknown type, malformed ids, no frames, bad size fields) costs its own
   ``errors/`` rows, never the job (ReVOS, MeViS and manifests);
2. ids and names from the data never resolve outside their root (local and S3), and nothing outside
   is read;
3. an output that cannot be written exits 2 before Ray starts;
4. input that cannot be parsed at all (meta, annotation) exits 2 before Ray, leaving nothing behind;
5. a video-level failure names every expression it cost; a dead run's record says ``interrupted``;
6. ``--out`` inside the dataset root is refused unless asked for.

These run without Ray (``no_ray`` fails a test that gets as far as ``ray.init``); the parts that need a
cluster (a local Ray that dies with its driver, a compute config refused after Ray started, the
model pass over a hostile dataset) are in ``test_input_properties.py`` and ``test_ray_reaper.py``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs.infer as infer
from pipelines.inference.config import DatasetConfig, InferenceConfig
from pipelines.inference.run import PreflightError, load_input, preflight
from pipelines.inference.manifest import records_to_manifest
from pipelines.io.output_lock import LOCK_NAME, OutputLock
from pipelines.inference.result_writer import ResultWriter
from pipelines.io.run_records import mark_interrupted
from pipelines.inference.segment_actor import RESULT_SCHEMA
from pipelines.inference.video_io import item_to_json, read_video
from pipelines.io.writers import part_uri, read_output
from tests.chaos.figures import FIGURES
from tests.chaos.file_access import record_file_access
from vrshq.data import PathEscapeError, contained_uri, load_frames, read_revos, write_synthetic_revos

DATA = dict(num_videos=3, num_frames=3, height=32, width=32, seed=5, split="valid")
META = "meta_expressions_valid_.json"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("contract") / "ReVOS"
    write_synthetic_revos(str(root), **DATA)
    return root


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the job gets as far as starting Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("jobs.infer reached ray.init although the run should have been refused before")

    monkeypatch.setattr(infer, "init_ray", refuse)


def _dataset(clean: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data" / "ReVOS"
    shutil.copytree(clean, root)
    return root


def _load_meta(root: Path) -> dict:
    return json.loads((root / META).read_text())


def _save_meta(root: Path, meta: dict) -> None:
    (root / META).write_text(json.dumps(meta))


def _cfg(out: Path, root: Path | None = None, *, manifest: Path | None = None, fmt: str = "revos", **kw):
    source = {"manifest": str(manifest)} if manifest else {"dataset": DatasetConfig(format=fmt, root=str(root))}
    return InferenceConfig(out=str(out), preset="tiny", seed=0, **source, **kw)


def _pairs(meta: dict, video_id: str) -> set[tuple[str, str]]:
    return {(video_id, exp_id) for exp_id in meta["videos"][video_id]["expressions"]}


def _kept(records) -> set[tuple[str, str]]:
    return {(v.video_id, e.exp_id) for v in records for e in v.expressions}


def _named(errors) -> set[tuple[str, str]]:
    return {(r["video_id"], r["exp_id"]) for r in errors}


def _infer_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset.format", "revos", "--dataset.root", str(root), "--dataset.split", "valid", "--out", str(out),
            "--preset", "tiny", *extra]


# --------------------------------------------------------------------------- 1. per-record validation


def test_bad_records_of_a_revos_meta_cost_only_their_own_rows(clean, tmp_path):
    """An empty expression or a ``"frames": []`` video used to fail the whole job with exit 2."""
    root = _dataset(clean, tmp_path)
    meta = _load_meta(root)
    all_pairs = {p for v in meta["videos"] for p in _pairs(meta, v)}
    empty_text, no_frames, bad_fields = list(meta["videos"])
    exps = list(meta["videos"][empty_text]["expressions"])
    meta["videos"][empty_text]["expressions"][exps[0]]["exp"] = ""
    meta["videos"][empty_text]["expressions"][exps[1]]["type_id"] = 7  # unknown type
    meta["videos"][no_frames]["frames"] = []
    meta["videos"][bad_fields]["height"] = -24  # bad size field: the whole video
    _save_meta(root, meta)
    FIGURES.add("inputs", "bad records in a dataset that must still run", 4)

    records, errors = load_input(_cfg(tmp_path / "out", root))

    bad = {(empty_text, exps[0]), (empty_text, exps[1])} | _pairs(meta, no_frames) | _pairs(meta, bad_fields)
    assert _named(errors) == bad, errors
    assert _kept(records) == all_pairs - bad
    assert all(r["stage"] == "read" and r["exp_id"] is not None and META in r["message"] for r in errors)
    by_pair = {(r["video_id"], r["exp_id"]): r["message"] for r in errors}
    assert "key 'exp' is empty" in by_pair[(empty_text, exps[0])]
    assert "type_id" in by_pair[(empty_text, exps[1])]
    assert "'frames' is empty" in by_pair[next(iter(_pairs(meta, no_frames)))]
    assert "'height'" in by_pair[next(iter(_pairs(meta, bad_fields)))]


def test_a_video_or_expression_listed_twice_in_the_meta_text_is_named_not_dropped(clean, tmp_path):
    """JSON keeps the last of two equal keys without a word; the reader names both duplicates."""
    root = _dataset(clean, tmp_path)
    meta = _load_meta(root)
    first, second, third = list(meta["videos"])
    text = json.dumps(meta)
    entry = json.dumps(meta["videos"][second])
    # the second video listed twice, and expression "0" of the third listed twice
    text = text.replace(f'"{second}": {entry}', f'"{second}": {entry}, "{second}": {entry}', 1)
    exp0 = json.dumps(meta["videos"][third]["expressions"]["0"])
    text = text.replace(f'"expressions": {{"0": {exp0}', f'"expressions": {{"0": {exp0}, "0": {exp0}', 1)
    (root / META).write_text(text)
    records, errors = load_input(_cfg(tmp_path / "out", root))
    assert _named(errors) == _pairs(meta, second) | {(third, "0")}
    assert all("listed more than once" in r["message"] for r in errors)
    assert _kept(records) == {p for v in (first, third) for p in _pairs(meta, v)} - {(third, "0")}


def test_bad_records_of_a_mevis_split_cost_only_their_own_rows(clean, tmp_path):
    root = tmp_path / "MeViS"
    shutil.copytree(clean / "JPEGImages", root / "valid" / "JPEGImages")
    revos = _load_meta(clean)
    meta = {"videos": {vid: {"frames": entry["frames"], "expressions": {
        k: {"exp": e["exp"], "obj_id": e["obj_id"], "anno_id": e["anno_id"]} for k, e in entry["expressions"].items()}}
        for vid, entry in revos["videos"].items()}}
    first, second, _ = list(meta["videos"])
    exp = next(iter(meta["videos"][first]["expressions"]))
    meta["videos"][first]["expressions"][exp]["anno_id"] = ["x1"]  # malformed id
    meta["videos"][second]["frames"] = []
    (root / "valid" / "meta_expressions.json").write_text(json.dumps(meta))

    records, errors = load_input(_cfg(tmp_path / "out", root, fmt="mevis"))

    bad = {(first, exp)} | _pairs(meta, second)
    assert _named(errors) == bad
    assert _kept(records) == {p for v in meta["videos"] for p in _pairs(meta, v)} - bad


def test_bad_rows_of_a_manifest_cost_only_their_own_rows(clean, tmp_path):
    videos = read_revos(str(clean), split="valid")
    table = records_to_manifest(videos)
    rows = table.to_pylist()
    rows[0]["expression"] = ""
    no_frames = videos[1].video_id
    for row in rows:
        if row["video_id"] == no_frames:
            row["frame_names"] = []
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)

    records, errors = load_input(_cfg(tmp_path / "out", manifest=manifest))

    bad = {(rows[0]["video_id"], rows[0]["exp_id"])} | {(no_frames, e.exp_id) for e in videos[1].expressions}
    assert _named(errors) == bad
    assert _kept(records) == {(v.video_id, e.exp_id) for v in videos for e in v.expressions} - bad


# --------------------------------------------------------------------------- 2. containment


def test_ids_that_leave_the_dataset_root_are_error_rows_and_nothing_outside_is_read(clean, tmp_path):
    """``"../../esc/v"`` used to make the job read ``<root>/../esc/v`` and score it."""
    root = _dataset(clean, tmp_path)
    meta = _load_meta(root)
    source = next(iter(meta["videos"]))
    bait = (root / "JPEGImages" / ".." / ".." / "esc" / "v").resolve()  # what the escaping id names
    shutil.copytree(root / "JPEGImages" / source, bait)
    evil_ids = ["../../esc/v", "a/../../../esc/v", str(bait), "./" + source, source + "/", "x\x00y"]
    for vid in evil_ids:
        meta["videos"][vid] = json.loads(json.dumps(meta["videos"][source]))
    frame_escape = list(meta["videos"])[1]
    meta["videos"][frame_escape]["frames"] = ["../../../esc/v/" + meta["videos"][source]["frames"][0]]
    _save_meta(root, meta)
    out = tmp_path / "out"
    FIGURES.add("inputs", "ids or frame names leaving the dataset root", len(evil_ids) + 1)

    with record_file_access() as seen:
        records, errors = load_input(_cfg(out, root))
        for video in records:  # read every kept video's frames, as the pipeline's reading stage does
            read_video(video, max_side=0)

    outside = sorted({p for _, p in seen if str(tmp_path) in p and not p.startswith((str(root), str(out)))})
    assert not outside, f"read or wrote outside the roots: {outside}"
    assert not any(str(bait.parent) in p for _, p in seen)
    escaped = {vid for vid in evil_ids} | {frame_escape}
    assert {v.video_id for v in records}.isdisjoint(escaped)
    assert _named(errors) == {p for vid in escaped for p in _pairs(meta, vid)}
    assert {r["error_type"] for r in errors} == {"PathEscapeError"}
    # mp4 names are built from the same ids
    problems: list = []
    read_revos(str(root), split="valid", frames_from="mp4", problems=problems)
    assert {p.video_id for p in problems} == escaped


def test_frame_names_and_manifest_uris_that_leave_their_root_are_refused(clean, tmp_path):
    video = read_revos(str(clean), split="valid")[0]
    escaping = dataclasses.replace(video, frame_names=("../" + video.frame_names[0],))
    with pytest.raises(PathEscapeError, match="leaves its root"):
        load_frames(escaping)  # the reader itself refuses, whatever built the record
    rows = records_to_manifest([video]).to_pylist()
    rows[0]["frame_names"] = ["../../etc/passwd"]
    rows[1]["frame_names"] = rows[0]["frame_names"]
    rows[2]["frame_names"] = rows[0]["frame_names"]
    other = [dict(r, video_id="second", frames_uri=r["frames_uri"] + "/../../x",
                  frame_names=list(video.frame_names)) for r in rows]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows + other, schema=records_to_manifest([video]).schema), manifest)
    records, errors = load_input(_cfg(tmp_path / "out", manifest=manifest))
    assert records == []
    assert _named(errors) == {(vid, e.exp_id) for vid in (video.video_id, "second") for e in video.expressions}
    assert {r["error_type"] for r in errors} == {"PathEscapeError"}


def test_containment_holds_on_s3_and_for_output_paths(s3_server, clean):
    bucket = s3_server.make_bucket()
    root = f"{bucket}/ReVOS"
    write_synthetic_revos(root, storage_options=s3_server.storage_options, **{**DATA, "num_videos": 1})
    fs = s3_server.filesystem()
    meta_path = f"{root}/{META}".removeprefix("s3://")
    meta = json.loads(fs.cat_file(meta_path))
    source = next(iter(meta["videos"]))
    meta["videos"]["../../esc/v"] = meta["videos"][source]
    fs.pipe_file(meta_path, json.dumps(meta).encode())
    problems: list = []
    records = read_revos(root, split="valid", storage_options=s3_server.storage_options, problems=problems)
    assert [r.video_id for r in records] == [source]
    assert [(p.video_id, p.error_type) for p in problems] == [("../../esc/v", "PathEscapeError")]
    with pytest.raises(PathEscapeError):
        contained_uri("s3://b/ReVOS/JPEGImages", "../../other-bucket/x")
    with pytest.raises(PathEscapeError):
        part_uri("s3://b/out", "masks", dataset="revos", split="x/../../../y", batch_id="b1")
    assert contained_uri("s3://b/ReVOS/JPEGImages", "UVO/all/2E4T") == "s3://b/ReVOS/JPEGImages/UVO/all/2E4T"


# --------------------------------------------------------------------------- 3, 4, 6. preflight


def _read_only_folder(tmp_path: Path) -> Path:
    """An existing folder that refuses new files, for root too (then a sysfs folder)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/kernel")):
        try:
            (candidate / ".vrshq-test").write_bytes(b"")
        except OSError:
            return candidate
        (candidate / ".vrshq-test").unlink()
    pytest.skip("no folder here refuses writes")


def test_a_read_only_out_exits_2_before_ray(no_ray, clean, tmp_path, capsys):
    """It used to pass preflight, start Ray, then fail on the lock with exit 4 and 'rerun to resume'."""
    out = _read_only_folder(tmp_path)
    code = infer.main(_infer_argv(clean, out))
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE, err
    assert "is not writable" in err and "rerun to resume" not in err


@pytest.mark.parametrize("breakage", ["not json", "no videos key"])
def test_a_meta_that_cannot_be_parsed_exits_2_before_ray_and_leaves_nothing(no_ray, clean, tmp_path, capsys, breakage):
    """Dataset-level checks used to fail 40-50 s in, after Ray had started, leaving an empty out folder."""
    root = _dataset(clean, tmp_path)
    (root / META).write_text("{not json" if breakage == "not json" else json.dumps({"vids": {}}))
    out = tmp_path / "new" / "out"
    code = infer.main(_infer_argv(root, out))
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE, err
    assert META in err
    assert not (tmp_path / "new").exists(), "a run that exits 2 must leave nothing behind"


def test_an_annotation_file_that_is_not_json_exits_2_before_any_model_work(no_ray, clean, tmp_path, capsys):
    """It used to run the whole model pass and then throw every mask away."""
    root = _dataset(clean, tmp_path)
    (root / "mask_dict.json").write_text('{"1": [')
    out = tmp_path / "out"
    code = infer.main(_infer_argv(root, out))
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE, err
    assert "mask_dict.json" in err and "not valid JSON" in err
    assert not out.exists()


def test_unknown_anno_ids_are_reported_before_the_model_pass(clean, tmp_path):
    root = _dataset(clean, tmp_path)
    meta = _load_meta(root)
    vid = next(iter(meta["videos"]))
    exp = next(e for e, x in meta["videos"][vid]["expressions"].items() if x["anno_id"])
    meta["videos"][vid]["expressions"][exp]["anno_id"] = [987654]
    _save_meta(root, meta)
    records, errors = load_input(_cfg(tmp_path / "out", root))
    assert [(r["video_id"], r["exp_id"], r["stage"]) for r in errors] == [(vid, exp, "annotation")]
    assert "anno_id 987654 is not in the mask dict" in errors[0]["message"]
    assert (vid, exp) not in _kept(records)  # never sent to the model


@pytest.mark.parametrize("where", [".", "results"])
def test_out_inside_the_dataset_root_is_refused_unless_allowed(no_ray, clean, tmp_path, capsys, where):
    """``--out`` equal to the dataset root used to be accepted, the results landing among its files."""
    root = _dataset(clean, tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = root / where
    code = infer.main(_infer_argv(root, out))
    err = capsys.readouterr().err
    assert code == infer.EXIT_USAGE, err
    assert "inside dataset.root" in err and "allow_out_in_dataset" in err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    preflight(_cfg(out, root, allow_out_in_dataset=True))  # asked for explicitly: accepted


def test_preflight_problems_leave_no_folder_behind(tmp_path, clean):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(PreflightError):
        preflight(_cfg(out, clean, checkpoint=str(tmp_path / "missing-checkpoint")))
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- 5. rows and records


def test_a_video_level_failure_writes_one_row_per_pending_expression(clean, tmp_path):
    """A frame or video failure used to write one row with a NULL exp_id."""
    video = read_revos(str(clean), split="valid")[0]
    out = tmp_path / "out"
    cfg = _cfg(out, clean)
    fragment = {"exp_id": None, "stage": "decode", "error_type": "DataError", "message": "f.jpg: corrupt image",
                "uri": "f.jpg"}
    result = {"dataset": video.dataset, "split": video.split, "video_id": video.video_id,
              "item_json": item_to_json(video), "height": 0, "width": 0, "results": [],
              "errors_json": json.dumps([fragment])}
    writer = ResultWriter(cfg, run_fields={"run_id": "r1", "model": "tiny", "code_version": "test"})
    summary = writer(pa.Table.from_pylist([result], schema=RESULT_SCHEMA)).to_pylist()
    errors = read_output(str(out), "errors").to_pylist()
    assert sorted(r["exp_id"] for r in errors) == sorted(e.exp_id for e in video.expressions)
    assert all(r["stage"] == "decode" and r["message"] == "f.jpg: corrupt image" for r in errors)
    assert summary[0]["errors_rows"] == len(video.expressions)
    assert summary[0]["pending_exp_ids"] == [e.exp_id for e in video.expressions]


def test_taking_over_a_dead_runs_lock_marks_its_record_interrupted(tmp_path):
    """A killed run's ``runs/<run_id>.json`` used to say ``running`` after a later run took its lock over."""
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "runs" / "dead-run.json").write_text(json.dumps({"run_id": "dead-run", "status": "running"}))
    (out / "runs" / "done-run.json").write_text(json.dumps({"run_id": "done-run", "status": "completed"}))
    import socket

    (out / LOCK_NAME).write_text(json.dumps({"run_id": "dead-run", "host": socket.gethostname(), "pid": dead.pid,
                                             "created_at": time.time(), "heartbeat_at": time.time()}))
    with OutputLock(str(out), run_id="new-run") as lock:
        assert [h["run_id"] for h in lock.taken_over] == ["dead-run"]
        for holder in lock.taken_over:
            assert mark_interrupted(str(out), holder, by="new-run")
    record = json.loads((out / "runs" / "dead-run.json").read_text())
    assert record["status"] == "interrupted" and record["interrupted_by"] == "new-run"
    assert not mark_interrupted(str(out), {"run_id": "done-run"}, by="new-run")  # an ended run keeps its status
    assert not mark_interrupted(str(out), {"run_id": "../../x"}, by="new-run")  # ids stay under runs/
    assert sorted(os.listdir(out / "runs")) == ["dead-run.json", "done-run.json"]
