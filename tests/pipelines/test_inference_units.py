"""The inference pipeline's parts without Ray: config, writers, resume, lock, video I/O, actor and writer logic."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.inference.config import ComputeConfig, DatasetConfig, InferenceConfig, redact
from benchmarks.per_row_reference import plan_work
from pipelines.inference.run import records_from_manifest
from pipelines.io.output_lock import OutputLock, OutputLockedError
from pipelines.inference.resume import remove_orphans
from pipelines.io.pair_index import read_committed
from pipelines.io.rle import decode_masks, encode_masks
from pipelines.inference.segment_actor import RESULT_SCHEMA, segment_video_item
from pipelines.inference.video_io import (
    item_from_json,
    item_to_json,
    read_frames_batch,
    resize_frames,
    resized_hw,
)
from pipelines.io.writers import batch_id_for, list_parts, read_output, write_batch
from schemas import MASKS_SCHEMA, SCORES_SCHEMA, SchemaValidationError
from vrshq import metrics
from vrshq.data import load_expression_masks, load_frames, read_revos
from vrshq.model.outputs import SegmentationResult

RUN = {"run_id": "r1", "model": "tiny", "code_version": "abc"}


# --------------------------------------------------------------------------- config


def test_config_reports_every_problem_at_once():
    with pytest.raises(ValueError) as info:
        InferenceConfig(out="", manifest="m", dataset=DatasetConfig(root="/d", split="../x"), preset="huge",
                        max_side=-1, progress_every=0)
    message = str(info.value)
    for needle in ("out must be", "exactly one input", "preset='huge'", "dataset.split='../x'", "max_side",
                   "progress_every"):
        assert needle in message
    with pytest.raises(ValueError, match="compute.num_actors must be an integer >= 1"):
        ComputeConfig(num_actors=0)


def test_public_dict_masks_credentials():
    cfg = InferenceConfig(out="s3://b/o", manifest="s3://b/m.parquet", storage_options={
        "key": "AKIAXXX", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://x", "aws_session_token": "tok"}})
    text = json.dumps(cfg.public_dict())
    assert "AKIAXXX" not in text and "s3cr3t" not in text and "tok\"" not in text
    assert "http://x" in text
    assert redact({"a": [{"password": 1}]}) == {"a": [{"password": "***"}]}


# --------------------------------------------------------------------------- writers and resume


def _mask_rows(video: str, exp_id: str, frames: int, *, dataset: str = "revos", split: str = "valid") -> list[dict]:
    masks = np.zeros((frames, 4, 5), dtype=bool)
    masks[:, 1, 1] = True
    return [
        {"dataset": dataset, "split": split, "video_id": video, "exp_id": exp_id, "frame_index": i,
         "frame_name": f"{i:05d}", "height": 4, "width": 5, "rle_counts": c, "score": 0.5,
         "is_keyframe": i == 0, **RUN}
        for i, c in enumerate(encode_masks(masks))
    ]


def _score_row(video: str, exp_id: str, *, dataset: str = "revos", split: str = "valid") -> dict:
    return {"dataset": dataset, "split": split, "video_id": video, "exp_id": exp_id, "expression": "x",
            "type_id": 0, "expression_type": "referring", "num_frames": 2, "num_objects": 1, "j": 0.5, "f": 0.25,
            "jf": 0.375, "accuracy": None, "robustness": None, "keyframe_index": 0, "mean_target_area": 0.1,
            "seconds": 0.01, **RUN}


def _tables(pairs, dataset="revos", split="valid"):
    masks = [r for v, e in pairs for r in _mask_rows(v, e, 2, dataset=dataset, split=split)]
    scores = [_score_row(v, e, dataset=dataset, split=split) for v, e in pairs]
    return {"masks": pa.Table.from_pylist(masks, schema=MASKS_SCHEMA),
            "scores": pa.Table.from_pylist(scores, schema=SCORES_SCHEMA)}


def test_write_batch_layout_round_trip_and_duckdb(tmp_path):
    out = str(tmp_path / "out")
    tables = _tables([("UVO/all/v1", "0"), ("UVO/all/v1", "1")])
    tables["masks"] = pa.concat_tables([tables["masks"], _tables([("m1", "0")], dataset="mevis", split="valid_u")["masks"]])
    written = write_batch(out, tables, batch_id="b1")
    assert written == {"masks": 6, "scores": 2, "errors": 0}
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["masks/dataset=mevis/split=valid_u/part-b1.parquet", "masks/dataset=revos/split=valid/part-b1.parquet",
                     "scores/dataset=revos/split=valid/part-b1.parquet"]
    # Partition columns live in the folder names only; ids with '/' stay data.
    assert "dataset" not in pq.read_schema(tmp_path / "out/masks/dataset=revos/split=valid/part-b1.parquet").names
    back = read_output(out, "masks")
    assert back.schema == MASKS_SCHEMA and back.num_rows == 6
    assert sorted(set(back.column("video_id").to_pylist())) == ["UVO/all/v1", "m1"]
    got = duckdb.sql(f"select dataset, split, count(*) from read_parquet('{out}/masks/**/*.parquet', hive_partitioning=true) "
                     "group by all order by all").fetchall()
    assert got == [("mevis", "valid_u", 2), ("revos", "valid", 4)]


def test_schema_violation_writes_nothing(tmp_path):
    tables = _tables([("v1", "0")])
    tables["scores"] = tables["scores"].drop_columns(["jf"])
    with pytest.raises(SchemaValidationError, match="jf"):
        write_batch(str(tmp_path), tables, batch_id="b1")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_same_batch_id_overwrites_instead_of_duplicating(tmp_path):
    keys = [("revos", "valid", "v1", "0")]
    assert batch_id_for("r1", keys) == batch_id_for("r1", list(reversed(keys)))
    assert batch_id_for("r1", keys) != batch_id_for("r2", keys)
    for _ in range(2):  # a retried Ray task writes the same files again
        write_batch(str(tmp_path), _tables([("v1", "0")]), batch_id=batch_id_for("r1", keys))
    assert read_output(str(tmp_path), "scores").num_rows == 1
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left behind


def test_crash_between_masks_and_scores_leaves_an_orphan_that_resume_removes(tmp_path, monkeypatch):
    out = str(tmp_path)
    write_batch(out, _tables([("v1", "0")]), batch_id="good")
    import pipelines.io.writers as writers

    real = writers._parquet_bytes
    calls = []

    def crash_on_scores(table):
        calls.append(table.num_rows)
        if "jf" in table.column_names:
            raise KeyboardInterrupt("killed")  # the process dies after the masks file
        return real(table)

    monkeypatch.setattr(writers, "_parquet_bytes", crash_on_scores)
    with pytest.raises(KeyboardInterrupt):
        write_batch(out, _tables([("v2", "0"), ("v2", "1")]), batch_id="crashed")
    monkeypatch.setattr(writers, "_parquet_bytes", real)
    assert read_output(out, "masks").num_rows == 6  # the orphan is visible until resume cleans it
    assert read_committed(out).pairs.to_pylist() == ["revos\x1fvalid\x1fv1\x1f0"]  # only the committed batch
    removed = remove_orphans(out)
    assert [p.rsplit("/", 1)[-1] for p in removed] == ["part-crashed.parquet"]
    assert read_output(out, "masks").num_rows == 2
    assert [p.batch_id for p in list_parts(out, "masks")] == ["good"]


def test_write_and_resume_on_s3(s3_server):
    out = s3_server.make_bucket() + "/runs/r1"
    opts = s3_server.storage_options
    write_batch(out, _tables([("v1", "0")]), batch_id="b1", storage_options=opts)
    assert read_committed(out, storage_options=opts).pairs.to_pylist() == ["revos\x1fvalid\x1fv1\x1f0"]
    assert read_output(out, "masks", storage_options=opts).num_rows == 2


# --------------------------------------------------------------------------- lock


def test_lock_refuses_a_second_writer_and_releases(tmp_path):
    with OutputLock(str(tmp_path), run_id="first", stale_after_s=60):
        with pytest.raises(OutputLockedError, match="locked by run 'first'.*break_lock=true"):
            OutputLock(str(tmp_path), run_id="second", stale_after_s=60).acquire()
    assert not (tmp_path / "_lock.json").exists()
    with OutputLock(str(tmp_path), run_id="third"):
        assert json.loads((tmp_path / "_lock.json").read_text())["run_id"] == "third"


def test_stale_locks_are_taken_over(tmp_path):
    lock = tmp_path / "_lock.json"
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    lock.write_text(json.dumps({"run_id": "dead", "host": os.uname().nodename, "pid": dead_pid,
                                "created_at": time.time(), "heartbeat_at": time.time()}))
    with OutputLock(str(tmp_path), run_id="new", stale_after_s=60):
        assert json.loads(lock.read_text())["run_id"] == "new"
    lock.write_text(json.dumps({"run_id": "remote", "host": "other-host", "pid": 1,
                                "created_at": 0, "heartbeat_at": time.time() - 120}))
    with OutputLock(str(tmp_path), run_id="new2", stale_after_s=60):
        pass
    lock.write_text(json.dumps({"run_id": "alive", "host": "other-host", "pid": 1,
                                "created_at": 0, "heartbeat_at": time.time()}))
    with pytest.raises(OutputLockedError):
        OutputLock(str(tmp_path), run_id="x", stale_after_s=60).acquire()
    with OutputLock(str(tmp_path), run_id="forced", break_lock=True):
        assert json.loads(lock.read_text())["run_id"] == "forced"


def test_lock_heartbeat_refreshes(tmp_path):
    with OutputLock(str(tmp_path), run_id="hb", stale_after_s=1.0, heartbeat_s=0.1):
        first = json.loads((tmp_path / "_lock.json").read_text())["heartbeat_at"]
        time.sleep(0.5)
        assert json.loads((tmp_path / "_lock.json").read_text())["heartbeat_at"] > first


def test_lock_on_s3_is_exclusive(s3_server):
    out = s3_server.make_bucket() + "/o"
    with OutputLock(out, run_id="a", storage_options=s3_server.storage_options, stale_after_s=60):
        with pytest.raises(OutputLockedError):
            OutputLock(out, run_id="b", storage_options=s3_server.storage_options, stale_after_s=60).acquire()


# --------------------------------------------------------------------------- video I/O


def test_resize_frames():
    assert resized_hw(720, 1280, max_side=1024) == (576, 1024)
    assert resized_hw(100, 50, max_side=0) == (100, 50)
    frames = np.random.default_rng(0).integers(0, 255, (3, 20, 40, 3), dtype=np.uint8)
    assert resize_frames(frames, max_side=40) is frames
    assert resize_frames(frames, max_side=10).shape == (3, 5, 10, 3)


def _batch(video) -> dict:
    return {"dataset": np.array([video.dataset], dtype=object), "split": np.array([video.split], dtype=object),
            "video_id": np.array([video.video_id], dtype=object), "item_json": np.array([item_to_json(video)], dtype=object)}


def test_read_frames_batch_reads_resizes_and_reports_bad_files(synthetic_revos_local, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_revos_local, root)
    videos = read_revos(str(root), split="valid")
    assert item_from_json(item_to_json(videos[0])) == videos[0]
    out = read_frames_batch(_batch(videos[0]), max_side=48, max_inline_frame_bytes=2**30)
    assert out["frames"].shape == (1, 6, 32, 48, 3) and out["frames"].dtype == np.uint8
    assert (out["height"][0], out["width"][0], out["read_error"][0]) == (64, 96, "")
    full = load_frames(videos[0])
    np.testing.assert_array_equal(out["frames"][0], resize_frames(full, max_side=48))
    # Too big for the object store: passed by reference, read by the actor.
    out = read_frames_batch(_batch(videos[0]), max_side=48, max_inline_frame_bytes=100)
    assert not out["frames_inline"][0] and out["frames"].shape[1] == 0 and out["read_error"][0] == ""
    # A corrupt JPEG and a missing frame name the file and the stage.
    first = root / "JPEGImages" / videos[1].video_id / f"{videos[1].frame_names[2]}.jpg"
    first.write_bytes(first.read_bytes()[:50])
    (root / "JPEGImages" / videos[2].video_id / f"{videos[2].frame_names[0]}.jpg").unlink()
    bad = json.loads(read_frames_batch(_batch(videos[1]), max_side=48, max_inline_frame_bytes=2**30)["read_error"][0])
    assert bad["stage"] == "decode" and bad["uri"].endswith(f"{videos[1].frame_names[2]}.jpg")
    missing = json.loads(read_frames_batch(_batch(videos[2]), max_side=48, max_inline_frame_bytes=2**30)["read_error"][0])
    assert missing["stage"] == "read" and missing["uri"].endswith(f"{videos[2].frame_names[0]}.jpg")
    empty = dataclasses.replace(videos[3], frame_names=())
    assert json.loads(read_frames_batch(_batch(empty), max_side=48, max_inline_frame_bytes=2**30)["read_error"][0])["stage"] == "read"


# --------------------------------------------------------------------------- manifest planning


def test_records_from_manifest_turns_bad_rows_into_errors(synthetic_revos_local):
    from pipelines.inference.manifest import records_to_manifest

    videos = read_revos(str(synthetic_revos_local), split="valid")
    table = records_to_manifest(videos[:2])
    rows = table.to_pylist()
    rows.append(dict(rows[0]))  # duplicate (video, expression)
    rows[1] = {**rows[1], "expression": "   "}  # empty expression text
    records, errors = records_from_manifest(pa.Table.from_pylist(rows, schema=table.schema))
    assert [r.video_id for r in records] == [v.video_id for v in videos[:2]]
    assert sorted((e["exp_id"], e["stage"]) for e in errors) == sorted([(rows[0]["exp_id"], "read"), (rows[1]["exp_id"], "read")])
    assert any("duplicate" in e["message"] for e in errors) and any("text" in e["message"] for e in errors)
    assert len(records[0].expressions) == len(videos[0].expressions) - 1
    plan = plan_work(records, done={(videos[1].dataset, videos[1].split, videos[1].video_id, videos[1].expressions[0].exp_id)})
    assert plan.pairs_done == 1 and plan.pairs_pending == plan.pairs_total - 1 and len(plan.items) == 2


# --------------------------------------------------------------------------- actor and writer logic


class _FakeModel:
    """Masks = pixels brighter than a per-expression threshold: easy to recompute in the test."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls = []

    def segment_video(self, frames, expressions, *, output_hw, masks_on_device):
        self.calls.append((tuple(frames.shape), list(expressions), output_hw, masks_on_device))
        if self.fail:
            raise RuntimeError("CUDA out of memory (simulated)")
        out = []
        for k, _ in enumerate(expressions):
            masks = _fake_masks(frames.numpy(), k, output_hw)
            out.append(SegmentationResult(masks=torch.from_numpy(masks), keyframe_idx=k % frames.shape[0],
                                          keyframe_scores=np.zeros(1), frame_indices=[0],
                                          object_scores=np.arange(frames.shape[0], dtype=np.float32)))
        return out


def _fake_masks(frames: np.ndarray, k: int, output_hw: tuple[int, int]) -> np.ndarray:
    """Brightness masks of the frames, repeated to ``output_hw`` (integer factors only)."""
    small = frames.mean(axis=-1) > 60 + 20 * k
    rows, cols = output_hw[0] // small.shape[1], output_hw[1] // small.shape[2]
    return small.repeat(rows, axis=1).repeat(cols, axis=2)


def test_segment_video_item_asks_original_size_and_encodes(synthetic_revos_local):
    video = read_revos(str(synthetic_revos_local), split="valid")[0]
    full = load_frames(video)
    frames = resize_frames(full, max_side=48)
    model = _FakeModel()
    row = segment_video_item(model, item_to_json(video), frames, original_hw=(64, 96), max_side=48)
    assert pa.Table.from_pylist([row], schema=RESULT_SCHEMA).num_rows == 1
    # The model gets the working-size frames and the original size for its masks, kept on its device.
    assert model.calls == [((6, 32, 48, 3), [e.text for e in video.expressions], (64, 96), True)]
    assert json.loads(row["errors_json"]) == []
    for k, result in enumerate(row["results"]):
        expected = _fake_masks(frames, k, (64, 96))
        assert expected.shape == (6, 64, 96) and expected.any() and not expected.all()
        np.testing.assert_array_equal(decode_masks(result["rle_counts"], height=64, width=96), expected)
        assert result["keyframe_index"] == k % 6 and result["object_scores"] == list(range(6))
    # The actor reads a video passed by reference itself.
    row2 = segment_video_item(model, item_to_json(video), None, original_hw=(0, 0), max_side=48)
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in x["results"]] for x in (row, row2)]
    assert untimed[0] == untimed[1] and (row2["height"], row2["width"]) == (64, 96)
    # Masks of another size than (T, *original_hw) become error entries of their expression.
    wrong = segment_video_item(_FakeModel(), item_to_json(video), frames, original_hw=(32, 96), max_side=48)
    assert len(wrong["results"]) == len(video.expressions)  # (32, 96) is what the fake returns: accepted
    small = _FakeModel()
    small.segment_video = lambda f, e, **kw: _FakeModel.segment_video(small, f, e, output_hw=(32, 48),
                                                                      masks_on_device=True)
    bad = segment_video_item(small, item_to_json(video), frames, original_hw=(64, 96), max_side=48)
    assert bad["results"] == [] and {e["exp_id"] for e in json.loads(bad["errors_json"])} == {
        e.exp_id for e in video.expressions}
    failed = segment_video_item(_FakeModel(fail=True), item_to_json(video), frames, original_hw=(64, 96), max_side=48)
    errors = json.loads(failed["errors_json"])
    assert failed["results"] == [] and errors[0]["stage"] == "model" and "out of memory" in errors[0]["message"]


def test_rows_for_video_scores_equal_vrshq_metrics(synthetic_revos_local):
    from pipelines.inference.result_writer import rows_for_video
    from vrshq.data import load_mask_dict

    video = read_revos(str(synthetic_revos_local), split="valid")[1]
    frames = load_frames(video)
    row = segment_video_item(_FakeModel(), item_to_json(video), frames, original_hw=(64, 96), max_side=0)
    mask_dict = load_mask_dict(video.mask_dict_uri)
    masks, scores, errors = rows_for_video(row, run_fields=RUN, mask_dict=mask_dict)
    assert errors == []
    assert len(masks) == len(video.expressions) * video.num_frames
    assert pa.Table.from_pylist(masks, schema=MASKS_SCHEMA).num_rows == len(masks)
    by_exp = {s["exp_id"]: s for s in scores}
    for k, expression in enumerate(video.expressions):
        pred = frames.mean(axis=-1) > 60 + 20 * k
        gt = load_expression_masks(video, expression, mask_dict=mask_dict)
        expected = metrics.score_expression(gt, pred)
        assert by_exp[expression.exp_id]["j"] == pytest.approx(expected.j)
        assert by_exp[expression.exp_id]["f"] == pytest.approx(expected.f)
        assert by_exp[expression.exp_id]["jf"] == pytest.approx(expected.jf)
        assert by_exp[expression.exp_id]["keyframe_index"] == k % 6
        frames_rows = [m for m in masks if m["exp_id"] == expression.exp_id]
        assert [m["frame_index"] for m in frames_rows] == list(range(6))
        assert [m["is_keyframe"] for m in frames_rows].count(True) == 1
    # An unknown anno_id in the ground truth: that expression gets an error row and no masks/scores.
    broken = dataclasses.replace(video, expressions=(dataclasses.replace(video.expressions[0], anno_ids=(987654,)),
                                                     *video.expressions[1:]))
    row_b = {**row, "item_json": item_to_json(broken)}
    masks_b, scores_b, errors_b = rows_for_video(row_b, run_fields=RUN, mask_dict=mask_dict)
    assert [(e["exp_id"], e["stage"]) for e in errors_b] == [(video.expressions[0].exp_id, "annotation")]
    assert "987654" in errors_b[0]["message"]
    assert video.expressions[0].exp_id not in {s["exp_id"] for s in scores_b} | {m["exp_id"] for m in masks_b}


def _scores_and_errors(output: str) -> tuple[list[dict], list[dict]]:
    scores = read_output(output, "scores").drop_columns(["seconds"]).to_pylist()
    errors = read_output(output, "errors").to_pylist()
    key = lambda r: (r["video_id"], r["exp_id"] or "", r.get("stage", ""))  # noqa: E731
    return sorted(scores, key=key), sorted(errors, key=key)


def test_scoring_in_the_actor_and_in_the_writer_give_the_same_tables(synthetic_revos_local, tmp_path, monkeypatch):
    """``compute.score_on`` actor vs writer: identical scores and errors tables, float for float."""
    import pipelines.inference.result_writer as result_writer
    from pipelines.inference.device_scoring import ActorGroundTruth

    good, broken, no_gt, resized = originals = read_revos(str(synthetic_revos_local), split="valid")[:4]
    frames = [load_frames(v) for v in originals]
    # broken: an anno_id missing from the ground truth, and a truncated RLE of another of its anno_ids
    mask_dict = json.loads(open(broken.mask_dict_uri).read())
    corrupt = broken.expressions[1].anno_ids[0]
    frame = next(i for i, rle in enumerate(mask_dict[str(corrupt)]) if rle)
    mask_dict[str(corrupt)][frame]["counts"] = mask_dict[str(corrupt)][frame]["counts"][:-2]
    (tmp_path / "mask_dict.json").write_text(json.dumps(mask_dict))
    broken = dataclasses.replace(broken, mask_dict_uri=str(tmp_path / "mask_dict.json"), expressions=(
        dataclasses.replace(broken.expressions[0], anno_ids=(987654,)), *broken.expressions[1:]))
    failing = {broken.expressions[0].exp_id} | {e.exp_id for e in broken.expressions if corrupt in e.anno_ids}
    no_gt = dataclasses.replace(no_gt, mask_dict_uri=None)
    resized = dataclasses.replace(resized, height=32)  # its ground truth is not the masks' size
    videos = [good, broken, no_gt, resized]
    decoded = []
    real_decode = result_writer.decode_masks
    monkeypatch.setattr(result_writer, "decode_masks", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    summaries, rows_by_mode = {}, {}
    modes = (("writer", None), ("actor", ActorGroundTruth()),
             ("actor_gpu_decoder", ActorGroundTruth(decode_on_device=True)))  # the RLE decoded as on a GPU
    for mode, ground_truth in modes:
        rows = [segment_video_item(_FakeModel(), item_to_json(v), f, original_hw=(64, 96), max_side=0,
                                   mask_chunk_frames=4, ground_truth=ground_truth) for v, f in zip(videos, frames)]
        rows_by_mode[mode] = rows
        cfg = InferenceConfig(out=str(tmp_path / mode), manifest="unused",
                              compute=ComputeConfig(score_on=mode.split("_")[0], videos_per_file=4))
        decoded.clear()
        summaries[mode] = result_writer.ResultWriter(cfg, run_fields=RUN)(
            pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)).to_pylist()
        summaries[mode + "_decoded"] = len(decoded)
    # The actor scored every expression with readable ground truth of the masks' size, and only those.
    per_video = {v.video_id: len(v.expressions) for v in videos}
    assert summaries["writer_decoded"] == sum(per_video.values())
    assert all(r["frame_scores"] is None for row in rows_by_mode["writer"] for r in row["results"])
    writer_scores, writer_errors = _scores_and_errors(str(tmp_path / "writer"))
    for mode in ("actor", "actor_gpu_decoder"):
        scored = {(row["video_id"], r["exp_id"]) for row in rows_by_mode[mode] for r in row["results"]
                  if r["frame_scores"] is not None}
        assert scored == {(v.video_id, e.exp_id) for v in (good, broken) for e in v.expressions} - {
            (broken.video_id, exp_id) for exp_id in failing}
        # its writers decoded only the masks it left unscored
        assert summaries[mode + "_decoded"] == len(failing) + per_video[no_gt.video_id] + per_video[resized.video_id]
        actor_scores, actor_errors = _scores_and_errors(str(tmp_path / mode))
        assert actor_scores == writer_scores and actor_errors == writer_errors  # every J, F, J&F, A, R bit for bit
    assert {(e["video_id"], e["exp_id"]) for e in writer_errors} == {
        *((broken.video_id, exp_id) for exp_id in failing), *((resized.video_id, e.exp_id) for e in resized.expressions)}
    assert {e["stage"] for e in writer_errors} == {"annotation", "score"}
    by_video = {r["video_id"]: r for r in writer_scores}
    assert by_video[good.video_id]["j"] is not None and by_video[good.video_id]["robustness"] is not None
    assert by_video[no_gt.video_id]["j"] is None  # no ground truth: null scores either way
    # The time split: the actor's stages (scoring only in actor mode) and the writers'.
    for mode in ("writer", "actor", "actor_gpu_decoder"):
        for row in summaries[mode]:
            stages = json.loads(row["stage_seconds_json"])
            assert {"masks_rle", "writer_score", "writer_write"} <= set(stages)
            assert ("score" in stages) == (mode != "writer" and row["video_id"] in (good.video_id, broken.video_id))
            assert all(value >= 0 for value in stages.values())


def test_score_on_must_be_actor_or_writer():
    with pytest.raises(ValueError, match="score_on must be one of actor | writer"):
        ComputeConfig(score_on="gpu")


# --------------------------------------------------------------------------- model loading


@pytest.mark.slow
def test_checkpoint_model_equals_the_saved_one_and_mismatch_fails(tmp_path, synthetic_revos_local):
    import torch

    from pipelines.inference.model_loader import ModelLoadError, build_model, check_model_source
    from vrshq.builders import build_vrshq, tiny_config
    from vrshq.checkpoint.save import save_vrshq_checkpoint

    saved = build_model(InferenceConfig(out="o", manifest="m", seed=3), device="cpu")
    save_vrshq_checkpoint(saved, str(tmp_path / "ckpt"))
    cfg = InferenceConfig(out="o", manifest="m", seed=0, checkpoint=str(tmp_path / "ckpt"))
    assert check_model_source(cfg).sam2.image_size == tiny_config().sam2.image_size
    loaded = build_model(cfg, device="cpu")
    assert cfg.model_name == "tiny:ckpt"
    frames = load_frames(read_revos(str(synthetic_revos_local), split="valid")[0])
    with torch.inference_mode():
        a = saved.segment_video(frames, ["the red circle", "what moves"])
        b = loaded.segment_video(frames, ["the red circle", "what moves"])
        c = build_vrshq(tiny_config()).eval().segment_video(frames, ["the red circle", "what moves"])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.masks, y.masks)
        np.testing.assert_allclose(x.object_scores, y.object_scores)
    assert any(not np.array_equal(x.object_scores, z.object_scores) for x, z in zip(a, c))  # seeds matter
    # A checkpoint of another architecture fails when the model is built, naming the keys.
    other = torch.nn.Linear(2, 2)
    save_vrshq_checkpoint(other, str(tmp_path / "other"), tokenizer=False, config=tiny_config())
    with pytest.raises(ModelLoadError, match="missing key"):
        build_model(dataclasses.replace(cfg, checkpoint=str(tmp_path / "other")), device="cpu")


def test_result_writer_writes_a_batch_and_reports_storage_failures(synthetic_revos_local, tmp_path, monkeypatch):
    import pipelines.inference.result_writer as result_writer

    videos = read_revos(str(synthetic_revos_local), split="valid")[:2]
    rows = [segment_video_item(_FakeModel(), item_to_json(v), load_frames(v), original_hw=(64, 96), max_side=0)
            for v in videos]
    batch = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    cfg = InferenceConfig(out=str(tmp_path / "out"), manifest="unused")
    summary = result_writer.ResultWriter(cfg, run_fields=RUN)(batch).to_pylist()
    assert [s["scores_rows"] for s in summary] == [len(v.expressions) for v in videos]
    assert [s["masks_rows"] for s in summary] == [len(v.expressions) * v.num_frames for v in videos]
    assert {s["write_error"] for s in summary} == {""}
    assert read_output(cfg.out, "scores").num_rows == sum(len(v.expressions) for v in videos)

    attempts = []

    def storage_down(*args, **kwargs):
        attempts.append(1)
        raise OSError("503 Slow Down")

    monkeypatch.setattr(result_writer, "write_batch", storage_down)
    monkeypatch.setattr(result_writer.time, "sleep", lambda s: None)
    failed = result_writer.ResultWriter(dataclasses.replace(cfg, out=str(tmp_path / "o2")), run_fields=RUN,
                                        write_retries=3)(batch).to_pylist()
    assert len(attempts) == 3  # retried, then reported instead of raised
    assert all("503 Slow Down" in s["write_error"] and s["scores_rows"] == 0 for s in failed)


def test_a_compute_config_the_cluster_cannot_schedule_fails_fast_with_the_numbers():
    # 1 actor x 1 CPU + 1 writer x 0.5 + a 1-CPU read task = 2.5 CPUs: on 2 CPUs Ray Data would wait
    # forever with the reads backpressured; the check names the sum, the cluster size and the fix.
    from pipelines.inference.config import ComputeConfig, InferenceConfig
    from pipelines.inference.run import PreflightError, check_cluster_fits

    cfg = InferenceConfig(out="/tmp/x", manifest="/tmp/m.parquet", compute=ComputeConfig(read_num_cpus=1.0))
    with pytest.raises(PreflightError, match=r"needs 2\.5 CPUs .* cluster has 2"):
        check_cluster_fits(cfg, num_gpus=0.0, resources={"CPU": 2.0})
    check_cluster_fits(cfg, num_gpus=0.0, resources={"CPU": 2.5})
    default = InferenceConfig(out="/tmp/x", manifest="/tmp/m.parquet")
    check_cluster_fits(default, num_gpus=0.0, resources={"CPU": 2.0})  # the defaults fit a 2-CPU machine
    with pytest.raises(PreflightError, match="GPUs but the cluster has 0"):
        check_cluster_fits(default, num_gpus=1.0, resources={"CPU": 8.0})


def test_model_dtype_auto_is_float32_on_cpu_and_bf16_is_the_rounded_float32_model():
    import torch

    from pipelines.inference.model_loader import ModelLoadError, build_model, resolve_dtype

    cfg = InferenceConfig(out="o", manifest="m", seed=2)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16  # no GPU needed to resolve
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ModelLoadError, match="int8"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ValueError, match="dtype='int8'"):
        InferenceConfig(out="o", manifest="m", dtype="int8")
    full = build_model(cfg, device="cpu")
    half = build_model(dataclasses.replace(cfg, dtype="bfloat16"), device="cpu")
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    halves = dict(half.named_parameters())
    for name, p in full.named_parameters():  # same init, then cast: the seed gives the same weights
        torch.testing.assert_close(halves[name], p.to(torch.bfloat16), rtol=0, atol=0)


def test_7b_tinytok_preset_is_registered_with_the_7b_sizes():
    import torch

    from pipelines.inference.model_loader import model_config
    from vrshq.builders import build_vrshq, vrshq_7b_config, vrshq_7b_tinytok_config
    from vrshq.presets import PRESETS

    cfg = model_config(InferenceConfig(out="o", manifest="m", preset="vrshq-7b-tinytok"))
    assert PRESETS["vrshq-7b-tinytok"] is vrshq_7b_tinytok_config
    seven = vrshq_7b_config()
    assert (cfg.llm.tokenizer, cfg.llm.tokenizer_path, cfg.name) == ("tiny", None, "vrshq-7b-tinytok")
    assert dataclasses.replace(cfg.llm, tokenizer="llama") == seven.llm
    assert (cfg.vision, cfg.anchor, cfg.sam2, cfg.method) == (seven.vision, seven.anchor, seven.sam2, seven.method)
    model = build_vrshq(cfg, device=torch.device("meta"))  # no memory; the tokenizer is there, so it can segment
    assert model.tokenizer is not None and model.mllm.llm.config.num_hidden_layers == 32


def test_an_output_of_another_model_is_refused_before_any_work(tmp_path):
    from pipelines.inference.config import InferenceConfig
    from pipelines.inference.run import PreflightError, preflight
    from pipelines.inference.resume import other_models

    out = str(tmp_path / "out")
    assert other_models(out, "tiny") == []  # nothing written yet
    write_batch(out, _tables([("v1", "0")]), batch_id="b1")  # rows of model "tiny" (RUN)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"")
    assert other_models(out, "tiny") == []
    preflight(InferenceConfig(out=out, manifest=str(manifest), preset="tiny", seed=0))  # same model: resumes
    with pytest.raises(PreflightError) as info:
        preflight(InferenceConfig(out=out, manifest=str(manifest), preset="tiny", seed=3))
    (problem,) = info.value.problems
    assert "holds results of model 'tiny'" in problem and "this run's model is 'tiny-seed3'" in problem
    assert "would count their (video, expression) pairs as done" in problem
