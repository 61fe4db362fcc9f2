"""Per-video SAM2 features: every frame's backbone output computed once and shared by all expressions
of the video, the per-frame inputs of a track step built from them, and the tracking result.

:mod:`vrshq.model.sam2_tracking` and :mod:`vrshq.model.sam2_lockstep` propagate masks over these.
"""

from __future__ import annotations

import dataclasses

import torch

from vrshq.model.sam2_model import VrshqSam2

__all__ = ["FrameInputs", "MemoryPlacement", "TrackResult", "VideoFeatures", "expand_rows"]


@dataclasses.dataclass(frozen=True)
class VideoFeatures:
    """SAM2 backbone output of every frame of one video (computed once, shared by expressions).

    Attributes:
        backbone_fpn: Per level, (T, C_l, H_l, W_l), as ``SAM2Base.forward_image`` returns
            them (levels 0/1 already through ``conv_s0``/``conv_s1``). May live on the CPU.
        vision_pos_enc: Per level, (1, D, H_l, W_l); the sine position encoding is the same for
            every frame, so one copy is kept.
        compute_device: Device the model runs on; frames are moved there when used.
    """

    backbone_fpn: tuple[torch.Tensor, ...]
    vision_pos_enc: tuple[torch.Tensor, ...]
    compute_device: torch.device

    @property
    def num_frames(self) -> int:
        return int(self.backbone_fpn[0].shape[0])

    def backbone_out(
        self, frame_indices: torch.Tensor | list[int], *, repeat: int = 1
    ) -> dict[str, list[torch.Tensor]]:
        """A ``backbone_out`` dict (sam2 layout) for the given frames on the compute device.

        Args:
            frame_indices: (N,) frame indices; row i of the output is frame ``frame_indices[i]``.
            repeat: Expand a single frame to this batch size (no copy), e.g. one frame for B
                objects.
        """
        idx = torch.as_tensor(frame_indices, dtype=torch.long)
        if idx.dim() != 1 or idx.numel() == 0:
            raise ValueError(
                f"frame_indices must be a non-empty 1-D index, got shape {tuple(idx.shape)}"
            )
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_frames:
            raise IndexError(f"frame index out of range [0, {self.num_frames}): {idx.tolist()}")
        fpn = []
        for level in self.backbone_fpn:
            x = level.index_select(0, idx.to(level.device))
            x = x.to(self.compute_device, non_blocking=True)
            fpn.append(x.expand(repeat, -1, -1, -1) if repeat > 1 else x)
        batch = fpn[0].shape[0]
        pos = [p.to(self.compute_device).expand(batch, -1, -1, -1) for p in self.vision_pos_enc]
        return {"backbone_fpn": fpn, "vision_pos_enc": pos}


@dataclasses.dataclass(frozen=True)
class TrackResult:
    """Propagation output for E objects over T frames.

    Attributes:
        low_res_logits: (E, T, S/4, S/4) float32 mask logits (hole-filled, gated in eval).
        object_score_logits: (E, T) float32 object-presence logits.
    """

    low_res_logits: torch.Tensor
    object_score_logits: torch.Tensor


class FrameInputs:
    """Per-frame track-step inputs for batch 1, expanded (no copy) to each group's batch.

    The sine position encoding is the same for every frame: it is moved to the compute device
    once per video (with offloaded features it is several times larger than a frame's
    features) and flattened by sam2's ``_prepare_backbone_features`` together with the frame.
    """

    def __init__(self, model: VrshqSam2, features: VideoFeatures) -> None:
        self._model = model
        self._features = features
        self.device = features.compute_device
        self._pos = [p.to(self.device) for p in features.vision_pos_enc]

    def __call__(
        self, frame_idx: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """(HW, 1, C) features and position encodings per level, and the level sizes."""
        fpn = [
            level[frame_idx : frame_idx + 1].to(self.device, non_blocking=True)
            for level in self._features.backbone_fpn
        ]
        backbone_out = {"backbone_fpn": fpn, "vision_pos_enc": self._pos}
        _, feats, pos, sizes = self._model._prepare_backbone_features(backbone_out)
        return feats, pos, sizes

    def rows(
        self, frames: torch.Tensor, frames_host: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        """(HW, B, C) features of B rows, row i from frame ``frames[i]``, and (HW, B, C) positions.

        ``frames`` is the (B,) index on the compute device, ``frames_host`` the same on the CPU
        (used when the features are offloaded there).
        """
        fpn = []
        for level in self._features.backbone_fpn:
            if level.device == self.device:
                fpn.append(level.index_select(0, frames))
            else:
                fpn.append(level.index_select(0, frames_host).to(self.device, non_blocking=True))
        backbone_out = {"backbone_fpn": fpn, "vision_pos_enc": self._pos}
        _, feats, pos, sizes = self._model._prepare_backbone_features(backbone_out)
        return feats, expand_rows(pos, int(frames.shape[0])), sizes


@dataclasses.dataclass(frozen=True)
class MemoryPlacement:
    """How a tracker keeps its memory features; both trackers (lockstep and per keyframe group) take one.

    Attributes:
        dtype: storage dtype of memory features (None: the compute dtype).
        device: where memory features are kept (the compute device, or the CPU when offloaded).
        project_once: in lockstep tracking, project each memory frame's attention keys and values once
            (``vrshq.model.projected_memory``) instead of at every frame that reads it; used only when
            ``device`` is the compute device.
    """

    dtype: torch.dtype | None
    device: torch.device
    project_once: bool = True

    def entry(self, out: dict, maskmem_pos_enc: list[torch.Tensor], **picked: torch.Tensor) -> dict:
        """The memory-bank entry of a track-step output ``out``: its features cast to ``dtype`` and moved to
        ``device``, the shared position encodings, its object pointers and scores (``picked`` replaces any
        of ``maskmem_features``, ``obj_ptr``, ``object_score_logits`` taken from ``out``)."""
        values = {key: picked.get(key, out[key]) for key in ("maskmem_features", "obj_ptr", "object_score_logits")}
        feats = values["maskmem_features"]
        if self.dtype is not None:
            feats = feats.to(self.dtype)
        return {
            "maskmem_features": feats.to(self.device, non_blocking=True),
            "maskmem_pos_enc": maskmem_pos_enc,
            "obj_ptr": values["obj_ptr"],
            "object_score_logits": values["object_score_logits"],
        }


def expand_rows(flat: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """(HW, 1, C) -> (HW, batch, C) views; the same strides as flattening expanded maps."""
    return flat if batch == 1 else [x.expand(-1, batch, -1) for x in flat]
