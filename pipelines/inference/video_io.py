"""Work items and their frames: the CPU side of the inference pipeline.

A *work item* is one video with the expressions still to segment, carried through Ray Data as
three key columns plus ``item_json`` (the :class:`vrshq.data.VideoRecord` as JSON). JSON keeps the
block schema identical for every video, whatever its number of expressions or frames.

:func:`read_frames_batch` is the Ray Data UDF of the frame-reading stage (CPU tasks): it decodes
a video's frames (JPEG folder or mp4, through fsspec, chunk by chunk with :func:`vrshq.data.iter_frame_chunks`) and
shrinks them to the model's working resolution, so the object store carries ``T x h x w x 3``
bytes instead of full-resolution frames. The model actor needs the original size only to resize
its mask logits back to it (``VrshqModel.segment_video(output_hw=...)``), and it RLE-encodes the
masks itself, so only compact rows leave it. A video too large for the object store even after resizing is passed by reference:
the actor reads it itself (``frames_inline=False``).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import cv2
import numpy as np

from vrshq.data import DataError, ExpressionRecord, VideoRecord, iter_frame_chunks

__all__ = [
    "FrameReadError",
    "item_from_json",
    "item_to_json",
    "read_frames_batch",
    "read_video",
    "resize_frames",
    "resized_hw",
    "working_max_side",
]


class FrameReadError(Exception):
    """A video's frames cannot be used; carries the ERRORS_SCHEMA ``stage`` and ``uri``."""

    def __init__(self, message: str, *, stage: str, uri: str | None, error_type: str | None = None):
        super().__init__(message)
        self.stage = stage
        self.uri = uri
        self.error_type = error_type or type(self).__name__

    def __reduce__(self):
        return (_rebuild_frame_read_error, (str(self), self.stage, self.uri, self.error_type))

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "error_type": self.error_type, "message": str(self), "uri": self.uri}


def _rebuild_frame_read_error(message: str, stage: str, uri: str | None, error_type: str) -> FrameReadError:
    return FrameReadError(message, stage=stage, uri=uri, error_type=error_type)


def item_to_json(video: VideoRecord) -> str:
    """Serialise a video record (with its pending expressions) for the ``item_json`` column."""
    return json.dumps(asdict(video), separators=(",", ":"))


def item_from_json(text: str) -> VideoRecord:
    """Inverse of :func:`item_to_json`."""
    data = json.loads(text)
    expressions = tuple(
        ExpressionRecord(
            exp_id=e["exp_id"], text=e["text"], obj_ids=tuple(e["obj_ids"]), anno_ids=tuple(e["anno_ids"]),
            type_id=int(e["type_id"]),
        )
        for e in data.pop("expressions")
    )
    data["frame_names"] = tuple(data["frame_names"])
    return VideoRecord(**data, expressions=expressions)


def resized_hw(height: int, width: int, *, max_side: int) -> tuple[int, int]:
    """``(h, w)`` with the longer side at most ``max_side`` (aspect kept; ``max_side=0``: unchanged).

    >>> resized_hw(720, 1280, max_side=1024)
    (576, 1024)
    >>> resized_hw(240, 320, max_side=1024)
    (240, 320)
    """
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize_frames(frames: np.ndarray, *, max_side: int) -> np.ndarray:
    """Shrink ``(T, H, W, 3)`` uint8 frames so the longer side is at most ``max_side`` (area filter).

    Frames already small enough are returned as they are (no copy), so small videos reach the
    model bit-exact.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"resize_frames expects (T, H, W, 3) frames, got shape {frames.shape}")
    height, width = frames.shape[1:3]
    target = resized_hw(height, width, max_side=max_side)
    if target == (height, width):
        return frames
    out = np.empty((frames.shape[0], *target, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        out[t] = cv2.resize(frame, (target[1], target[0]), interpolation=cv2.INTER_AREA)
    return out


def read_video(
    video: VideoRecord,
    *,
    max_side: int,
    storage_options: Mapping[str, Any] | None = None,
    decode_chunk_frames: int = 64,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode and shrink a video's frames, ``decode_chunk_frames`` at a time (memory O(chunk) at full size).

    Returns:
        ``(frames, (H, W))``: uint8 ``(T, h, w, 3)`` at the working resolution and the original size.

    Raises:
        FrameReadError: an empty video (stage ``read``), a missing file (``read``), a corrupt or
            inconsistent one (``decode``); the message names the file.
    """
    if video.num_frames == 0:
        raise FrameReadError(
            f"video {video.video_id!r} has no frames", stage="read", uri=video.frames_uri or video.video_uri
        )
    uri = video.frames_uri or video.video_uri
    frames: np.ndarray | None = None
    original = (0, 0)
    done = 0
    try:
        # Decode and shrink chunk by chunk: a 5,000-frame or 4K video never sits in memory at full size.
        for chunk in iter_frame_chunks(video, chunk_frames=decode_chunk_frames, storage_options=storage_options):
            small = resize_frames(chunk, max_side=max_side)
            if frames is None:
                original = (int(chunk.shape[1]), int(chunk.shape[2]))
                frames = np.empty((video.num_frames, *small.shape[1:]), np.uint8)
            frames[done:done + len(small)] = small
            done += len(small)
    except DataError as exc:
        missing = "not found" in exc.reason or "no such" in exc.reason.lower()
        raise FrameReadError(
            str(exc), stage="read" if missing else "decode", uri=exc.uri, error_type=type(exc).__name__
        ) from exc
    except (FileNotFoundError, PermissionError, ConnectionError, TimeoutError) as exc:  # I/O, not decoding
        raise FrameReadError(str(exc), stage="read", uri=uri, error_type=type(exc).__name__) from exc
    except (OSError, ValueError, RuntimeError, IndexError) as exc:
        raise FrameReadError(
            f"cannot decode video {video.video_id!r}: {exc}", stage="decode", uri=uri, error_type=type(exc).__name__,
        ) from exc
    if frames is None or done != video.num_frames:
        raise FrameReadError(
            f"video {video.video_id!r}: decoded {done} frames, the record lists {video.num_frames}",
            stage="decode", uri=uri,
        )
    return frames, original


def _inline_bytes(video: VideoRecord, max_side: int) -> int | None:
    """Bytes of the resized frames if the record knows the frame size (else None: unknown)."""
    if video.height is None or video.width is None:
        return None
    h, w = resized_hw(video.height, video.width, max_side=max_side)
    return video.num_frames * h * w * 3


def read_frames_batch(
    batch: dict[str, np.ndarray],
    *,
    max_side: int,
    max_inline_frame_bytes: int,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data UDF (``batch_size=1``): add ``frames``, ``height``, ``width``, ``frames_inline``, ``read_error``.

    ``read_error`` is ``""`` or a JSON ERRORS row fragment (stage, error_type, message, uri); a
    failed video keeps flowing (with an empty frame array) so that its error is written by the
    same writer that writes the other videos' rows.
    """
    count = len(batch["item_json"])
    if count != 1:
        raise ValueError(f"read_frames_batch expects batch_size=1 (one video), got {count} rows")
    video = item_from_json(str(batch["item_json"][0]))
    out = {name: batch[name] for name in ("dataset", "split", "video_id", "item_json")}
    frames = np.zeros((0, 1, 1, 3), dtype=np.uint8)
    height = width = 0
    inline = True
    error = ""
    estimate = _inline_bytes(video, max_side)
    if estimate is not None and estimate > max_inline_frame_bytes:
        inline = False  # the actor streams it itself; keep the object store small
        height, width = int(video.height), int(video.width)  # type: ignore[arg-type]
    else:
        try:
            frames, (height, width) = read_video(video, max_side=max_side, storage_options=storage_options)
        except FrameReadError as exc:
            error = json.dumps(exc.to_dict())
    out["frames"] = frames[None]
    out["height"] = np.array([height], dtype=np.int32)
    out["width"] = np.array([width], dtype=np.int32)
    out["frames_inline"] = np.array([inline])
    out["read_error"] = np.array([error], dtype=object)
    return out


def working_max_side(max_side: int | None, sam2_image_size: int) -> int:
    """The ``max_side`` in effect: the config's, or the model's SAM2 image size when it is None."""
    if max_side is None:
        return int(sam2_image_size)
    if max_side < 0:
        raise ValueError(f"max_side must be >= 0 (0: never resize), got {max_side}")
    return int(max_side)
