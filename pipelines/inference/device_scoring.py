"""Scoring in the model actor: J, F and the pixel counts of A and R, on its device, as the masks are made.

The actor builds each expression's full-size masks a chunk of frames at a time to RLE-encode them
(:mod:`pipelines.inference.segment_actor`). With ``compute.score_on = "actor"`` the same chunks are
scored right there against the ground truth with :class:`vrshq.metrics.device.ExpressionScorer`, so a
mask is never decoded again on a CPU for scoring. The ground truth is built on the device too, a chunk of
frames at a time (:func:`ground_truth_chunk`: only the RLE strings' bytes, about a kilobyte per frame, are
copied, and the device decodes them without a host sync), so no full-size ground truth is decoded on a CPU
or copied over, and no whole video of full-size masks exists at once. On a CPU device pycocotools decodes
it (faster there).

What leaves the actor is :class:`vrshq.metrics.FrameScores` per expression (two float64 per frame, three
counts); the writers reduce them to the scores row (``vrshq.metrics.score_from_frames``, the same numbers
as scoring the masks on the CPU) and add R's foreground count.

Anything that keeps an expression from being scored here (an unreadable ``mask_dict.json``, a ground
truth of another size than the masks, an anno_id missing from it, a malformed RLE) leaves it unscored:
the writers then score its masks from the RLE as with ``score_on = "writer"`` and so report the problem
in exactly the same errors rows.
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
           "decode_compressed_on_device", "ground_truth_chunk"]

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
            and size == [height, width] and isinstance(counts, (str, bytes)) and counts):
        return None
    return counts.encode("ascii", "replace") if isinstance(counts, str) else counts


def decode_compressed_on_device(datas: list[bytes], height: int, width: int, device: torch.device
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode compressed COCO RLE strings of (height, width) frames on ``device``, without a host sync.

    Only the strings' bytes (a few per frame) are copied; the device parses them as pycocotools'
    ``rleFrString`` does (5-bit groups, ``0x20`` continues a number, ``0x10`` of the last group is the
    sign, from the fourth number on a delta to the count two before) and expands the run lengths: a
    pixel is 1 when an odd number of run ends (but the frame's last) lie at or before it, which is one
    scatter and one cumulative sum per frame whatever the run lengths. Each step is a fixed-size tensor
    operation over the chunk's characters, so the host never waits for the device.

    Returns:
        ``(masks, valid)``: bool (len(datas), H, W) masks, and a 0-d bool tensor on ``device`` that is
        False when a string is one ``vrshq.data.decode_rle`` refuses (malformed, or runs that do not
        cover H x W pixels; see ``vrshq.data.masks.compressed_rle_counts``): the masks of such a string
        are not meaningful, and the caller must not use them.
    """
    from vrshq.data.masks import _MAX_RLE_CHARS_PER_NUMBER

    num, pixels = len(datas), height * width
    lens = torch.tensor([len(d) for d in datas], dtype=torch.int64).to(device)
    joined = np.frombuffer(b"".join(datas), dtype=np.uint8)
    if joined.size == 0 or min(len(d) for d in datas) == 0:
        raise ValueError("decode_compressed_on_device needs non-empty strings")
    chars = torch.from_numpy(joined.copy()).to(device).long() - 48
    total = chars.numel()
    pos = torch.arange(total, device=device)
    stops = torch.cumsum(lens, 0)
    first_char, last_char = stops - lens, stops - 1
    owner = torch.searchsorted(stops, pos, right=True)  # string of each char
    bad = torch.zeros(num + 1, dtype=torch.int64, device=device)  # per string (+ a dummy); > 0: refused
    bad.index_add_(0, owner, ((chars < 0) | (chars > 63)).long())
    code = chars.clamp(0, 63)
    is_end = (code & 0x20) == 0
    bad[:num] += (~is_end[last_char]).long()  # a string must end a number
    is_end[last_char] = True  # numbers never run from one string into the next
    ends_long = is_end.long()
    slot = torch.cumsum(ends_long, 0) - ends_long  # the number each char belongs to
    real = pos < ends_long.sum()  # slots that hold a number (the rest stay zero)
    last_end = torch.cummax(torch.where(is_end, pos, torch.full_like(pos, -1)), 0).values
    previous_end = torch.cat([torch.full_like(pos[:1], -1), last_end[:-1]])
    digit = pos - previous_end - 1  # position of the char within its number
    values = torch.zeros(total, dtype=torch.int64, device=device)
    values.index_add_(0, slot, torch.bitwise_left_shift(code & 0x1F, (5 * digit).clamp(max=63)))
    # per-number facts, written by each number's last char (other chars write to a dummy slot)
    end_slot = torch.where(is_end, slot, torch.full_like(slot, total))
    number_owner = torch.full((total + 1,), num, dtype=torch.int64, device=device)
    number_owner.scatter_(0, end_slot, owner)
    number_owner = number_owner[:total]
    length = torch.zeros(total + 1, dtype=torch.int64, device=device).scatter_(0, end_slot, digit + 1)[:total]
    negative = torch.zeros(total + 1, dtype=torch.bool, device=device).scatter_(
        0, end_slot, (code & 0x10) != 0)[:total]
    is_last = torch.zeros(total + 1, dtype=torch.bool, device=device).scatter_(
        0, end_slot, pos == last_char[owner])[:total]
    bad.index_add_(0, number_owner, (real & (length > _MAX_RLE_CHARS_PER_NUMBER)).long())
    sign = torch.bitwise_left_shift(torch.full_like(length, -1), (5 * length).clamp(max=63))
    values = torch.where(negative, values | sign, values)
    # index of each number within its string; the deltas sum along the odd and the even (>= 2) chains
    first_slot = torch.cat([slot[first_char], torch.zeros(1, dtype=torch.int64, device=device)])
    index = pos - first_slot[number_owner]
    odd = real & (index % 2 == 1)
    even = real & (index >= 2) & (index % 2 == 0)
    counts = torch.where(real & (index == 0), values, torch.zeros_like(values))
    for chain in (odd, even):
        part = torch.where(chain, values, torch.zeros_like(values))
        running = torch.cumsum(part, 0)
        before = torch.cat([(running - part)[first_slot[:num]], torch.zeros(1, dtype=torch.int64, device=device)])
        counts = torch.where(chain, running - before[number_owner], counts)
    bad.index_add_(0, number_owner, (real & (counts < 0)).long())
    covered = torch.zeros(num + 1, dtype=torch.int64, device=device).index_add_(0, number_owner, counts)
    ok = (bad == 0) & (covered == pixels)
    valid = ok[:num].all()
    # run ends within each frame; a boundary at every end but the frame's last
    running = torch.cumsum(counts, 0)
    before = torch.cat([(running - counts)[first_slot[:num]], torch.zeros(1, dtype=torch.int64, device=device)])
    within = running - before[number_owner]
    toggle = real & ~is_last & ok[number_owner] & (within >= 0) & (within < pixels)
    target = torch.where(toggle, number_owner.clamp(max=num - 1) * pixels + within, torch.zeros_like(within))
    toggles = torch.zeros(num * pixels, dtype=torch.int32, device=device)
    toggles.index_add_(0, target, toggle.int())
    parity = toggles.view(num, pixels).cumsum_(dim=1).bitwise_and_(1)  # in place: one int32 frame stack at a time
    return parity.view(num, width, height).transpose(1, 2) != 0, valid


def ground_truth_chunk(video: Any, expression: Any, mask_dict: Mapping[str, Any], frame_size: tuple[int, int],
                       frame_indices: range, device: torch.device, *, decode_on_device: bool | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``vrshq.data.load_expression_masks(..., frame_indices=...)`` built on ``device``: bool (n, H, W).

    With ``decode_on_device`` only the RLE strings' bytes are copied and the device decodes them
    (:func:`decode_compressed_on_device`), instead of decoding every full-size frame on a CPU and copying
    it over. The masks are the same, and so are the checks: what ``load_expression_masks`` rejects either
    raises here (``vrshq.data.DataError``: a missing anno_id, a wrong frame count, an RLE of another size
    or form, which ``vrshq.data.decode_rle`` decodes on the host or refuses), or, for a malformed
    compressed string, turns the returned flag False. ``decode_on_device=None`` decodes on accelerators
    only: on a CPU, pycocotools' decoder (``load_expression_masks`` itself) is faster.

    Returns:
        ``(masks, valid)``: ``valid`` is a 0-d bool tensor on ``device`` (read it once the work is done,
        it costs a sync), or None when nothing was decoded there.
    """
    from vrshq.data import DataError, decode_rle, load_expression_masks

    if not (device.type != "cpu" if decode_on_device is None else decode_on_device):
        return torch.from_numpy(load_expression_masks(video, expression, mask_dict=mask_dict, frame_size=frame_size,
                                                      frame_indices=frame_indices)).to(device), None
    height, width = frame_size
    uri = video.mask_dict_uri or "<mask_dict>"
    prefix = f"video {video.video_id!r}, expression {expression.exp_id!r}: "
    out = torch.zeros((len(frame_indices), height, width), dtype=torch.bool, device=device)
    valid: torch.Tensor | None = None
    for anno_id in expression.anno_ids:
        per_frame = mask_dict.get(str(anno_id))
        if per_frame is None:
            raise DataError(uri, f"{prefix}anno_id {anno_id} is not in the mask dict")
        if not isinstance(per_frame, list) or len(per_frame) != video.num_frames:
            raise DataError(uri, f"{prefix}anno_id {anno_id} does not have one mask per frame")
        rows, datas = [], []
        for row, index in enumerate(frame_indices):
            entry = per_frame[index]
            if entry is None:
                continue
            data = _compressed_form(entry, height, width)
            if data is None:  # another form, or one decode_rle refuses (and says why)
                mask = decode_rle(entry, height=height, width=width, uri=uri,
                                  where=f"{prefix}anno_id {anno_id}, frame {index}")
                out[row] |= torch.from_numpy(mask).to(device)
            else:
                rows.append(row)
                datas.append(data)
        if datas:
            masks, ok = decode_compressed_on_device(datas, height, width, device)
            index = torch.tensor(rows, device=device)
            out[index] = out[index] | masks
            valid = ok if valid is None else valid & ok
    return out, valid


class ExpressionJob:
    """One expression's scoring: ``add`` each chunk of predicted masks in frame order, then ``result``."""

    def __init__(self, video_gt: "VideoGroundTruth", expression: Any, shape: tuple[int, int, int]):
        from vrshq.metrics.device import ExpressionScorer

        self._video_gt = video_gt
        self._expression = expression
        self._scorer = ExpressionScorer(shape)
        self._failed: BaseException | None = None
        self._valid: torch.Tensor | None = None  # on the device: False once a ground-truth RLE was refused

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
                gt, valid = ground_truth_chunk(gt_.video, self._expression, gt_.mask_dict, gt_.frame_size,
                                               range(start, start + int(pred.shape[0])), pred.device,
                                               decode_on_device=gt_.decode_on_device)
                if valid is not None:
                    self._valid = valid if self._valid is None else self._valid & valid
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
                scores = self._scorer.result()
                if self._valid is not None and not bool(self._valid):
                    raise ValueError("a ground-truth RLE is malformed")  # the writers decode it and say which
                return frame_scores_row(scores)
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
                 storage_options: dict[str, Any] | None, *, decode_on_device: bool | None = None):
        self.video = video
        self.mask_dict = mask_dict
        self.frame_size = frame_size
        self.storage_options = storage_options
        self.decode_on_device = decode_on_device
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
        decode_on_device: how the ground truth is decoded (``ground_truth_chunk``); None: on the device
            on accelerators, with pycocotools on a CPU.
    """

    def __init__(self, storage_options: dict[str, Any] | None = None, *, cache_size: int = 2,
                 decode_on_device: bool | None = None):
        self.storage_options = storage_options
        self.decode_on_device = decode_on_device
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
        return VideoGroundTruth(video, mask_dict, (int(frame_size[0]), int(frame_size[1])), self.storage_options,
                                decode_on_device=self.decode_on_device)
