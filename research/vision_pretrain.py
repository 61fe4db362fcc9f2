"""Pretraining of the MLLM's vision tower on synthetic frames: what CLIP pretraining gives the real tower.

Why: VRS-HQ freezes a pretrained CLIP ViT; its patch features say what is where, so the DPC-KNN cluster
means the LLM reads still tell where each object is in each frame, and reasoning over motion ("the shape
that moves the fastest") is possible. A *random* tiny tower keeps almost nothing of a patch's position:
measured on the learnability model, a linear probe recovers the (row, column) of a patch from its features
with R^2 0.15 / 0.09, and stage-1 training that also trains the tower (``--vision-trainable``) did not fix it
(reasoning J&F stayed at 0.41-0.45 in every variant). This stage trains the tower, with a linear head that is
thrown away, to say per patch where it is and what covers it (colour, shape and size of the object with
most of the patch, or background); the method then freezes the tower as it freezes CLIP. Measured: the
probe's R^2 goes from 0.06 to 0.86 in 600 steps, but stage 1 on such a tower did not reason better in 1,112
steps, and a grounding probe learnt referring expressions more slowly on it (docs/research/learnability.md, "What limits
reasoning"); hence off by default.

Folder (``folder``): :data:`WEIGHTS_FILE` (the tower's state dict, float32) and :data:`SUMMARY_FILE` (config,
steps, seconds, loss, and the probe before and after). A complete folder is loaded, not trained again; the
stage is short (seconds on a GPU, a few minutes on a CPU), so an incomplete one starts again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.training.train_loop import build_scheduler
from research.aux_heads import throwaway_linear_head
from research.config import VisionPretrainConfig
from research.stage_files import read_json_if_exists
from vrshq.data.synthetic import COLOURS, SHAPES, SIZES, SyntheticVideo, generate_synthetic_video
from vrshq.model.token_merging import dpc_knn_cluster, merge_clusters
from vrshq.model.vision import VisualTokenizer
from vrshq.vision_config import effective_knn_k
from vrshq.storage import write_json

__all__ = [
    "SUMMARY_FILE",
    "WEIGHTS_FILE",
    "PatchTargets",
    "load_pretrained_tower",
    "merged_token_position_r2",
    "patch_targets",
    "pretrain_vision_tower",
    "read_summary",
]

WEIGHTS_FILE = "tower.safetensors"
SUMMARY_FILE = "vision.json"
_LOG = logging.getLogger(__name__)
_COLOURS = tuple(COLOURS)
_MIN_COVER = 0.25  # a patch belongs to the object that covers at least this share of it (else background)


@dataclass(frozen=True)
class PatchTargets:
    """Per-patch targets of a batch of frames: class ids (0 = background, else attribute index + 1) and the
    patch centre in [-1, 1]. Shapes: ``colour``, ``shape``, ``size`` ``(N, P)`` long; ``position`` ``(P, 2)``."""

    colour: Tensor
    shape: Tensor
    size: Tensor
    position: Tensor


def patch_targets(video: SyntheticVideo, grid: int) -> PatchTargets:
    """Targets of every frame of ``video`` on a ``grid x grid`` patch grid (the tower's, over the whole frame).

    A patch takes the attributes of the visible object that covers most of it, if that is at least a quarter
    of the patch; otherwise it is background.
    """
    masks = torch.from_numpy(video.object_masks).float()  # (O, T, H, W)
    cover = F.adaptive_avg_pool2d(masks, grid).flatten(2)  # (O, T, P)
    best, owner = cover.max(dim=0)  # (T, P)
    present = best >= _MIN_COVER
    ids = {
        "colour": [_COLOURS.index(o.colour) + 1 for o in video.objects],
        "shape": [SHAPES.index(o.shape) + 1 for o in video.objects],
        "size": [SIZES.index(o.size) + 1 for o in video.objects],
    }
    out = {name: torch.where(present, torch.tensor(values)[owner], 0) for name, values in ids.items()}
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    position = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    return PatchTargets(out["colour"], out["shape"], out["size"], position)


def _batches(cfg: VisionPretrainConfig, *, seed: int, num_frames: int, size: int, grid: int) -> Iterator:
    """(frames uint8 (N, H, W, 3), targets) of ``cfg.videos_per_step`` new synthetic videos per step."""
    video_id = 0
    while True:
        frames, targets = [], []
        for _ in range(cfg.videos_per_step):
            video = generate_synthetic_video(np.random.default_rng([seed, 4, video_id]), num_frames=num_frames,
                                             height=size, width=size)
            video_id += 1
            frames.append(video.frames)
            targets.append(patch_targets(video, grid))
        yield np.concatenate(frames), PatchTargets(
            *(torch.cat([getattr(t, n) for t in targets]) for n in ("colour", "shape", "size")), targets[0].position
        )


def merged_token_position_r2(vision: VisualTokenizer, frames: np.ndarray) -> float:
    """Linear-probe R^2 (mean of row and column) of the centroid of each first-level DPC-KNN cluster from the
    cluster's mean feature: how well the tokens the LLM reads still say where things are (3/4 fit, 1/4 scored)."""
    with torch.no_grad():
        patches = vision.encode_patches(vision.preprocess(torch.from_numpy(frames))).float().cpu()
    num_frames, num_patches, _ = patches.shape
    grid = int(round(num_patches**0.5))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    position = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()
    clusters = vision.cfg.merge.cluster_counts[0]
    k = effective_knn_k(vision.cfg.merge.knn_k[0], clusters)  # the first merge level exactly as the LLM gets it
    labels = dpc_knn_cluster(patches, num_clusters=clusters, k=k).labels
    x = merge_clusters(patches, labels, clusters).reshape(-1, patches.shape[-1]).double()  # the tokens' features
    y = merge_clusters(position.expand(num_frames, -1, -1), labels, clusters).reshape(-1, 2).double()  # centroids
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    fit = len(x) * 3 // 4
    weights = torch.linalg.solve(x[:fit].T @ x[:fit] + 1e-3 * torch.eye(x.shape[1], dtype=x.dtype), x[:fit].T @ y[:fit])
    residual = ((x[fit:] @ weights - y[fit:]) ** 2).sum(0)
    total = ((y[fit:] - y[fit:].mean(0)) ** 2).sum(0)
    return float((1 - residual / total).mean())


def pretrain_vision_tower(
    vision: VisualTokenizer, cfg: VisionPretrainConfig, *, seed: int, folder: str, num_frames: int, size: int
) -> dict:
    """Train ``vision``'s tower (stage V) into ``folder``, or load it when ``folder`` holds a complete run.

    The tower is frozen again afterwards (the method's frozen CLIP). Returns the summary (:data:`SUMMARY_FILE`).
    Uses its own random generator, so the global RNG (and with it every later stage) is unchanged.
    """
    summary = read_summary(folder)
    if summary and summary.get("complete"):
        load_pretrained_tower(vision, folder)
        _LOG.info("vision tower stage already complete in %s (%d steps): loaded its tower", folder, summary["steps"])
        return summary
    os.makedirs(folder, exist_ok=True)
    device = vision.projector.weight.device
    grid = vision.cfg.image_size // vision.cfg.patch_size
    probe_frames = np.concatenate([
        generate_synthetic_video(np.random.default_rng([seed, 5, i]), num_frames=num_frames, height=size,
                                 width=size).frames for i in range(cfg.probe_videos)
    ])
    r2_before = merged_token_position_r2(vision, probe_frames)
    heads = {"colour": len(_COLOURS) + 1, "shape": len(SHAPES) + 1, "size": len(SIZES) + 1}
    head = throwaway_linear_head(vision.cfg.hidden_size, sum(heads.values()) + 2, seed=seed, device=device)
    vision.set_tower_trainable(True)
    params = [p for p in vision.vision_tower.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    schedule = build_scheduler(optimizer, warmup_steps=cfg.warmup_steps, decay_steps=cfg.steps)
    started = time.perf_counter()
    losses: list[float] = []
    batches = _batches(cfg, seed=seed, num_frames=num_frames, size=size, grid=grid)
    for step in range(1, cfg.steps + 1):
        frames, targets = next(batches)
        features = vision.encode_patches(vision.preprocess(torch.from_numpy(frames)))  # (N, P, C)
        logits = head(features.float())
        parts = logits.split([*heads.values(), 2], dim=-1)
        loss = sum(
            F.cross_entropy(part.flatten(0, 1), getattr(targets, name).to(device).flatten())
            for part, name in zip(parts[:3], heads)
        ) + cfg.position_weight * F.mse_loss(parts[3], targets.position.to(device).expand_as(parts[3]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            _LOG.info("vision tower step %d/%d: loss %.4f", step, cfg.steps, float(np.mean(losses[-cfg.log_every:])))
    vision.set_tower_trainable(False)
    r2_after = merged_token_position_r2(vision, probe_frames)
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in vision.vision_tower.state_dict().items()},
              os.path.join(folder, WEIGHTS_FILE))
    summary = {
        "config": asdict(cfg), "complete": True, "steps": cfg.steps, "seconds": time.perf_counter() - started,
        "final_loss": float(np.mean(losses[-cfg.log_every:])),
        "position_r2_before": r2_before, "position_r2_after": r2_after,
    }
    write_json(os.path.join(folder, SUMMARY_FILE), summary)
    _LOG.info("vision tower stage done in %.1fs: position R^2 of the merged tokens %.3f -> %.3f",
              summary["seconds"], r2_before, r2_after)
    return summary


def load_pretrained_tower(vision: VisualTokenizer, folder: str) -> None:
    """Load :data:`WEIGHTS_FILE` of ``folder`` into ``vision``'s tower (which stays frozen)."""
    from safetensors.torch import load_file

    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no pretrained vision tower there (run the vision tower stage first)")
    state = load_file(path)
    missing, unexpected = vision.vision_tower.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ValueError(f"{path}: tower weights do not fit this model (missing {missing}, unexpected {unexpected})")


def read_summary(folder: str) -> dict | None:
    """:data:`SUMMARY_FILE` of ``folder``, or None when there is none."""
    return read_json_if_exists(os.path.join(folder, SUMMARY_FILE))
