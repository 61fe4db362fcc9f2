"""jobs.report and pipelines.evaluation.report: the paper's table, breakdowns, keyframe analysis, plots."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs.evaluate import main as evaluate_main
from jobs.report import main
from pipelines.evaluation import report as rep
from pipelines.io.table_io import read_table
from pipelines.io.writers import write_batch
from schemas import MASKS_SCHEMA, SCORES_SCHEMA
from tests.pipelines.test_scoring_fixtures import make_dataset, masks_table, perturbed_predictions
from vrshq import metrics


def _scores(rows: list[dict]) -> pa.Table:
    base = {"dataset": "revos", "split": "valid", "video_id": "v", "expression": "the red circle",
            "expression_type": "referring", "num_frames": 10, "num_objects": 1, "accuracy": None,
            "robustness": None, "keyframe_index": None, "mean_target_area": 0.1, "seconds": None,
            "run_id": "r", "model": "m", "code_version": "c"}
    out = []
    for i, row in enumerate(rows):
        full = {**base, "exp_id": str(i), **row}
        full["jf"] = (full["j"] + full["f"]) / 2 if full.get("j") is not None else None
        out.append(full)
    return pa.Table.from_pylist(out, schema=SCORES_SCHEMA)


def test_summary_follows_revos_and_excludes_no_target():
    table = _scores([
        {"type_id": 0, "j": 0.2, "f": 0.4, "robustness": 0.5},
        {"type_id": 0, "j": 0.4, "f": 0.6, "robustness": 0.7},
        {"type_id": 1, "j": 0.8, "f": 1.0, "robustness": 0.9},
        {"type_id": 2, "j": 0.0, "f": 0.0, "robustness": 0.25, "accuracy": 0.5},  # must not move J&F
    ])
    summary = rep.summary_table(table)
    assert summary["convention"] == "revos"
    assert summary["referring"]["j"] == pytest.approx(0.3) and summary["referring"]["jf"] == pytest.approx(0.4)
    assert summary["reasoning"]["jf"] == pytest.approx(0.9)
    # overall = mean of the two splits (0.3+0.8)/2, not the pooled mean (0.2+0.4+0.8)/3
    assert summary["overall"]["j"] == pytest.approx(0.55) and summary["overall"]["jf"] == pytest.approx(0.65)
    assert summary["overall"]["n"] == 3
    assert summary["robustness"] == pytest.approx((0.6 + 0.9) / 2)
    assert summary["no_target"] == {"n": 1, "accuracy": 0.5, "robustness": 0.25}
    revos = metrics.summarize_revos(table)
    assert summary["overall"]["jf"] == revos.overall.jf


def test_summary_with_referring_only_is_the_plain_mean():
    summary = rep.summary_table(_scores([{"type_id": 0, "j": 0.2, "f": 0.4}, {"type_id": 0, "j": 0.6, "f": 0.8}]))
    assert summary["convention"] == "mean" and summary["reasoning"] is None
    assert summary["overall"]["jf"] == pytest.approx(0.5) == summary["referring"]["jf"]
    assert summary["robustness"] is None  # missing, not a number
    assert "–" in rep.format_summary_table(summary)


def test_breakdowns_hand_computed():
    table = _scores([
        {"type_id": 0, "j": 0.2, "f": 0.2, "num_objects": 1, "expression": "a b", "mean_target_area": 0.01},
        {"type_id": 0, "j": 0.4, "f": 0.4, "num_objects": 2, "expression": "a b c", "mean_target_area": 0.02},
        {"type_id": 1, "j": 0.6, "f": 0.6, "num_objects": 3, "expression": "a b c d e", "mean_target_area": 0.3},
        {"type_id": 2, "j": 1.0, "f": 1.0, "num_objects": 0, "expression": "x", "mean_target_area": 0.0},
    ])
    objects = rep.breakdown(table, "object_count").to_pylist()
    assert [(r["group"], r["n"]) for r in objects] == [("single", 1), ("multi", 2)]
    assert objects[1]["jf"] == pytest.approx(0.5)
    length = rep.breakdown(table, "expression_length", bins=3).to_pylist()
    assert sum(r["n"] for r in length) == 3  # the no-target row is excluded
    assert [r["jf"] for r in length] == pytest.approx([0.2, 0.4, 0.6])
    assert [r["group"] for r in length] == ["2", "3", "4–5"]
    size = rep.breakdown(table, "object_size", bins=2).to_pylist()
    assert [r["n"] for r in size] == [1, 2] and size[0]["group"].endswith("%")
    with pytest.raises(ValueError, match="must be one of"):
        rep.breakdown(table, "colour")


def test_keyframe_rows_hand_computed():
    areas = np.array([0, 5, 10, 10, 2])
    assert rep.keyframe_rows(3, areas) == {"largest_frame": 2, "visible": True, "is_largest": True,
                                           "area_ratio": 1.0, "frame_distance": 1}
    row = rep.keyframe_rows(0, areas)
    assert not row["visible"] and not row["is_largest"] and row["area_ratio"] == 0.0
    assert rep.keyframe_rows(1, np.zeros(3))["area_ratio"] is None
    with pytest.raises(ValueError, match="outside the video"):
        rep.keyframe_rows(5, areas)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Synthetic dataset, masks with TKS keyframes, evaluated scores under run/."""
    root = tmp_path_factory.mktemp("report")
    records = make_dataset(root / "ds")
    predictions = perturbed_predictions(records, seed=1)
    keyframes = {(v.video_id, e.exp_id): (i % v.num_frames) for v in records for i, e in enumerate(v.expressions)}
    write_batch(str(root / "run"), {"masks": masks_table(records, predictions, keyframes=keyframes)},
                batch_id="p0")
    assert evaluate_main(["--dataset.root", str(root / "ds"), "--masks", str(root / "run"),
                          "--out", str(root / "run")]) == 0
    return root, records


def test_report_job_writes_tables_plots_and_overlays(evaluated, tmp_path):
    root, records = evaluated
    video = records[0]
    out = tmp_path / "report"
    assert main(["--scores", str(root / "run"), "--out", str(out), "--dataset.root", str(root / "ds"),
                 "--masks", str(root / "run"), "--overlay", f"{video.video_id}:{video.expressions[0].exp_id}",
                 "--overlay-video"]) == 0
    for name in ("report.md", "report.html", "summary.json", "per_video.csv", "keyframes.csv",
                 "breakdown_object_count.csv", "breakdown_expression_length.csv", "breakdown_video_length.csv",
                 "breakdown_object_size.csv"):
        assert (out / name).stat().st_size > 0, name
    for name in ("distributions.png", "breakdowns.png", "keyframes.png", "overlays/000.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300, name
    import decord

    clip = decord.VideoReader(str(out / "overlays" / "000.mp4"))
    assert len(clip) == video.num_frames and clip[0].shape[0] >= 240  # small frames are upscaled
    summary = json.loads((out / "summary.json").read_text())
    scores = read_table(str(root / "run" / "scores"), SCORES_SCHEMA)
    assert summary["summary"]["overall"]["jf"] == pytest.approx(metrics.summarize_revos(scores).overall.jf)
    assert summary["keyframes"]["n"] == sum(1 for v in records for e in v.expressions if e.type_id != 2)
    assert 0 <= summary["keyframes"]["visible_rate"] <= 1
    markdown = (out / "report.md").read_text()
    for text in ("## Summary", "| referring |", "| overall |", "J&F by objects in the target",
                 "TKS keyframe", "![breakdowns](breakdowns.png)", "overlays/000.png"):
        assert text in markdown
    assert "<table>" in (out / "report.html").read_text()


def test_report_without_ground_truth_says_what_is_needed(evaluated, tmp_path, caplog):
    root, _ = evaluated
    out = tmp_path / "r"
    assert main(["--scores", str(root / "run" / "scores"), "--out", str(out)]) == 0  # no error rows: status 0
    assert "Not computed: needs" in (out / "report.md").read_text()
    assert not (out / "keyframes.png").exists()
    with caplog.at_level(logging.ERROR):
        assert main(["--scores", str(root / "run"), "--out", str(out)]) == 2
    assert "already holds a report" in caplog.text


def test_report_config_problems(evaluated, tmp_path, caplog):
    root, _ = evaluated
    with caplog.at_level(logging.ERROR):
        assert main(["--scores", str(root / "run"), "--out", str(tmp_path), "--overlay", "novideo",
                     "--bins", "0"]) == 2
    for text in ("overlay='novideo': expected video_id:exp_id", "overlay needs --masks", "bins=0"):
        assert text in caplog.text
    with caplog.at_level(logging.ERROR):
        assert main(["--scores", str(root / "run"), "--out", str(tmp_path), "--split", "test"]) == 2
    assert "no partition with dataset=* split=test (present: [('revos', 'valid')])" in caplog.text
