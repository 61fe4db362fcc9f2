"""The serial baseline of the inference benchmark is a faithful, un-shared version of `segment_video`.

Same model, same frames: the official-style loop (one expression at a time, a new SAM2 encoding per
TKS candidate, all frames encoded again for tracking) must give the masks, keyframes and scores of
the shared path. It must also really do the un-shared work (otherwise the benchmark's ratio lies).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.serial_reference import STAGES, StageTimes, segment_expression_serial
from benchmarks.throughput_report import ResultRow, format_table, mask_agreement, per_mask_iou
from benchmarks.workload import WorkloadConfig, write_workload
from vrshq.builders import build_vrshq, tiny_config
from vrshq.data import generate_synthetic_video


@pytest.fixture(scope="module")
def model_and_video():
    torch.manual_seed(1)
    # max_frames=4: a 12-frame video gives 3 MLLM frames per expression, so the CLIP anchor decides
    # which frames are candidates (with seed 1 the two expressions get different frames and keyframes)
    model = build_vrshq(tiny_config(max_frames=4))
    video = generate_synthetic_video(np.random.default_rng(1), num_frames=12, height=48, width=64)
    texts = [e.text for e in video.expressions][:2]
    return model, video.frames, texts


def test_serial_reference_gives_the_masks_of_segment_video(model_and_video):
    model, frames, texts = model_and_video
    shared = model.segment_video(torch.from_numpy(frames), texts)
    for text, want in zip(texts, shared):
        got = segment_expression_serial(model, lambda: frames, text)
        assert got.frame_indices == want.frame_indices
        assert got.keyframe_idx == want.keyframe_idx
        np.testing.assert_allclose(got.keyframe_scores, want.keyframe_scores, atol=1e-5)
        np.testing.assert_allclose(got.object_scores, want.object_scores, atol=1e-4)
        assert got.masks.shape == frames.shape[:3] and got.masks.dtype == bool
        iou = per_mask_iou(want.masks, got.masks)
        assert iou.min() >= 0.99, f"{text!r}: per-frame IoU {iou.round(3).tolist()}"
    assert any(r.masks.any() for r in shared), "degenerate case: every mask is empty"


def test_serial_reference_does_the_unshared_work(model_and_video, monkeypatch):
    model, frames, texts = model_and_video
    calls = {"decode": 0, "encode": []}
    real_encode = model.sam2.encode_video

    def counting_encode(images):
        calls["encode"].append(int(images.shape[0]))
        return real_encode(images)

    def load():
        calls["decode"] += 1
        return frames

    monkeypatch.setattr(model.sam2, "encode_video", counting_encode)
    times = StageTimes()
    result = segment_expression_serial(model, load, texts[0], decode_passes=3, times=times)
    # the official loop: 3 decodes, one single-frame SAM2 encoding per TKS candidate, then all frames again
    assert calls["decode"] == 3
    assert calls["encode"] == [1] * len(result.frame_indices) + [frames.shape[0]]
    assert set(times.seconds) == set(STAGES) and all(v > 0 for v in times.seconds.values())


def test_serial_reference_rejects_bad_arguments(model_and_video):
    model, frames, _ = model_and_video
    with pytest.raises(ValueError, match="decode_passes"):
        segment_expression_serial(model, lambda: frames, "the red circle", decode_passes=0)
    with pytest.raises(ValueError, match="blank"):
        segment_expression_serial(model, lambda: frames, "   ")


def test_mask_agreement_and_table():
    a = np.zeros((3, 4, 4), dtype=bool)
    b = a.copy()
    a[0, :2, :2] = True  # 4 pixels
    b[0, :2, :1] = True  # 2 of them -> IoU 0.5
    a[1, 0, 0] = b[1, 0, 0] = True  # identical -> 1.0; frame 2 empty in both -> 1.0
    stats = mask_agreement([(a, b), (a, a)])
    assert (stats.masks, stats.expressions, stats.min_iou) == (6, 2, 0.5)
    assert stats.share_ge_099 == pytest.approx(5 / 6)
    serial = ResultRow("serial", seconds=100.0, masks=1000, frames=50, extrapolated=True, measured_expressions=3,
                       measured_masks=150)
    ours = ResultRow("ours (pipeline)", seconds=4.0, masks=1000, frames=50, gpu_busy_percent=91.25)
    table = format_table([serial, ours])
    assert "EXTRAPOLATED from 3 expressions (150 masks)" in table
    ours_line = next(line for line in table.splitlines() if line.startswith("ours"))
    cells = [c.strip() for c in ours_line.split("|")]
    assert cells[1:6] == ["250.0", "12.5", "4.0", "91.2", "25.00"]  # 1000/4 masks/s, 25x the serial 10 masks/s


def test_workload_has_the_requested_shape_and_is_reused(tmp_path):
    cfg = WorkloadConfig(num_videos=2, min_frames=3, max_frames=5, height=40, width=48, min_expressions=2,
                         max_expressions=9, seed=4)
    workload = write_workload(str(tmp_path), cfg)
    assert len(workload.videos) == 2
    for video in workload.videos:
        assert 3 <= video.num_frames <= 5 and 2 <= len(video.expressions) <= 9
        assert len({e.text for e in video.expressions}) == len(video.expressions)
        assert all((tmp_path / "JPEGImages" / video.video_id / f"{n}.jpg").is_file() for n in video.frame_names)
    assert workload.num_masks == sum(v.num_frames * len(v.expressions) for v in workload.videos)
    again = write_workload(str(tmp_path), cfg)
    assert again.videos == workload.videos
    # every expression has ground truth the pipeline can score (J, F, A, R)
    from vrshq.data import load_expression_masks, load_foreground_masks

    for video in workload.videos:
        assert video.mask_dict_uri and video.foreground_uri
        gts = [load_expression_masks(video, e) for e in video.expressions]
        assert all(gt.shape == (video.num_frames, 40, 48) for gt in gts)
        assert any(e.anno_ids for e in video.expressions) and any(gt.any() for gt in gts)
        assert load_foreground_masks(video)[0].shape == (video.num_frames, 40, 48)


def test_run_benchmark_extrapolates_the_serial_path_and_merges_invocations(tmp_path):
    import pyarrow.parquet as pq

    from benchmarks.inference_throughput import BenchmarkConfig, run_benchmark

    workload = WorkloadConfig(num_videos=2, min_frames=4, max_frames=6, height=48, width=64, min_expressions=2,
                              max_expressions=3, seed=2)
    cfg = BenchmarkConfig(preset="tiny", device="cpu", workload=workload, workdir=str(tmp_path / "work"),
                          output_dir=str(tmp_path / "results"), budget_s=1e-6, min_serial_expressions=1,
                          encoder_batch=2, encoder_iters=1, workload_workers=1, paths=("serial", "model"))
    printed: list[str] = []
    rows = {r.name: r for r in run_benchmark(cfg, say=printed.append)}
    serial, model = rows["serial"], rows["ours (model only)"]
    videos = write_workload(str(tmp_path / "work" / "workload"), workload).videos  # reused, not rewritten
    video = videos[0]
    # one expression measured (of the first video: round-robin order), scaled to every mask of the workload
    assert serial.extrapolated and serial.measured_expressions == 1 and serial.measured_masks == video.num_frames
    assert serial.masks == model.masks == sum(v.num_frames * len(v.expressions) for v in videos)
    assert serial.seconds == pytest.approx(serial.extra["measured_seconds"] * serial.masks / serial.measured_masks)
    assert model.agreement.masks == video.num_frames and model.agreement.min_iou >= 0.99
    assert any("EXTRAPOLATED from 1 expressions" in line for line in printed)
    # a second invocation measures only the bound and keeps the earlier rows in its table
    again = run_benchmark(dataclasses.replace(cfg, paths=("bound",)), say=printed.append)
    assert [r.name for r in again] == ["serial", "ours (model only)", "SAM2 encoder bound"]
    table = pq.read_table(tmp_path / "results" / "results.parquet").to_pylist()
    assert [r["path"] for r in table] == [r.name for r in again]
    assert table[0]["ratio_vs_serial"] == pytest.approx(1.0) and table[0]["device"].startswith("cpu")
    assert all(r["git_sha"] for r in table)


def test_decision_breakdown_says_where_two_paths_part():
    from benchmarks.throughput_report import decision_breakdown, format_breakdown

    ref = {("v", "0"): {"frames": [0, 2], "keyframe": 2, "scores": [0.5, 0.5001]},
           ("v", "1"): {"frames": [0, 2], "keyframe": 0, "scores": [0.9, 0.1]},
           ("v", "2"): {"frames": [1, 3], "keyframe": 1, "scores": [0.9, 0.1]}}
    cand = {("v", "0"): {"frames": [0, 2], "keyframe": 0, "scores": [0.5002, 0.5001]},
            ("v", "1"): {"frames": [0, 2], "keyframe": 0, "scores": [0.9, 0.1]},
            ("v", "2"): {"frames": [1, 2], "keyframe": 1, "scores": [0.9, 0.1]}}
    ious = {("v", "0"): np.array([0.0, 0.5]), ("v", "1"): np.array([1.0, 0.995, 0.9]), ("v", "2"): np.array([0.0])}
    out = decision_breakdown(ref, cand, ious)
    assert out["same_decisions"] == {"expressions": 1, "masks": 3, "masks_iou_ge_099": 2}
    assert out["keyframe_differs"] == {"expressions": 1, "masks": 2, "masks_iou_ge_099": 0}
    assert out["frames_differ"] == {"expressions": 1, "masks": 1, "masks_iou_ge_099": 0}
    (flip,) = out["keyframe_flips"]
    assert flip["key"] == ["v", "0"] and abs(flip["top2_margin"] - 1e-4) < 1e-9 and abs(flip["max_score_diff"] - 2e-4) < 1e-9
    assert "66.7% with IoU >= 0.99" in format_breakdown(out)


def test_breakdown_counts_object_score_gate_flips_of_same_decisions():
    from benchmarks.throughput_report import decision_breakdown, format_breakdown

    ref = {("v", "0"): {"frames": [0], "keyframe": 0, "scores": [1.0], "object_scores": [2.0, 1e-3, -1.0]}}
    cand = {("v", "0"): {"frames": [0], "keyframe": 0, "scores": [1.0], "object_scores": [2.0, -1e-3, -1.0]}}
    out = decision_breakdown(ref, cand, {("v", "0"): np.array([1.0, 0.0, 0.5])})
    assert out["same_decisions_gate"] == {"gate_flips": 1, "min_abs_score_at_flip": 1e-3, "masks_same_gate": 2,
                                          "masks_same_gate_iou_ge_099": 1}
    assert "gate differs on 1 frames" in format_breakdown(out)


def test_pipeline_split_says_whether_scoring_is_under_a_tenth_of_the_gpu_time():
    from benchmarks.inference_throughput import pipeline_split_lines

    stages = {"sam2_encode": 3.0, "track": 5.0, "masks_rle": 2.0, "score": 0.8,
              "writer_score": 0.2, "writer_write": 0.1}
    text = "\n".join(pipeline_split_lines(stages, masks=1000))
    assert "0.800 s on the device = 8.0% of the 10.00 s that made the masks (within the one-tenth rule" in text
    assert "0.800 vs 10.000 ms per mask" in text
    assert "writers: scoring 0.200 s, writing 0.100 s" in text
    assert "OVER" in "\n".join(pipeline_split_lines({**stages, "score": 1.5}, masks=1000))
    assert pipeline_split_lines({}, masks=10) == []
