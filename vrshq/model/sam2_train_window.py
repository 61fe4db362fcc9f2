"""Training forward passes of the SAM2 side (method §5.4): the W-frame training window from a decoded
conditioning frame, the one-frame decode of image samples, and tracking from a given mask.

:class:`Sam2TrainForward` is a base of :class:`~vrshq.model.sam2_segmenter.Sam2Segmenter`, which provides the
image encoder (``_forward_image``), the prompt decode (``_decode_step``) and the input checks these use; all
passes run in ``train()`` mode, without gating, with gradients.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["Sam2TrainForward", "WindowOutput", "window_passes"]


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


class Sam2TrainForward:
    """The training entry points of :class:`~vrshq.model.sam2_segmenter.Sam2Segmenter` (a base class of it)."""

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
        # vrshq.model.sam2_lockstep's lockstep tracking; the reference is the grouped loop of
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
