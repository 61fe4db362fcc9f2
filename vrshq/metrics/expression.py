"""All scores of one expression (one target, all frames of its video) in one call."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vrshq.metrics._crop import cropped_chunks
from vrshq.metrics._validate import check_masks
from vrshq.metrics.accuracy_robustness import accuracy_from_counts, robustness_from_counts
from vrshq.metrics.boundary import (
    DEFAULT_BOUND_TH,
    bound_pixels,
    chunk_precision_recall,
    disk_footprint,
    f_measure,
)
from vrshq.metrics.region import chunk_jaccard

__all__ = ["ExpressionScore", "FrameScores", "score_expression", "score_from_frames"]


@dataclass(frozen=True)
class ExpressionScore:
    """Scores of one expression; field names are the columns of ``schemas.SCORES_SCHEMA``.

    Attributes:
        j: region similarity, mean over frames of the per-frame Jaccard index.
        f: boundary F-measure, mean over frames.
        jf: ``(j + f) / 2``.
        accuracy: ReVOS pixel accuracy A over all frames.
        robustness: ReVOS robustness R, or None without foreground
            (definition: ``vrshq.metrics.accuracy_robustness``).
        num_frames: frames scored.
    """

    j: float
    f: float
    jf: float
    accuracy: float
    robustness: float | None
    num_frames: int


def score_expression(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    foreground: np.ndarray | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
    chunk_frames: int | None = None,
) -> ExpressionScore:
    """J, F, J&F, A and R of one expression from its bool (T, H, W) target and prediction.

    J and F are the DAVIS 2017 per-frame numbers averaged over frames, as the official ReVOS,
    MeViS and Ref-DAVIS scripts do (a frame where both masks are empty scores J = F = 1). Same
    numbers as :func:`~vrshq.metrics.jaccard`, :func:`~vrshq.metrics.boundary_f`,
    :func:`~vrshq.metrics.pixel_accuracy` and :func:`~vrshq.metrics.robustness`, computed in one
    pass over the frames.

    Args:
        gt: bool (T, H, W) target: union of the expression's objects (empty frames allowed).
        pred: bool (T, H, W) prediction, same shape.
        foreground: bool (T, H, W) union of all objects of the video, for R; None gives R = None.
        bound_th: boundary tolerance of F (fraction of the diagonal, or pixels if >= 1).
        chunk_frames: frames processed together; None: ``vrshq.metrics._crop.CHUNK_PIXELS`` worth.

    Returns:
        :class:`ExpressionScore`.

    Raises:
        TypeError: a mask is not a bool numpy array.
        ValueError: shapes differ (both are named), a mask is not 3-D or has no frame or pixel.

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((2, 10, 10), bool); gt[:, 2:6, 2:6] = True
        >>> score = score_expression(gt, gt.copy())
        >>> (score.j, score.f, score.jf, score.accuracy, score.robustness)
        (1.0, 1.0, 1.0, 1.0, None)
    """
    masks = {"gt": gt, "pred": pred} if foreground is None else {"gt": gt, "pred": pred, "foreground": foreground}
    num_frames, height, width = check_masks(**masks)
    if num_frames * height * width == 0:
        raise ValueError(f"score_expression needs at least one frame and one pixel, got gt of shape {gt.shape}")
    footprint = disk_footprint(bound_pixels(height, width, bound_th=bound_th))
    # One pass over cropped chunks for all scores; an empty crop means both masks are empty
    # (J = 1, P = R = 1, no mismatch, no false positive).
    j_frames = np.ones(num_frames)
    precision = np.ones(num_frames)
    recall = np.ones(num_frames)
    mismatches = 0
    false_positives = 0
    for chunk in cropped_chunks(gt, pred, chunk_frames=chunk_frames):
        if chunk.gt.size:
            j_frames[chunk.frames] = chunk_jaccard(chunk.gt, chunk.pred)
            precision[chunk.frames], recall[chunk.frames] = chunk_precision_recall(chunk.gt, chunk.pred, footprint)
            mismatches += np.count_nonzero(chunk.gt ^ chunk.pred)
            false_positives += np.count_nonzero(chunk.pred & ~chunk.gt)
    j = float(np.mean(j_frames))
    f = float(np.mean(f_measure(precision, recall)))
    r = None if foreground is None else robustness_from_counts(false_positives, np.count_nonzero(foreground))
    a = accuracy_from_counts(mismatches, gt.size)
    return ExpressionScore(j=j, f=f, jf=(j + f) / 2, accuracy=a, robustness=r, num_frames=num_frames)


@dataclass(frozen=True)
class FrameScores:
    """What :func:`score_expression` reduces, computed elsewhere: per-frame J and F and the pixel counts of A and R.

    The model actor computes these on its device, chunk by chunk, where the masks are made
    (:class:`vrshq.metrics.device.ExpressionScorer`); only these few numbers per frame travel, and
    :func:`score_from_frames` reduces them to the same :class:`ExpressionScore` as ``score_expression``.

    Attributes:
        j_frames: float64 (T,) per-frame J.
        f_frames: float64 (T,) per-frame F.
        mismatches: pixels where prediction and target differ, over all frames (for A).
        false_positives: predicted pixels outside the target, over all frames (for R).
        target_pixels: target pixels over all frames (the mean target area).
        shape: (T, H, W) of the masks.
    """

    j_frames: np.ndarray
    f_frames: np.ndarray
    mismatches: int
    false_positives: int
    target_pixels: int
    shape: tuple[int, int, int]

    @property
    def mean_target_area(self) -> float:
        """``gt.mean()`` of the target: its pixels over all pixels (exact: both counts are integers)."""
        return float(np.float64(self.target_pixels) / (self.shape[0] * self.shape[1] * self.shape[2]))


def score_from_frames(frames: FrameScores, *, foreground_pixels: int | None = None) -> ExpressionScore:
    """The :class:`ExpressionScore` of per-frame scores and pixel counts, bit-identical to :func:`score_expression`.

    J and F are the float64 means over the frames in frame order (``np.mean`` of the same arrays as
    ``score_expression`` takes them); A and R come from the same integer counts.

    Args:
        frames: the expression's :class:`FrameScores`.
        foreground_pixels: foreground pixels of the video over all frames (for R); None gives R = None.

    Raises:
        ValueError: the per-frame arrays do not hold one value per frame, or the masks have no pixel.
    """
    j_frames = np.asarray(frames.j_frames, dtype=np.float64)
    f_frames = np.asarray(frames.f_frames, dtype=np.float64)
    num_frames, height, width = frames.shape
    if j_frames.shape != (num_frames,) or f_frames.shape != (num_frames,):
        raise ValueError(f"FrameScores of shape {frames.shape} needs {num_frames} J and F values, "
                         f"got {j_frames.shape} and {f_frames.shape}")
    if num_frames * height * width == 0:
        raise ValueError(f"score_from_frames needs at least one frame and one pixel, got shape {frames.shape}")
    j = float(np.mean(j_frames))
    f = float(np.mean(f_frames))
    r = None if foreground_pixels is None else robustness_from_counts(frames.false_positives, foreground_pixels)
    a = accuracy_from_counts(frames.mismatches, num_frames * height * width)
    return ExpressionScore(j=j, f=f, jf=(j + f) / 2, accuracy=a, robustness=r, num_frames=num_frames)
