"""SAM2 side of VRS-HQ: keyframe decode with the TAK prompt, propagation, training window.

:class:`Sam2Segmenter` wraps the real ``sam2`` model (:class:`~vrshq.model.sam2_model.VrshqSam2`,
a ``SAM2VideoPredictor``) and exposes the four operations VRS-HQ needs:

* :meth:`Sam2Segmenter.encode_video` / :meth:`Sam2Segmenter.encode_frames` (from uint8 frames,
  letterboxed chunk by chunk) - image encoder once per frame, shared by all expressions
  of a video (the official code recomputes it per expression and per TKS candidate, §9 item 8);
* :meth:`Sam2Segmenter.decode_prompts` - SAM2-as-image decode of prompt embeddings on frames
  (keyframe / TKS candidates, method §4, §5.2, §5.3 step 2), batched over prompts;
* :meth:`Sam2Segmenter.propagate` - joint propagation of E keyframe masks (§5.3 steps 3-5);
* :meth:`Sam2Segmenter.train_window_forward` - the 3-frame training window (§5.4),
  :meth:`Sam2Segmenter.train_image_forward` - the 1-frame decode of image samples, and
  :meth:`Sam2Segmenter.train_track_forward` - tracking from a given mask (SAM2's own video training).

The three training passes live in :mod:`vrshq.model.sam2_train_window` (a base class).
SAM2's dict state never crosses this API; inputs and outputs are tensors and dataclasses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vrshq.model.letterbox import letterbox
from vrshq.sam2_config import Sam2Config
from vrshq.model.sam2_model import (
    PROMPT_EMBEDS_KEY,
    VrshqSam2,
    build_sam2_model,
    fill_holes,
)
from vrshq.model.sam2_tracking import track_objects
from vrshq.model.sam2_train_window import Sam2TrainForward
from vrshq.model.sam2_video_features import TrackResult, VideoFeatures

__all__ = [
    "Sam2Segmenter",
    "PromptDecode",
    "TrainableSet",
]

TrainableSet = Literal["mask_decoder", "all", "none"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class PromptDecode:
    """SAM2-as-image decode of P prompts.

    Attributes:
        low_res_logits: (P, 1, S/4, S/4) mask logits (eval: gated and hole-filled).
        object_score_logits: (P,) object-presence logits (TKS uses their softmax, method §4).
        high_res_logits: (P, 1, S, S) = bilinear upsampling of ``low_res_logits``.
    """

    low_res_logits: torch.Tensor
    object_score_logits: torch.Tensor
    high_res_logits: torch.Tensor


class Sam2Segmenter(Sam2TrainForward, nn.Module):
    """The SAM2 model of VRS-HQ with typed, batched entry points.

    Args:
        cfg: :class:`Sam2Config`.
        model: An already built :class:`VrshqSam2` (default: built from ``cfg``).
        device: Device to move the model to (default: leave it where it is, CPU when built).

    Example:
        >>> import torch
        >>> from vrshq.sam2_config import sam2_tiny
        >>> seg = Sam2Segmenter(sam2_tiny(image_size=64))
        >>> feats = seg.encode_video(torch.zeros(2, 3, 64, 64))
        >>> dec = seg.decode_prompts(feats, torch.tensor([1]), torch.zeros(1, seg.prompt_embed_dim))
        >>> tuple(dec.high_res_logits.shape)
        (1, 1, 64, 64)
    """

    def __init__(
        self,
        cfg: Sam2Config,
        *,
        model: VrshqSam2 | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(cfg, Sam2Config):
            raise TypeError(f"Sam2Segmenter: cfg must be a Sam2Config, got {type(cfg).__name__}")
        self.cfg = cfg
        self.sam2 = model if model is not None else build_sam2_model(cfg)
        if self.sam2.image_size != cfg.image_size:
            raise ValueError(
                f"Sam2Segmenter: model image_size {self.sam2.image_size} != "
                f"cfg.image_size {cfg.image_size}"
            )
        if device is not None:
            self.sam2.to(device)
        self.eval()

    # ----------------------------------------------------------------- parts and trainability
    @property
    def image_encoder(self) -> nn.Module:
        return self.sam2.image_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        """SAM mask decoder, including ``conv_s0``/``conv_s1`` (trainable in VRS-HQ, §6)."""
        return self.sam2.sam_mask_decoder

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam2.sam_prompt_encoder

    @property
    def memory_attention(self) -> nn.Module:
        return self.sam2.memory_attention

    @property
    def memory_encoder(self) -> nn.Module:
        return self.sam2.memory_encoder

    @property
    def image_size(self) -> int:
        return int(self.sam2.image_size)

    @property
    def prompt_embed_dim(self) -> int:
        """Width of a prompt embedding (256 for Hiera-L; the tiny preset's ``d_model``)."""
        return int(self.sam2.prompt_embed_dim)

    @property
    def device(self) -> torch.device:
        return next(self.sam2.parameters()).device

    def set_trainable(self, which: TrainableSet = "mask_decoder") -> list[nn.Parameter]:
        """Set ``requires_grad`` for a trainable set and return its parameters.

        ``"mask_decoder"``: method §6 (SAM2 mask decoder incl. conv_s0/conv_s1; the rest frozen,
        image encoder run under no_grad). ``"all"``: everything, image encoder with gradients
        (training from scratch). ``"none"``: all frozen.
        """
        if which not in ("mask_decoder", "all", "none"):
            raise ValueError(
                f"set_trainable: which={which!r}, expected 'mask_decoder', 'all' or 'none'"
            )
        for p in self.sam2.parameters():
            p.requires_grad_(which == "all")
        if which == "mask_decoder":
            for p in self.mask_decoder.parameters():
                p.requires_grad_(True)
        return [p for p in self.sam2.parameters() if p.requires_grad]

    def forward(self, *args: object, **kwargs: object) -> None:  # noqa: D401 - explicit refusal
        raise NotImplementedError(
            "Sam2Segmenter has no forward(); use encode_video/decode_prompts/propagate for "
            "inference and train_window_forward for training"
        )

    # ------------------------------------------------------------------------- image encoder
    def _forward_image(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """``SAM2Base.forward_image`` with the trunk+neck under no_grad when they are frozen.

        Method §5.4 runs the image encoder without gradients; ``conv_s0``/``conv_s1`` (mask
        decoder) still get theirs. The encoder keeps its graph only if one of its parameters
        requires grad (``set_trainable("all")``).
        """
        encoder_grad = any(p.requires_grad for p in self.image_encoder.parameters())
        with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
            out = self.sam2.image_encoder(images)
        fpn = list(out["backbone_fpn"])
        if self.sam2.use_high_res_features_in_sam:
            fpn[0] = self.mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.mask_decoder.conv_s1(fpn[1])
        return {"backbone_fpn": fpn, "vision_pos_enc": list(out["vision_pos_enc"])}

    def _check_images(self, images: torch.Tensor, name: str, ndim: int) -> None:
        size = self.image_size
        is_tensor = isinstance(images, torch.Tensor)
        if not is_tensor or images.dim() != ndim or tuple(images.shape[-3:]) != (3, size, size):
            shape = tuple(images.shape) if is_tensor else type(images).__name__
            raise ValueError(
                f"{name}: expected letterboxed images (..., 3, {size}, {size}) with {ndim} dims, "
                f"got {shape}"
            )

    @torch.no_grad()
    def encode_video(self, images: torch.Tensor) -> VideoFeatures:
        """Run the image encoder on every frame, in chunks of ``cfg.encode_chunk_size``.

        Args:
            images: (T, 3, S, S) letterboxed frames (:func:`vrshq.model.letterbox.letterbox`),
                on any device; chunks are moved to the model's device.

        Returns:
            :class:`VideoFeatures`, on the CPU if ``cfg.offload_features_to_cpu``. Computed
            without gradients (inference; training goes through :meth:`train_window_forward`).
        """
        self._check_images(images, "encode_video", 4)
        step = self.cfg.encode_chunk_size
        chunks = (images[start : start + step] for start in range(0, images.shape[0], step))
        return self._encode_chunks(chunks, num_frames=int(images.shape[0]))

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor | np.ndarray) -> VideoFeatures:
        """Letterbox (method §1.5) and encode uint8 frames, one chunk of frames at a time.

        Equal to ``encode_video(letterbox(frames).images)`` but never holds the (T, 3, S, S)
        float video (12 MB per frame at S = 1024): each chunk of ``cfg.encode_chunk_size`` frames
        is letterboxed on the model's device and encoded, so besides the features (offloaded
        with ``cfg.offload_features_to_cpu``) memory does not grow with the video's length.

        Args:
            frames: (T, H, W, 3) uint8 RGB frames (numpy or torch, any device; CPU is fine).

        Returns:
            :class:`VideoFeatures`, as :meth:`encode_video`.
        """
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.dtype != torch.uint8:
            raise ValueError(
                "encode_frames: expected uint8 (T, H, W, 3) frames, got "
                f"{getattr(frames, 'dtype', type(frames).__name__)} {tuple(getattr(frames, 'shape', ()))}"
            )
        step, size, device = self.cfg.encode_chunk_size, self.image_size, self.device
        chunks = (
            letterbox(frames[start : start + step], image_size=size, device=device).images
            for start in range(0, frames.shape[0], step)
        )
        return self._encode_chunks(chunks, num_frames=int(frames.shape[0]))

    def _encode_chunks(self, chunks: Iterator[torch.Tensor], *, num_frames: int) -> VideoFeatures:
        """Encode (n, 3, S, S) image chunks into features preallocated for ``num_frames`` frames.

        Writing each chunk into its slot (instead of concatenating at the end) keeps the peak at
        one copy of the features plus one chunk.
        """
        device = self.device
        offload = self.cfg.offloads_features(num_frames)
        store = torch.device("cpu") if offload else device
        pin = offload and device.type == "cuda"  # page-locked: each step's frames copy asynchronously
        levels: list[torch.Tensor] = []
        pos_enc: list[torch.Tensor] = []
        filled = 0
        for chunk in chunks:
            out = self._forward_image(chunk.to(device, non_blocking=True).float())
            if not levels:
                levels = [
                    torch.empty((num_frames, *f.shape[1:]), dtype=f.dtype, device=store, pin_memory=pin)
                    for f in out["backbone_fpn"]
                ]
                pos_enc = [p[:1].to(store) for p in out["vision_pos_enc"]]
            n = out["backbone_fpn"][0].shape[0]
            for acc, feat in zip(levels, out["backbone_fpn"]):
                acc[filled : filled + n].copy_(feat)
            filled += n
        if not levels:
            raise ValueError("encode_video: got 0 frames")
        if filled != num_frames:
            raise RuntimeError(f"encode_video: encoded {filled} frames, expected {num_frames}")
        return VideoFeatures(
            backbone_fpn=tuple(levels),
            vision_pos_enc=tuple(pos_enc),
            compute_device=device,
        )

    # ---------------------------------------------------------------------------- decoding
    def _decode_step(
        self,
        backbone_out: dict[str, list[torch.Tensor]],
        prompt_embeds: torch.Tensor,
        *,
        num_frames: int,
        output_dict: dict | None = None,
        run_mem_encoder: bool = False,
        frame_idx: int = 0,
        reverse: bool = False,
    ) -> dict:
        """One real ``track_step`` on an initial conditioning frame with [pad, pad, prompt]."""
        _, feats, pos, sizes = self.sam2._prepare_backbone_features(backbone_out)
        batch = prompt_embeds.shape[0]
        device = feats[-1].device
        point_inputs = {
            # one dummy point (0,0) labelled -1; the prompt encoder pads a second one (§5.2)
            "point_coords": torch.zeros(batch, 1, 2, device=device),
            "point_labels": -torch.ones(batch, 1, dtype=torch.int32, device=device),
            PROMPT_EMBEDS_KEY: prompt_embeds.to(device),
        }
        return self.sam2.track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=True,
            current_vision_feats=feats,
            current_vision_pos_embeds=pos,
            feat_sizes=sizes,
            point_inputs=point_inputs,
            mask_inputs=None,
            output_dict=output_dict or {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
            num_frames=num_frames,
            track_in_reverse=reverse,
            run_mem_encoder=run_mem_encoder,
        )

    def decode_prompts(
        self,
        features: VideoFeatures,
        frame_indices: torch.Tensor,
        prompt_embeds: torch.Tensor,
        *,
        chunk_size: int = 64,
    ) -> PromptDecode:
        """Decode prompt embeddings on frames, SAM2-as-image (no memory), batched.

        The feature is the top-level feature + ``no_mem_embed``; the sparse prompt is
        [not-a-point, not-a-point, prompt] (P, 3, D); the dense prompt is ``no_mask_embed``;
        single-mask output. In eval mode the object-score gate (≤ 0 → -1024) and hole filling
        apply, as in the official keyframe decode (method §5.2, §5.3 step 2).

        Args:
            features: :class:`VideoFeatures` of the video.
            frame_indices: (P,) frame of each prompt (e.g. E expressions × C TKS candidates).
            prompt_embeds: (P, D) prompt embeddings (the fused TAK, D = ``prompt_embed_dim``).
            chunk_size: Prompts per decoder call.

        Returns:
            :class:`PromptDecode`.
        """
        frame_indices = torch.as_tensor(frame_indices, dtype=torch.long)
        if frame_indices.dim() != 1:
            raise ValueError(
                f"decode_prompts: frame_indices must be (P,), got {tuple(frame_indices.shape)}"
            )
        if prompt_embeds.shape != (frame_indices.shape[0], self.prompt_embed_dim):
            raise ValueError(
                f"decode_prompts: prompt_embeds has shape {tuple(prompt_embeds.shape)}, expected "
                f"({frame_indices.shape[0]}, {self.prompt_embed_dim}) (one per frame index)"
            )
        if chunk_size < 1:
            raise ValueError(f"decode_prompts: chunk_size must be >= 1, got {chunk_size}")
        low, scores, high = [], [], []
        for start in range(0, frame_indices.shape[0], chunk_size):
            idx = frame_indices[start : start + chunk_size]
            out = self._decode_step(
                features.backbone_out(idx), prompt_embeds[start : start + chunk_size],
                num_frames=features.num_frames,
            )
            pred = out["pred_masks"]
            if not self.sam2.training and self.sam2.fill_hole_area > 0:
                pred = fill_holes(pred, self.sam2.fill_hole_area)  # no host sync on GPUs
                hi = self._upsample(pred)
            else:
                hi = out["pred_masks_high_res"]
            low.append(pred.float())
            high.append(hi.float())
            scores.append(out["object_score_logits"][:, 0].float())
        return PromptDecode(
            low_res_logits=torch.cat(low),
            object_score_logits=torch.cat(scores),
            high_res_logits=torch.cat(high),
        )

    def _upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        """S/4 → S logits, bilinear (align_corners=False), as SAM2 upsamples its masks."""
        size = (self.image_size, self.image_size)
        return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)

    # --------------------------------------------------------------------------- tracking
    @torch.no_grad()
    def track(
        self,
        features: VideoFeatures,
        keyframe_idx: list[int],
        keyframe_masks: torch.Tensor,
        *,
        output_device: torch.device | str | None = None,
        project_memory_once: bool = True,
    ) -> TrackResult:
        """Joint propagation with object scores (inference, no gradients).

        See :func:`vrshq.model.sam2_tracking.track_objects`; call in eval mode for the method's
        behaviour (binarised keyframe memory, object-score gate, hole filling).
        ``project_memory_once=False`` runs stock SAM2's memory attention (the official loop's).
        More than ``cfg.max_objects_per_track`` objects are tracked in successive passes (objects
        are independent, so the result is the same) to bound tracking memory.
        """
        keyframe_idx = [int(k) for k in keyframe_idx]
        options = dict(
            memory_dtype=_DTYPES[self.cfg.memory_dtype] if self.cfg.memory_dtype else None,
            memory_device=torch.device("cpu") if self.cfg.offload_memory_to_cpu else None,
            output_device=torch.device(output_device) if output_device is not None else None,
            project_memory_once=project_memory_once,
        )
        step = self.cfg.max_objects_per_track
        parts = [
            track_objects(self.sam2, features, keyframe_idx[start : start + step],
                          keyframe_masks[start : start + step], **options)
            for start in range(0, max(1, len(keyframe_idx)), step)
        ]
        if len(parts) == 1:
            return parts[0]
        return TrackResult(
            low_res_logits=torch.cat([p.low_res_logits for p in parts]),
            object_score_logits=torch.cat([p.object_score_logits for p in parts]),
        )

    def propagate(
        self,
        features: VideoFeatures,
        keyframe_idx: list[int],
        keyframe_masks: torch.Tensor,
        *,
        output_device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Track E objects from their keyframe masks through the video (method §5.3 steps 3-5).

        Forward from each keyframe to T-1, then from a fresh state backward to 0; all objects
        together, equal to tracking each alone. Use :meth:`track` to also get object scores or
        to keep the S/4 logits (less memory for long videos).

        Args:
            features: :class:`VideoFeatures`.
            keyframe_idx: (E,) keyframe per object.
            keyframe_masks: (E, S, S) bool keyframe masks (binarised decode, letterboxed).
            output_device: Where to put the result (default: compute device).

        Returns:
            (E, T, S, S) float32 logits (bilinear upsampling of the S/4 logits, as SAM2 does).
        """
        with torch.no_grad():
            track = self.track(features, keyframe_idx, keyframe_masks, output_device=output_device)
            low = track.low_res_logits
            num_obj, num_frames = low.shape[:2]
            size = self.image_size
            out = torch.empty(num_obj, num_frames, size, size, device=low.device)
            for t in range(num_frames):  # per frame: bounded temporary memory
                out[:, t] = self._upsample(low[:, t : t + 1])[:, 0]
        return out
