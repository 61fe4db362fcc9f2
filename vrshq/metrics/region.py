"""Region similarity J (Jaccard index), as the DAVIS 2017 evaluation defines it."""
from __future__ import annotations

import numpy as np

from vrshq.metrics._crop import cropped_chunks
from vrshq.metrics._validate import check_masks

__all__ = ["jaccard"]


def jaccard(gt: np.ndarray, pred: np.ndarray, *, chunk_frames: int | None = None) -> np.ndarray:
    """Per-frame region similarity ``|gt & pred| / |gt | pred|``; 1.0 where both masks are empty.

    Same numbers as ``db_eval_iou`` of davis2017-evaluation (without void pixels), computed on
    chunks of frames cropped to where the masks are (see ``vrshq.metrics._crop``).

    Args:
        gt: bool (T, H, W) ground truth.
        pred: bool (T, H, W) prediction.
        chunk_frames: frames processed together; None: ``vrshq.metrics._crop.CHUNK_PIXELS`` worth.

    Returns:
        float64 (T,) J per frame, in [0, 1].

    Raises:
        TypeError, ValueError: see :func:`vrshq.metrics._validate.check_masks`.

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((2, 4, 4), bool); gt[0, :2] = True
        >>> pred = np.zeros((2, 4, 4), bool); pred[0, :1] = True
        >>> jaccard(gt, pred).tolist()
        [0.5, 1.0]
    """
    num_frames, _, _ = check_masks(gt=gt, pred=pred)
    j = np.ones(num_frames)  # frames in an empty crop: both masks empty
    for chunk in cropped_chunks(gt, pred, chunk_frames=chunk_frames):
        if chunk.gt.size:
            j[chunk.frames] = chunk_jaccard(chunk.gt, chunk.pred)
    return j


def chunk_jaccard(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """:func:`jaccard` of bool (N, h, w) masks without input checks or chunking."""
    inter = np.count_nonzero(gt & pred, axis=(1, 2))
    union = np.count_nonzero(gt | pred, axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    j[union == 0] = 1.0
    return j
