"""The whole inference pipeline on a real local Ray head (this process as driver): outputs checked row
by row against the same model run in-process and against ``vrshq.metrics``; bad inputs; resume; append."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.inference.config import ComputeConfig, InferenceConfig
from pipelines.inference.run import run_inference
from pipelines.inference.manifest import records_to_manifest
from pipelines.inference.model_loader import build_model
from pipelines.io.rle import decode_masks
from pipelines.inference.video_io import resize_frames
from pipelines.io.writers import read_output
from vrshq import metrics
from vrshq.data import load_expression_masks, load_frames, load_mask_dict, read_revos, write_synthetic_revos

pytestmark = pytest.mark.slow

# Fits the test head's 2 CPUs: 1 model actor + 0.25 writer + 0.25-CPU readers.
SMALL = ComputeConfig(num_actors=1, num_cpus_per_actor=1.0, read_num_cpus=0.25, writer_num_cpus=0.25, videos_per_file=2)


def _masks_by_pair(output: str) -> dict[tuple[str, str], np.ndarray]:
    table = read_output(output, "masks").sort_by([("video_id", "ascending"), ("exp_id", "ascending"),
                                                 ("frame_index", "ascending")])
    out: dict[tuple[str, str], list] = {}
    for row in table.select(["video_id", "exp_id", "frame_index", "height", "width", "rle_counts"]).to_pylist():
        out.setdefault((row["video_id"], row["exp_id"]), []).append(row)
    return {key: decode_masks([r["rle_counts"] for r in rows], height=rows[0]["height"], width=rows[0]["width"])
            for key, rows in out.items()}


def _assert_no_duplicates(output: str) -> None:
    masks = read_output(output, "masks", columns=["dataset", "split", "video_id", "exp_id", "frame_index"])
    keys = list(zip(*(masks.column(c).to_pylist() for c in masks.column_names)))
    assert len(keys) == len(set(keys)), "duplicate (video, expression, frame) rows in masks"
    scores = read_output(output, "scores", columns=["dataset", "split", "video_id", "exp_id"])
    keys = list(zip(*(scores.column(c).to_pylist() for c in scores.column_names)))
    assert len(keys) == len(set(keys)), "duplicate (video, expression) rows in scores"


def test_pipeline_outputs_bad_inputs_resume_and_append(ray_on_head, tmp_path):
    root = tmp_path / "data"
    write_synthetic_revos(str(root), num_videos=5, num_frames=6, height=64, width=96, seed=7, split="valid")
    videos = read_revos(str(root), split="valid")
    bad_decode, bad_read, bad_annotation, good, appended = videos
    # A corrupt JPEG, a missing frame, and an expression whose anno_id is not in mask_dict.json.
    jpeg = root / "JPEGImages" / bad_decode.video_id / f"{bad_decode.frame_names[3]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:100])
    (root / "JPEGImages" / bad_read.video_id / f"{bad_read.frame_names[1]}.jpg").unlink()
    broken = dataclasses.replace(bad_annotation.expressions[0], anno_ids=(99999,))
    bad_annotation = dataclasses.replace(bad_annotation, expressions=(broken, *bad_annotation.expressions[1:]))
    manifest = tmp_path / "manifest.parquet"
    table = records_to_manifest([bad_decode, bad_read, bad_annotation, good])
    rows = table.to_pylist()
    rows.append(dict(rows[-1]))  # a duplicate (video, expression) row
    pq.write_table(table.from_pylist(rows, schema=table.schema), manifest)
    output = str(tmp_path / "out")
    cfg = InferenceConfig(out=output, manifest=str(manifest), preset="tiny", seed=3, progress_every=1, compute=SMALL,
                          code_version="test-sha")

    summary = run_inference(cfg)

    # -- errors: one row per failed video / expression, naming the cause
    errors = read_output(output, "errors").to_pylist()
    got = sorted((e["video_id"], e["exp_id"], e["stage"]) for e in errors)
    assert got == sorted([
        *((bad_decode.video_id, e.exp_id, "decode") for e in bad_decode.expressions),  # one row per expression
        *((bad_read.video_id, e.exp_id, "read") for e in bad_read.expressions),
        (bad_annotation.video_id, broken.exp_id, "annotation"),  # found before the model pass
        (good.video_id, good.expressions[-1].exp_id, "read"),  # the duplicate row
    ])
    by_stage = {e["stage"]: e for e in errors if e["video_id"] in (bad_decode.video_id, bad_read.video_id)}
    assert by_stage["decode"]["uri"].endswith(f"{bad_decode.frame_names[3]}.jpg")
    assert by_stage["read"]["uri"].endswith(f"{bad_read.frame_names[1]}.jpg")
    assert all(e["run_id"] == summary.run_id and e["code_version"] == "test-sha" for e in errors)
    failed_rows = len(bad_decode.expressions) + len(bad_read.expressions) + 2
    assert summary.status == "completed" and not summary.ok and summary.errors_rows == failed_rows

    # -- every good expression of every frame is present; masks equal the model's
    expected_pairs = {(v.video_id, e.exp_id) for v in (good, bad_annotation) for e in v.expressions} - {
        (bad_annotation.video_id, broken.exp_id)}
    masks = _masks_by_pair(output)
    assert set(masks) == expected_pairs
    model = build_model(cfg, device="cpu")
    mask_dict = load_mask_dict(videos[0].mask_dict_uri)
    scores = {(r["video_id"], r["exp_id"]): r for r in read_output(output, "scores").to_pylist()}
    assert set(scores) == expected_pairs
    for video in (good, bad_annotation):
        frames = load_frames(video)
        results = model.segment_video(resize_frames(frames, max_side=64), [e.text for e in video.expressions],
                                      output_hw=frames.shape[1:3])
        for expression, result in zip(video.expressions, results):
            key = (video.video_id, expression.exp_id)
            if key not in expected_pairs:
                continue
            want = result.masks
            np.testing.assert_array_equal(masks[key], want, err_msg=str(key))
            gt = load_expression_masks(video, expression, mask_dict=mask_dict)
            reference = metrics.score_expression(gt, want)
            row = scores[key]
            # scored on the model actor's device (compute.score_on = "actor"), bit for bit as vrshq.metrics
            assert (row["j"], row["f"], row["jf"], row["accuracy"]) == (
                reference.j, reference.f, reference.jf, reference.accuracy)
            assert row["keyframe_index"] == result.keyframe_idx and row["num_frames"] == video.num_frames
            assert row["model"] == "tiny-seed3" and row["code_version"] == "test-sha"
    # the time split reaches the summary: the actor's stages (its scoring included) and the writers'
    assert {"masks_rle", "score", "writer_score", "writer_write"} <= set(summary.stage_seconds)
    assert all(seconds >= 0 for seconds in summary.stage_seconds.values())
    keyframes = read_output(output, "masks").filter(pc.field("is_keyframe"))
    assert keyframes.num_rows == len(expected_pairs)  # exactly one keyframe per (video, expression)

    # -- the run folded its scores parts into the pair index: the next resume reads the index alone
    from pipelines.io.pair_index import read_committed

    committed = read_committed(output)
    assert committed.parts_read == 0 and committed.index_files == 1 and len(committed.pairs) == len(expected_pairs)

    # -- rerun: done pairs are skipped, failed ones are retried (and fail again), nothing is duplicated
    again = run_inference(cfg)
    assert again.pairs_skipped == len(expected_pairs) and again.scores_rows == 0 and again.masks_rows == 0
    assert again.errors_rows == failed_rows
    _assert_no_duplicates(output)

    # -- a manifest of new videos appends
    extra = tmp_path / "more.parquet"
    pq.write_table(records_to_manifest([appended]), extra)
    more = run_inference(dataclasses.replace(cfg, manifest=str(extra)))
    assert more.ok and more.scores_rows == len(appended.expressions)
    assert more.masks_rows == len(appended.expressions) * appended.num_frames
    final = {(r["video_id"], r["exp_id"]) for r in read_output(output, "scores").to_pylist()}
    assert final == expected_pairs | {(appended.video_id, e.exp_id) for e in appended.expressions}
    _assert_no_duplicates(output)
    committed = read_committed(output)
    assert committed.parts_read == 0 and committed.index_files == 1 and len(committed.pairs) == len(final)
