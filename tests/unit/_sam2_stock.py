"""The stock SAM2VideoPredictor driven as VRS-HQ drives it: the reference our tracking is checked against."""
from __future__ import annotations

import torch


def stock_track(model, video, keyframe: int, mask: torch.Tensor) -> tuple[dict[int, torch.Tensor], dict]:
    """Method §5.3 steps 3-4 with stock sam2: mask prompt on the keyframe, forward pass, then a reset
    state with the mask re-added and a reverse pass. ``video`` is what ``init_state`` takes.

    Returns:
        ``({frame: (S, S) logits}, inference_state)``.
    """
    state = model.init_state(video)
    out: dict[int, torch.Tensor] = {}
    model.add_new_mask(state, keyframe, 1, mask)
    if keyframe < state["num_frames"] - 1 or keyframe == 0:
        for f, _, logits in model.propagate_in_video(state, start_frame_idx=keyframe):
            out[f] = logits[0, 0]
    if keyframe > 0:
        model.reset_state(state)
        model.add_new_mask(state, keyframe, 1, mask)
        for f, _, logits in model.propagate_in_video(state, start_frame_idx=keyframe, reverse=True):
            out.setdefault(f, logits[0, 0])
    return out, state
