"""Ground-truth masks: COCO RLE (pycocotools) from ``mask_dict.json`` and ``mask_dict_foreground.json``.

``mask_dict.json`` maps ``str(anno_id)`` to one RLE (or null) per frame, indexed by the frame's
position in the sorted frame list. An expression's target is the union over its ``anno_id``s;
null counts as empty and multi-channel decodes are reduced over channels (method §8).

Every RLE is checked before pycocotools sees it: its ``size`` must be the frame's, and its counts
must add up to ``height * width`` (pycocotools writes past its buffer otherwise).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from vrshq.data._fs import read_json
from vrshq.data.errors import DataError
from vrshq.data.frames import probe_frame_size
from vrshq.data.records import ExpressionRecord, VideoRecord

__all__ = [
    "compressed_rle_counts",
    "encode_rle",
    "decode_rle",
    "load_mask_dict",
    "load_foreground_dict",
    "union_anno_masks",
    "load_expression_masks",
    "load_foreground_masks",
]

_MAX_RLE_CHARS_PER_NUMBER = 12  # 5 bits per char: 60 bits; more is garbage


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a 2-D mask as a JSON-ready COCO RLE ``{"size": [H, W], "counts": str}``."""
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Any, *, height: int, width: int, uri: str = "<rle>", where: str = "rle") -> np.ndarray:
    """Decode one per-frame entry of a mask dict to bool ``(height, width)``.

    Args:
        rle: a COCO RLE dict (``counts`` compressed str/bytes or an uncompressed list), a list of
            them (their union), or None (empty mask).
        height, width: the frame size the RLE must have.
        uri, where: for error messages (the file, and e.g. ``"anno_id 3, frame 5"``).

    Raises:
        DataError: a malformed RLE, or one whose size or counts disagree with the frame.
    """
    if rle is None:
        return np.zeros((height, width), dtype=bool)
    if isinstance(rle, list):
        out = np.zeros((height, width), dtype=bool)
        for part in rle:
            out |= decode_rle(part, height=height, width=width, uri=uri, where=where)
        return out
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise DataError(uri, f"{where}: expected an RLE object with 'size' and 'counts', got {_short(rle)}")
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
        raise DataError(uri, f"{where}: RLE 'size' must be [height, width], got {_short(size)}")
    if size != [height, width]:
        raise DataError(uri, f"{where}: RLE size {size[0]}x{size[1]} (HxW) disagrees with the frame size {height}x{width}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise DataError(uri, f"{where}: uncompressed RLE counts must be non-negative ints summing to {height * width}")
        compressed = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    elif isinstance(counts, (str, bytes)):
        data = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
        total = _compressed_counts_total(data)
        if total != height * width:
            detail = "is malformed" if total is None else f"cover {total} pixels"
            raise DataError(uri, f"{where}: RLE counts {detail}, expected {height}x{width}={height * width}")
        compressed = {"size": size, "counts": data}
    else:
        raise DataError(uri, f"{where}: RLE 'counts' must be a str or a list, got {type(counts).__name__}")
    with warnings.catch_warnings():
        # pycocotools under numpy 2 warns on every decode about its own internals (not our data)
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        decoded = mask_utils.decode(compressed)
    return decoded.any(axis=2) if decoded.ndim == 3 else decoded.astype(bool)


def _compressed_counts_total(data: bytes) -> int | None:
    """Sum of the run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), or None if malformed."""
    counts = compressed_rle_counts(data)
    return None if counts is None else int(counts.sum())


def compressed_rle_counts(data: bytes) -> np.ndarray | None:
    """The run lengths (int64, zeros first, column-major) of a compressed COCO RLE string, or None if malformed.

    pycocotools' ``rleFrString`` vectorised; :func:`decode_rle` checks their sum against the frame, and
    a caller that expands them itself (e.g. on an accelerator) gets the same mask as pycocotools.
    """
    chars = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0 or chars.min() < 0 or chars.max() > 63:
        return None
    ends = np.flatnonzero((chars & 0x20) == 0)  # last char of each number
    if ends.size == 0 or ends[-1] != chars.size - 1:
        return None
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_RLE_CHARS_PER_NUMBER:
        return None
    shift = 5 * (np.arange(chars.size) - np.repeat(starts, lengths))
    values = np.add.reduceat((chars & 0x1F) << shift, starts)
    negative = (chars[ends] & 0x10) != 0
    values[negative] |= -1 << (5 * lengths[negative])
    # From the fourth number on, each is a delta to the count two before it (pycocotools: m > 2).
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])
    counts[2::2] = np.cumsum(values[2::2])
    if (counts < 0).any():
        return None
    return counts


def load_mask_dict(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a ``mask_dict.json`` (``{str(anno_id): [RLE or null per frame]}``). Load it once per job or video."""
    data = read_json(uri, storage_options, what="mask dict")
    if not isinstance(data, dict):
        raise DataError(uri, f"mask dict must be a JSON object keyed by anno_id, got {type(data).__name__}")
    return data


def load_foreground_dict(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a ``mask_dict_foreground.json`` (``{video: {masks_rle: [...], foreground_ratio: [...]}}``)."""
    data = read_json(uri, storage_options, what="foreground mask dict")
    if not isinstance(data, dict):
        raise DataError(uri, f"foreground mask dict must be a JSON object keyed by video, got {type(data).__name__}")
    return data


def union_anno_masks(
    mask_dict: Mapping[str, Any],
    anno_ids: Sequence[int],
    *,
    num_frames: int,
    height: int,
    width: int,
    frame_indices: Sequence[int] | None = None,
    uri: str = "<mask_dict>",
    where: str = "",
) -> np.ndarray:
    """Union of the ``anno_ids`` masks at ``frame_indices`` (all frames by default): bool ``(T, H, W)``.

    Raises:
        DataError: an anno_id absent from the dict, a mask list whose length is not ``num_frames``,
            or a bad RLE.
    """
    indices = list(range(num_frames)) if frame_indices is None else [int(i) for i in frame_indices]
    out = np.zeros((len(indices), height, width), dtype=bool)
    prefix = f"{where}: " if where else ""
    for anno_id in anno_ids:
        per_frame = mask_dict.get(str(anno_id))
        if per_frame is None:
            raise DataError(uri, f"{prefix}anno_id {anno_id} is not in the mask dict")
        if not isinstance(per_frame, list) or len(per_frame) != num_frames:
            got = len(per_frame) if isinstance(per_frame, list) else type(per_frame).__name__
            raise DataError(uri, f"{prefix}anno_id {anno_id} has {got} per-frame masks, expected {num_frames} (one per frame)")
        for row, index in enumerate(indices):
            if per_frame[index] is not None:
                out[row] |= decode_rle(
                    per_frame[index], height=height, width=width, uri=uri,
                    where=f"{prefix}anno_id {anno_id}, frame {index}",
                )
    return out


def load_expression_masks(
    video: VideoRecord,
    expression: ExpressionRecord,
    *,
    storage_options: Mapping[str, Any] | None = None,
    mask_dict: Mapping[str, Any] | None = None,
    frame_indices: Sequence[int] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Ground-truth mask of an expression: the union of its anno_ids, bool ``(T, H, W)``.

    Args:
        video: the record (its ``mask_dict_uri`` is read unless ``mask_dict`` is given).
        expression: one of ``video.expressions``; no-target expressions give all-False masks.
        storage_options: fsspec options.
        mask_dict: the already-loaded ``mask_dict.json`` (load it once per job/video with
            :func:`load_mask_dict`, not once per expression).
        frame_indices: positions in ``video.frame_names``; all frames by default.
        frame_size: ``(height, width)`` when known and the record has none (MeViS), to save
            reading the first frame's header for every expression.

    Raises:
        DataError: see :func:`union_anno_masks`; also when the video has no mask dict but the
            expression has anno_ids.
    """
    height, width = frame_size or probe_frame_size(video, storage_options=storage_options)
    uri = video.mask_dict_uri or "<mask_dict>"
    if expression.anno_ids and mask_dict is None:
        if video.mask_dict_uri is None:
            raise DataError(
                video.frames_uri or video.video_uri,
                f"video {video.video_id!r} has no mask_dict.json, so expression {expression.exp_id!r} has no ground truth",
            )
        mask_dict = load_mask_dict(video.mask_dict_uri, storage_options=storage_options)
    return union_anno_masks(
        mask_dict or {}, expression.anno_ids, num_frames=video.num_frames, height=height, width=width,
        frame_indices=frame_indices, uri=uri, where=f"video {video.video_id!r}, expression {expression.exp_id!r}",
    )


def load_foreground_masks(
    video: VideoRecord,
    *,
    storage_options: Mapping[str, Any] | None = None,
    foreground_dict: Mapping[str, Any] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground masks (union of all objects) and ratios of a ReVOS video: bool ``(T, H, W)``, float ``(T,)``.

    ``foreground_dict`` is the loaded ``mask_dict_foreground.json`` (read from the record when
    None); ``frame_size`` as in :func:`load_expression_masks`.

    Raises:
        DataError: no foreground file, the video missing from it, or lengths/RLEs that disagree.
    """
    uri = video.foreground_uri
    if foreground_dict is None:
        if uri is None:
            raise DataError(video.frames_uri or video.video_uri, f"video {video.video_id!r} has no mask_dict_foreground.json")
        foreground_dict = load_foreground_dict(uri, storage_options=storage_options)
    uri = uri or "<foreground_dict>"
    entry = foreground_dict.get(video.video_id)
    if not isinstance(entry, dict) or not isinstance(entry.get("masks_rle"), list):
        raise DataError(uri, f"video {video.video_id!r} has no 'masks_rle' list in the foreground mask dict")
    height, width = frame_size or probe_frame_size(video, storage_options=storage_options)
    masks = union_anno_masks(
        {"foreground": entry["masks_rle"]}, ["foreground"], num_frames=video.num_frames,  # type: ignore[list-item]
        height=height, width=width, uri=uri, where=f"video {video.video_id!r}",
    )
    ratios = entry.get("foreground_ratio")
    if ratios is None:
        ratios = masks.mean(axis=(1, 2))
    elif not isinstance(ratios, list) or len(ratios) != video.num_frames:
        raise DataError(uri, f"video {video.video_id!r}: 'foreground_ratio' must list one number per frame ({video.num_frames})")
    return masks, np.asarray(ratios, dtype=np.float64)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
