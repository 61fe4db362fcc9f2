"""Per-video SAM2 features and joint multi-object mask propagation (method §5.3 steps 3-5).

Each VRS-HQ expression has its own keyframe. The stock ``SAM2VideoPredictor`` tracks all
objects of a state from one shared start frame and would need one state (and one backbone
pass per frame) per expression. Here one loop walks the frames once per direction, moves a
frame's backbone features to the device once, and calls the real ``SAM2Base.track_step`` for
every group of objects whose memories have the same layout, with the objects as the batch
dimension:

* objects that share a keyframe form one group from the start;
* once a group is more than ``_memory_reach`` (15) frames past its keyframe, its memory
  layout (keyframe + 6 recent frames + 16 pointers, no temporal pointer encoding) no longer
  depends on where the keyframe was, so such groups are merged into one batch.

An object becomes active when its keyframe is reached. Memory and outputs follow the stock
predictor step for step, so joint tracking equals tracking each object alone, and a single
object equals ``init_state`` / ``add_new_mask`` / ``propagate_in_video`` (tests check both).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from vrshq.model.sam2_model import VrshqSam2, fill_holes_in_mask_scores

__all__ = ["VideoFeatures", "TrackResult", "ObjectGroupMemory", "track_objects"]


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


@dataclasses.dataclass
class ObjectGroupMemory:
    """Memory bank of the objects that share one keyframe, in one tracking direction.

    ``output_dict`` is the structure ``SAM2Base.track_step`` reads
    (``{"cond_frame_outputs": {t: out}, "non_cond_frame_outputs": {t: out}}``, each ``out``
    with ``maskmem_features`` (B, C_mem, h, w), ``maskmem_pos_enc`` and ``obj_ptr`` (B, D)).
    """

    object_indices: list[int]
    keyframe: int
    output_dict: dict[str, dict[int, dict[str, Any]]] = dataclasses.field(
        default_factory=lambda: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    )
    maskmem_pos_enc: list[torch.Tensor] | None = None

    def store(
        self,
        frame_idx: int,
        out: dict[str, Any],
        *,
        is_cond: bool,
        memory_dtype: torch.dtype | None,
        memory_device: torch.device,
    ) -> None:
        """Keep what later frames read; position encodings are shared, features cast/offloaded."""
        feats = out["maskmem_features"]
        if memory_dtype is not None:
            feats = feats.to(memory_dtype)
        if self.maskmem_pos_enc is None:
            # one shared copy per bank, kept on the compute device (it is read every step)
            self.maskmem_pos_enc = list(out["maskmem_pos_enc"])
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        self.output_dict[key][frame_idx] = {
            "maskmem_features": feats.to(memory_device, non_blocking=True),
            "maskmem_pos_enc": self.maskmem_pos_enc,
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def prune(self, frame_idx: int, *, reach: int, reverse: bool) -> None:
        """Drop non-conditioning memories that no later frame of this pass can read.

        After ``frame_idx``, the next frame reads at most ``reach`` frames back, i.e. frames
        ``frame_idx - reach + 1 .. frame_idx`` (mirrored when tracking backward).
        """
        non_cond = self.output_dict["non_cond_frame_outputs"]
        for t in list(non_cond):
            if (t <= frame_idx - reach) if not reverse else (t >= frame_idx + reach):
                del non_cond[t]


def _frame_inputs(
    model: VrshqSam2, features: VideoFeatures, frame_idx: int, batch: int
) -> tuple[list, list, list]:
    """One frame's flattened features expanded to ``batch`` objects (sam2 (HW)BC layout)."""
    backbone_out = features.backbone_out([frame_idx], repeat=batch)
    _, feats, pos, sizes = model._prepare_backbone_features(backbone_out)
    return feats, pos, sizes


def _memory_reach(model: VrshqSam2) -> int:
    """How many frames back a track step reads (spatial memories or object pointers).

    Memories: the previous frame plus ``num_maskmem - 2`` frames on a stride-r grid, at most
    ``1 + (num_maskmem - 2)·r`` back; pointers: up to ``max_obj_ptrs_in_encoder - 1`` back.
    With the VRS-HQ settings (7 memories, stride 1, 16 pointers) that is 15 frames.
    """
    stride = max(1, int(model.memory_temporal_stride_for_eval))
    return max(1 + (model.num_maskmem - 2) * stride, model.max_obj_ptrs_in_encoder - 1)


def _postprocess(model: VrshqSam2, pred_masks: torch.Tensor) -> torch.Tensor:
    if model.fill_hole_area > 0 and not model.training:
        pred_masks = fill_holes_in_mask_scores(pred_masks, model.fill_hole_area)
    return pred_masks


def _insert_keyframe_mask(
    model: VrshqSam2,
    features: VideoFeatures,
    group: ObjectGroupMemory,
    masks: torch.Tensor,
    *,
    memory_dtype: torch.dtype | None,
    memory_device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``add_new_mask`` + the memory encoding of ``propagate_in_video_preflight``, batched."""
    num = len(group.object_indices)
    feats, pos, sizes = _frame_inputs(model, features, group.keyframe, num)
    out = model.track_step(
        frame_idx=group.keyframe,
        is_init_cond_frame=True,
        current_vision_feats=feats,
        current_vision_pos_embeds=pos,
        feat_sizes=sizes,
        point_inputs=None,
        mask_inputs=masks[:, None].float(),
        output_dict=group.output_dict,
        num_frames=features.num_frames,
        track_in_reverse=False,
        run_mem_encoder=False,
    )
    pred = _postprocess(model, out["pred_masks"])
    # As the stock preflight: memory is encoded from the (filled) low-res output upsampled
    # back to S×S, binarised because the mask is a user input (is_mask_from_pts=True).
    high_res = F.interpolate(
        pred, size=(model.image_size, model.image_size), mode="bilinear", align_corners=False
    )
    maskmem_features, maskmem_pos_enc = model._encode_new_memory(
        current_vision_feats=feats,
        feat_sizes=sizes,
        pred_masks_high_res=high_res,
        object_score_logits=out["object_score_logits"],
        is_mask_from_pts=True,
    )
    out["maskmem_features"], out["maskmem_pos_enc"] = maskmem_features, maskmem_pos_enc
    group.store(group.keyframe, out, is_cond=True, memory_dtype=memory_dtype, memory_device=memory_device)
    return pred, out["object_score_logits"]


def _layouts_depend_only_on_distance(model: VrshqSam2) -> bool:
    """Whether a track step's memory layout depends only on the distance to the keyframe.

    True for the VRS-HQ settings: no temporal encoding of object pointers (so the keyframe's
    pointer position is irrelevant) and all conditioning frames attended. Then two groups
    that are both more than ``_memory_reach`` frames past their keyframes read memories of
    identical layout (keyframe + the same recent frames and pointers) and can be batched.
    """
    return not model.add_tpos_enc_to_obj_ptrs and model.max_cond_frames_in_attn == -1


def _merge_saturated(groups: list[ObjectGroupMemory], *, reverse: bool) -> ObjectGroupMemory:
    """Concatenate memory banks whose layouts have become identical into one batched bank.

    Each bank has one conditioning entry (its keyframe) and the same recent non-conditioning
    frames; entries are concatenated along the object (batch) dimension. The merged
    conditioning entry is stored under the earliest keyframe (latest when tracking backward):
    sam2 only uses that key to keep past pointers (``only_obj_ptrs_in_the_past_for_eval``),
    which holds for every merged keyframe.
    """
    key = max(g.keyframe for g in groups) if reverse else min(g.keyframe for g in groups)
    merged = ObjectGroupMemory(
        object_indices=[obj for g in groups for obj in g.object_indices], keyframe=key
    )
    merged.maskmem_pos_enc = [
        torch.cat(levels) for levels in zip(*(g.maskmem_pos_enc for g in groups))
    ]

    def cat_entries(entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "maskmem_features": torch.cat([e["maskmem_features"] for e in entries]),
            "maskmem_pos_enc": merged.maskmem_pos_enc,
            "obj_ptr": torch.cat([e["obj_ptr"] for e in entries]),
            "object_score_logits": torch.cat([e["object_score_logits"] for e in entries]),
        }

    conds = [next(iter(g.output_dict["cond_frame_outputs"].values())) for g in groups]
    merged.output_dict["cond_frame_outputs"][key] = cat_entries(conds)
    frames = set(groups[0].output_dict["non_cond_frame_outputs"])
    if any(set(g.output_dict["non_cond_frame_outputs"]) != frames for g in groups):
        raise RuntimeError("internal error: merging memory banks with different recent frames")
    for t in sorted(frames):
        entries = [g.output_dict["non_cond_frame_outputs"][t] for g in groups]
        merged.output_dict["non_cond_frame_outputs"][t] = cat_entries(entries)
    return merged


def _propagate_direction(
    model: VrshqSam2,
    features: VideoFeatures,
    groups: list[ObjectGroupMemory],
    keyframe_masks: torch.Tensor,
    result: TrackResult,
    *,
    reverse: bool,
    memory_dtype: torch.dtype | None,
    memory_device: torch.device,
) -> None:
    num_frames = features.num_frames
    reach = _memory_reach(model)
    for group in groups:
        pred, scores = _insert_keyframe_mask(
            model, features, group, keyframe_masks[group.object_indices],
            memory_dtype=memory_dtype, memory_device=memory_device,
        )
        _record(result, group.object_indices, group.keyframe, pred, scores)
    if reverse:
        order = range(max(g.keyframe for g in groups) - 1, -1, -1)
    else:
        order = range(min(g.keyframe for g in groups) + 1, num_frames)
    groups = list(groups)
    can_merge = _layouts_depend_only_on_distance(model)
    for frame_idx in order:
        active = [g for g in groups if (frame_idx < g.keyframe if reverse else frame_idx > g.keyframe)]
        if not active:
            continue
        # groups whose whole reach lies after (before) their keyframe share one layout
        saturated = [g for g in active if abs(frame_idx - g.keyframe) > reach]
        if can_merge and len(saturated) > 1:
            merged = _merge_saturated(saturated, reverse=reverse)
            groups = [g for g in groups if all(g is not s for s in saturated)] + [merged]
            active = [g for g in active if all(g is not s for s in saturated)] + [merged]
        base = features.backbone_out([frame_idx])  # moved to the device once for all groups
        for group in active:
            num = len(group.object_indices)
            expanded = {k: [x.expand(num, -1, -1, -1) for x in v] for k, v in base.items()}
            _, feats, pos, sizes = model._prepare_backbone_features(expanded)
            out = model.track_step(
                frame_idx=frame_idx,
                is_init_cond_frame=False,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos,
                feat_sizes=sizes,
                point_inputs=None,
                mask_inputs=None,
                output_dict=group.output_dict,
                num_frames=num_frames,
                track_in_reverse=reverse,
                run_mem_encoder=True,
            )
            group.store(
                frame_idx, out, is_cond=False, memory_dtype=memory_dtype, memory_device=memory_device
            )
            group.prune(frame_idx, reach=reach, reverse=reverse)
            pred = _postprocess(model, out["pred_masks"])
            _record(result, group.object_indices, frame_idx, pred, out["object_score_logits"])


def _record(
    result: TrackResult, objects: list[int], frame_idx: int, pred: torch.Tensor, scores: torch.Tensor
) -> None:
    device = result.low_res_logits.device
    idx = torch.as_tensor(objects, dtype=torch.long, device=device)
    result.low_res_logits[idx, frame_idx] = pred[:, 0].float().to(device)
    result.object_score_logits[idx, frame_idx] = scores[:, 0].float().to(device)


def track_objects(
    model: VrshqSam2,
    features: VideoFeatures,
    keyframe_idx: list[int],
    keyframe_masks: torch.Tensor,
    *,
    memory_dtype: torch.dtype | None = None,
    memory_device: torch.device | None = None,
    output_device: torch.device | None = None,
) -> TrackResult:
    """Propagate E keyframe masks through the whole video (method §5.3 steps 3-5).

    For every object: its binarised keyframe mask is inserted as a mask prompt (output = the
    mask as ±10 logits), propagated forward from the keyframe to T-1, then from a fresh state
    (mask re-inserted, no forward memories) backward to 0. Memory: the keyframe plus the 6
    most recent frames, up to 16 object pointers, eval-mode gating and hole filling.

    Args:
        model: The SAM2 model (eval mode for inference).
        features: :class:`VideoFeatures` of the video.
        keyframe_idx: (E,) keyframe of each object.
        keyframe_masks: (E, S, S) bool (or 0/1) keyframe masks in letterboxed coordinates.
        memory_dtype: Storage dtype of memory features (None: compute dtype).
        memory_device: Where memory features are kept (None: compute device).
        output_device: Where the result is accumulated (None: compute device).

    Returns:
        :class:`TrackResult`; frame ``keyframe_idx[e]`` holds the inserted mask.
    """
    num_obj = len(keyframe_idx)
    num_frames = features.num_frames
    size = model.image_size
    if keyframe_masks.shape != (num_obj, size, size):
        raise ValueError(
            f"keyframe_masks has shape {tuple(keyframe_masks.shape)}, expected "
            f"({num_obj}, {size}, {size}) (one letterboxed mask per keyframe_idx entry)"
        )
    bad = [k for k in keyframe_idx if not 0 <= int(k) < num_frames]
    if bad:
        raise ValueError(
            f"keyframe_idx {bad} outside [0, {num_frames}) for a video of {num_frames} frames"
        )
    device = features.compute_device
    memory_device = memory_device or device
    output_device = output_device or device
    masks = (keyframe_masks.to(device) > 0).float()
    low = size // 4
    result = TrackResult(
        low_res_logits=torch.empty(num_obj, num_frames, low, low, device=output_device),
        object_score_logits=torch.empty(num_obj, num_frames, device=output_device),
    )
    by_keyframe: dict[int, list[int]] = {}
    for obj, k in enumerate(keyframe_idx):
        by_keyframe.setdefault(int(k), []).append(obj)
    for reverse in (False, True):
        # The forward pass covers frames >= keyframe and the backward pass frames < keyframe,
        # each from its own fresh memory (method §5.3 step 4). A keyframe at T-1 needs no
        # forward pass and one at 0 no backward pass; every keyframe is inserted by one of them.
        groups = [
            ObjectGroupMemory(object_indices=objs, keyframe=k)
            for k, objs in sorted(by_keyframe.items())
            if (k > 0 if reverse else (k < num_frames - 1 or k == 0))
        ]
        if groups:
            _propagate_direction(
                model, features, groups, masks, result,
                reverse=reverse, memory_dtype=memory_dtype, memory_device=memory_device,
            )
    return result
