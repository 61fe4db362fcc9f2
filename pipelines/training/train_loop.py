"""The training step and its state, shared by the Ray Train worker loop (``pipelines.training.run``) and
the plain single-process loop of ``research.learnability``.

* :func:`build_training_model` - seeded build of the preset (+ optional base weights), train mode.
* :func:`build_optimizer` / :func:`build_scheduler` - AdamW with per-group learning rates and the
  linear warm-up + linear decay of method §6.
* :func:`train_step` - gradient accumulation over micro-batches (DDP ``no_sync`` on all but the
  last), global-norm clipping, one optimiser and scheduler step; returns the loss terms.
* :func:`save_train_checkpoint` / :func:`load_train_checkpoint` - a training checkpoint folder:
  the trainable weights as safetensors (``vrshq.checkpoint``, ``content="trainable"``), the
  optimiser + scheduler state (``optimizer.pt``, tensors only, read with ``weights_only=True``)
  and ``train_state.json`` (step, data position, wall time).
* :func:`validate` - held-out J, F, J&F through the inference path (``VrshqModel.segment_video``
  and ``vrshq.metrics.score_expression``).

Frozen weights (the CLIP towers of a from-scratch model, the base of a LoRA model) are not in a
training checkpoint: a resumed run rebuilds them from the same seed / base checkpoint, and
:func:`export_model` writes the full model that ``jobs.infer`` loads.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipelines.training.train_config import ModelSpec, OptimConfig, model_config_from_spec

if TYPE_CHECKING:
    import torch

__all__ = [
    "EvalVideo",
    "ExtraLoss",
    "LossTerm",
    "OPTIMIZER_NAME",
    "TRAIN_STATE_NAME",
    "TrainState",
    "VALIDATION_NAME",
    "build_optimizer",
    "build_scheduler",
    "build_training_model",
    "export_model",
    "load_eval_videos",
    "load_train_checkpoint",
    "loss_only_forward",
    "lr_factor",
    "param_group_name",
    "save_train_checkpoint",
    "train_step",
    "validate",
]

_LOG = logging.getLogger(__name__)

OPTIMIZER_NAME = "optimizer.pt"
TRAIN_STATE_NAME = "train_state.json"
VALIDATION_NAME = "validation.json"
_TEXT_PREFIXES = ("mllm.", "seg_head.", "vision.projector.")


@dataclass(frozen=True)
class TrainState:
    """Where a run is.

    Attributes:
        step: optimiser steps done.
        next_sample_id: data position: the first sample id not yet trained on (clip sampling is a
            pure function of the sample id, ``pipelines.training.clip_sampling``).
        wall_seconds: training time so far (all attempts).
    """

    step: int = 0
    next_sample_id: int = 0
    wall_seconds: float = 0.0


# ------------------------------------------------------------------------------------ model


def build_training_model(spec: ModelSpec, *, device: torch.device | str | None = None):
    """Build the preset of ``spec`` with ``torch.manual_seed(spec.seed)`` (every worker and every
    resumed attempt gets identical frozen weights), load ``spec.init_checkpoint`` if given, and put
    it in train mode on ``device``."""
    import torch

    from vrshq.builders import build_vrshq

    cfg = model_config_from_spec(spec)
    torch.manual_seed(spec.seed)
    model = build_vrshq(cfg, device=device)
    if spec.init_checkpoint is not None:
        from vrshq.checkpoint.load import load_vrshq_checkpoint

        # A base checkpoint has no LoRA adapters: they keep their (seeded) init.
        load_vrshq_checkpoint(model, spec.init_checkpoint, ignore_missing=(r".*\.lora_[AB]\.",))
    return model.train()


def param_group_name(name: str) -> str:
    """``"sam2"`` for SAM2 parameters, ``"text"`` for the text path (LLM, seg head, projector),
    ``"other"`` for the rest (docs/research/learnability.md: they need different learning rates from scratch)."""
    if name.startswith("sam2."):
        return "sam2"
    if name.startswith(_TEXT_PREFIXES):
        return "text"
    return "other"


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, one group per :func:`param_group_name` (method §6 values;
    ``sam2_lr``/``text_lr`` override ``lr`` for their group)."""
    import torch

    lrs = {"sam2": optim.sam2_lr or optim.lr, "text": optim.text_lr or optim.lr, "other": optim.lr}
    groups: dict[str, list] = {"sam2": [], "text": [], "other": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[param_group_name(name)].append(param)
    param_groups = [{"params": p, "lr": lrs[g], "name": g} for g, p in groups.items() if p]
    if not param_groups:
        raise ValueError("the model has no trainable parameter (ModelSpec.trainable)")
    return torch.optim.AdamW(param_groups, betas=optim.betas, weight_decay=optim.weight_decay)


def lr_factor(step: int, *, warmup_steps: int, decay_steps: int | None) -> float:
    """Learning-rate multiplier of optimiser step ``step`` (0-based): linear warm-up reaching 1 at
    step ``warmup_steps - 1``, then linear decay to 0 at ``decay_steps`` (DeepSpeed WarmupDecayLR
    with linear warm-up, method §6); ``decay_steps=None`` holds 1 after the warm-up (a schedule that
    does not depend on the run's length, so a longer run continues a shorter one unchanged).

    >>> [round(lr_factor(s, warmup_steps=4, decay_steps=10), 3) for s in (0, 3, 4, 7, 10, 12)]
    [0.25, 1.0, 1.0, 0.5, 0.0, 0.0]
    >>> [lr_factor(s, warmup_steps=4, decay_steps=None) for s in (0, 3, 4, 1000)]
    [0.25, 1.0, 1.0, 1.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay_steps is None:
        return 1.0
    if decay_steps <= warmup_steps:
        return 1.0 if step < decay_steps else 0.0
    return max(0.0, (decay_steps - step) / (decay_steps - warmup_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, *, warmup_steps: int, decay_steps: int | None):
    """``LambdaLR`` of :func:`lr_factor` (stepped once per optimiser step)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps=warmup_steps, decay_steps=decay_steps)
    )


# ------------------------------------------------------------------------------------- step


def loss_only_forward(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap ``model`` so its forward output keeps the autograd graph only on ``loss``.

    ``VrshqOutput`` also returns unweighted terms (e.g. ``object_loss`` with weight 0) and
    embeddings. DDP with ``find_unused_parameters=True`` walks the graph of *every* output tensor
    and then expects a gradient for each parameter it found, so a term that is returned but not in
    the loss (the object-score head at ``object_weight=0``) breaks the next step. Wrapped, the other
    fields are detached and only the loss graph counts. Wrap before ``DistributedDataParallel``.
    """
    import torch

    class _LossOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, batch: Any) -> Any:
            import dataclasses as dc

            out = self.model(batch)
            detached = {}
            for f in dc.fields(out):
                value = getattr(out, f.name)
                if f.name == "loss":
                    continue
                if isinstance(value, torch.Tensor):
                    detached[f.name] = value.detach()
                elif isinstance(value, tuple):
                    detached[f.name] = tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in value)
            return dc.replace(out, **detached)

    return _LossOnly(model)


class LossTerm(NamedTuple):
    """One extra loss term of a training step: ``weight * value`` joins the loss, ``value`` is reported as ``name``."""

    name: str
    value: torch.Tensor
    weight: float


ExtraLoss = Callable[[Any, Any], LossTerm]
"""``term(out, batch) -> LossTerm``: an extra loss on the forward output ``out`` (``VrshqOutput``) of ``batch``."""


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches: Sequence[Any],
    *,
    clip_grad_norm: float,
    forward_module: torch.nn.Module | None = None,
    extra_losses: Sequence[ExtraLoss] = (),
) -> dict[str, float]:
    """One optimiser step over ``micro_batches`` (``TrainBatch`` each; gradient accumulation).

    Args:
        model: the ``VrshqModel`` (its parameters are clipped and stepped).
        optimizer, scheduler: from :func:`build_optimizer` / :func:`build_scheduler`.
        micro_batches: the step's micro-batches; the loss of each is divided by their number.
        clip_grad_norm: max global gradient norm (0: no clipping; the norm is still reported).
        forward_module: what runs the forward, e.g. the DDP wrapper of ``model`` (gradients are
            all-reduced only on the last micro-batch); default ``model``.
        extra_losses: terms added to the method's loss, each ``term(out, batch) -> LossTerm`` on the forward
            output of every micro-batch (none: the method's losses alone). A term that reads a field
            other than ``loss`` needs its graph, so ``forward_module`` must then not be a
            :func:`loss_only_forward` wrapper.

    Returns:
        Mean loss terms over the micro-batches (``loss`` is the method's; each extra term's unweighted
        value under its name), the pre-clipping gradient norm, the learning rates used and the number of
        expressions (``num_expressions``).
    """
    import torch

    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    runner = forward_module if forward_module is not None else model
    model.train()
    optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "ce_loss": 0.0, "bce_loss": 0.0, "dice_loss": 0.0, "object_loss": 0.0}
    num_expressions = 0
    n = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        sync = i == n - 1 or not hasattr(runner, "no_sync")
        with contextlib.nullcontext() if sync else runner.no_sync():
            out = runner(batch)
            loss = out.loss
            for extra in extra_losses:
                term = extra(out, batch)
                loss = loss + term.weight * term.value
                totals[term.name] = totals.get(term.name, 0.0) + float(term.value.detach()) / n
            (loss / n).backward()
        for key in ("loss", "ce_loss", "bce_loss", "dice_loss", "object_loss"):
            totals[key] += float(getattr(out, key).detach()) / n
        num_expressions += batch.num_expressions
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = clip_grad_norm if clip_grad_norm > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    lrs = {f"lr_{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
    if math.isfinite(grad_norm):
        optimizer.step()
    else:  # a non-finite gradient would poison the weights: skip the update, keep the schedule
        _LOG.warning("non-finite gradient norm %s: optimiser step skipped", grad_norm)
    scheduler.step()
    return {**totals, "grad_norm": grad_norm, **lrs, "num_expressions": float(num_expressions)}


# ------------------------------------------------------------------------------ checkpoints


def save_train_checkpoint(
    folder: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write a training checkpoint into ``folder`` (local or fsspec URI; must not hold one yet)."""
    import io

    import torch

    from pipelines.io.storage import filesystem_for, join_uri, write_json
    from vrshq.checkpoint.save import save_vrshq_checkpoint

    save_vrshq_checkpoint(model, folder, storage_options=storage_options, trainable_only=True, tokenizer=None)
    fs, root = filesystem_for(folder, storage_options)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    with fs.open(f"{root.rstrip('/')}/{OPTIMIZER_NAME}", "wb") as f:
        f.write(buffer.getvalue())
    write_json(join_uri(folder, TRAIN_STATE_NAME), asdict(state), storage_options)  # last: marks the checkpoint complete


def load_train_checkpoint(
    folder: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> TrainState:
    """Restore a folder written by :func:`save_train_checkpoint` into a freshly built model (and the
    optimiser/scheduler if given); returns its :class:`TrainState`.

    Raises:
        vrshq.checkpoint.weight_files.CheckpointMismatchError: a trainable key is missing, a key is unknown
            or a shape differs (the run's model config changed).
    """
    import io

    import torch

    from pipelines.io.storage import filesystem_for
    from vrshq.checkpoint.load import load_vrshq_checkpoint
    from vrshq.checkpoint.weight_files import CheckpointMismatchError

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    report = load_vrshq_checkpoint(model, folder, storage_options=storage_options, strict=False)
    missing = sorted(set(report.missing) & trainable)
    if missing or report.unexpected or report.mismatched:
        raise CheckpointMismatchError(
            folder, missing=missing, unexpected=list(report.unexpected), mismatched=list(report.mismatched)
        )
    fs, root = filesystem_for(folder, storage_options)
    root = root.rstrip("/")
    if optimizer is not None or scheduler is not None:
        with fs.open(f"{root}/{OPTIMIZER_NAME}", "rb") as f:
            blob = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        if optimizer is not None:
            optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(blob["scheduler"])
    with fs.open(f"{root}/{TRAIN_STATE_NAME}", "r") as f:
        return TrainState(**json.load(f))


def export_model(
    model: torch.nn.Module,
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = True,
) -> Any:
    """Write the full model (config, every weight, tokenizer) where ``jobs.infer --checkpoint``
    loads it; LoRA adapters are merged so the model builds without peft. ``dtype`` (e.g. bf16)
    shrinks the file; loading casts back to the model's dtype."""
    from vrshq.checkpoint.save import save_vrshq_checkpoint
    from vrshq.model.trainable import has_lora

    merge = has_lora(model)
    cfg = model.cfg
    if merge:  # the merged model has no adapters: build it inference-only
        import dataclasses

        cfg = dataclasses.replace(cfg, trainable=dataclasses.replace(cfg.trainable, mode="none"))
    return save_vrshq_checkpoint(
        model, uri, storage_options=storage_options, config=cfg, merge_lora=merge, dtype=dtype, overwrite=overwrite
    )


# ------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class EvalVideo:
    """A held-out video with the expressions to score.

    Attributes:
        video_id: the video.
        frames: uint8 (T, H, W, 3).
        expressions: E texts.
        masks: E bool (T, H, W) targets.
        type_ids: E type ids (0 referring, 1 reasoning).
    """

    video_id: str
    frames: np.ndarray
    expressions: tuple[str, ...]
    masks: tuple[np.ndarray, ...]
    type_ids: tuple[int, ...]


def load_eval_videos(
    records: Iterable[Any],
    *,
    expression_types: Sequence[int] = (0, 1),
    storage_options: Mapping[str, Any] | None = None,
    max_videos: int | None = None,
) -> list[EvalVideo]:
    """Decode held-out ``VideoRecord``s (all frames) and the targets of their scored expressions."""
    from vrshq.data import load_expression_masks, load_frames, load_mask_dict

    out: list[EvalVideo] = []
    mask_dicts: dict[str, Any] = {}
    for record in records:
        exprs = [e for e in record.expressions if e.type_id in expression_types]
        if not exprs:
            continue
        if max_videos is not None and len(out) >= max_videos:
            break
        frames = load_frames(record, storage_options=storage_options)
        if record.mask_dict_uri not in mask_dicts:
            mask_dicts[record.mask_dict_uri] = load_mask_dict(record.mask_dict_uri, storage_options=storage_options)
        masks = tuple(
            load_expression_masks(
                record, e, storage_options=storage_options, mask_dict=mask_dicts[record.mask_dict_uri],
                frame_size=frames.shape[1:3],
            )
            for e in exprs
        )
        texts, types = tuple(e.text for e in exprs), tuple(e.type_id for e in exprs)
        out.append(EvalVideo(record.video_id, frames, texts, masks, types))
    return out


#: Keyframe J below which :func:`validate` counts an expression as grounded on the wrong object.
WRONG_KEYFRAME_J = 0.3


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks over all their frames; 1 when both are empty (the same "no object")."""
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 1.0


def true_keyframe_tracking_j(model: torch.nn.Module, videos: Sequence[EvalVideo]) -> list[float]:
    """Per expression, J of SAM2's memory path alone: the ground-truth mask of the expression's
    largest-area frame is inserted as the keyframe mask (as inference inserts its decoded keyframe)
    and tracked through the video; J is the mean over the other frames.

    Perfect grounding (the right object, a perfect keyframe mask) cannot score above this, so it
    tells a from-scratch run whether its limit is grounding or tracking.
    """
    import torch
    import torch.nn.functional as F

    from vrshq.model.letterbox import letterbox_shape, unletterbox_logits
    from vrshq.model.vrshq_model import eval_mode

    segmenter = model.sam2
    size = segmenter.image_size
    out: list[float] = []
    with eval_mode(model), torch.no_grad():
        for video in videos:
            gts = [np.asarray(mask, dtype=bool) for mask in video.masks]
            height, width = gts[0].shape[1:]
            resized = letterbox_shape(height, width, size)
            keys = [int(gt.reshape(len(gt), -1).sum(1).argmax()) for gt in gts]
            key_masks = torch.zeros(len(gts), size, size, dtype=torch.bool)
            for row, (gt, key) in enumerate(zip(gts, keys)):
                key_mask = torch.from_numpy(gt[key]).float()[None, None]
                key_masks[row, : resized[0], : resized[1]] = F.interpolate(key_mask, size=resized, mode="nearest")[0, 0] > 0
            track = segmenter.track(segmenter.encode_frames(video.frames), keys, key_masks)
            logits = unletterbox_logits(track.low_res_logits, resized_hw=resized, original_hw=(height, width),
                                        image_size=size)
            preds = (logits > 0).cpu().numpy()
            for pred, gt, key in zip(preds, gts, keys):
                others = [t for t in range(len(gt)) if t != key]
                out.append(float(np.mean([_mask_iou(pred[t], gt[t]) for t in others])) if others else 1.0)
    return out


def validate(
    model: torch.nn.Module, videos: Sequence[EvalVideo], *, true_keyframe: bool = False
) -> dict[str, float]:
    """J, F, J&F of ``model`` on held-out videos through ``segment_video`` (eval mode inside).

    Returns:
        ``j``, ``f``, ``jf``: means over all scored expressions; ``jf_referring``/``jf_reasoning``
        (and ``j_*``, ``f_*``): per type when present; ``jf_revos``: the ReVOS overall, the mean of
        the referring and reasoning J&F (method §7; equals ``jf`` with one type);
        ``num_expressions``; ``seconds``; ``pred_pair_iou`` and ``gt_pair_iou``: the mean IoU
        between the predicted (resp. ground-truth) masks of two expressions of one video, over
        all such pairs (NaN without a pair). A model that ignores the expression segments the
        same region for every expression: ``pred_pair_iou`` near 1 while ``gt_pair_iou`` is low.
        ``keyframe_j``: mean J at each expression's chosen keyframe; ``wrong_keyframe_share``: the
        share of expressions whose keyframe J is below ``WRONG_KEYFRAME_J`` (the wrong object was
        found; propagation cannot repair that). Together they split the error into grounding
        (the keyframe) and propagation (J over the video against keyframe J).
        With ``true_keyframe``: also ``j_true_keyframe`` (and per type), the mean of
        :func:`true_keyframe_tracking_j`, the score of tracking alone from ground-truth keyframes.
    """
    from vrshq.metrics import score_expression

    if not videos:
        raise ValueError("validate needs at least one held-out video with a scored expression")
    start = time.perf_counter()
    rows: list[tuple[int, float, float]] = []
    keyframe_j: list[float] = []
    pred_pairs: list[float] = []
    gt_pairs: list[float] = []
    for video in videos:
        results = model.segment_video(video.frames, list(video.expressions))
        preds = [np.asarray(r.masks, dtype=bool) for r in results]
        for result, pred, gt, type_id in zip(results, preds, video.masks, video.type_ids):
            score = score_expression(gt, result.masks)
            rows.append((type_id, float(score.j), float(score.f)))
            key = int(result.keyframe_idx)
            keyframe_j.append(_mask_iou(pred[key], np.asarray(gt[key], dtype=bool)))
        for i in range(len(preds)):
            for j in range(i + 1, len(preds)):
                pred_pairs.append(_mask_iou(preds[i], preds[j]))
                gt_pairs.append(_mask_iou(np.asarray(video.masks[i], bool), np.asarray(video.masks[j], bool)))
    types = np.array([r[0] for r in rows])
    j = np.array([r[1] for r in rows])
    f = np.array([r[2] for r in rows])
    out = {"j": float(j.mean()), "f": float(f.mean()), "jf": float((j.mean() + f.mean()) / 2)}
    per_type = []
    for type_id, label in ((0, "referring"), (1, "reasoning"), (2, "no_target")):
        sel = types == type_id
        if sel.any():
            jt, ft = float(j[sel].mean()), float(f[sel].mean())
            out.update({f"j_{label}": jt, f"f_{label}": ft, f"jf_{label}": (jt + ft) / 2})
            if type_id < 2:
                per_type.append((jt + ft) / 2)
    out["jf_revos"] = float(np.mean(per_type)) if per_type else out["jf"]
    out["pred_pair_iou"] = float(np.mean(pred_pairs)) if pred_pairs else math.nan
    out["gt_pair_iou"] = float(np.mean(gt_pairs)) if gt_pairs else math.nan
    if true_keyframe:
        tracked = np.array(true_keyframe_tracking_j(model, videos))
        out["j_true_keyframe"] = float(tracked.mean())
        for type_id, label in ((0, "referring"), (1, "reasoning")):
            if (types == type_id).any():
                out[f"j_true_keyframe_{label}"] = float(tracked[types == type_id].mean())
    out["keyframe_j"] = float(np.mean(keyframe_j))
    out["wrong_keyframe_share"] = float(np.mean(np.array(keyframe_j) < WRONG_KEYFRAME_J))
    out["num_expressions"] = float(len(rows))
    out["seconds"] = time.perf_counter() - start
    return out
