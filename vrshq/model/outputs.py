"""Typed inputs and outputs of `VrshqModel` (SAM2's dict state never crosses this API)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vrshq.model.prompts import VideoPrompt, training_prompt

__all__ = ["SegmentationResult", "TrainBatch", "TrainVideo", "VrshqOutput", "make_train_batch"]


@dataclass(frozen=True)
class SegmentationResult:
    """Inference result of one expression on one video.

    Attributes:
        masks: (T, H, W) bool, one mask per video frame at the original size (or the requested
            `output_hw`): a numpy array, or a tensor on the compute device with `masks_on_device`.
        keyframe_idx: the keyframe as an index into the video's frames.
        keyframe_scores: (n,) TKS score of each candidate (the MLLM frames), method §4.
        frame_indices: the n sorted video frames the MLLM saw (the TKS candidates).
        object_scores: (T,) SAM2 object-score logit of every frame after propagation.
    """

    masks: np.ndarray | torch.Tensor
    keyframe_idx: int
    keyframe_scores: np.ndarray
    frame_indices: list[int]
    object_scores: np.ndarray


@dataclass(frozen=True)
class TrainVideo:
    """One training clip: T sampled frames (the same go to CLIP and SAM2, method §1.4) and E expressions.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (E, T, H, W) bool GT masks at the original resolution.
        prompts: E training prompts (`vrshq.model.prompts.training_prompt`), each with T frames.
    """

    frames: torch.Tensor
    masks: torch.Tensor
    prompts: tuple[VideoPrompt, ...]

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
        out.append(TrainVideo(frames=frames_t, masks=masks_t.bool(), prompts=prompts))
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
        fused_tak: (B, D) TAK' after TDA.
        keyframe_idx: (B,) keyframe position in the clip (argmax of the TDA weights).
        keyframe_scores: (B, n) TDA weights.
        mask_logits: per expression, (3, H, W) window logits at the GT resolution.
        window_positions: (B, 3) clip positions of the SAM2 window.
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
