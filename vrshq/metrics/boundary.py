"""Boundary F-measure F, as the DAVIS 2017 evaluation defines it, vectorised over frames.

The reference (``davis2017/metrics.py`` of davisvideochallenge/davis2017-evaluation, copied as
``tools/metrics.py`` by VRS-HQ) loops over frames in Python. For each frame it

1. thins each mask to a one-pixel boundary map (``_seg2bmap``),
2. dilates both maps with ``cv2.dilate`` by the footprint ``skimage.morphology.disk(bound_pix)``
   where ``bound_pix = bound_th if bound_th >= 1 else ceil(bound_th * ||(H, W)||)``,
3. counts predicted boundary pixels inside the dilated GT boundary (precision) and GT boundary
   pixels inside the dilated predicted boundary (recall), and
4. returns ``F = 2PR / (P + R)`` with fixed rules when a boundary is empty: both empty -> P = R = 1
   (F = 1); prediction empty -> P = 1, R = 0 (F = 0); GT empty -> P = 0, R = 1 (F = 0).

Here the frames are processed in chunks of consecutive frames (``chunk_frames``), each cropped to
the bounding box of both masks over the chunk (``_crop.cropped_chunks``; exact, because every
pixel outside it is 0 in both boundary maps). Step 1 runs on the whole chunk with array slicing;
step 2 is one ``cv2.dilate`` call per chunk on the chunk's frames stacked into one tall image,
with zero rows between frames so that no frame reaches into the next (cv2 pads with zeros, as
in the reference's per-frame call); frames with an empty boundary skip it. Steps 3-4 are array
operations in float64 in the reference's order, so the results are bit-identical (checked
against ``benchmarks/reference_davis.py`` in ``tests/unit/test_metrics.py``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from vrshq.metrics._crop import cropped_chunks
from vrshq.metrics._validate import check_masks

__all__ = ["DEFAULT_BOUND_TH", "bound_pixels", "disk_footprint", "boundary_map", "boundary_f"]

#: DAVIS boundary tolerance: a fraction of the image diagonal (< 1) or a radius in pixels (>= 1).
DEFAULT_BOUND_TH = 0.008


def bound_pixels(height: int, width: int, *, bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Dilation radius of the DAVIS F-measure for an image of ``height`` x ``width`` pixels.

    ``bound_th`` itself when it is >= 1, else ``ceil(bound_th * sqrt(H² + W²))``; e.g. 8.0 for
    480x854 with the default 0.008. Returned as a float, like the reference.

    Raises:
        ValueError: ``bound_th`` is not positive.
    """
    if not bound_th > 0:
        raise ValueError(f"bound_th must be > 0 (fraction of the diagonal, or pixels if >= 1), got {bound_th}")
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * float(np.linalg.norm((height, width)))))


def disk_footprint(radius: float) -> np.ndarray:
    """The footprint of ``skimage.morphology.disk(radius)``: uint8, 1 where ``x² + y² <= radius²``.

    Offsets run over ``arange(-radius, radius + 1)`` as in scikit-image, so a non-integer radius
    (only possible with ``bound_th >= 1``) gives an even-sized footprint, which cv2 anchors at its
    centre ``(size // 2, size // 2)``, exactly as in the reference.
    """
    offsets = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(offsets, offsets)
    return ((x**2 + y**2) <= radius**2).astype(np.uint8)


def boundary_map(masks: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary maps of bool (T, H, W) masks (``_seg2bmap`` of the reference).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour;
    on the last row only the east neighbour counts, on the last column only the south one, and the
    bottom-right pixel is never a boundary. Boundaries thus sit half a pixel towards the origin
    from the true edge, and a mask that fills the whole frame has no boundary at all.

    Args:
        masks: bool (T, H, W).

    Returns:
        bool (T, H, W).

    Example:
        >>> import numpy as np
        >>> mask = np.zeros((1, 4, 4), bool); mask[0, 1:3, 1:3] = True
        >>> boundary_map(mask)[0].astype(int).tolist()
        [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """
    check_masks(masks=masks)
    return _boundary_map(masks)


def boundary_f(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    bound_th: float = DEFAULT_BOUND_TH,
    chunk_frames: int | None = None,
) -> np.ndarray:
    """Per-frame DAVIS boundary F-measure of bool (T, H, W) masks.

    Same numbers as ``db_eval_boundary(gt, pred, bound_th=bound_th)`` of davis2017-evaluation
    (no void pixels), see the module docstring for the algorithm and the empty-boundary rules.

    Args:
        gt: bool (T, H, W) ground truth.
        pred: bool (T, H, W) prediction.
        bound_th: boundary tolerance, a fraction of the diagonal (< 1) or pixels (>= 1).
        chunk_frames: frames processed together (one crop, one ``cv2.dilate`` call per chunk);
            None: as many as fit in ``vrshq.metrics._crop.CHUNK_PIXELS`` pixels (5 frames of 480x854).

    Returns:
        float64 (T,) F per frame, in [0, 1].

    Raises:
        TypeError, ValueError: bad masks (see ``check_masks``), ``bound_th <= 0`` or
            ``chunk_frames < 1``.

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((3, 20, 20), bool); gt[:, 5:15, 5:15] = True
        >>> pred = gt.copy(); pred[1] = False; pred[2, 5:15, 6:16] = True
        >>> boundary_f(gt, pred).tolist()
        [1.0, 0.0, 1.0]
    """
    num_frames, height, width = check_masks(gt=gt, pred=pred)
    footprint = disk_footprint(bound_pixels(height, width, bound_th=bound_th))
    precision = np.ones(num_frames)  # frames in an empty crop have no boundary: P = R = 1
    recall = np.ones(num_frames)
    for chunk in cropped_chunks(gt, pred, chunk_frames=chunk_frames):
        if chunk.gt.size:
            precision[chunk.frames], recall[chunk.frames] = chunk_precision_recall(chunk.gt, chunk.pred, footprint)
    return f_measure(precision, recall)


def f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """``2PR / (P + R)`` in the reference's float64 operation order, 0 where ``P + R == 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * precision * recall / (precision + recall)
    f[precision + recall == 0] = 0.0
    return f


def _boundary_map(masks: np.ndarray) -> np.ndarray:
    """:func:`boundary_map` without input checks; needs H, W >= 1."""
    inner = masks[:, :-1, :-1]
    bmap = np.zeros_like(masks)
    bmap[:, :-1, :-1] = (inner ^ masks[:, :-1, 1:]) | (inner ^ masks[:, 1:, :-1]) | (inner ^ masks[:, 1:, 1:])
    bmap[:, -1, :-1] = masks[:, -1, :-1] ^ masks[:, -1, 1:]
    bmap[:, :-1, -1] = masks[:, :-1, -1] ^ masks[:, 1:, -1]
    return bmap


def chunk_precision_recall(gt: np.ndarray, pred: np.ndarray, footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundary precision and recall (float64 (N,)) of bool (N, h, w) masks, with the empty rules.

    No input checks or chunking: callers pass one chunk (h, w >= 1) and the full-frame footprint.
    """
    gt_bound = _boundary_map(gt)
    pred_bound = _boundary_map(pred)
    n_gt = np.count_nonzero(gt_bound, axis=(1, 2))
    n_pred = np.count_nonzero(pred_bound, axis=(1, 2))
    precision = np.where(n_pred == 0, 1.0, 0.0)
    recall = np.where(n_gt == 0, 1.0, 0.0)
    regular = (n_pred > 0) & (n_gt > 0)
    if regular.any():
        if not regular.all():
            gt_bound, pred_bound = gt_bound[regular], pred_bound[regular]
        pred_match = np.count_nonzero(pred_bound & _dilate_frames(gt_bound, footprint), axis=(1, 2))
        gt_match = np.count_nonzero(gt_bound & _dilate_frames(pred_bound, footprint), axis=(1, 2))
        precision[regular] = pred_match / n_pred[regular].astype(np.float64)
        recall[regular] = gt_match / n_gt[regular].astype(np.float64)
    return precision, recall


def _dilate_frames(bound: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Dilate bool (N, H, W) maps by ``footprint`` with a single ``cv2.dilate`` call.

    Frames are stacked into one (N * (H + k), W) image with k = footprint height zero rows after
    each frame; a footprint reaches at most k - 1 rows, so frames never touch. Pixels beyond the
    image count as 0, as in the reference. Returns bool (N, H, W).
    """
    num, height, width = bound.shape
    gap = footprint.shape[0]
    tall = np.zeros((num, height + gap, width), dtype=np.uint8)
    tall[:, :height] = bound
    dilated = cv2.dilate(tall.reshape(num * (height + gap), width), footprint)
    return dilated.reshape(num, height + gap, width)[:, :height].view(np.bool_)
