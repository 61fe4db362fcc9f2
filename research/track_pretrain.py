"""Tracking pretraining of SAM2 on synthetic videos: the video training the real SAM2 brings with it.

VRS-HQ starts from Meta's SAM2, whose memory path (memory encoder, memory attention, object
pointers) was trained for video object segmentation on SA-V. A SAM2 trained from random init only
by VRS-HQ's losses learns tracking from the method's 3-frame windows, from a keyframe mask that the
still-untrained text path decodes: the learnability run measured that this memory path, given the
*ground-truth* keyframe mask, reaches only J 0.65 on the other frames (docs/research/learnability.md).

This stage gives the tiny SAM2 what SA-V gives the real one: it tracks a target from its ground-truth
mask on the first frame of a window (a mask prompt, inserted the way inference inserts the keyframe)
through the next ``window - 1`` frames with memory, with SAM2's own losses (BCE, DICE, object presence)
on every tracked frame. Windows run forward or backward in time (inference tracks both ways), and
the targets are the synthetic expressions' targets (single objects, groups, occluded objects), so
occlusion and multi-object masks are in the training data. Only ``model.sam2`` trains. The result is a
SAM2 state dict (safetensors) that ``Sam2Config.checkpoint_uri`` and ``research.learnability --sam2-init`` load.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.training.train_loop import build_scheduler
from research.aux_heads import throwaway_linear_head
from research.config import TrackPretrainConfig
from research.stage_files import read_json_if_exists, same_settings
from vrshq.data.synthetic import COLOURS, SHAPES, SIZES, SyntheticVideo, generate_synthetic_video
from vrshq.model.letterbox import letterbox, letterbox_shape
from vrshq.model.losses import dice_loss, object_presence_loss, sigmoid_bce_loss
from vrshq.model.sam2_model import load_sam2_checkpoint

__all__ = [
    "LOG_FILE",
    "STATE_FILE",
    "SUMMARY_FILE",
    "TRACK_STREAM",
    "WEIGHTS_FILE",
    "TrackClip",
    "TrackPretrainConfig",
    "attribute_loss",
    "cell_attribute_targets",
    "pretrain_tracking",
    "read_summary",
    "sample_track_clip",
    "track_batch",
    "track_clip_stream",
    "track_losses",
]

_LOG = logging.getLogger("research.track_pretrain")
_COLOURS = tuple(COLOURS)

TRACK_STREAM = 3
"""Seed stream of the tracking videos (``default_rng([seed, TRACK_STREAM, i])``): never a held-out video."""


@dataclass(frozen=True)
class TrackClip:
    """One tracking window: ``frames`` (W, H, W', 3) uint8 in tracking order and the target's
    ``masks`` (W, H, W') bool; frame 0's mask is the prompt. ``object_masks`` (O, W, H, W') bool and
    ``attributes`` (O, 3) int (colour, shape, size indices + 1) describe every object of the window, for the
    per-cell attribute aid (``TrackPretrainConfig.attribute_weight``)."""

    frames: np.ndarray
    masks: np.ndarray
    sample_id: int
    object_masks: np.ndarray | None = None
    attributes: np.ndarray | None = None


def sample_track_clip(video: SyntheticVideo, rng: np.random.Generator, *, window: int, sample_id: int,
                      min_area: int = 4, with_objects: bool = True) -> TrackClip | None:
    """A window of ``video`` that tracks one expression's target (types 0 and 1: single objects,
    groups, occluded objects) from a frame where it is visible (>= ``min_area`` pixels), forward or
    backward in time; None when the video has no such window. ``with_objects=False`` leaves out every
    object's masks and attributes (only the attribute aid reads them; they double a clip's size), with
    the same window drawn."""
    targets = [video.target_masks(e) for e in video.expressions if e.obj_ids]
    if not targets:
        return None
    masks = targets[int(rng.integers(len(targets)))]
    num_frames = len(masks)
    if num_frames < window:
        return None
    visible = masks.reshape(num_frames, -1).sum(1) >= min_area
    starts = [(t, +1) for t in range(num_frames - window + 1) if visible[t]]
    starts += [(t, -1) for t in range(window - 1, num_frames) if visible[t]]
    if not starts:
        return None
    start, step = starts[int(rng.integers(len(starts)))]
    order = np.arange(start, start + step * window, step)
    if not with_objects:
        return TrackClip(frames=video.frames[order], masks=masks[order], sample_id=sample_id)
    attributes = np.array([[_COLOURS.index(o.colour) + 1, SHAPES.index(o.shape) + 1, SIZES.index(o.size) + 1]
                           for o in video.objects], dtype=np.int64)
    return TrackClip(frames=video.frames[order], masks=masks[order], sample_id=sample_id,
                     object_masks=video.object_masks[:, order], attributes=attributes)


def cell_attribute_targets(clips: list[TrackClip], *, image_size: int, grid: int,
                           device: torch.device) -> torch.Tensor:
    """Per cell of a ``grid x grid`` image embedding, the (colour, shape, size) ids of the object covering at least
    half of it (0: background), the objects' masks letterboxed as :func:`track_batch` letterboxes the frames.
    Returns (B, W, grid, grid, 3) long."""
    out = []
    for clip in clips:
        count, window, height, width = clip.object_masks.shape
        resized = letterbox_shape(height, width, image_size)
        masks = torch.from_numpy(clip.object_masks).to(device).float().reshape(count * window, 1, height, width)
        masks = F.interpolate(masks, size=resized, mode="bilinear", align_corners=False)
        masks = F.pad(masks, (0, image_size - resized[1], 0, image_size - resized[0]))
        cover = F.adaptive_avg_pool2d(masks, grid).reshape(count, window, grid, grid)
        best, owner = cover.max(dim=0)
        ids = torch.from_numpy(clip.attributes).to(device)[owner]  # (W, g, g, 3)
        out.append(torch.where((best >= 0.5)[..., None], ids, torch.zeros_like(ids)))
    return torch.stack(out)


_ATTRIBUTE_CLASSES = (len(COLOURS) + 1, len(SHAPES) + 1, len(SIZES) + 1)


def attribute_loss(head: torch.nn.Module, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over colour, shape and size of the cross-entropy of ``head`` on every cell of ``embeddings``
    (B, W, C, g, g) against ``targets`` (B, W, g, g, 3) from :func:`cell_attribute_targets`."""
    logits = head(embeddings.float().permute(0, 1, 3, 4, 2)).flatten(0, 3)
    flat = targets.flatten(0, 3)
    return sum(F.cross_entropy(part, flat[:, k]) for k, part in enumerate(logits.split(_ATTRIBUTE_CLASSES, dim=-1)))


def track_clip_stream(*, seed: int, start_sample: int, window: int, num_frames: int, size: int,
                      stride: int = 1, offset: int = 0, with_objects: bool = True) -> Iterator[TrackClip]:
    """Windows ``start_sample + offset, + stride, ...``: window ``s`` comes from synthetic video
    ``default_rng([seed, TRACK_STREAM, s])`` (never repeated, never a held-out video); ``with_objects``
    as in :func:`sample_track_clip`."""
    sample_id = start_sample + offset
    while True:
        rng = np.random.default_rng([seed, TRACK_STREAM, sample_id])
        video = generate_synthetic_video(rng, num_frames=num_frames, height=size, width=size)
        clip = sample_track_clip(video, rng, window=window, sample_id=sample_id, with_objects=with_objects)
        if clip is not None:
            yield clip
        sample_id += stride


def track_batch(clips: list[TrackClip], *, image_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Letterboxed frames (B, W, 3, S, S) and masks (B, W, S, S) float (1 inside the target,
    resized into the letterbox's valid region, 0 in the padding)."""
    batch, window = len(clips), len(clips[0].frames)
    frames = torch.from_numpy(np.stack([c.frames for c in clips])).to(device)
    height, width = frames.shape[2:4]
    images = letterbox(frames.reshape(batch * window, height, width, 3), image_size=image_size).images
    resized = letterbox_shape(height, width, image_size)
    masks = torch.from_numpy(np.stack([c.masks for c in clips])).to(device).float()
    masks = F.interpolate(masks.reshape(batch * window, 1, height, width), size=resized, mode="bilinear",
                          align_corners=False) >= 0.5
    masks = F.pad(masks.float(), (0, image_size - resized[1], 0, image_size - resized[0]))
    return (images.reshape(batch, window, *images.shape[1:]),
            masks.reshape(batch, window, image_size, image_size))


def track_losses(logits: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor,
                 cfg: TrackPretrainConfig) -> dict[str, torch.Tensor]:
    """SAM2's training losses on the tracked frames (position 0 is the prompt, not scored).

    BCE and DICE (per mask, as :func:`vrshq.model.losses.mask_losses`) on frames where the target is
    visible; object presence on every tracked frame (hidden: absent).
    """
    logits, scores, masks = logits[:, 1:].flatten(0, 1), scores[:, 1:].flatten(0, 1), masks[:, 1:].flatten(0, 1)
    present = masks.flatten(1).any(1)
    count = present.sum().clamp(min=1)
    bce = sigmoid_bce_loss(logits[present], masks[present]) / count
    dice = dice_loss(logits[present], masks[present]) / count
    obj = object_presence_loss(scores, present.float())
    loss = cfg.bce_weight * bce + cfg.dice_weight * dice + cfg.object_weight * obj
    return {"loss": loss, "bce_loss": bce, "dice_loss": dice, "object_loss": obj}


WEIGHTS_FILE, STATE_FILE, SUMMARY_FILE, LOG_FILE = "sam2.safetensors", "state.pt", "track.json", "log.csv"
"""The stage's folder: SAM2 state dict (``Sam2Config.checkpoint_uri`` loads it), optimiser/schedule/data
position (resume), summary (settings, held-out evaluations, ``complete``) and per-step log."""


def _save(folder: str, segmenter, optimizer, scheduler, cfg: TrackPretrainConfig, rows: list[dict],
          next_sample: int, head: torch.nn.Module | None = None) -> None:
    """Write the stage's files, each by a rename, so a kill leaves the old or the new one whole."""
    from safetensors.torch import save_file

    def replace(name: str, write: Callable[[str], None]) -> None:
        tmp = os.path.join(folder, name + ".tmp")
        write(tmp)
        os.replace(tmp, os.path.join(folder, name))

    replace(WEIGHTS_FILE, lambda path: save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in segmenter.sam2.state_dict().items()}, path))
    replace(STATE_FILE, lambda path: torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                                 "step": len(rows), "next_sample": next_sample,
                                                 "attribute_head": None if head is None else head.state_dict()},
                                                path))

    def write_log(path: str) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)

    def write_summary(path: str) -> None:
        evals = [{"step": r["track_step"], **{k: v for k, v in r.items() if k.startswith("j_")}}
                 for r in rows if any(k.startswith("j_") for k in r)]
        with open(path, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "complete": len(rows) >= cfg.steps, "steps": len(rows),
                       "seconds": sum(r["seconds"] for r in rows), "evaluations": evals}, f, indent=2)

    replace(LOG_FILE, write_log)
    replace(SUMMARY_FILE, write_summary)


def read_summary(folder: str) -> dict | None:
    """The stage's summary in ``folder``, or None when it has none."""
    return read_json_if_exists(os.path.join(folder, SUMMARY_FILE))


def pretrain_tracking(
    model: torch.nn.Module,
    cfg: TrackPretrainConfig,
    batches_from: Callable[[int], Iterator[list[TrackClip]]],
    *,
    folder: str,
    on_eval: Callable[[int], dict] | None = None,
    eval_every: int = 0,
    log_every: int = 25,
    deadline: float | None = None,
) -> bool:
    """Train ``model.sam2`` (every parameter) on tracking windows, saving to ``folder``; True when complete.

    ``batches_from(first_sample)`` yields the batches of clips from sample ``first_sample`` on.
    ``on_eval(step)`` runs every ``eval_every`` steps and at the end (e.g. the held-out J of tracking
    from ground-truth keyframes); the stage is saved after each. ``deadline`` (a ``time.perf_counter()``
    value) stops early. A ``folder`` that holds an incomplete stage of the same settings is resumed
    (weights, optimiser, schedule, data position); a complete one is loaded and returns at once.
    """
    segmenter = model.sam2
    device = segmenter.device
    params = [p for p in segmenter.parameters()]
    for p in params:
        p.requires_grad_(True)
    head = None
    if cfg.attribute_weight > 0:  # the attribute aid's throw-away head; its own generator leaves the global RNG alone
        head = throwaway_linear_head(segmenter.sam2.hidden_dim, sum(_ATTRIBUTE_CLASSES), seed=0, device=device)
        params = params + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = build_scheduler(optimizer, warmup_steps=cfg.warmup_steps, decay_steps=cfg.steps)
    rows: list[dict] = []
    next_sample = 0
    summary = read_summary(folder)
    if same_settings(summary, cfg):  # settings added since the folder was written read as their defaults
        load_sam2_checkpoint(segmenter.sam2, os.path.join(folder, WEIGHTS_FILE))
        if summary["complete"]:
            _LOG.info("tracking stage already complete in %s (%d steps): loaded its SAM2", folder, summary["steps"])
            return True
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=False)
        if head is not None:
            head.load_state_dict(state["attribute_head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        next_sample = int(state["next_sample"])
        with open(os.path.join(folder, LOG_FILE)) as f:
            rows = [{k: int(v) if k == "track_step" else float(v) for k, v in r.items() if v != ""}
                    for r in csv.DictReader(f)][: state["step"]]
        _LOG.info("tracking stage resumed from %s at step %d", folder, len(rows))
    elif summary is not None:
        _LOG.warning("%s holds a tracking stage of other settings: it starts again", folder)
    os.makedirs(folder, exist_ok=True)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    batches = batches_from(next_sample)
    model.train()
    for step in range(len(rows) + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        clips = next(batches)
        t_data = time.perf_counter() - t0
        next_sample = max(next_sample, max(c.sample_id for c in clips) + 1)
        images, masks = track_batch(clips, image_size=segmenter.image_size, device=device)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = segmenter.train_track_forward(images, masks[:, 0] > 0.5)
        terms = track_losses(out.logits, out.object_score_logits, masks, cfg)
        if head is not None:
            grid = out.image_embeddings.shape[-1]
            targets = cell_attribute_targets(clips, image_size=segmenter.image_size, grid=grid, device=device)
            terms["attribute_loss"] = attribute_loss(head, out.image_embeddings, targets)
            terms["loss"] = terms["loss"] + cfg.attribute_weight * terms["attribute_loss"]
        terms["loss"].backward()
        max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if math.isfinite(grad_norm):
            optimizer.step()
        else:
            _LOG.warning("tracking step %d: non-finite gradient norm, update skipped", step)
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row = {"track_step": step, **{k: float(v.detach()) for k, v in terms.items()}, "grad_norm": grad_norm,
               "lr": float(optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - t0,
               "data_seconds": t_data}
        rows.append(row)
        if step % log_every == 0 or step == 1:
            _LOG.info("tracking step %d/%d loss %.4f (bce %.4f dice %.4f obj %.4f attributes %.4f) %.3fs/step "
                      "(data %.3fs)", step, cfg.steps, row["loss"], row["bce_loss"], row["dice_loss"],
                      row["object_loss"], row.get("attribute_loss", float("nan")), row["seconds"], t_data)
        last = step == cfg.steps or (deadline is not None and time.perf_counter() > deadline)
        if (eval_every and step % eval_every == 0) or last:
            if on_eval is not None:
                row.update(on_eval(step))
                model.train()
            _save(folder, segmenter, optimizer, scheduler, cfg, rows, next_sample, head)
        if last:
            break
    return len(rows) >= cfg.steps
