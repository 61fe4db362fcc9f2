"""DAVIS J and F as tensor operations, on the device where the masks already are.

A tracked mask costs milliseconds of GPU time; scoring it on a CPU core costs about as much again
(boundary maps and two disk dilations per frame). Here the same definitions run as a few batched
tensor operations over a chunk of frames, on any torch device, and give the same numbers bit for bit
as :mod:`vrshq.metrics` and the per-frame DAVIS code (``tests/unit/test_metrics_device.py``):

* boundary maps (``_seg2bmap``): XORs of shifted views, with the reference's last-row/column rules;
* the dilation by ``disk(bound_pix)`` (``cv2.dilate``): every row of the footprint is one run of ones,
  so the dilation is the OR, over the footprint's rows, of a horizontal dilation by the row's run
  shifted by the row's offset, with zeros beyond the frame and the footprint anchored at
  ``size // 2`` as cv2 anchors it. A disk of integer radius has runs centred on the anchor, so the
  horizontal dilations grow by two ORs per half-width: about 50 byte-wide passes at 720p and
  radius 12 (a 25x25 convolution ran at 1.6 ms per frame pair on an H100, pooling passes at 0.6 ms);
  other footprints take one ``max_pool`` per distinct run;
* precision, recall, F and J in float64 in the reference's operation order, with its empty-mask rules.

:class:`ExpressionScorer` takes one expression's masks a chunk of frames at a time (as the model
actor builds them) and keeps per-frame J and F and the pixel counts of A and R on the device; its
:class:`vrshq.metrics.FrameScores` reduce on the host to the same numbers as
:func:`vrshq.metrics.score_expression` (:func:`vrshq.metrics.score_from_frames`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vrshq.metrics.boundary import DEFAULT_BOUND_TH, bound_pixels, disk_footprint
from vrshq.metrics.expression import FrameScores

__all__ = ["ExpressionScorer", "boundary_f_tensor", "boundary_map_tensor", "jaccard_tensor", "score_masks_tensor"]


def _check(gt: torch.Tensor, pred: torch.Tensor) -> None:
    if gt.shape != pred.shape or gt.dim() != 3:
        raise ValueError(f"gt and pred must be (T, H, W) of one shape, got {tuple(gt.shape)} and {tuple(pred.shape)}")
    if gt.dtype != torch.bool or pred.dtype != torch.bool:
        raise TypeError(f"gt and pred must be bool tensors, got {gt.dtype} and {pred.dtype}")


def jaccard_tensor(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Per-frame ``|gt & pred| / |gt | pred|`` (float64 (T,), on the masks' device); 1 where both are empty."""
    _check(gt, pred)
    inter = (gt & pred).flatten(1).sum(1, dtype=torch.int64).double()
    union = (gt | pred).flatten(1).sum(1, dtype=torch.int64).double()
    return torch.where(union == 0, torch.ones_like(union), inter / union)


def boundary_map_tensor(masks: torch.Tensor) -> torch.Tensor:
    """``vrshq.metrics.boundary_map`` of bool (T, H, W) tensors."""
    bmap = torch.zeros_like(masks)
    inner = masks[:, :-1, :-1]
    bmap[:, :-1, :-1] = (inner ^ masks[:, :-1, 1:]) | (inner ^ masks[:, 1:, :-1]) | (inner ^ masks[:, 1:, 1:])
    bmap[:, -1, :-1] = masks[:, -1, :-1] ^ masks[:, -1, 1:]
    bmap[:, :-1, -1] = masks[:, :-1, -1] ^ masks[:, 1:, -1]
    return bmap


def _runs(footprint: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(row, first column, length)`` of the run of ones in each non-empty footprint row."""
    runs = []
    for row in range(footprint.shape[0]):
        cols = torch.nonzero(footprint[row]).flatten().tolist()
        if cols:
            if cols != list(range(cols[0], cols[-1] + 1)):
                raise ValueError("the footprint's rows must each hold one run of ones (a disk's do)")
            runs.append((row, cols[0], len(cols)))
    return runs


def _centred_half_widths(footprint: torch.Tensor) -> list[int] | None:
    """Each footprint row's half-width when every run is centred on the anchor column (odd
    lengths; a disk of integer radius), else None. Empty rows get -1."""
    size = footprint.shape[0]
    anchor = size // 2
    half = [-1] * size
    for row, first, length in _runs(footprint):
        if length % 2 == 0 or first + (length - 1) // 2 != anchor:
            return None
        half[row] = (length - 1) // 2
    return half


def _dilate_centred(bound: torch.Tensor, half: list[int]) -> torch.Tensor:
    """``cv2.dilate`` by a footprint whose row ``k`` is the run ``anchor ± half[k]``, on bool maps.

    The horizontal dilation of half-width ``h + 1`` is that of ``h`` OR-ed with the two columns at
    ``± (h + 1)``, so every half-width costs two ORs, and each footprint row one more (its vertical
    shift): about 50 byte-wide passes at radius 12, with one horizontal map alive at a time.
    """
    size = len(half)
    anchor = size // 2
    num, height, width = bound.shape
    padded = F.pad(bound.to(torch.uint8), (anchor, anchor, anchor, anchor)).bool()
    rows_by_half: dict[int, list[int]] = {}
    for row, h in enumerate(half):
        if h >= 0:
            rows_by_half.setdefault(h, []).append(row)
    out = torch.zeros_like(bound)
    horizontal = padded[:, :, anchor : anchor + width].clone()  # half-width 0
    for h in range(max(rows_by_half, default=-1) + 1):
        if h > 0:
            horizontal |= padded[:, :, anchor + h : anchor + h + width]
            horizontal |= padded[:, :, anchor - h : anchor - h + width]
        for row in rows_by_half.get(h, ()):
            out |= horizontal[:, row : row + height]
    return out


def _dilate(bound: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """``cv2.dilate`` of bool (T, H, W) maps by a 0/1 (k, k) footprint anchored at ``k // 2``."""
    half = _centred_half_widths(footprint)
    if half is not None:
        return _dilate_centred(bound, half)
    size = footprint.shape[0]
    anchor = size // 2
    num, height, width = bound.shape
    dtype = torch.float16 if bound.device.type == "cuda" else torch.float32
    # zeros beyond the frame: ``anchor`` before, ``size - 1 - anchor`` after, in both directions
    padded = F.pad(bound.to(dtype), (anchor, size - 1 - anchor, anchor, size - 1 - anchor))
    flat = padded.view(num * (height + size - 1), 1, width + size - 1)
    by_run: dict[tuple[int, int], list[int]] = {}
    for row, first, length in _runs(footprint):
        by_run.setdefault((first, length), []).append(row)
    out = None
    for (first, length), rows in by_run.items():  # one pooled map alive at a time
        # out(y, x) |= src(y + row - a, x + j - a) for the run's columns j
        part = F.max_pool1d(flat, length, stride=1) if length > 1 else flat
        part = part.view(num, height + size - 1, -1)[:, :, first : first + width]
        for row in rows:
            shifted = part[:, row : row + height]
            out = shifted.clone() if out is None else torch.maximum(out, shifted, out=out)
        del part
    if out is None:
        return torch.zeros_like(bound)
    return out > 0.5


def boundary_f_tensor(gt: torch.Tensor, pred: torch.Tensor, *, bound_th: float = DEFAULT_BOUND_TH) -> torch.Tensor:
    """Per-frame DAVIS boundary F (float64 (T,), on the masks' device), as ``vrshq.metrics.boundary_f``."""
    _check(gt, pred)
    _, height, width = gt.shape
    footprint = torch.from_numpy(disk_footprint(bound_pixels(height, width, bound_th=bound_th)))
    gt_bound, pred_bound = boundary_map_tensor(gt), boundary_map_tensor(pred)
    n_gt = gt_bound.flatten(1).sum(1, dtype=torch.int64)
    n_pred = pred_bound.flatten(1).sum(1, dtype=torch.int64)
    pred_match = (pred_bound & _dilate(gt_bound, footprint)).flatten(1).sum(1, dtype=torch.int64)
    gt_match = (gt_bound & _dilate(pred_bound, footprint)).flatten(1).sum(1, dtype=torch.int64)
    one, zero = torch.ones_like(n_gt, dtype=torch.float64), torch.zeros_like(n_gt, dtype=torch.float64)
    regular = (n_pred > 0) & (n_gt > 0)
    precision = torch.where(regular, pred_match.double() / n_pred.clamp(min=1).double(),
                            torch.where(n_pred == 0, one, zero))
    recall = torch.where(regular, gt_match.double() / n_gt.clamp(min=1).double(), torch.where(n_gt == 0, one, zero))
    f = 2 * precision * recall / (precision + recall)
    return torch.where(precision + recall == 0, zero, f)


def score_masks_tensor(gt: torch.Tensor, pred: torch.Tensor, *, bound_th: float = DEFAULT_BOUND_TH,
                       chunk_frames: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (J, F) of bool (T, H, W) tensors, ``chunk_frames`` frames at a time (bounded temporaries)."""
    _check(gt, pred)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    js, fs = [], []
    for start in range(0, gt.shape[0], chunk_frames):
        g, p = gt[start : start + chunk_frames], pred[start : start + chunk_frames]
        js.append(jaccard_tensor(g, p))
        fs.append(boundary_f_tensor(g, p, bound_th=bound_th))
    return torch.cat(js), torch.cat(fs)


class ExpressionScorer:
    """One expression's J, F, A and R inputs, accumulated chunk by chunk on the masks' device.

    ``add`` queues the chunk's work on the device without waiting for it (no host sync);
    ``result`` copies the per-frame J and F and three pixel counts to the host once.

    On a CPU the per-frame J and F come from :mod:`vrshq.metrics` (numpy, cropped to the objects: there
    it is many times faster than these tensor operations, with the same numbers) unless ``numpy_on_cpu``
    is False.

    Args:
        shape: (T, H, W) of the expression's masks; the chunks must cover the T frames in order.
        bound_th: boundary tolerance of F.
        numpy_on_cpu: score chunks on a CPU with :mod:`vrshq.metrics` instead of the tensor operations.

    Example:
        >>> gt = torch.zeros(3, 8, 8, dtype=torch.bool); gt[:, 2:5, 2:5] = True
        >>> scorer = ExpressionScorer((3, 8, 8))
        >>> scorer.add(gt[:2], gt[:2]); scorer.add(gt[2:], torch.zeros_like(gt[2:]))
        >>> frames = scorer.result()
        >>> frames.j_frames.tolist(), frames.mismatches, frames.false_positives, frames.target_pixels
        ([1.0, 1.0, 0.0], 9, 0, 27)
    """

    def __init__(self, shape: tuple[int, int, int], *, bound_th: float = DEFAULT_BOUND_TH, numpy_on_cpu: bool = True):
        self.numpy_on_cpu = numpy_on_cpu
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"ExpressionScorer needs a (T, H, W) shape with T, H, W >= 1, got {shape}")
        self.bound_th = bound_th
        self._frames = 0
        self._j: list[torch.Tensor] = []
        self._f: list[torch.Tensor] = []
        self._counts: torch.Tensor | None = None  # int64 (3,): mismatches, false positives, target pixels

    def add(self, gt: torch.Tensor, pred: torch.Tensor) -> None:
        """Score the next chunk of frames: bool (n, H, W) target and prediction on one device."""
        _check(gt, pred)
        if tuple(gt.shape[1:]) != self.shape[1:] or self._frames + gt.shape[0] > self.shape[0]:
            raise ValueError(f"chunk of shape {tuple(gt.shape)} after {self._frames} frames does not fit masks of "
                             f"shape {self.shape}")
        if self.numpy_on_cpu and gt.device.type == "cpu":
            from vrshq.metrics import boundary_f, jaccard

            gt_host, pred_host = gt.numpy(), pred.numpy()
            self._j.append(torch.from_numpy(jaccard(gt_host, pred_host)))
            self._f.append(torch.from_numpy(boundary_f(gt_host, pred_host, bound_th=self.bound_th)))
        else:
            self._j.append(jaccard_tensor(gt, pred))
            self._f.append(boundary_f_tensor(gt, pred, bound_th=self.bound_th))
        counts = torch.stack([(gt ^ pred).sum(dtype=torch.int64), (pred & ~gt).sum(dtype=torch.int64),
                              gt.sum(dtype=torch.int64)])
        self._counts = counts if self._counts is None else self._counts + counts
        self._frames += int(gt.shape[0])

    def result(self) -> FrameScores:
        """The accumulated :class:`vrshq.metrics.FrameScores` (one copy to the host).

        Raises:
            ValueError: the chunks added do not cover the T frames.
        """
        if self._frames != self.shape[0] or self._counts is None:
            raise ValueError(f"ExpressionScorer got {self._frames} of {self.shape[0]} frames")
        host = torch.cat([torch.cat(self._j), torch.cat(self._f)]).cpu().numpy()
        mismatches, false_positives, target = (int(n) for n in self._counts.cpu().tolist())
        num = self.shape[0]
        return FrameScores(j_frames=host[:num].copy(), f_frames=host[num:].copy(), mismatches=mismatches,
                           false_positives=false_positives, target_pixels=target, shape=self.shape)
