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
from vrshq.model.sam2_config import Sam2Config
from vrshq.model.sam2_model import (
    PROMPT_EMBEDS_KEY,
    VrshqSam2,
    build_sam2_model,
)
from vrshq.model.sam2_tracking import TrackResult, VideoFeatures, fill_holes, track_objects

__all__ = [
    "Sam2Segmenter",
    "PromptDecode",
    "WindowOutput",
    "VideoFeatures",
    "TrackResult",
    "TrainableSet",
    "window_passes",
]

TrainableSet = Literal["mask_decoder", "all", "none"]
def window_passes(cond: int, window: int) -> tuple[tuple[bool, tuple[int, ...]], ...]:
    """The tracking passes of a training window: (track_in_reverse, window positions in processing order).

    Method §5.4 (same as §5.3 step 4) for the 3-frame window: forward from the conditioning
    position to the window's end, then backward to its start, each pass from a memory that holds
    only the conditioning frame. Longer windows (a from-scratch aid, ``MethodConfig.train_window``)
    follow the same rule, so they train the memory path over longer distances.

    Example:
        >>> [window_passes(c, 3) for c in range(3)]
        [((False, (1, 2)),), ((False, (2,)), (True, (0,))), ((True, (1, 0)),)]
    """
    if not 0 <= cond < window:
        raise ValueError(f"conditioning position {cond} is outside a window of {window} frames")
    passes = []
    if cond < window - 1:
        passes.append((False, tuple(range(cond + 1, window))))
    if cond > 0:
        passes.append((True, tuple(range(cond - 1, -1, -1))))
    return tuple(passes)


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


@dataclasses.dataclass(frozen=True)
class WindowOutput:
    """Training-window output (method §5.4).

    Attributes:
        logits: (B, 3, S, S) mask logits of the three window frames (no gating in training).
        object_score_logits: (B, 3) object-presence logits, for an optional presence loss.
        image_embeddings: (B, W, C, S/16, S/16) the lowest-resolution image embedding of every window frame
            (what the mask decoder reads), when the entry point returns it (``train_track_forward``), else None.
    """

    logits: torch.Tensor
    object_score_logits: torch.Tensor
    image_embeddings: torch.Tensor | None = None


def _select_rows(value, rows):
    """Rows of a track-step output value (a tensor or a list of tensors, e.g. ``maskmem_pos_enc``)."""
    if isinstance(value, list):
        return [_select_rows(v, rows) for v in value]
    return value[rows] if isinstance(rows, slice) else value.index_select(0, rows)


class Sam2Segmenter(nn.Module):
    """The SAM2 model of VRS-HQ with typed, batched entry points.

    Args:
        cfg: :class:`Sam2Config`.
        model: An already built :class:`VrshqSam2` (default: built from ``cfg``).
        device: Device to move the model to (default: leave it where it is, CPU when built).

    Example:
        >>> import torch
        >>> from vrshq.model.sam2_config import sam2_tiny
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
        store = torch.device("cpu") if self.cfg.offload_features_to_cpu else device
        levels: list[torch.Tensor] = []
        pos_enc: list[torch.Tensor] = []
        filled = 0
        for chunk in chunks:
            out = self._forward_image(chunk.to(device, non_blocking=True).float())
            if not levels:
                levels = [
                    torch.empty((num_frames, *f.shape[1:]), dtype=f.dtype, device=store)
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

    # --------------------------------------------------------------------------- training
    def train_image_forward(self, images: torch.Tensor, prompt_embeds: torch.Tensor) -> WindowOutput:
        """Training path of image samples (method §5.4 "Image samples"): SAM2-as-image decode.

        The frame's top-level feature + ``no_mem_embed``, no memory, single-mask output, no gating
        (call in ``train()`` mode). The sparse prompt is [pad, pad, prompt] as for video samples: the
        official image branch passes [prompt] alone, an inconsistency with the video path that
        this project does not copy (method §9), so image and video samples train one decoder input.

        Args:
            images: (B, 3, S, S) letterboxed frames.
            prompt_embeds: (B, D) TAK embeddings (image samples have no TDA fusion, method §3).

        Returns:
            :class:`WindowOutput` with a window of one frame: logits (B, 1, S, S), scores (B, 1).
        """
        self._check_images(images, "train_image_forward", 4)
        batch = images.shape[0]
        if prompt_embeds.shape != (batch, self.prompt_embed_dim):
            raise ValueError(
                f"train_image_forward: prompt_embeds has shape {tuple(prompt_embeds.shape)}, "
                f"expected ({batch}, {self.prompt_embed_dim})"
            )
        backbone = self._forward_image(images.to(self.device).float())
        out = self._decode_step(backbone, prompt_embeds, num_frames=1)
        return WindowOutput(
            logits=out["pred_masks_high_res"][:, :1].float(),
            object_score_logits=out["object_score_logits"][:, :1].float(),
        )

    def train_track_forward(self, images: torch.Tensor, first_masks: torch.Tensor) -> WindowOutput:
        """Tracking from a given first-frame mask, with gradients (SAM2's own video training).

        Frame 0 of each window is the conditioning frame with ``first_masks`` as its mask prompt,
        inserted as inference inserts a decoded keyframe (``add_new_mask``: the mask is the output,
        its memory is encoded from it); frames 1..W-1 are tracked forward with memory. This is what
        Meta's SA-V training teaches the real SAM2 before VRS-HQ fine-tunes it: the learnability run
        trains it from scratch on synthetic videos (``research.track_pretrain``), because VRS-HQ's
        3-frame windows from a predicted keyframe teach tracking only over two frames, from a
        mask that is still wrong early in training. Call in ``train()`` mode.

        Args:
            images: (B, W, 3, S, S) letterboxed frames in tracking order (reverse a window to
                train backward tracking: the model sees only the order).
            first_masks: (B, S, S) bool/0-1 mask of the target on frame 0.

        Returns:
            :class:`WindowOutput`; position 0 holds the mask prompt's output.
        """
        self._check_images(images, "train_track_forward", 5)
        batch, window = images.shape[:2]
        if first_masks.shape != (batch, self.image_size, self.image_size):
            raise ValueError(
                f"train_track_forward: first_masks has shape {tuple(first_masks.shape)}, expected "
                f"({batch}, {self.image_size}, {self.image_size})"
            )
        device = self.device
        backbone = self._forward_image(images.reshape(batch * window, *images.shape[2:]).to(device).float())
        bank: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        logits, scores = [], []
        for t in range(window):
            sel = torch.arange(batch, device=device) * window + t
            _, feats, pos, sizes = self.sam2._prepare_backbone_features({
                "backbone_fpn": [x.index_select(0, sel) for x in backbone["backbone_fpn"]],
                "vision_pos_enc": [x.index_select(0, sel) for x in backbone["vision_pos_enc"]],
            })
            out = self.sam2.track_step(
                frame_idx=t,
                is_init_cond_frame=t == 0,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos,
                feat_sizes=sizes,
                point_inputs=None,
                mask_inputs=first_masks[:, None].to(device).float() if t == 0 else None,
                output_dict=bank,
                num_frames=window,
                track_in_reverse=False,
                run_mem_encoder=t < window - 1,
            )
            keep = ("maskmem_features", "maskmem_pos_enc", "obj_ptr", "object_score_logits")
            bank["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = {k: out[k] for k in keep}
            logits.append(out["pred_masks_high_res"][:, 0].float())
            scores.append(out["object_score_logits"][:, 0].float())
        embeddings = backbone["backbone_fpn"][-1]
        return WindowOutput(logits=torch.stack(logits, 1), object_score_logits=torch.stack(scores, 1),
                            image_embeddings=embeddings.reshape(batch, window, *embeddings.shape[1:]))

    def train_window_forward(
        self,
        images: torch.Tensor,
        cond_pos: torch.Tensor,
        prompt_embeds: torch.Tensor,
    ) -> WindowOutput:
        """Training path on W-frame windows (method §5.4: W = 3).

        The conditioning frame is decoded with [pad, pad, prompt]; the other frames are tracked
        with memory (:func:`window_passes`; W=3: c=0: forward 1, 2; c=2: backward 1, 0; c=1:
        forward 2, then from a fresh memory of the same conditioning output backward 0). Call in ``train()`` mode: memory
        uses sigmoid (not binarised) masks, memory-attention dropout is active, and masks are
        not gated by the object score. Gradients reach ``prompt_embeds`` and the mask decoder
        (also through the propagated frames); the image encoder runs under no_grad while its
        parameters are frozen (``set_trainable("mask_decoder")``, method §6).

        All rows run together: one batched decode of the conditioning frames, then one batched
        ``track_step`` per distance from them (W=3: 2 steps instead of up to 3 decodes and 6 steps
        when the batch holds every conditioning position), equal to the per-group loop.

        Args:
            images: (B, W, 3, S, S) letterboxed window frames.
            cond_pos: (B,) conditioning position in the window, in [0, W) (the keyframe).
            prompt_embeds: (B, D) fused TAK embeddings.

        Returns:
            :class:`WindowOutput`.
        """
        self._check_images(images, "train_window_forward", 5)
        batch, window = images.shape[:2]
        if window < 1:
            raise ValueError("train_window_forward: the window has no frames")
        cond_pos = torch.as_tensor(cond_pos, dtype=torch.long).cpu()
        if cond_pos.shape != (batch,) or bool(((cond_pos < 0) | (cond_pos >= window)).any()):
            raise ValueError(
                f"train_window_forward: cond_pos must be (B,) in [0, {window}), got {cond_pos.tolist()}"
            )
        if prompt_embeds.shape != (batch, self.prompt_embed_dim):
            raise ValueError(
                f"train_window_forward: prompt_embeds has shape {tuple(prompt_embeds.shape)}, "
                f"expected ({batch}, {self.prompt_embed_dim})"
            )
        device = self.device
        flat = images.reshape(batch * window, *images.shape[2:]).to(device).float()
        backbone = self._forward_image(flat)

        def frame_out(rows: torch.Tensor, positions: torch.Tensor) -> dict[str, list[torch.Tensor]]:
            sel = rows * window + positions
            return {
                "backbone_fpn": [x.index_select(0, sel) for x in backbone["backbone_fpn"]],
                "vision_pos_enc": [x.index_select(0, sel) for x in backbone["vision_pos_enc"]],
            }

        # 1. every row's conditioning frame, one batched decode (its memory feeds every pass of the row)
        rows_host = torch.arange(batch)
        cond_out = self._decode_step(
            frame_out(rows_host.to(device), cond_pos.to(device)), prompt_embeds.to(device),
            num_frames=window, frame_idx=0, run_mem_encoder=True,
        )
        # 2. the passes (row, window positions in processing order), two-frame passes first so the
        #    passes still running at distance 2 are a prefix
        passes = [(b, frames) for b, c in enumerate(cond_pos.tolist()) for _, frames in window_passes(c, window)]
        passes.sort(key=lambda p: -len(p[1]))
        pass_rows_host = torch.tensor([p[0] for p in passes], dtype=torch.long)
        pass_rows = pass_rows_host.to(device)
        max_len = max((len(f) for _, f in passes), default=0)
        positions_host = torch.tensor([list(f) + [-1] * (max_len - len(f)) for _, f in passes], dtype=torch.long)
        positions = positions_host.to(device)
        lengths = [len(f) for _, f in passes]
        # A pass reads its conditioning memory at distance 0 and its earlier outputs at distances
        # 1, 2, ...; with memory stride 1 (training) every pass reads the same distances whatever its
        # frames and direction, so all passes step together, forward in "distance time" (as in
        # vrshq.model.sam2_tracking's lockstep tracking; the reference is the grouped loop of
        # benchmarks/train_window_reference.py, compared in tests).
        keys = ("maskmem_features", "maskmem_pos_enc", "obj_ptr", "object_score_logits")
        bank = {
            "cond_frame_outputs": {0: {k: _select_rows(cond_out[k], pass_rows) for k in keys}},
            "non_cond_frame_outputs": {},
        }
        out_rows, out_pos = [rows_host], [cond_pos]
        out_logits, out_scores = [cond_out["pred_masks_high_res"]], [cond_out["object_score_logits"]]
        for distance in range(1, max_len + 1):
            active = sum(n >= distance for n in lengths)
            for entries in bank.values():
                for entry in entries.values():
                    for k in keys:
                        entry[k] = _select_rows(entry[k], slice(0, active))
            _, feats, pos_enc, sizes = self.sam2._prepare_backbone_features(
                frame_out(pass_rows[:active], positions[:active, distance - 1])
            )
            out = self.sam2.track_step(
                frame_idx=distance,
                is_init_cond_frame=False,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos_enc,
                feat_sizes=sizes,
                point_inputs=None,
                mask_inputs=None,
                output_dict=bank,
                num_frames=window,
                track_in_reverse=False,
                run_mem_encoder=True,
            )
            bank["non_cond_frame_outputs"][distance] = {k: out[k] for k in keys}
            out_rows.append(pass_rows_host[:active])
            out_pos.append(positions_host[:active, distance - 1])
            out_logits.append(out["pred_masks_high_res"])
            out_scores.append(out["object_score_logits"])
        index = (torch.cat(out_rows).to(device), torch.cat(out_pos).to(device))
        logits_all = torch.cat(out_logits)[:, 0].float()
        scores_all = torch.cat(out_scores)[:, 0].float()
        logits = logits_all.new_zeros(batch, window, *logits_all.shape[1:]).index_put(index, logits_all)
        scores = scores_all.new_zeros(batch, window).index_put(index, scores_all)
        return WindowOutput(logits=logits, object_score_logits=scores)
