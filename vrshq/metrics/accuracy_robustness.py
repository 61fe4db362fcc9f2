"""ReVOS accuracy A and robustness R, computed on bool masks (the official ones are buggy).

What the official code does (``SitongGong/VRS-HQ`` ``tools/metrics.py`` ``get_r2vos_accuracy`` /
``get_r2vos_robustness``, called by ``tools/eval_revos.py``, ReVOS toolkit of VISA):

* Inputs are uint8: the GT is the **sum** of the expression's 0/1 object masks (2 where two target
  objects overlap), the prediction is the 0/255 PNG as read by ``cv2.imread``, and the foreground
  is the decoded ``mask_dict_foreground.json`` RLE (union of every object of the video, 0/1).
* ``A_t = mean(gt_t == pred_t)`` per frame, ``A = mean_t A_t``. Since 1 != 255, every correctly
  predicted target pixel counts as an error: the official A only rewards true negatives.
* ``R_t = max(1 - neg_t / (pos_t + 1e-6), 0)`` per frame with ``neg_t = sum((1 - gt_t) * pred_t)``
  and ``pos_t = sum(fg_t)``, ``R = mean_t R_t``. In uint8, ``1 - gt`` wraps to 255 where target
  objects overlap and the product wraps modulo 256, so a false positive pixel counts 255 and a
  predicted pixel on an overlap of two targets counts 1 (``255 * 255 = 1 mod 256``): R drops to
  0 as soon as a frame has more than ``|fg_t| / 255`` false positives. A frame without foreground
  scores 1 without false positives and 0 with any.

What this module computes (method §9 item 13 in docs/model.md; R as defined in docs/jobs/evaluate.md):

* Masks are bool, so a pixel is either target or not, whatever the encoding on disk.
* ``A = #(pred == gt) / (T * H * W)``: pixel accuracy over all frames (equal to the mean of
  per-frame accuracies, since all frames have the same size).
* ``R = max(1 - FP / FG, 0)`` with ``FP = #(pred & ~gt)`` (predicted pixels outside the target)
  and ``FG = #foreground``, both **summed over all frames** rather than averaged per frame, and
  without the 1e-6 epsilon; frames without foreground therefore add their false positives to FP
  instead of scoring 0 or 1 on their own. When the foreground is empty in every frame (or not
  given) R is ``None``: the ratio is undefined, and a made-up number would bias the means.
"""
from __future__ import annotations

import numpy as np

from vrshq.metrics._validate import check_masks

__all__ = ["pixel_accuracy", "robustness"]


def pixel_accuracy(gt: np.ndarray, pred: np.ndarray) -> float:
    """ReVOS accuracy A: the fraction of pixels over all frames where ``pred == gt``.

    Args:
        gt: bool (T, H, W) target (union of the expression's objects).
        pred: bool (T, H, W) prediction.

    Returns:
        A in [0, 1].

    Raises:
        TypeError, ValueError: bad masks (see ``check_masks``) or masks without pixels.

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((1, 2, 4), bool); gt[0, 0] = True
        >>> pred = np.zeros((1, 2, 4), bool); pred[0, 0, :3] = True; pred[0, 1, 0] = True
        >>> pixel_accuracy(gt, pred)  # 1 target pixel missed, 1 false positive: 6 of 8 right
        0.75
    """
    num_frames, height, width = check_masks(gt=gt, pred=pred)
    total = num_frames * height * width
    if total == 0:
        raise ValueError(f"pixel_accuracy needs masks with pixels, got shape {gt.shape}")
    return accuracy_from_counts(np.count_nonzero(gt ^ pred), total)


def robustness(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray) -> float | None:
    """ReVOS robustness R: ``max(1 - FP / FG, 0)``, both summed over frames; None without foreground.

    See the module docstring for the exact definition and how it differs from the official code.

    Args:
        gt: bool (T, H, W) target (union of the expression's objects).
        pred: bool (T, H, W) prediction.
        foreground: bool (T, H, W) union of all annotated objects of the video
            (``mask_dict_foreground.json``).

    Returns:
        R in [0, 1], or None when ``foreground`` is empty in every frame.

    Raises:
        TypeError, ValueError: bad masks (see ``check_masks``).

    Example:
        >>> import numpy as np
        >>> fg = np.zeros((2, 4, 4), bool); fg[:, :2] = True          # 16 foreground pixels
        >>> gt = np.zeros((2, 4, 4), bool); gt[:, 0] = True            # target: row 0
        >>> pred = gt.copy(); pred[0, 1] = True; pred[1, 3, :2] = True  # 4 + 2 false positives
        >>> robustness(gt, pred, fg)  # 1 - 6/16
        0.625
    """
    check_masks(gt=gt, pred=pred, foreground=foreground)
    return robustness_from_counts(np.count_nonzero(pred & ~gt), np.count_nonzero(foreground))


def accuracy_from_counts(mismatches: int, total: int) -> float:
    """A from the number of pixels where prediction and target differ, out of ``total``."""
    return float((total - mismatches) / total)


def robustness_from_counts(false_positives: int, foreground_pixels: int) -> float | None:
    """R from false-positive and foreground pixel counts summed over frames; None without foreground."""
    if foreground_pixels == 0:
        return None
    return float(max(1.0 - false_positives / foreground_pixels, 0.0))
