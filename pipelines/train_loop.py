"""The training step and its state, shared by the Ray Train worker loop (``pipelines.training``) and
the plain single-process loop of ``jobs.learnability``.

* :func:`build_training_model` - seeded build of the preset (+ optional base weights), train mode.
* :func:`build_optimizer` / :func:`build_scheduler` - AdamW with per-group learning rates and the
  linear warm-up + linear decay of method §6.
* :func:`train_step` - gradient accumulation over micro-batches (DDP ``no_sync`` on all but the
  last), global-norm clipping, one optimiser and scheduler step; returns the loss terms.
* :func:`tak_separation_loss` - a from-scratch aid (not in the method; off unless its weight is set):
  pushes apart the TAK embeddings of expressions of one clip that name different objects, so a
  random-init LLM must read the expression words (see the function's docstring).
* :func:`scale_seg_head_init` - a from-scratch aid (not in the method; off unless asked for): a
  larger initial scale of the seg head's output, the prompt token SAM2 reads.
* :func:`save_train_checkpoint` / :func:`load_train_checkpoint` - a training checkpoint folder:
  the trainable weights as safetensors (``vrshq.model.checkpoint``, ``content="trainable"``), the
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.train_config import ModelSpec, OptimConfig, model_config_from_spec

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMA_NAME",
    "EvalVideo",
    "OPTIMIZER_NAME",
    "TRAIN_STATE_NAME",
    "TrainState",
    "VALIDATION_NAME",
    "WeightEma",
    "build_optimizer",
    "build_scheduler",
    "build_training_model",
    "export_model",
    "expression_word_loss",
    "expression_words",
    "load_eval_videos",
    "load_train_checkpoint",
    "loss_only_forward",
    "lr_factor",
    "param_group_name",
    "save_train_checkpoint",
    "scale_seg_head_init",
    "tak_separation_loss",
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
            pure function of the sample id, ``pipelines.clip_sampling``).
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
        from vrshq.model.checkpoint import load_vrshq_checkpoint

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


def tak_separation_loss(
    fused_tak: torch.Tensor, batch: Any, *, same_target_iou: float = 0.5
) -> torch.Tensor:
    """From-scratch aid (NOT in the method, off in ``jobs.train``): mean ``relu(cos(k_i, k_j))`` over
    the pairs of expressions of one clip whose targets differ (mask IoU over the clip's frames below
    ``same_target_iou``).

    Why: a random-init LLM attends almost uniformly over a ~400-token prompt, so the 3-5 expression
    tokens barely move the hidden state before ``[TAK]``; the CE loss supervises the fixed answer text,
    which does not depend on the expression, and the mask loss alone lets the model settle on "segment
    every shape" with TAK embeddings that are equal for every expression of a video
    (cos >= 0.9999). This term is zero once embeddings of expressions that name different objects
    are orthogonal, so it only breaks that symmetry; the mask loss decides what they encode.
    Expressions of the same object (e.g. a referring and a reasoning one) are not pushed apart, and
    two expressions without a target count as the same target.

    Args:
        fused_tak: (N, D) TAK' of every expression of the batch, in batch order (``VrshqOutput.fused_tak``).
        batch: the ``TrainBatch`` the forward ran on (its masks define the targets).
        same_target_iou: pairs at or above this IoU are the same target.

    Returns:
        A scalar (0 with no pair of different targets).

    Raises:
        ValueError: ``fused_tak`` does not have one row per expression of ``batch``.
    """
    import torch
    import torch.nn.functional as F

    if fused_tak.dim() != 2 or fused_tak.shape[0] != batch.num_expressions:
        raise ValueError(
            f"fused_tak must be (num_expressions={batch.num_expressions}, D), got {tuple(fused_tak.shape)}"
        )
    unit = F.normalize(fused_tak.float(), dim=-1)
    terms = []
    start = 0
    for video in batch.videos:
        count = int(video.masks.shape[0])
        k = unit[start : start + count]
        start += count
        if count < 2:
            continue
        m = video.masks.reshape(count, -1).to(device=k.device, dtype=torch.float32)
        inter = m @ m.T
        union = m.sum(1)[:, None] + m.sum(1)[None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))
        different = (iou < same_target_iou) & ~torch.eye(count, dtype=torch.bool, device=k.device)
        if different.any():
            terms.append(F.relu(k @ k.T)[different])
    if not terms:
        return unit.sum() * 0.0
    return torch.cat(terms).mean()


_AID_STOP_WORDS = frozenset({"a", "an", "the", "that", "which", "what", "is", "of", "it"})


def expression_words(text: str) -> frozenset[str]:
    """Lower-cased content words of an expression (:func:`expression_word_loss`).

    >>> sorted(expression_words("Which shape moves the fastest?"))
    ['fastest', 'moves', 'shape']
    """
    import re

    return frozenset(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _AID_STOP_WORDS)


def expression_word_loss(fused_tak: torch.Tensor, batch: Any, *, text_fraction: float = 0.5) -> torch.Tensor:
    """From-scratch aid (NOT in the method, off in ``jobs.train``): the first ``text_fraction`` of the
    TAK' dimensions mirror the expressions' words. Mean over all pairs of expressions of the batch of
    ``(cos(k_i, k_j) - b_ij)**2`` on that slice, where ``b_ij = |w_i & w_j| / sqrt(|w_i| |w_j|)`` is
    the cosine of their binary bag-of-words vectors (:func:`expression_words`).

    Why: a pretrained MLLM reads the expression; a random-init one attends almost uniformly over a
    ~100-400-token prompt, so its TAK barely depends on the 3-5 expression tokens and SAM2 learns to
    segment every shape. Measured on CPU with the ``learn`` preset's SAM2 alone on single frames, 675
    steps at batch 16: a bag-of-words prompt reaches train IoU ~0.8, a zero prompt stays at ~0.45-0.5
    (the "every shape" plateau). This term uses only the input text (no label): it makes the TAK carry
    the words, like a pretrained LLM would. The other dimensions stay free, so a reasoning expression
    ("which shape moves the fastest?", the same words in every video) can still encode its video's
    answer.

    Args:
        fused_tak: (N, D) TAK' of every expression of the batch, in batch order.
        batch: the ``TrainBatch`` (its videos must carry ``expressions``).
        text_fraction: the share of the D dimensions constrained (from the first).

    Raises:
        ValueError: shapes do not match, or the batch has no expression texts.
    """
    import torch
    import torch.nn.functional as F

    texts = [t for v in batch.videos for t in v.expressions]
    if fused_tak.dim() != 2 or fused_tak.shape[0] != batch.num_expressions or len(texts) != fused_tak.shape[0]:
        raise ValueError(
            f"expression_word_loss needs fused_tak (num_expressions={batch.num_expressions}, D) and a batch whose "
            f"videos carry their expression texts; got {tuple(fused_tak.shape)} and {len(texts)} texts"
        )
    if not 0 < text_fraction <= 1:
        raise ValueError(f"text_fraction={text_fraction!r}: must be in (0, 1]")
    n = len(texts)
    if n < 2:
        return fused_tak.sum() * 0.0
    words = [expression_words(t) for t in texts]
    target = torch.tensor(
        [[len(a & b) / math.sqrt(len(a) * len(b)) if a and b else float(a == b) for b in words] for a in words],
        device=fused_tak.device,
    )
    dims = max(1, int(round(fused_tak.shape[1] * text_fraction)))
    unit = F.normalize(fused_tak[:, :dims].float(), dim=-1)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=fused_tak.device)
    return ((unit @ unit.T - target)[off_diagonal] ** 2).mean()


def scale_seg_head_init(model: torch.nn.Module, gain: float) -> None:
    """From-scratch aid (NOT in the method): multiply the seg head's last Linear (weight and bias)
    by ``gain`` at initialisation, so its output, the TAK token of SAM2's sparse prompt, starts with
    ``gain`` times its norm.

    Why: at random init the seg head gives TAK embeddings of norm ~1.4 while SAM2's other prompt
    and output tokens (``not_a_point_embed``, the mask tokens) have norm ~11 (N(0, 1) rows of
    width 128). Measured on the ``learn`` preset at init: two different prompts of norm 1.4 change
    the window logits by ~1% of their magnitude, prompts of norm 11 by ~9%. A decoder that barely
    sees the prompt learns the "segment every shape" solution and then ignores the prompt for good
    (trained 800-950 steps: the mask for a zero prompt equals the mask for the TAK). Call once,
    right after the random init; never on loaded weights.

    Raises:
        ValueError: ``gain`` is not a finite number > 0.
    """
    import torch

    if not (isinstance(gain, (int, float)) and not isinstance(gain, bool) and math.isfinite(gain) and gain > 0):
        raise ValueError(f"gain={gain!r}: must be a finite number > 0")
    last = model.seg_head.mlp[2]
    with torch.no_grad():
        last.weight.mul_(gain)
        if last.bias is not None:
            last.bias.mul_(gain)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches: Sequence[Any],
    *,
    clip_grad_norm: float,
    forward_module: torch.nn.Module | None = None,
    tak_separation_weight: float = 0.0,
    expression_word_weight: float = 0.0,
) -> dict[str, float]:
    """One optimiser step over ``micro_batches`` (``TrainBatch`` each; gradient accumulation).

    Args:
        model: the ``VrshqModel`` (its parameters are clipped and stepped).
        optimizer, scheduler: from :func:`build_optimizer` / :func:`build_scheduler`.
        micro_batches: the step's micro-batches; the loss of each is divided by their number.
        clip_grad_norm: max global gradient norm (0: no clipping; the norm is still reported).
        forward_module: what runs the forward, e.g. the DDP wrapper of ``model`` (gradients are
            all-reduced only on the last micro-batch); default ``model``.
        tak_separation_weight: weight of :func:`tak_separation_loss` (a from-scratch aid; 0: off, the
            method). It needs the graph of ``fused_tak``, so ``forward_module`` must not be a
            :func:`loss_only_forward` wrapper when it is > 0.
        expression_word_weight: weight of :func:`expression_word_loss` (a from-scratch aid; 0: off).

    Returns:
        Mean loss terms over the micro-batches (``sep_loss``, ``word_loss``: the unweighted aid terms,
        0 when off), the pre-clipping gradient norm, the learning rates used and the number of expressions
        (``num_expressions``).
    """
    import torch

    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    for name, weight in (("tak_separation_weight", tak_separation_weight),
                         ("expression_word_weight", expression_word_weight)):
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name}={weight!r}: must be a finite number >= 0")
    runner = forward_module if forward_module is not None else model
    model.train()
    optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "ce_loss": 0.0, "bce_loss": 0.0, "dice_loss": 0.0, "object_loss": 0.0, "sep_loss": 0.0,
              "word_loss": 0.0}
    num_expressions = 0
    n = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        sync = i == n - 1 or not hasattr(runner, "no_sync")
        with contextlib.nullcontext() if sync else runner.no_sync():
            out = runner(batch)
            loss = out.loss
            if (tak_separation_weight > 0 or expression_word_weight > 0) and not out.fused_tak.requires_grad:
                raise ValueError(
                    "the from-scratch aids need fused_tak with its graph: run the plain model, not a "
                    "loss_only_forward wrapper"
                )
            if tak_separation_weight > 0:
                sep = tak_separation_loss(out.fused_tak, batch)
                loss = loss + tak_separation_weight * sep
                totals["sep_loss"] += float(sep.detach()) / n
            if expression_word_weight > 0:
                word = expression_word_loss(out.fused_tak, batch)
                loss = loss + expression_word_weight * word
                totals["word_loss"] += float(word.detach()) / n
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


EMA_NAME = "ema.safetensors"
"""The :class:`WeightEma` of a training checkpoint folder (float32 averaged weights + decay/updates)."""


class WeightEma:
    """Exponential moving average of the trainable weights, for evaluation and export.

    Why: from scratch, held-out J&F of the ``learn`` preset swings by ~0.05 between evaluations a few
    dozen steps apart (keyframe and object choices on knife edges); the average over the last
    ~1/(1-decay) steps is a steadier model to score and ship. Float32 copies; the effective decay
    warms up as ``min(decay, (1 + n) / (10 + n))`` so the first updates track the weights.
    ``swapped_in`` puts the average into the model for a block and restores the weights exactly.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import torch

        if not 0 < decay < 1:
            raise ValueError(f"decay={decay!r}: must be in (0, 1)")
        self.decay = float(decay)
        self.updates = 0
        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = {n: p.detach().to(torch.float32, copy=True) for n, p in self._params}

    def update(self) -> None:
        """Fold the current weights in (call after every optimiser step)."""
        import torch

        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_([self.shadow[n] for n, _ in self._params],
                                 [p.detach().float() for _, p in self._params], 1.0 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own weights again after it."""
        import torch

        saved = [p.detach().clone() for _, p in self._params]
        try:
            with torch.no_grad():
                for n, p in self._params:
                    p.copy_(self.shadow[n])
            yield
        finally:
            with torch.no_grad():
                for (_, p), w in zip(self._params, saved):
                    p.copy_(w)

    def save(self, path: str) -> None:
        """Write the averaged weights and the update count (safetensors, local path)."""
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in self.shadow.items()}, path,
                  metadata={"decay": repr(self.decay), "updates": str(self.updates)})

    def load(self, path: str) -> None:
        """Restore :meth:`save`'s file; the trainable names and shapes must match the model's."""
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            names, updates = set(f.keys()), int(f.metadata()["updates"])
            if names != set(self.shadow):
                raise ValueError(f"{path}: EMA weights {len(names)} do not match the model's {len(self.shadow)} "
                                 f"trainable weights (e.g. {sorted(names ^ set(self.shadow))[:3]})")
            for n, t in self.shadow.items():
                loaded = f.get_tensor(n)
                if loaded.shape != t.shape:
                    raise ValueError(f"{path}: EMA weight {n} has shape {tuple(loaded.shape)}, the model {tuple(t.shape)}")
                t.copy_(loaded)
        self.updates = updates


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

    import fsspec
    import torch

    from vrshq.model.checkpoint import save_vrshq_checkpoint

    save_vrshq_checkpoint(model, folder, storage_options=storage_options, trainable_only=True, tokenizer=None)
    fs, root = fsspec.core.url_to_fs(folder, **dict(storage_options or {}))
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    with fs.open(f"{root.rstrip('/')}/{OPTIMIZER_NAME}", "wb") as f:
        f.write(buffer.getvalue())
    with fs.open(f"{root.rstrip('/')}/{TRAIN_STATE_NAME}", "w") as f:
        json.dump(asdict(state), f, indent=2)


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
        vrshq.model.checkpoint.CheckpointMismatchError: a trainable key is missing, a key is unknown
            or a shape differs (the run's model config changed).
    """
    import io

    import fsspec
    import torch

    from vrshq.model.checkpoint import CheckpointMismatchError, load_vrshq_checkpoint

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    report = load_vrshq_checkpoint(model, folder, storage_options=storage_options, strict=False)
    missing = sorted(set(report.missing) & trainable)
    if missing or report.unexpected or report.mismatched:
        raise CheckpointMismatchError(
            folder, missing=missing, unexpected=list(report.unexpected), mismatched=list(report.mismatched)
        )
    fs, root = fsspec.core.url_to_fs(folder, **dict(storage_options or {}))
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
    from vrshq.model.checkpoint import save_vrshq_checkpoint
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
