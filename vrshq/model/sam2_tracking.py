"""Per-video SAM2 features and joint multi-object mask propagation (method §5.3 steps 3-5).

Each VRS-HQ expression has its own keyframe. The stock ``SAM2VideoPredictor`` tracks all
objects of a state from one shared start frame and would need one state (and one backbone
pass per frame) per expression, and one step per frame and direction. Here every object is
tracked with the real ``SAM2Base.track_step``, with many objects as its batch dimension, and
memory and outputs follow the stock predictor step for step, so joint tracking equals tracking
each object alone, and a single object equals ``init_state`` / ``add_new_mask`` /
``propagate_in_video`` (tests check both).

**Lockstep** (:func:`~vrshq.model.sam2_lockstep.track_lockstep`, the VRS-HQ settings: memory stride 1): every object's
keyframe mask is inserted once (the same computation starts both of its passes); each object
then has a forward row (keyframe+1 .. T-1) and a backward row (keyframe-1 .. 0), each with its
own memory. Step ``d`` runs every row still inside the video at its own frame ``keyframe ± d``
in one batch: with stride 1 a step ``d`` frames from the keyframe reads the keyframe and the
memories and pointers of the same distances whatever the keyframe and direction, so the bank is
keyed by distance. A video of T frames takes at most T-1 steps however many expressions and
keyframes it has (the per-step Python and launch overhead, not the GPU, bounded tracking).

Lockstep steps condition on memory through ``vrshq.model.projected_memory`` (each memory frame's
attention keys and values projected once, cuDNN attention in fixed row chunks on CUDA; equal to
stock SAM2's memory attention up to rounding); ``project_memory_once=False`` keeps the stock path.

**Grouped** (other memory settings, e.g. a stride ``r > 1``, whose memory grid moves with the
keyframe): one loop walks the frames once per direction, moves a frame's backbone features to
the device once, and calls ``track_step`` for every group of objects whose memories have the
same layout:

* objects that share a keyframe form one group from the start;
* once a group is more than ``memory_reach`` (15) frames past its keyframe, its memory
  layout (keyframe + 6 recent frames + 16 pointers, no temporal pointer encoding) no longer
  depends on where the keyframe was, so such groups are merged into one batch.

An object becomes active when its keyframe is reached.

Why merging is exact (``_merge_saturated``): after frame ``f`` a bank keeps the non-conditioning
frames ``f-R+1 .. f`` (mirrored backward), ``R`` = :func:`~vrshq.model.sam2_lockstep.memory_reach`, i.e. everything the
next step can read. A group is saturated at frame ``f`` when ``|f - keyframe| > R``; then every
frame of ``f-R .. f-1`` lies strictly after its keyframe, so it was tracked and stored, and all
saturated groups hold exactly the frames ``f-R .. f-1`` plus one conditioning entry that is
outside the window. The merge still checks the layouts and keeps banks that differ apart (exact,
only less batched) instead of failing a video job on an internal inconsistency.

Per step the loop avoids work that does not depend on the group: a frame's features are sliced,
moved and flattened once and expanded (no copy) to each group's batch; the position encoding is
flattened once per video; hole filling (the same per-object operation, idempotent) runs once over
the accumulated result instead of once per group and step, which on CUDA without sam2's
extension also removes a device-to-host sync per step.

Modules: :mod:`vrshq.model.sam2_video_features` holds the per-video features, :mod:`vrshq.model.sam2_lockstep`
the lockstep path; this module the grouped path and :func:`track_objects`, which picks one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from vrshq.model.sam2_lockstep import (
    insert_keyframe_masks,
    lockstep_is_exact,
    memory_reach,
    track_from_memory,
    track_lockstep,
)
from vrshq.model.sam2_model import VrshqSam2, fill_holes
from vrshq.model.sam2_video_features import FrameInputs, MemoryPlacement, TrackResult, VideoFeatures, expand_rows

__all__ = ["ObjectGroupMemory", "track_objects"]

logger = logging.getLogger(__name__)

# Low-res frames per hole-filling call on the accumulated result (bounded temporary memory).
_FILL_CHUNK = 256


@dataclasses.dataclass
class ObjectGroupMemory:
    """Memory bank of the objects that share one keyframe, in one tracking direction.

    ``output_dict`` is the structure ``SAM2Base.track_step`` reads
    (``{"cond_frame_outputs": {t: out}, "non_cond_frame_outputs": {t: out}}``, each ``out``
    with ``maskmem_features`` (B, C_mem, h, w), ``maskmem_pos_enc`` and ``obj_ptr`` (B, D)).
    ``result_index`` caches ``object_indices`` as a tensor on the result's device.
    """

    object_indices: list[int]
    keyframe: int
    output_dict: dict[str, dict[int, dict[str, Any]]] = dataclasses.field(
        default_factory=lambda: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    )
    maskmem_pos_enc: list[torch.Tensor] | None = None
    result_index: torch.Tensor | None = None

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
        if self.maskmem_pos_enc is None:
            # one shared copy per bank, kept on the compute device (it is read every step)
            self.maskmem_pos_enc = list(out["maskmem_pos_enc"])
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        placement = MemoryPlacement(memory_dtype, memory_device)
        self.output_dict[key][frame_idx] = placement.entry(out, self.maskmem_pos_enc)

    def prune(self, frame_idx: int, *, reach: int, reverse: bool) -> None:
        """Drop non-conditioning memories that no later frame of this pass can read.

        After ``frame_idx``, the next frame reads at most ``reach`` frames back, i.e. frames
        ``frame_idx - reach + 1 .. frame_idx`` (mirrored when tracking backward).
        """
        non_cond = self.output_dict["non_cond_frame_outputs"]
        for t in list(non_cond):
            if (t <= frame_idx - reach) if not reverse else (t >= frame_idx + reach):
                del non_cond[t]


def _insert_keyframe_mask(
    model: VrshqSam2,
    frame_inputs: FrameInputs,
    group: ObjectGroupMemory,
    masks: torch.Tensor,
    *,
    num_frames: int,
    memory: MemoryPlacement,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``add_new_mask`` + the memory encoding of ``propagate_in_video_preflight``, batched (the mask
    is the output as is, no memory is read: the same computation as :func:`insert_keyframe_masks`)."""
    keyframes = torch.full((len(group.object_indices),), group.keyframe, dtype=torch.long)
    out = insert_keyframe_masks(model, frame_inputs, keyframes, masks, num_frames=num_frames)
    pred = out["pred_masks"]
    group.store(group.keyframe, out, is_cond=True, memory_dtype=memory.dtype, memory_device=memory.device)
    return pred, out["object_score_logits"]


def _layouts_depend_only_on_distance(model: VrshqSam2) -> bool:
    """Whether a track step's memory layout depends only on the distance to the keyframe.

    True for the VRS-HQ settings: no temporal encoding of object pointers (so the keyframe's
    pointer position is irrelevant) and all conditioning frames attended. Then two groups
    that are both more than ``memory_reach`` frames past their keyframes read memories of
    identical layout (keyframe + the same recent frames and pointers) and can be batched.
    """
    return not model.add_tpos_enc_to_obj_ptrs and model.max_cond_frames_in_attn == -1


def _layout(group: ObjectGroupMemory) -> tuple[int, ...] | None:
    """The non-conditioning frames a bank holds, or None if it cannot be merged at all.

    A mergeable bank has exactly one conditioning entry (its keyframe, outside the window).
    """
    if len(group.output_dict["cond_frame_outputs"]) != 1:
        return None
    return tuple(sorted(group.output_dict["non_cond_frame_outputs"]))


def _concat_banks(groups: list[ObjectGroupMemory], *, reverse: bool) -> ObjectGroupMemory:
    """One batched bank from banks of identical layout (entries concatenated over objects).

    The merged conditioning entry is stored under the earliest keyframe (latest when tracking
    backward): sam2 only uses that key to keep past pointers
    (``only_obj_ptrs_in_the_past_for_eval``), which holds for every merged keyframe.
    """
    key = max(g.keyframe for g in groups) if reverse else min(g.keyframe for g in groups)
    merged = ObjectGroupMemory(
        object_indices=[obj for g in groups for obj in g.object_indices], keyframe=key
    )
    merged.maskmem_pos_enc = [
        torch.cat(levels) for levels in zip(*(g.maskmem_pos_enc for g in groups))
    ]
    if all(g.result_index is not None for g in groups):
        merged.result_index = torch.cat([g.result_index for g in groups])

    def cat_entries(entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "maskmem_features": torch.cat([e["maskmem_features"] for e in entries]),
            "maskmem_pos_enc": merged.maskmem_pos_enc,
            "obj_ptr": torch.cat([e["obj_ptr"] for e in entries]),
            "object_score_logits": torch.cat([e["object_score_logits"] for e in entries]),
        }

    conds = [next(iter(g.output_dict["cond_frame_outputs"].values())) for g in groups]
    merged.output_dict["cond_frame_outputs"][key] = cat_entries(conds)
    for t in _layout(groups[0]) or ():
        entries = [g.output_dict["non_cond_frame_outputs"][t] for g in groups]
        merged.output_dict["non_cond_frame_outputs"][t] = cat_entries(entries)
    return merged


def _merge_saturated(
    groups: list[ObjectGroupMemory], *, reverse: bool
) -> list[ObjectGroupMemory]:
    """Merge the banks of saturated groups whose layouts are identical; return the new groups.

    By construction all saturated banks have the same layout (module docstring). Should that
    ever not hold, the banks that differ are returned unmerged: tracking them separately is
    exact, merging them would not be, and failing would kill the user's video job.
    """
    by_layout: dict[tuple[int, ...] | None, list[ObjectGroupMemory]] = {}
    for group in groups:
        by_layout.setdefault(_layout(group), []).append(group)
    out: list[ObjectGroupMemory] = []
    for layout, members in by_layout.items():
        if layout is None or len(members) == 1:
            out.extend(members)
        else:
            out.append(_concat_banks(members, reverse=reverse))
    return out


def _wait_for_offloaded_memory(memory_device: torch.device, compute_device: torch.device) -> None:
    """Finish pending device-to-host copies of offloaded memory before the CPU reads it.

    ``store`` offloads with ``non_blocking=True`` (the copy overlaps the next steps); sam2
    reads such memory back on the same stream, which is ordered, but the merge concatenates
    it on the CPU. Merges are rare (at most one per group and direction), so a sync is cheap.
    """
    if memory_device.type == "cpu" and compute_device.type == "cuda":
        torch.cuda.synchronize(compute_device)


def _propagate_direction(
    model: VrshqSam2,
    frame_inputs: FrameInputs,
    groups: list[ObjectGroupMemory],
    keyframe_masks: torch.Tensor,
    result: TrackResult,
    *,
    num_frames: int,
    reverse: bool,
    memory: MemoryPlacement,
) -> None:
    """One pass (forward or backward) of every group from its keyframe, raw logits recorded."""
    reach = memory_reach(model)
    for group in groups:
        pred, scores = _insert_keyframe_mask(
            model, frame_inputs, group, keyframe_masks[group.object_indices],
            num_frames=num_frames, memory=memory,
        )
        _record(result, group, group.keyframe, pred, scores)
    if reverse:
        order = range(max(g.keyframe for g in groups) - 1, -1, -1)
    else:
        order = range(min(g.keyframe for g in groups) + 1, num_frames)
    groups = list(groups)
    can_merge = _layouts_depend_only_on_distance(model)
    warned = False
    for frame_idx in order:
        active = [g for g in groups if (frame_idx < g.keyframe if reverse else frame_idx > g.keyframe)]
        if not active:
            continue
        if can_merge:
            # groups whose whole reach lies after (before) their keyframe share one layout
            saturated = [g for g in active if abs(frame_idx - g.keyframe) > reach]
            if len(saturated) > 1:
                _wait_for_offloaded_memory(memory.device, frame_inputs.device)
                merged = _merge_saturated(saturated, reverse=reverse)
                if len(merged) > 1 and not warned:
                    warned = True
                    logger.warning(
                        "internal inconsistency: memory banks of groups %s (keyframes %s) at frame "
                        "%d (reverse=%s) differ in layout; tracking them separately (exact, slower)",
                        [g.object_indices for g in merged], [g.keyframe for g in merged],
                        frame_idx, reverse,
                    )
                if len(merged) < len(saturated):
                    gone = {id(g) for g in saturated}
                    groups = [g for g in groups if id(g) not in gone] + merged
                    active = [g for g in active if id(g) not in gone] + merged
        feats1, pos1, sizes = frame_inputs(frame_idx)  # moved and flattened once for all groups
        for group in active:
            num = len(group.object_indices)
            out = track_from_memory(model, group.output_dict, expand_rows(feats1, num), expand_rows(pos1, num), sizes,
                                    frame_idx=frame_idx, num_frames=num_frames, reverse=reverse)
            group.store(frame_idx, out, is_cond=False, memory_dtype=memory.dtype, memory_device=memory.device)
            group.prune(frame_idx, reach=reach, reverse=reverse)
            # hole filling of tracked frames happens once on the whole result (track_objects)
            _record(result, group, frame_idx, out["pred_masks"], out["object_score_logits"])


def _record(
    result: TrackResult,
    group: ObjectGroupMemory,
    frame_idx: int,
    pred: torch.Tensor,
    scores: torch.Tensor,
) -> None:
    device = result.low_res_logits.device
    if group.result_index is None:
        group.result_index = torch.as_tensor(group.object_indices, dtype=torch.long, device=device)
    idx = group.result_index
    result.low_res_logits[idx, frame_idx] = pred[:, 0].float().to(device)
    result.object_score_logits[idx, frame_idx] = scores[:, 0].float().to(device)


def _fill_holes_in_place(model: VrshqSam2, logits: torch.Tensor) -> None:
    """Hole filling (eval mode) on (E, T, h, w) logits, in chunks of frames.

    Equal to filling each tracked frame's output right after its step: the filling is per
    object and frame, and idempotent (the components it leaves are larger than the area), so
    the keyframes, already filled before their memory was encoded, do not change.
    """
    if model.fill_hole_area <= 0 or model.training:
        return
    flat = logits.view(-1, 1, *logits.shape[-2:])
    for start in range(0, flat.shape[0], _FILL_CHUNK):
        part = flat[start : start + _FILL_CHUNK]
        part.copy_(fill_holes(part, model.fill_hole_area))


def track_objects(
    model: VrshqSam2,
    features: VideoFeatures,
    keyframe_idx: list[int],
    keyframe_masks: torch.Tensor,
    *,
    memory_dtype: torch.dtype | None = None,
    memory_device: torch.device | None = None,
    output_device: torch.device | None = None,
    project_memory_once: bool = True,
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
        project_memory_once: In lockstep tracking, project each memory frame's attention keys and
            values once (``vrshq.model.projected_memory``; same result up to rounding) instead of
            at every frame that reads it as stock SAM2 does. Ignored when memory is offloaded.

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
    # Inference only (the stock predictor also runs under inference_mode): less per-op
    # bookkeeping than no_grad. The result tensors are made outside, so callers get ordinary
    # tensors; only the memory banks, local to this call, are inference tensors.
    with torch.inference_mode():
        _track_into(model, features, by_keyframe, masks, result,
                    memory=MemoryPlacement(memory_dtype, memory_device, project_memory_once))
    return result


def _track_into(
    model: VrshqSam2,
    features: VideoFeatures,
    by_keyframe: dict[int, list[int]],
    masks: torch.Tensor,
    result: TrackResult,
    *,
    memory: MemoryPlacement,
) -> None:
    """Both passes of :func:`track_objects` and the hole filling, written into ``result``."""
    num_frames = features.num_frames
    if lockstep_is_exact(model):
        keyframe_idx = [0] * sum(len(objs) for objs in by_keyframe.values())
        for k, objs in by_keyframe.items():
            for obj in objs:
                keyframe_idx[obj] = k
        track_lockstep(model, features, keyframe_idx, masks, result, memory=memory)
        _fill_holes_in_place(model, result.low_res_logits)
        return
    frame_inputs = FrameInputs(model, features)
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
                model, frame_inputs, groups, masks, result, num_frames=num_frames,
                reverse=reverse, memory=memory,
            )
    _fill_holes_in_place(model, result.low_res_logits)
