"""Typed inputs and outputs of `VrshqModel` (SAM2's dict state never crosses this API)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vrshq.model.lazy_masks import LazyMasks, MaskChunk, check_chunk_frames
from vrshq.model.prompts import VideoPrompt, training_prompt

__all__ = ["SegmentationResult", "TrainBatch", "TrainVideo", "VrshqOutput", "make_train_batch"]

_DENSE_CHUNK_FRAMES = 16  # default chunk when slicing masks that were given whole


@dataclass(frozen=True, init=False, eq=False)
class SegmentationResult:
    """Inference result of one expression on one video.

    The masks are either given whole or computed lazily, chunk by chunk, from the propagated
    low-res logits (`vrshq.model.lazy_masks.LazyMasks`, what `VrshqModel.segment_video` returns):
    a long video's full-size masks need never exist at once. `iter_mask_chunks` streams them;
    `masks` builds (and keeps) the whole stack for callers who want it; both give the same values.

    Args:
        masks: (T, H, W) bool masks (numpy array or tensor), or a `LazyMasks` that produces them.
        keyframe_idx: the keyframe as an index into the video's frames.
        keyframe_scores: (n,) TKS score of each candidate (the MLLM frames), method §4.
        frame_indices: the n sorted video frames the MLLM saw (the TKS candidates).
        object_scores: (T,) SAM2 object-score logit of every frame after propagation.
    """

    keyframe_idx: int
    keyframe_scores: np.ndarray
    frame_indices: list[int]
    object_scores: np.ndarray
    mask_source: np.ndarray | torch.Tensor | LazyMasks = field(repr=False)

    def __init__(
        self,
        *,
        masks: np.ndarray | torch.Tensor | LazyMasks,
        keyframe_idx: int,
        keyframe_scores: np.ndarray,
        frame_indices: list[int],
        object_scores: np.ndarray,
    ) -> None:
        if not isinstance(masks, (np.ndarray, torch.Tensor, LazyMasks)) or (
            not isinstance(masks, LazyMasks) and masks.ndim != 3
        ):
            raise TypeError(
                "SegmentationResult.masks must be a (T, H, W) numpy array or tensor, or a LazyMasks; got "
                f"{type(masks).__name__} {tuple(getattr(masks, 'shape', ()))}"
            )
        object.__setattr__(self, "mask_source", masks)
        object.__setattr__(self, "keyframe_idx", keyframe_idx)
        object.__setattr__(self, "keyframe_scores", keyframe_scores)
        object.__setattr__(self, "frame_indices", frame_indices)
        object.__setattr__(self, "object_scores", object_scores)

    @property
    def mask_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the masks, without computing them."""
        return tuple(int(n) for n in self.mask_source.shape)  # type: ignore[return-value]

    @property
    def masks(self) -> np.ndarray | torch.Tensor:
        """(T, H, W) bool masks at the original size (or the requested `output_hw`): a numpy array,
        or a tensor on the compute device with `masks_on_device`. Computed on first access and kept;
        prefer `iter_mask_chunks` for long videos."""
        source = self.mask_source
        if isinstance(source, LazyMasks):
            cached = self.__dict__.get("_dense_masks")
            if cached is None:
                cached = source.materialize()
                object.__setattr__(self, "_dense_masks", cached)
            return cached
        return source

    def iter_mask_chunks(self, chunk_frames: int | None = None) -> Iterator[MaskChunk]:
        """Yield `(start, masks[start : start + n])` in frame order, one chunk at a time.

        Lazy masks are computed per chunk (only `chunk_frames` full-size masks exist at once); masks
        given whole (or already built by `masks`) are sliced. `chunk_frames` defaults to the lazy
        masks' own chunk size (`_DENSE_CHUNK_FRAMES` for masks given whole).
        """
        source = self.__dict__.get("_dense_masks", self.mask_source)
        if isinstance(source, LazyMasks):
            yield from source.iter_chunks(chunk_frames)
            return
        step = _DENSE_CHUNK_FRAMES if chunk_frames is None else check_chunk_frames(chunk_frames)
        for start in range(0, source.shape[0], step):
            yield start, source[start : start + step]


@dataclass(frozen=True)
class TrainVideo:
    """One training clip: T sampled frames (the same go to CLIP and SAM2, method §1.4) and E expressions.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (E, T, H, W) bool GT masks at the original resolution.
        prompts: E training prompts (`vrshq.model.prompts.training_prompt`), each with T frames.
        expressions: the E expression texts, or empty (the model reads the prompts; from-scratch
            training aids and logs read these).
    """

    frames: torch.Tensor
    masks: torch.Tensor
    prompts: tuple[VideoPrompt, ...]
    expressions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.frames, torch.Tensor) or self.frames.dtype != torch.uint8 or self.frames.dim() != 4:
            raise ValueError(
                f"TrainVideo.frames must be a uint8 (T, H, W, 3) tensor, got {getattr(self.frames, 'shape', None)}"
            )
        t, h, w, c = self.frames.shape
        if c != 3:
            raise ValueError(f"TrainVideo.frames must have 3 channels (RGB), got shape {tuple(self.frames.shape)}")
        masks_ok = isinstance(self.masks, torch.Tensor) and self.masks.dim() == 4
        if not masks_ok or tuple(self.masks.shape[1:]) != (t, h, w):
            raise ValueError(
                f"TrainVideo.masks must be (E, {t}, {h}, {w}) to match the frames, "
                f"got {getattr(self.masks, 'shape', None)}"
            )
        if len(self.prompts) != self.masks.shape[0] or not self.prompts:
            raise ValueError(f"TrainVideo has {len(self.prompts)} prompts for {self.masks.shape[0]} mask sets")
        if self.expressions and len(self.expressions) != len(self.prompts):
            raise ValueError(f"TrainVideo has {len(self.expressions)} expressions for {len(self.prompts)} prompts")
        bad = [p.num_frames for p in self.prompts if p.num_frames != t]
        if bad:
            raise ValueError(f"TrainVideo prompts are built for {bad} frames but the clip has {t}")


@dataclass(frozen=True)
class TrainBatch:
    """A training micro-batch: one or more clips, each with its expressions."""

    videos: tuple[TrainVideo, ...]

    def __post_init__(self) -> None:
        if not self.videos or not all(isinstance(v, TrainVideo) for v in self.videos):
            raise ValueError("TrainBatch.videos must be a non-empty tuple of TrainVideo")

    @property
    def num_expressions(self) -> int:
        return sum(len(v.prompts) for v in self.videos)


def make_train_batch(
    videos: Sequence[tuple[torch.Tensor | np.ndarray, Sequence[str], torch.Tensor | np.ndarray]],
    *,
    rng: random.Random,
) -> TrainBatch:
    """Build a `TrainBatch` from `(frames (T,H,W,3) uint8, expressions, masks (E,T,H,W))` triples.

    Prompts use a random template/answer per expression drawn from `rng` (method §1.3, training).
    """
    out = []
    for frames, expressions, masks in videos:
        frames_t = torch.as_tensor(np.asarray(frames)) if isinstance(frames, np.ndarray) else frames
        masks_t = torch.as_tensor(np.asarray(masks)) if isinstance(masks, np.ndarray) else masks
        num_frames = int(frames_t.shape[0])
        prompts = tuple(training_prompt(e, num_frames, rng=rng) for e in expressions)
        out.append(TrainVideo(frames=frames_t, masks=masks_t.bool(), prompts=prompts, expressions=tuple(expressions)))
    return TrainBatch(videos=tuple(out))


@dataclass(frozen=True)
class VrshqOutput:
    """Training forward output (B = expressions in the batch, n = max frames, D = prompt dim).

    Attributes:
        loss: weighted total (method §6).
        ce_loss, bce_loss, dice_loss, object_loss: unweighted terms.
        seg_embeds: (B, n, D) projected `[SEG]` embeddings, zero-padded past each expression's frames.
        frame_mask: (B, n) bool, True for real frames.
        tak_embed: (B, D) projected `[TAK]`.
        fused_tak: (B, D) TAK' after TDA (image samples: the TAK itself, no fusion, method §3).
        keyframe_idx: (B,) keyframe position in the clip (argmax of the TDA weights; 0 for images).
        keyframe_scores: (B, n) TDA weights.
        mask_logits: per expression, (3, H, W) window logits at the GT resolution; (1, H, W) for an
            image sample (a 1-frame clip).
        window_positions: (B, 3) clip positions of the SAM2 window; (0, -1, -1) for an image sample.
    """

    loss: torch.Tensor
    ce_loss: torch.Tensor
    bce_loss: torch.Tensor
    dice_loss: torch.Tensor
    object_loss: torch.Tensor
    seg_embeds: torch.Tensor
    frame_mask: torch.Tensor
    tak_embed: torch.Tensor
    fused_tak: torch.Tensor
    keyframe_idx: torch.Tensor
    keyframe_scores: torch.Tensor
    mask_logits: tuple[torch.Tensor, ...]
    window_positions: torch.Tensor
