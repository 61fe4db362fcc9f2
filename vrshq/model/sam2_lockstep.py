"""Lockstep propagation: every object's forward and backward pass in one batch per distance from its keyframe.

With the VRS-HQ memory settings (memory stride 1) a step ``d`` frames from the keyframe reads the keyframe and
the memories and pointers of the same distances whatever the keyframe and direction, so the memory bank is
keyed by distance and all rows of a video run as one batch: a video of T frames takes at most T-1 steps however
many expressions and keyframes it has. Memory is read through ``vrshq.model.projected_memory``. See
:mod:`vrshq.model.sam2_tracking`, which chooses this path when :func:`lockstep_is_exact`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from vrshq.model.projected_memory import PROJECTED_KEY, USE_PROJECTED_MEMORY
from vrshq.model.sam2_model import VrshqSam2, fill_holes
from vrshq.model.sam2_video_features import FrameInputs, MemoryPlacement, TrackResult, VideoFeatures

__all__ = ["LockstepBank", "insert_keyframe_masks", "lockstep_is_exact", "memory_reach", "track_from_memory",
           "track_lockstep"]


def memory_reach(model: VrshqSam2) -> int:
    """How many frames back a track step reads (spatial memories or object pointers).

    Memories: the previous frame plus ``num_maskmem - 2`` frames on a stride-r grid, at most
    ``1 + (num_maskmem - 2)·r`` back; pointers: up to ``max_obj_ptrs_in_encoder - 1`` back.
    With the VRS-HQ settings (7 memories, stride 1, 16 pointers) that is 15 frames.
    """
    stride = max(1, int(model.memory_temporal_stride_for_eval))
    return max(1 + (model.num_maskmem - 2) * stride, model.max_obj_ptrs_in_encoder - 1)


def lockstep_is_exact(model: VrshqSam2) -> bool:
    """Whether :func:`track_lockstep` equals tracking every object alone for this model.

    A row ``i`` frames past (before) its keyframe reads the keyframe's memory and those of the
    ``reach`` frames just before (after) it, all at the same distances for every row; with a
    memory stride of 1 the frames a step reads do not depend on where the keyframe is (with a
    stride ``r > 1`` they sit on the grid of multiples of ``r``, which moves with the keyframe).
    Object-pointer positions are distances as well (signed ones included: a backward row ``i``
    frames before its keyframe is at ``+i`` like a forward row), and a bank holds one
    conditioning frame, so ``max_cond_frames_in_attn`` cannot drop it. The memory encoder must
    not mix objects (``non_overlap_masks_for_mem_enc``).
    """
    stride = 1 if model.training else int(model.memory_temporal_stride_for_eval)
    return stride == 1 and not model.non_overlap_masks_for_mem_enc


@dataclasses.dataclass
class LockstepBank:
    """The memory of every row of a lockstep pass, keyed by distance from the keyframes.

    Entry ``d`` holds the outputs of distance ``d`` for the rows that were active then; rows are
    sorted by pass length, so the rows still active form a prefix and :meth:`keep_rows` trims
    every entry to it (views, no copies). ``output_dict`` is the structure
    ``SAM2Base.track_step`` reads, with the keyframes at frame 0.
    """

    output_dict: dict[str, dict[int, dict[str, Any]]]
    maskmem_pos_enc: list[torch.Tensor]
    rows: int

    def keep_rows(self, rows: int) -> None:
        if rows == self.rows:
            return
        self.rows = rows
        self.maskmem_pos_enc[:] = [p[:rows] for p in self.maskmem_pos_enc]
        for name in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for entry in self.output_dict[name].values():
                for key in ("maskmem_features", "obj_ptr", "object_score_logits"):
                    entry[key] = entry[key][:rows]
                if PROJECTED_KEY in entry:
                    entry[PROJECTED_KEY] = [(k[:rows], v[:rows]) for k, v in entry[PROJECTED_KEY]]

    def store(
        self,
        distance: int,
        out: dict[str, Any],
        *,
        memory_dtype: torch.dtype | None,
        memory_device: torch.device,
    ) -> None:
        placement = MemoryPlacement(memory_dtype, memory_device)
        self.output_dict["non_cond_frame_outputs"][distance] = placement.entry(out, self.maskmem_pos_enc)

    def prune(self, distance: int, *, reach: int) -> None:
        """Drop the entries no later distance reads (the next one reads ``reach`` back)."""
        non_cond = self.output_dict["non_cond_frame_outputs"]
        for d in [d for d in non_cond if d <= distance - reach]:
            del non_cond[d]


def insert_keyframe_masks(
    model: VrshqSam2,
    frame_inputs: FrameInputs,
    keyframes: torch.Tensor,
    masks: torch.Tensor,
    *,
    num_frames: int,
) -> dict[str, Any]:
    """``add_new_mask`` + preflight memory encoding for every object at once (its own keyframe).

    The same computation starts the forward and the backward pass of an object, so it runs once.
    Returns the track-step output with the (hole-filled) ``pred_masks`` and the memory.
    """
    device = frame_inputs.device
    feats, pos, sizes = frame_inputs.rows(keyframes.to(device), keyframes)
    out = model.track_step(
        frame_idx=0,
        is_init_cond_frame=True,
        current_vision_feats=feats,
        current_vision_pos_embeds=pos,
        feat_sizes=sizes,
        point_inputs=None,
        mask_inputs=masks[:, None].float(),
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
        num_frames=num_frames,
        track_in_reverse=False,
        run_mem_encoder=False,
    )
    pred = out["pred_masks"]
    if model.fill_hole_area > 0 and not model.training:
        pred = fill_holes(pred, model.fill_hole_area)
    high_res = F.interpolate(
        pred, size=(model.image_size, model.image_size), mode="bilinear", align_corners=False
    )
    out["maskmem_features"], out["maskmem_pos_enc"] = model._encode_new_memory(
        current_vision_feats=feats,
        feat_sizes=sizes,
        pred_masks_high_res=high_res,
        object_score_logits=out["object_score_logits"],
        is_mask_from_pts=True,
    )
    out["pred_masks"] = pred
    return out


def track_from_memory(
    model: VrshqSam2,
    output_dict: dict[str, Any],
    feats: list[torch.Tensor],
    pos: list[torch.Tensor],
    sizes: list[tuple[int, int]],
    *,
    frame_idx: int,
    num_frames: int,
    reverse: bool = False,
) -> dict[str, Any]:
    """One ``track_step`` of a frame without a prompt: it reads the memory bank ``output_dict`` and encodes its own
    memory (both trackers' propagation step)."""
    return model.track_step(
        frame_idx=frame_idx,
        is_init_cond_frame=False,
        current_vision_feats=feats,
        current_vision_pos_embeds=pos,
        feat_sizes=sizes,
        point_inputs=None,
        mask_inputs=None,
        output_dict=output_dict,
        num_frames=num_frames,
        track_in_reverse=reverse,
        run_mem_encoder=True,
    )


def track_lockstep(
    model: VrshqSam2,
    features: VideoFeatures,
    keyframe_idx: list[int],
    masks: torch.Tensor,
    result: TrackResult,
    *,
    memory: MemoryPlacement,
) -> None:
    """Both passes of every object in one batch per distance from the keyframes.

    Each object gives a forward row (keyframe+1 .. T-1) and a backward row (keyframe-1 .. 0),
    each with its own memory as in the stock predictor. Step ``d`` runs every row that is still
    inside the video, at its own frame ``keyframe ± d``, in one ``track_step``: all of them read
    memories at the same distances (:func:`lockstep_is_exact`), so the memory bank is keyed by
    distance and the rows are the batch. A video of T frames takes at most T-1 steps, however
    many objects and keyframes it has, instead of one step per frame and keyframe group.
    """
    num_frames = features.num_frames
    device = features.compute_device
    out_device = result.low_res_logits.device
    keyframes = torch.tensor(keyframe_idx, dtype=torch.long)
    inserted = insert_keyframe_masks(model, FrameInputs(model, features), keyframes, masks,
                                      num_frames=num_frames)
    objects_out = torch.arange(len(keyframe_idx), device=out_device)
    keys_out = keyframes.to(out_device)
    result.low_res_logits.index_put_((objects_out, keys_out), inserted["pred_masks"][:, 0].float().to(out_device))
    result.object_score_logits.index_put_(
        (objects_out, keys_out), inserted["object_score_logits"][:, 0].float().to(out_device)
    )
    # rows (length, object, direction), longest first: the active rows are always a prefix
    rows = [(num_frames - 1 - k, obj, 1) for obj, k in enumerate(keyframe_idx) if k < num_frames - 1]
    rows += [(k, obj, -1) for obj, k in enumerate(keyframe_idx) if k > 0]
    rows.sort(key=lambda r: -r[0])
    if not rows:
        return
    lengths = [r[0] for r in rows]
    row_obj = torch.tensor([r[1] for r in rows], dtype=torch.long)
    row_sign = torch.tensor([r[2] for r in rows], dtype=torch.long)
    distances = torch.arange(1, lengths[0] + 1, dtype=torch.long)
    # frames_host[d - 1, r]: the frame row r tracks at distance d (valid while d <= its length)
    frames_host = keyframes[row_obj][None, :] + row_sign[None, :] * distances[:, None]
    frames_dev = frames_host.to(device)
    frames_out = frames_dev if out_device == device else frames_host.to(out_device)
    row_obj_out = row_obj.to(out_device)
    # every row's memory starts from its object's keyframe output
    pick = row_obj.to(inserted["maskmem_features"].device)
    bank = LockstepBank(
        # projections live beside the memory, so only when the memory stays on the compute device
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {},
                     USE_PROJECTED_MEMORY: memory.project_once and memory.device == device},
        maskmem_pos_enc=[p.index_select(0, pick) for p in inserted["maskmem_pos_enc"]],
        rows=len(rows),
    )
    bank.output_dict["cond_frame_outputs"][0] = memory.entry(
        inserted, bank.maskmem_pos_enc, **{key: inserted[key].index_select(0, pick)
                                           for key in ("maskmem_features", "obj_ptr", "object_score_logits")})
    del inserted
    frame_inputs = FrameInputs(model, features)
    reach = memory_reach(model)
    active = len(rows)
    for distance in range(1, lengths[0] + 1):
        while lengths[active - 1] < distance:
            active -= 1
        bank.keep_rows(active)
        feats, pos, sizes = frame_inputs.rows(
            frames_dev[distance - 1, :active], frames_host[distance - 1, :active]
        )
        out = track_from_memory(model, bank.output_dict, feats, pos, sizes, frame_idx=distance,
                                num_frames=num_frames)
        bank.store(distance, out, memory_dtype=memory.dtype, memory_device=memory.device)
        bank.prune(distance, reach=reach)
        index = (row_obj_out[:active], frames_out[distance - 1, :active])
        result.low_res_logits.index_put_(index, out["pred_masks"][:, 0].float().to(out_device))
        result.object_score_logits.index_put_(index, out["object_score_logits"][:, 0].float().to(out_device))
