"""Straightforward per-frame reference of the DAVIS 2017 J/F evaluation and of the ReVOS A/R code.

This module is the yardstick for :mod:`vrshq.metrics`: tests and ``benchmarks.metrics_speed``
check that the vectorised metrics give the same numbers. It follows, operation for operation,
``davis2017/metrics.py`` of ``davisvideochallenge/davis2017-evaluation`` (commit 30b698a), which
``SitongGong/VRS-HQ`` ``tools/metrics.py`` copies unchanged apart from ``np.bool`` -> ``bool``:

* ``db_eval_iou``: ``|A & B| / |A | B|`` per frame, 1 where the union is empty.
* ``db_eval_boundary``: a Python loop over frames of ``f_measure`` with ``bound_th=0.008``.
* ``f_measure``: boundary maps by ``_seg2bmap``, each dilated with ``cv2.dilate`` by the
  footprint ``skimage.morphology.disk(bound_pix)`` (the ``binary_dilation`` call is commented out
  in the reference), then precision/recall of matched boundary pixels.

scikit-image is not a dependency of vrshq, so :func:`disk` restates the footprint of
``skimage.morphology.disk(radius)`` as scikit-image documents it for reproducing the old
implementation (``L = arange(-r, r + 1)``; ``X**2 + Y**2 <= r**2``). Void pixels are not
supported: neither ReVOS nor MeViS has them, and the official ReVOS script passes none.

It also holds a port of the official ReVOS accuracy/robustness with their bugs
(:func:`official_revos_accuracy`, :func:`official_revos_robustness`, method §9 item 13),
used by the tests to show how :mod:`vrshq.metrics.accuracy_robustness` differs, and the synthetic
random-blob masks used by the tests and the benchmark.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "disk",
    "seg2bmap",
    "f_measure",
    "db_eval_iou",
    "db_eval_boundary",
    "official_revos_accuracy",
    "official_revos_robustness",
    "random_blob_masks",
]


def disk(radius: float) -> np.ndarray:
    """The footprint of ``skimage.morphology.disk(radius)`` (uint8, ones where ``x²+y² <= r²``)."""
    offsets = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(offsets, offsets)
    return np.array((x**2 + y**2) <= radius**2, dtype=np.uint8)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a 2-D mask (``_seg2bmap`` without resizing)."""
    seg = seg.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = 0
    return bmap


def f_measure(foreground_mask: np.ndarray, gt_mask: np.ndarray, *, bound_th: float = 0.008) -> float:
    """Boundary F-measure of one frame, exactly as ``davis2017.metrics.f_measure`` (no void)."""
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = seg2bmap(foreground_mask)
    gt_boundary = seg2bmap(gt_mask)
    footprint = disk(bound_pix)
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), footprint)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), footprint)
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    """Per-frame Jaccard of (T, H, W) masks; 1 where both are empty (``db_eval_iou``, no void)."""
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    inters = np.sum(segmentation & annotation, axis=(-2, -1))
    union = np.sum(segmentation | annotation, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inters / union
    j[np.isclose(union, 0)] = 1
    return j


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray, *, bound_th: float = 0.008) -> np.ndarray:
    """Per-frame boundary F of (T, H, W) masks: a loop over frames, as ``db_eval_boundary``."""
    f_res = np.zeros(annotation.shape[0])
    for frame in range(annotation.shape[0]):
        f_res[frame] = f_measure(segmentation[frame], annotation[frame], bound_th=bound_th)
    return f_res


def official_revos_accuracy(gt_masks: np.ndarray, pred_masks: np.ndarray) -> float:
    """``get_r2vos_accuracy(...).mean()`` as ``tools/eval_revos.py`` calls it (bugs kept).

    The script passes GT as uint8 sums of 0/1 masks and predictions as the 0/255 PNGs, so
    ``gt == pred`` is false on every correctly predicted foreground pixel.
    """
    return float(np.mean([np.mean(g == p) for g, p in zip(gt_masks, pred_masks)]))


def official_revos_robustness(gt_masks: np.ndarray, pred_masks: np.ndarray, foreground_masks: np.ndarray) -> float:
    """``get_r2vos_robustness(...).mean()`` as ``tools/eval_revos.py`` calls it (bugs kept).

    All inputs are uint8: ``1 - gt`` wraps to 255 where two target objects overlap, and the
    product with the 0/255 prediction wraps too (``1 * 255 = 255``, ``255 * 255 = 1``).
    """
    values = []
    for gt, pred, foreground in zip(gt_masks, pred_masks, foreground_masks):
        neg = ((1 - gt) * pred).sum()
        pos = foreground.sum()
        values.append(max(1 - neg / (pos + 1e-6), 0.0))
    return float(np.mean(values))


def random_blob_masks(
    num_frames: int,
    height: int,
    width: int,
    *,
    seed: int,
    num_blobs: int = 3,
    num_lines: int = 1,
    empty_probability: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic (gt, pred) pair of bool (T, H, W) masks: moving ellipses plus thin lines.

    Each frame of each mask gets ``num_blobs`` filled ellipses and ``num_lines`` random 1-pixel
    lines (thin structures, which cross the whole frame).
    The prediction is the ground truth drawn again with jittered centres, axes and angles, so
    boundaries are near but not equal; some frames are left empty in one or both masks
    (probability ``empty_probability`` each) to exercise the empty cases of J and F.
    """
    rng = np.random.default_rng(seed)
    scale = min(height, width)
    centres = rng.uniform([0, 0], [width, height], size=(num_blobs, 2))
    velocity = rng.normal(0.0, scale / 100, size=(num_blobs, 2))
    axes = rng.uniform(scale / 20, scale / 4, size=(num_blobs, 2))
    angles = rng.uniform(0, 180, size=num_blobs)
    gt = np.zeros((num_frames, height, width), dtype=np.uint8)
    pred = np.zeros_like(gt)
    for t in range(num_frames):
        for mask, jitter in ((gt[t], 0.0), (pred[t], 1.0)):
            for b in range(num_blobs):
                cx, cy = centres[b] + t * velocity[b] + jitter * rng.normal(0, scale / 60, 2)
                ax, ay = np.maximum(axes[b] * (1 + jitter * rng.normal(0, 0.08, 2)), 1)
                angle = angles[b] + jitter * rng.normal(0, 5)
                cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), angle, 0, 360, 1, -1)
            for _ in range(num_lines):
                x0, x1 = rng.integers(0, width, 2)
                y0, y1 = rng.integers(0, height, 2)
                cv2.line(mask, (int(x0), int(y0)), (int(x1), int(y1)), 1, 1)
    gt[rng.random(num_frames) < empty_probability] = 0
    pred[rng.random(num_frames) < empty_probability] = 0
    return gt.astype(bool), pred.astype(bool)
