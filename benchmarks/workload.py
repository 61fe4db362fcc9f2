"""A ReVOS-shaped synthetic workload for the inference benchmark, on local disk as JPEG folders.

Real ReVOS videos differ in length and in their number of expressions, and the inference pipeline
must decode them (JPEG) before the GPU sees them. This module draws each video's frame count and
expression count from ranges (the ReVOS-like defaults: 48-96 frames at 720p, 8-34 expressions),
renders the frames with :func:`vrshq.data.generate_synthetic_video`, writes them as
``<root>/JPEGImages/<video_id>/<frame>.jpg`` and a manifest Parquet (``schemas.MANIFEST_SCHEMA``)
that ``jobs.infer`` / :func:`pipelines.inference.run.run_inference` read. With ``ground_truth`` (the
default) each video also gets its ``mask_dict.json`` and ``mask_dict_foreground.json`` (the generator's
exact object masks, under ``<root>/annotations/<video>/``) and the expressions their targets' anno ids
(the generator's targets, none for its no-target expressions; an added expression one random object), so
the pipeline scores every mask (J, F, A, R) as it does on ReVOS and the benchmark times scoring too.

A workload folder is reused when its ``workload.json`` matches the requested config, so repeated
benchmark runs do not re-render hundreds of 720p frames.

Example:
    >>> import tempfile
    >>> wl = write_workload(tempfile.mkdtemp(), WorkloadConfig(num_videos=1, min_frames=4, max_frames=4,
    ...                     height=48, width=64, min_expressions=3, max_expressions=3))
    >>> wl.num_frames, wl.num_expressions, wl.num_masks
    (4, 3, 12)
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vrshq.data import COLOURS, SHAPES, SIZES, ExpressionRecord, VideoRecord, generate_synthetic_video

__all__ = ["Workload", "WorkloadConfig", "write_workload"]

_DATASET = "revos"
_SPLIT = "valid"
_MANIFEST = "manifest.parquet"
_DESCRIPTION = "workload.json"


@dataclass(frozen=True)
class WorkloadConfig:
    """Size of the synthetic workload; video ``i`` is drawn from ``np.random.default_rng([seed, i])``.

    Attributes:
        num_videos: videos in the workload.
        min_frames, max_frames: inclusive range of frames per video (ReVOS valid: mostly 30-150).
        height, width: frame size (720p by default, the common ReVOS size).
        min_expressions, max_expressions: inclusive range of expressions per video (ReVOS valid: ~8-34).
        jpeg_quality: JPEG quality of the frames.
        seed: random seed.
        ground_truth: write ground truth (``mask_dict.json``, ``mask_dict_foreground.json``) per video.
    """

    num_videos: int = 16
    min_frames: int = 48
    max_frames: int = 96
    height: int = 720
    width: int = 1280
    min_expressions: int = 8
    max_expressions: int = 34
    jpeg_quality: int = 90
    seed: int = 0
    ground_truth: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("num_videos", "min_expressions", "jpeg_quality"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"WorkloadConfig.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.min_frames, int) or self.min_frames < 2:
            problems.append(f"WorkloadConfig.min_frames must be an int >= 2 (the scene generator's minimum), got {self.min_frames!r}")
        if not isinstance(self.max_frames, int) or self.max_frames < self.min_frames:
            problems.append(f"WorkloadConfig.max_frames={self.max_frames!r} must be >= min_frames={self.min_frames!r}")
        if not isinstance(self.max_expressions, int) or self.max_expressions < self.min_expressions:
            problems.append(
                f"WorkloadConfig.max_expressions={self.max_expressions!r} must be >= min_expressions={self.min_expressions!r}"
            )
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 32:
                problems.append(f"WorkloadConfig.{name} must be an int >= 32, got {value!r}")
        if isinstance(self.jpeg_quality, int) and self.jpeg_quality > 100:
            problems.append(f"WorkloadConfig.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Workload:
    """A written workload.

    Attributes:
        root: the folder (frames under ``JPEGImages/``).
        manifest_uri: the manifest Parquet (one row per (video, expression)).
        videos: the video records, in manifest order.
        config: what was generated.
    """

    root: str
    manifest_uri: str
    videos: tuple[VideoRecord, ...]
    config: WorkloadConfig

    @property
    def num_frames(self) -> int:
        """Frames over all videos (each is decoded once by the pipeline)."""
        return sum(v.num_frames for v in self.videos)

    @property
    def num_expressions(self) -> int:
        return sum(len(v.expressions) for v in self.videos)

    @property
    def num_masks(self) -> int:
        """Masks to produce: one per frame of each expression."""
        return sum(v.num_frames * len(v.expressions) for v in self.videos)


def _extra_expressions(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    """``count`` more referring expressions ("the small red circle") not already in ``taken``."""
    sizes, colours, shapes = list(SIZES), list(COLOURS), list(SHAPES)
    out = []
    for _ in range(100 * count + 100):
        if len(out) == count:
            break
        text = f"the {rng.choice(sizes)} {rng.choice(colours)} {rng.choice(shapes)}"
        if rng.random() < 0.3:
            text = f"which {rng.choice(shapes)} is {rng.choice(colours)} and {rng.choice(sizes)}?"
        if text not in taken:
            taken.add(text)
            out.append(text)
    while len(out) < count:  # the grammar ran out of distinct phrases: number them
        out.append(f"the {shapes[len(out) % len(shapes)]} number {len(out)}")
    return out


def _write_video(root: str, index: int, cfg: WorkloadConfig) -> VideoRecord:
    rng = np.random.default_rng([cfg.seed, index])
    num_frames = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
    num_expressions = int(rng.integers(cfg.min_expressions, cfg.max_expressions + 1))
    video = generate_synthetic_video(rng, num_frames=num_frames, height=cfg.height, width=cfg.width)
    video_id = f"bench/{_SPLIT}/vid{index:04d}"
    folder = os.path.join(root, "JPEGImages", *video_id.split("/"))
    os.makedirs(folder, exist_ok=True)
    names = tuple(f"{t:05d}" for t in range(num_frames))
    for name, frame in zip(names, video.frames):
        ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]),
                                  [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise RuntimeError(f"cv2.imencode failed on frame {name} of {video_id}")
        with open(os.path.join(folder, f"{name}.jpg"), "wb") as handle:
            handle.write(buffer.tobytes())
    texts = [e.text for e in video.expressions][:num_expressions]
    texts += _extra_expressions(rng, num_expressions - len(texts), set(texts))
    if not cfg.ground_truth:
        expressions = tuple(ExpressionRecord(exp_id=str(k), text=text, obj_ids=(), anno_ids=(), type_id=0)
                            for k, text in enumerate(texts))
        return VideoRecord(
            dataset=_DATASET, split=_SPLIT, video_id=video_id, frame_names=names, frames_uri=folder, video_uri=None,
            height=cfg.height, width=cfg.width, expressions=expressions,
        )
    # anno id = obj_id within the video's own mask_dict.json; added expressions target one random object
    targets = [tuple(e.obj_ids) for e in video.expressions][: len(texts)]
    targets += [(int(rng.integers(len(video.objects))),) for _ in range(len(texts) - len(targets))]
    expressions = tuple(ExpressionRecord(exp_id=str(k), text=text, obj_ids=obj_ids, anno_ids=obj_ids, type_id=0)
                        for k, (text, obj_ids) in enumerate(zip(texts, targets)))
    mask_dict_uri, foreground_uri = _write_ground_truth(root, index, video_id, video)
    return VideoRecord(
        dataset=_DATASET, split=_SPLIT, video_id=video_id, frame_names=names, frames_uri=folder, video_uri=None,
        height=cfg.height, width=cfg.width, expressions=expressions, mask_dict_uri=mask_dict_uri,
        foreground_uri=foreground_uri,
    )


def _write_ground_truth(root: str, index: int, video_id: str, video: Any) -> tuple[str, str]:
    """The video's ``mask_dict.json`` (anno id = obj_id) and ``mask_dict_foreground.json``; returns their paths."""
    from vrshq.data.masks import encode_rle

    folder = os.path.join(root, "annotations", f"vid{index:04d}")
    os.makedirs(folder, exist_ok=True)
    mask_dict = {str(obj.obj_id): [encode_rle(m) if m.any() else None for m in video.object_masks[obj.obj_id]]
                 for obj in video.objects}
    foreground = {video_id: {"masks_rle": [encode_rle(m) for m in video.foreground],
                             "foreground_ratio": [float(m.mean()) for m in video.foreground]}}
    paths = os.path.join(folder, "mask_dict.json"), os.path.join(folder, "mask_dict_foreground.json")
    for path, data in zip(paths, (mask_dict, foreground)):
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    return paths


def _load_existing(root: str, cfg: WorkloadConfig) -> Workload | None:
    from pipelines.inference.manifest import manifest_to_records, read_manifest

    description = os.path.join(root, _DESCRIPTION)
    manifest = os.path.join(root, _MANIFEST)
    if not (os.path.isfile(description) and os.path.isfile(manifest)):
        return None
    with open(description, encoding="utf-8") as handle:
        if json.load(handle) != dataclasses.asdict(cfg):
            return None
    videos = manifest_to_records(read_manifest(manifest))
    if any(not os.path.isfile(os.path.join(v.frames_uri, f"{v.frame_names[-1]}.jpg")) for v in videos):
        return None
    return Workload(root=root, manifest_uri=manifest, videos=tuple(videos), config=cfg)


def write_workload(root: str, cfg: WorkloadConfig, *, reuse: bool = True, workers: int = 1) -> Workload:
    """Render and write the workload under ``root`` (or reuse an identical one already there).

    Args:
        root: a local folder (created if needed).
        cfg: sizes and seed.
        reuse: keep an existing workload whose ``workload.json`` equals ``cfg``.
        workers: processes rendering videos in parallel (a 720p video of 96 frames takes ~10 s
            on one core); the output does not depend on it.

    Returns:
        The :class:`Workload` (records in manifest order).
    """
    from pipelines.inference.manifest import manifest_to_records, read_manifest, write_manifest

    if not isinstance(cfg, WorkloadConfig):
        raise TypeError(f"cfg must be a WorkloadConfig, got {type(cfg).__name__}")
    root = os.path.abspath(root)
    if reuse:
        existing = _load_existing(root, cfg)
        if existing is not None:
            return existing
    os.makedirs(root, exist_ok=True)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if workers == 1 or cfg.num_videos == 1:
        videos = [_write_video(root, i, cfg) for i in range(cfg.num_videos)]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the parent may hold CUDA or OpenMP state that a forked child must not inherit
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, cfg.num_videos), mp_context=context) as pool:
            videos = list(pool.map(_write_video, [root] * cfg.num_videos, range(cfg.num_videos),
                                   [cfg] * cfg.num_videos))
    manifest = os.path.join(root, _MANIFEST)
    write_manifest(videos, manifest)
    with open(os.path.join(root, _DESCRIPTION), "w", encoding="utf-8") as handle:
        json.dump(dataclasses.asdict(cfg), handle, indent=2)
    # read back: the manifest is what the pipeline sees, so the in-process paths use the same records
    return Workload(root=root, manifest_uri=manifest, videos=tuple(manifest_to_records(read_manifest(manifest))),
                    config=cfg)
