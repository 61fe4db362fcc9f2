"""Scoring in the model actor: J, F and the pixel counts of A and R, on its device, as the masks are made.

The actor builds each expression's full-size masks a chunk of frames at a time to RLE-encode them
(:mod:`pipelines.inference.segment_actor`). With ``compute.score_on = "actor"`` the same chunks are
scored right there against the ground truth with :class:`vrshq.metrics.device.ExpressionScorer`, so a
mask is never decoded again on a CPU for scoring. The ground truth is built on the device too, a chunk of
frames at a time (:func:`ground_truth_chunk`: the host parses each RLE string into its run lengths, a few
numbers per frame, and the device expands them), so no full-size ground truth is decoded on a CPU or
copied over, and no whole video of full-size masks exists at once. What leaves the actor is
:class:`vrshq.metrics.FrameScores` per expression (two float64 per frame, three counts); the writers
reduce them to the scores row (``vrshq.metrics.score_from_frames``, the same numbers as scoring the masks
on the CPU) and add R's foreground count.

Anything that keeps an expression from being scored here (an unreadable ``mask_dict.json``, a ground
truth of another size than the masks, an anno_id missing from it) leaves it unscored: the writers then
score its masks from the RLE as with ``score_on = "writer"`` and so report the problem in exactly the same
errors rows.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vrshq.metrics import FrameScores

__all__ = ["ActorGroundTruth", "ExpressionJob", "VideoGroundTruth", "frame_scores_from_row", "frame_scores_row",
           "ground_truth_chunk", "parse_compressed_many"]

_LOG = logging.getLogger(__name__)

#: Stage of the actor's time split (``RESULT_SCHEMA.stage_seconds_json``): building the ground truth on the
#: device from its RLE and scoring it there (device time; CUDA-event time on a GPU).
SCORE_STAGE = "score"


def frame_scores_row(scores: FrameScores) -> dict[str, Any]:
    """The ``frame_scores`` struct of a ``RESULT_SCHEMA`` result (the shape is the result's own)."""
    return {"j": scores.j_frames.tolist(), "f": scores.f_frames.tolist(), "mismatches": scores.mismatches,
            "false_positives": scores.false_positives, "target_pixels": scores.target_pixels}


def frame_scores_from_row(row: Mapping[str, Any] | None, shape: tuple[int, int, int]) -> FrameScores | None:
    """:class:`vrshq.metrics.FrameScores` of a ``frame_scores`` struct, or None when the actor did not score."""
    if row is None:
        return None
    return FrameScores(j_frames=np.asarray(row["j"], dtype=np.float64), f_frames=np.asarray(row["f"], dtype=np.float64),
                       mismatches=int(row["mismatches"]), false_positives=int(row["false_positives"]),
                       target_pixels=int(row["target_pixels"]), shape=shape)


def _compressed_form(entry: Any, height: int, width: int) -> bytes | None:
    """The counts of a per-frame RLE in the usual form (one dict of this frame size, compressed counts);
    None for any other form (decoded, or rejected, by ``vrshq.data.decode_rle``)."""
    if not isinstance(entry, dict):
        return None
    size, counts = entry.get("size"), entry.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(type(n) is int for n in size)
            and size == [height, width] and isinstance(counts, (str, bytes))):
        return None
    return counts.encode("ascii", "replace") if isinstance(counts, str) else counts


def parse_compressed_many(datas: list[bytes], pixels: int) -> list[np.ndarray | None]:
    """``vrshq.data.masks.compressed_rle_counts`` of many compressed COCO RLE strings in one numpy pass.

    Each string's run lengths, or None where ``decode_rle`` would refuse it (malformed, or its runs do
    not add up to ``pixels``). One pass over a chunk's strings instead of some ten numpy calls per
    frame: at 720p that is most of the host's share of scoring.
    """
    from vrshq.data.masks import _MAX_RLE_CHARS_PER_NUMBER

    num = len(datas)
    out: list[np.ndarray | None] = [None] * num
    lens = np.fromiter((len(d) for d in datas), dtype=np.int64, count=num)
    if num == 0 or not lens.any():
        return out
    chars = np.frombuffer(b"".join(datas), dtype=np.uint8).astype(np.int64) - 48
    owner = np.repeat(np.arange(num), lens)
    ok = (lens > 0) & (np.bincount(owner, weights=(chars < 0) | (chars > 63), minlength=num) == 0)
    nonempty = np.flatnonzero(lens > 0)
    last = (np.cumsum(lens) - 1)[nonempty]
    ok[nonempty] &= (chars[last] & 0x20) == 0  # a string must end a number
    is_end = (chars & 0x20) == 0
    is_end[last] = True  # numbers never run from one string into the next
    ends = np.flatnonzero(is_end)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    number_owner = owner[ends]
    ok &= np.bincount(number_owner, weights=lengths > _MAX_RLE_CHARS_PER_NUMBER, minlength=num) == 0
    shift = np.minimum(5 * (np.arange(chars.size) - np.repeat(starts, lengths)), 63)
    values = np.add.reduceat((chars & 0x1F) << shift, starts)
    negative = (chars[ends] & 0x10) != 0
    values[negative] |= -1 << np.minimum(5 * lengths[negative], 63)
    # From the fourth number of a string on, each is a delta to the count two before it: a cumulative
    # sum per (string, chain), chains being the first number, the odd-indexed ones and the rest.
    first = np.searchsorted(number_owner, np.arange(num))
    index = np.arange(ends.size) - first[number_owner]
    chain = number_owner * 3 + np.where(index == 0, 0, 2 - index % 2)
    order = np.argsort(chain, kind="stable")
    ordered = values[order]
    running = np.cumsum(ordered)
    chain_sorted = chain[order]
    heads = np.flatnonzero(np.concatenate([[True], chain_sorted[1:] != chain_sorted[:-1]]))
    base = np.repeat((running - ordered)[heads], np.diff(np.concatenate([heads, [ends.size]])))
    counts = np.empty_like(values)
    counts[order] = running - base
    ok &= np.bincount(number_owner, weights=counts < 0, minlength=num) == 0
    totals = np.zeros(num, dtype=np.int64)
    totals[nonempty] = np.add.reduceat(counts, first[nonempty])
    stops = np.concatenate([first[1:], [ends.size]])
    for i in np.flatnonzero(ok & (totals == pixels)):
        out[i] = counts[first[i] : stops[i]]
    return out


def _expand_runs(runs: list[np.ndarray], height: int, width: int, device: torch.device) -> torch.Tensor:
    """bool (len(runs), H, W) masks of COCO run lengths (zeros first, column-major), expanded on ``device``.

    A pixel is 1 when an odd number of run boundaries lie at or before it: one scatter of the boundaries
    (run ends but the frame's last, from the host) and one cumulative sum per frame, whatever the run
    lengths (``repeat_interleave`` gives each run to one thread, and a background run is most of a frame).
    """
    pixels = height * width
    sizes = np.fromiter((len(r) for r in runs), dtype=np.int64, count=len(runs))
    lengths = np.concatenate(runs)
    ends = np.cumsum(lengths)
    firsts = np.cumsum(sizes) - sizes  # each frame's first run
    within = ends - np.repeat(ends[firsts] - lengths[firsts], sizes)  # run ends within their frame
    frame = np.repeat(np.arange(len(runs)), sizes)
    keep = within < pixels  # the frame's last end is pixels: no boundary there
    flat = torch.from_numpy(within[keep] + frame[keep] * pixels).to(device)
    toggles = torch.zeros(len(runs) * pixels, dtype=torch.int32, device=device)
    toggles.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    parity = torch.cumsum(toggles.view(len(runs), pixels), dim=1, dtype=torch.int32) & 1
    return parity.view(len(runs), width, height).transpose(1, 2) != 0


def ground_truth_chunk(video: Any, expression: Any, mask_dict: Mapping[str, Any], frame_size: tuple[int, int],
                       frame_indices: range, device: torch.device, *, expand_runs: bool | None = None
                       ) -> torch.Tensor:
    """``vrshq.data.load_expression_masks(..., frame_indices=...)`` built on ``device``: bool (n, H, W).

    With ``expand_runs`` the host only parses each RLE string into run lengths (a few numbers per frame)
    and the device expands them, instead of decoding every full-size frame on a CPU and copying it over.
    The masks are the same, and so are the checks: whatever ``load_expression_masks`` rejects raises here
    too (``vrshq.data.DataError``); RLEs in a less usual form (uncompressed counts, a list of parts) are
    decoded on the host by ``vrshq.data.decode_rle``. ``expand_runs=None`` expands on accelerators only:
    on a CPU, pycocotools' decoder (``load_expression_masks`` itself) is faster.
    """
    from vrshq.data import DataError, decode_rle, load_expression_masks

    if not (device.type != "cpu" if expand_runs is None else expand_runs):
        return torch.from_numpy(load_expression_masks(video, expression, mask_dict=mask_dict, frame_size=frame_size,
                                                      frame_indices=frame_indices)).to(device)
    height, width = frame_size
    uri = video.mask_dict_uri or "<mask_dict>"
    prefix = f"video {video.video_id!r}, expression {expression.exp_id!r}: "
    out = torch.zeros((len(frame_indices), height, width), dtype=torch.bool, device=device)
    for anno_id in expression.anno_ids:
        per_frame = mask_dict.get(str(anno_id))
        if per_frame is None:
            raise DataError(uri, f"{prefix}anno_id {anno_id} is not in the mask dict")
        if not isinstance(per_frame, list) or len(per_frame) != video.num_frames:
            raise DataError(uri, f"{prefix}anno_id {anno_id} does not have one mask per frame")
        rows, datas, host_rows = [], [], []
        for row, index in enumerate(frame_indices):
            entry = per_frame[index]
            if entry is None:
                continue
            data = _compressed_form(entry, height, width)
            if data is None:
                host_rows.append(row)
            else:
                rows.append(row)
                datas.append(data)
        runs = parse_compressed_many(datas, height * width)
        host_rows += [row for row, r in zip(rows, runs) if r is None]  # decode_rle names the problem
        rows, runs = [row for row, r in zip(rows, runs) if r is not None], [r for r in runs if r is not None]
        for row in sorted(host_rows):
            index = frame_indices[row]
            mask = decode_rle(per_frame[index], height=height, width=width, uri=uri,
                              where=f"{prefix}anno_id {anno_id}, frame {index}")
            out[row] |= torch.from_numpy(mask).to(device)
        if runs:
            index = torch.tensor(rows, device=device)
            out[index] = out[index] | _expand_runs(runs, height, width, device)
    return out


class ExpressionJob:
    """One expression's scoring: ``add`` each chunk of predicted masks in frame order, then ``result``."""

    def __init__(self, video_gt: "VideoGroundTruth", expression: Any, shape: tuple[int, int, int]):
        from vrshq.metrics.device import ExpressionScorer

        self._video_gt = video_gt
        self._expression = expression
        self._scorer = ExpressionScorer(shape)
        self._failed: BaseException | None = None

    def add(self, start: int, pred: torch.Tensor | np.ndarray, timer: Any) -> None:
        """Score frames ``start .. start + len(pred)``: bool (n, H, W) masks on the actor's device.

        The ground truth is built on the masks' device and scored there, as stage ``score``.
        """
        if self._failed is not None:
            return
        pred = torch.as_tensor(pred)
        gt_ = self._video_gt
        began = time.perf_counter()
        try:
            with timer.stage(SCORE_STAGE):
                gt = ground_truth_chunk(gt_.video, self._expression, gt_.mask_dict, gt_.frame_size,
                                        range(start, start + int(pred.shape[0])), pred.device)
                self._scorer.add(gt, pred.bool())
        except Exception as exc:  # noqa: BLE001 - the writers score this expression and report why
            self._failed = exc
            _LOG.info("video %s expression %s left to the writers: %s: %s", gt_.video.video_id,
                      self._expression.exp_id, type(exc).__name__, exc)
        finally:
            gt_.host_seconds += time.perf_counter() - began

    def result(self, timer: Any) -> dict[str, Any] | None:
        """The ``frame_scores`` struct, or None when the expression is left to the writers."""
        if self._failed is not None:
            return None
        began = time.perf_counter()
        try:
            with timer.stage(SCORE_STAGE):
                return frame_scores_row(self._scorer.result())
        except Exception as exc:  # noqa: BLE001 - e.g. the chunks did not cover the video's frames
            _LOG.info("video %s expression %s left to the writers: %s: %s", self._video_gt.video.video_id,
                      self._expression.exp_id, type(exc).__name__, exc)
            return None
        finally:
            self._video_gt.host_seconds += time.perf_counter() - began


class VideoGroundTruth:
    """A video's ground truth as the actor reads it: the split's parsed ``mask_dict.json`` and the frame size.

    Attributes:
        host_seconds: host time spent scoring this video so far (ground-truth decode, queuing device work).
    """

    def __init__(self, video: Any, mask_dict: Any, frame_size: tuple[int, int],
                 storage_options: dict[str, Any] | None):
        self.video = video
        self.mask_dict = mask_dict
        self.frame_size = frame_size
        self.storage_options = storage_options
        self.host_seconds = 0.0

    def job(self, expression: Any, mask_shape: tuple[int, int, int]) -> ExpressionJob | None:
        """A scoring job for masks of ``mask_shape``, or None when the ground truth has another shape."""
        expected = (len(self.video.frame_names), *self.frame_size)
        if tuple(mask_shape) != expected or min(expected) < 1:
            return None  # the writers report the mismatch
        return ExpressionJob(self, expression, expected)


class ActorGroundTruth:
    """Per model actor: the parsed ``mask_dict.json`` files it has read (a small LRU, by URI).

    Args:
        storage_options: fsspec options for the annotation files.
        cache_size: annotation files kept (one split at a time, plus one).
    """

    def __init__(self, storage_options: dict[str, Any] | None = None, *, cache_size: int = 2):
        self.storage_options = storage_options
        self._cache_size = cache_size
        self._mask_dicts: OrderedDict[str, Any] = OrderedDict()

    def _mask_dict(self, uri: str) -> Any:
        from vrshq.data import load_mask_dict

        if uri in self._mask_dicts:
            self._mask_dicts.move_to_end(uri)
            return self._mask_dicts[uri]
        value = load_mask_dict(uri, storage_options=self.storage_options)
        self._mask_dicts[uri] = value
        while len(self._mask_dicts) > self._cache_size:
            self._mask_dicts.popitem(last=False)
        return value

    def for_video(self, video: Any) -> VideoGroundTruth | None:
        """The video's ground truth, or None when it has none or it cannot be read (the writers then score)."""
        from vrshq.data.frames import probe_frame_size

        if video.mask_dict_uri is None:
            return None
        try:
            mask_dict = self._mask_dict(video.mask_dict_uri)
            frame_size = probe_frame_size(video, storage_options=self.storage_options)
        except Exception as exc:  # noqa: BLE001 - the writers read it again and report the problem
            _LOG.info("video %s left to the writers: ground truth unreadable: %s: %s", video.video_id,
                      type(exc).__name__, exc)
            return None
        return VideoGroundTruth(video, mask_dict, (int(frame_size[0]), int(frame_size[1])), self.storage_options)
