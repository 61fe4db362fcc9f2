"""Write synthetic videos (:mod:`vrshq.data.synthetic`) in the ReVOS layout at any fsspec URI.

Layout written (the same as the real ReVOS, method §8)::

    <root>/JPEGImages/<video_id>/<frame>.jpg          video ids look like "synthetic/valid/vid0003"
    <root>/meta_expressions_<split>_.json             official name (trailing '_')
    <root>/mask_dict.json                             {str(anno_id): [RLE or null per frame]}
    <root>/mask_dict_foreground.json                  {video_id: {masks_rle, foreground_ratio}}
    <root>/videos/<video_id>.mp4                      only with write_mp4=True

Masks are the generator's exact visible masks (JPEG and mp4 are lossy; the masks are not).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vrshq.data._fs import canonical_uri, write_many
from vrshq.data.masks import encode_rle
from vrshq.data.synthetic import SyntheticSceneConfig, generate_synthetic_video
from vrshq.storage import filesystem_for, join_uri

__all__ = ["SyntheticRevosInfo", "write_synthetic_revos", "encode_mp4"]


@dataclass(frozen=True)
class SyntheticRevosInfo:
    """What :func:`write_synthetic_revos` wrote.

    Attributes:
        root_uri: the dataset root (absolute for local paths).
        split: the split name (``read_revos(root_uri, split=split)`` reads it back).
        meta_uri, mask_dict_uri, foreground_uri: the json files.
        video_ids: the videos, in meta order.
        mp4_uris: one mp4 per video (empty unless ``write_mp4``).
        num_expressions: expressions over all videos.
        expressions_by_type: ``{type_id: count}``.
        expressions_by_kind: ``{kind: count}`` (referring, group, fastest, static, ...).
    """

    root_uri: str
    split: str
    meta_uri: str
    mask_dict_uri: str
    foreground_uri: str
    video_ids: tuple[str, ...]
    mp4_uris: tuple[str, ...]
    num_expressions: int
    expressions_by_type: dict[int, int]
    expressions_by_kind: dict[str, int]


def write_synthetic_revos(
    root_uri: str,
    *,
    num_videos: int,
    num_frames: int,
    height: int,
    width: int,
    seed: int,
    split: str = "valid",
    storage_options: Mapping[str, Any] | None = None,
    write_mp4: bool = False,
    config: SyntheticSceneConfig | None = None,
    video_prefix: str = "synthetic",
    jpeg_quality: int = 95,
    jpeg_chroma: str = "444",
    fps: int = 10,
) -> SyntheticRevosInfo:
    """Generate ``num_videos`` synthetic videos and write them in the ReVOS layout.

    Deterministic: video ``i`` is drawn from ``np.random.default_rng([seed, i])``, so the same
    arguments write the same bytes, and a video does not depend on ``num_videos``.

    Args:
        root_uri: destination folder (local path or e.g. ``s3://bucket/prefix``).
        num_videos, num_frames, height, width: dataset size.
        seed: random seed.
        split: split name, used in the meta file name and the video ids.
        storage_options: fsspec options.
        write_mp4: also write ``videos/<video_id>.mp4`` (mp4v codec), checked with decord.
        config: the scene grammar.
        video_prefix: first part of the video ids (``<prefix>/<split>/vid0000``).
        jpeg_quality: JPEG quality of the frames.
        jpeg_chroma: ``"444"`` (full-resolution colour, the default) or ``"420"`` (colour at half resolution,
            what most cameras and datasets store). Why 4:4:4: in small synthetic videos a shape spans a few
            pixels, and 4:2:0 blurs its colour into its neighbours; the 0.685 tiny checkpoint scored
            J&F 0.65 on 16 demo videos written at 4:4:4 (the same as the raw frames) but 0.57 at 4:2:0.
        fps: frame rate of the mp4 files.

    Returns:
        A :class:`SyntheticRevosInfo` describing the files.

    Example:
        >>> import tempfile
        >>> from vrshq.data import read_revos, write_synthetic_revos
        >>> root = tempfile.mkdtemp()
        >>> info = write_synthetic_revos(root, num_videos=2, num_frames=4, height=48, width=64, seed=0)
        >>> [v.video_id for v in read_revos(root, split="valid")]
        ['synthetic/valid/vid0000', 'synthetic/valid/vid0001']
    """
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    if jpeg_chroma not in _JPEG_CHROMA:
        raise ValueError(f"jpeg_chroma must be one of {sorted(_JPEG_CHROMA)}, got {jpeg_chroma!r}")
    config = config or SyntheticSceneConfig()
    root = canonical_uri(root_uri, storage_options)
    fs, _ = filesystem_for(root, storage_options)
    meta: dict[str, Any] = {"videos": {}}
    mask_dict: dict[str, list] = {}
    foreground: dict[str, dict] = {}
    video_ids, mp4_uris = [], []
    by_type: Counter = Counter()
    by_kind: Counter = Counter()
    next_anno_id = 0
    frame_names = [f"{t:05d}" for t in range(num_frames)]
    for index in range(num_videos):
        video_id = f"{video_prefix}/{split}/vid{index:04d}"
        video = generate_synthetic_video(
            np.random.default_rng([seed, index]), num_frames=num_frames, height=height, width=width, config=config
        )
        anno_ids = list(range(next_anno_id, next_anno_id + len(video.objects)))
        next_anno_id += len(video.objects)
        for obj, anno_id in zip(video.objects, anno_ids):
            mask_dict[str(anno_id)] = [encode_rle(m) if m.any() else None for m in video.object_masks[obj.obj_id]]
        fg = video.foreground
        foreground[video_id] = {
            "masks_rle": [encode_rle(m) for m in fg],
            "foreground_ratio": [float(m.mean()) for m in fg],
        }
        meta["videos"][video_id] = {
            "frames": frame_names,
            "height": height,
            "width": width,
            "expressions": {
                str(k): {
                    "exp": e.text,
                    "obj_id": list(e.obj_ids),
                    "anno_id": [anno_ids[i] for i in e.obj_ids],
                    "type_id": e.type_id,
                }
                for k, e in enumerate(video.expressions)
            },
        }
        by_type.update(e.type_id for e in video.expressions)
        by_kind.update(e.kind for e in video.expressions)
        files = {
            f"{_path(fs, root)}/JPEGImages/{video_id}/{name}.jpg": _encode_jpeg(frame, jpeg_quality, jpeg_chroma)
            for name, frame in zip(frame_names, video.frames)
        }
        if write_mp4:
            files[f"{_path(fs, root)}/videos/{video_id}.mp4"] = encode_mp4(video.frames, fps=fps)
            mp4_uris.append(join_uri(root, "videos", f"{video_id}.mp4"))
        write_many(fs, files)
        video_ids.append(video_id)
    meta_uri = join_uri(root, f"meta_expressions_{split}_.json")
    mask_dict_uri = join_uri(root, "mask_dict.json")
    foreground_uri = join_uri(root, "mask_dict_foreground.json")
    write_many(
        fs,
        {
            _path(fs, meta_uri): json.dumps(meta).encode(),
            _path(fs, mask_dict_uri): json.dumps(mask_dict).encode(),
            _path(fs, foreground_uri): json.dumps(foreground).encode(),
        },
    )
    return SyntheticRevosInfo(
        root_uri=root,
        split=split,
        meta_uri=meta_uri,
        mask_dict_uri=mask_dict_uri,
        foreground_uri=foreground_uri,
        video_ids=tuple(video_ids),
        mp4_uris=tuple(mp4_uris),
        num_expressions=sum(by_type.values()),
        expressions_by_type=dict(sorted(by_type.items())),
        expressions_by_kind=dict(sorted(by_kind.items())),
    )


def encode_mp4(frames: np.ndarray, *, fps: int = 10) -> bytes:
    """Encode RGB uint8 ``(T, H, W, 3)`` frames as an mp4 (OpenCV 'mp4v'), checked by decoding with decord.

    Raises:
        RuntimeError: OpenCV cannot write mp4 here, or decord reads back a different frame count.
    """
    import decord

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "video.mp4")  # cv2.VideoWriter needs a local file
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise RuntimeError("cv2.VideoWriter cannot open an 'mp4v' mp4 writer (OpenCV built without FFmpeg?)")
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
        writer.release()
        with open(path, "rb") as handle:
            data = handle.read()
    count = len(decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1))
    if count != len(frames):
        raise RuntimeError(f"mp4 round trip lost frames: wrote {len(frames)}, decord reads {count}")
    return data


_JPEG_CHROMA = {"444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}


def _encode_jpeg(frame: np.ndarray, quality: int, chroma: str) -> bytes:
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [
        cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _JPEG_CHROMA[chroma]])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG frame")
    return buffer.tobytes()


def _path(fs, uri: str) -> str:
    return fs._strip_protocol(uri)
