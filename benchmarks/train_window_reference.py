"""The straightforward SAM2 training window (method §5.4), one conditioning-position group at a time.

This was ``Sam2Segmenter.train_window_forward`` before the lockstep version: per conditioning
position c (0, 1, 2 for the method's 3-frame window), decode TAK' on frame c of the group's rows, then
run each pass of ``window_passes(c, W)`` with the stock predictor's real frame indices and direction,
from a fresh memory that holds only the conditioning output. Up to 3 decodes and 6 tracking steps
per batch for W = 3.
It is the reference that ``tests/unit/test_train_window_lockstep.py`` compares the lockstep path
with (values and gradients), and the baseline of ``benchmarks/train_step_speed.py``.
"""
from __future__ import annotations

import torch

from vrshq.model.sam2_segmenter import Sam2Segmenter
from vrshq.model.sam2_train_window import WindowOutput, window_passes

__all__ = ["reference_train_window_forward"]


def reference_train_window_forward(
    seg: Sam2Segmenter, images: torch.Tensor, cond_pos: torch.Tensor, prompt_embeds: torch.Tensor
) -> WindowOutput:
    """Same contract as :meth:`Sam2Segmenter.train_window_forward`."""
    batch, window = images.shape[:2]
    cond_pos = torch.as_tensor(cond_pos, dtype=torch.long).cpu()
    device = seg.device
    flat = images.reshape(batch * window, *images.shape[2:]).to(device).float()
    backbone = seg._forward_image(flat)
    prompt_embeds = prompt_embeds.to(device)

    def frame_out(rows: torch.Tensor, pos: int) -> dict[str, list[torch.Tensor]]:
        sel = (rows * window + pos).to(device)
        return {
            "backbone_fpn": [x.index_select(0, sel) for x in backbone["backbone_fpn"]],
            "vision_pos_enc": [x.index_select(0, sel) for x in backbone["vision_pos_enc"]],
        }

    per_pos: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in range(window)]
    order: list[torch.Tensor] = []
    for cond in range(window):
        rows = (cond_pos == cond).nonzero().flatten()
        if rows.numel() == 0:
            continue
        order.append(rows)
        cond_out = seg._decode_step(
            frame_out(rows, cond), prompt_embeds[rows.to(device)],
            num_frames=window, frame_idx=cond, run_mem_encoder=True,
        )
        per_pos[cond][cond] = (cond_out["pred_masks_high_res"], cond_out["object_score_logits"])
        for reverse, frames in window_passes(cond, window):
            output_dict = {"cond_frame_outputs": {cond: cond_out}, "non_cond_frame_outputs": {}}
            for pos in frames:
                _, feats, pos_enc, sizes = seg.sam2._prepare_backbone_features(frame_out(rows, pos))
                out = seg.sam2.track_step(
                    frame_idx=pos, is_init_cond_frame=False, current_vision_feats=feats,
                    current_vision_pos_embeds=pos_enc, feat_sizes=sizes, point_inputs=None, mask_inputs=None,
                    output_dict=output_dict, num_frames=window, track_in_reverse=reverse,
                    run_mem_encoder=True,
                )
                output_dict["non_cond_frame_outputs"][pos] = out
                per_pos[pos][cond] = (out["pred_masks_high_res"], out["object_score_logits"])
    rows_in_order = torch.cat(order)
    inverse = torch.empty_like(rows_in_order)
    inverse[rows_in_order] = torch.arange(batch)
    inverse = inverse.to(device)
    logits, scores = [], []
    for pos in range(window):
        groups = [per_pos[pos][c] for c in range(window) if c in per_pos[pos]]
        logits.append(torch.cat([g[0][:, 0] for g in groups]).float().index_select(0, inverse))
        scores.append(torch.cat([g[1][:, 0] for g in groups]).float().index_select(0, inverse))
    return WindowOutput(logits=torch.stack(logits, dim=1), object_score_logits=torch.stack(scores, dim=1))
