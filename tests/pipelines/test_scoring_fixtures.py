"""Builders shared by the scoring, evaluate, export and report tests (no tests here).

Predictions are derived from the synthetic dataset's ground truth and perturbed in known ways, so
scores are non-trivial (neither 0 nor 1) and expected values come from ``vrshq.metrics`` directly.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa

from pipelines.evaluation.png_masks import encode_png_mask, png_mask_path
from pipelines.io.rle import encode_masks
from schemas import MASKS_SCHEMA
from vrshq import metrics
from vrshq.data import VideoRecord, load_expression_masks, load_foreground_masks, read_revos, write_synthetic_revos

__all__ = ["expected_scores", "make_dataset", "masks_table", "perturbed_predictions", "write_pngs"]

RUN = {"run_id": "test-run", "model": "test-model", "code_version": "test"}


def make_dataset(root: pathlib.Path, *, num_videos: int = 3, num_frames: int = 5, seed: int = 7) -> list[VideoRecord]:
    """A small synthetic ReVOS split (48x64 frames) and its records."""
    write_synthetic_revos(str(root), num_videos=num_videos, num_frames=num_frames, height=48, width=64, seed=seed)
    return read_revos(str(root), split="valid")


def perturbed_predictions(records: list[VideoRecord], *, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """``video_id -> exp_id -> bool (T, H, W)``: GT shifted by a few pixels plus random flips.

    No-target expressions get a small false-positive blob in some videos, so R is below 1.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    for video in records:
        out[video.video_id] = {}
        for expression in video.expressions:
            gt = load_expression_masks(video, expression)
            pred = np.roll(gt, shift=(int(rng.integers(0, 3)), int(rng.integers(-2, 3))), axis=(1, 2))
            pred ^= rng.random(pred.shape) < 0.01
            if expression.type_id == 2 and rng.random() < 0.5:
                pred[:, 2:6, 2:8] = True
            out[video.video_id][expression.exp_id] = pred
    return out


def masks_table(
    records: list[VideoRecord],
    predictions: dict[str, dict[str, np.ndarray]],
    *,
    keyframes: dict[tuple[str, str], int] | None = None,
) -> pa.Table:
    """The MASKS_SCHEMA table of ``predictions`` (one row per video, expression, frame)."""
    rows = []
    for video in records:
        for exp_id, masks in predictions.get(video.video_id, {}).items():
            key = (keyframes or {}).get((video.video_id, exp_id))
            for t, (name, counts) in enumerate(zip(video.frame_names, encode_masks(masks))):
                rows.append({
                    "dataset": video.dataset, "split": video.split, "video_id": video.video_id,
                    "exp_id": exp_id, "frame_index": t, "frame_name": name,
                    "height": masks.shape[1], "width": masks.shape[2], "rle_counts": counts,
                    "score": 0.5, "is_keyframe": key == t, **RUN,
                })
    return pa.Table.from_pylist(rows, schema=MASKS_SCHEMA)


def write_pngs(root: pathlib.Path, records: list[VideoRecord], predictions: dict[str, dict[str, np.ndarray]]) -> None:
    """Write ``predictions`` as ``<root>/<video>/<exp_id>/<frame>.png``."""
    for video in records:
        for exp_id, masks in predictions.get(video.video_id, {}).items():
            for name, mask in zip(video.frame_names, masks):
                path = pathlib.Path(png_mask_path(str(root), video.video_id, exp_id, name))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(encode_png_mask(mask))


def expected_scores(
    records: list[VideoRecord], predictions: dict[str, dict[str, np.ndarray]]
) -> dict[tuple[str, str], metrics.ExpressionScore]:
    """``(video_id, exp_id) -> vrshq.metrics.score_expression`` on the same masks, computed directly."""
    out = {}
    for video in records:
        foreground, _ = load_foreground_masks(video)
        for expression in video.expressions:
            pred = predictions.get(video.video_id, {}).get(expression.exp_id)
            if pred is not None:
                gt = load_expression_masks(video, expression)
                out[(video.video_id, expression.exp_id)] = metrics.score_expression(gt, pred, foreground=foreground)
    return out
