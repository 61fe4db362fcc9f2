"""Video object segmentation metrics: DAVIS J and F, ReVOS A and R, and dataset summaries.

J and F reproduce the DAVIS 2017 evaluation (``davis2017-evaluation``, as copied by VRS-HQ
``tools/metrics.py``) bit for bit, vectorised over frames; A and R follow the ReVOS definitions
without the official script's dtype bugs (see :mod:`vrshq.metrics.accuracy_robustness`). All per-frame
functions take bool numpy masks of shape (T, H, W).

Example:
    >>> import numpy as np
    >>> from vrshq.metrics import score_expression
    >>> gt = np.zeros((1, 10, 10), bool); gt[0, 2:6, 2:6] = True
    >>> pred = np.zeros((1, 10, 10), bool); pred[0, 2:6, 4:8] = True
    >>> score_expression(gt, pred).j  # overlap 8 of union 24
    0.3333333333333333
"""
from vrshq.metrics.aggregate import RevosSummary, SplitScores, summarize_mean, summarize_revos
from vrshq.metrics.boundary import DEFAULT_BOUND_TH, bound_pixels, boundary_f, boundary_map, disk_footprint
from vrshq.metrics.expression import ExpressionScore, FrameScores, score_expression, score_from_frames
from vrshq.metrics.region import jaccard
from vrshq.metrics.accuracy_robustness import pixel_accuracy, robustness

__all__ = [
    "DEFAULT_BOUND_TH",
    "ExpressionScore",
    "FrameScores",
    "RevosSummary",
    "SplitScores",
    "bound_pixels",
    "boundary_f",
    "boundary_map",
    "disk_footprint",
    "jaccard",
    "pixel_accuracy",
    "robustness",
    "score_expression",
    "score_from_frames",
    "summarize_mean",
    "summarize_revos",
]
