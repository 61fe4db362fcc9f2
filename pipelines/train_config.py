"""Typed configuration of the training pipeline (``jobs.train``, ``pipelines.training``).

Model hyperparameters live in ``vrshq/config.py``; this file holds the *training* settings: the
model preset and trainable set, the optimiser and schedule (method §6), clip sampling (method §1.4),
the data and validation splits, checkpointing, Ray Train scaling and fault tolerance. Every field is
read by the pipeline. Each ``__post_init__`` collects all problems of its config and raises one
``ValueError`` listing them (``jobs._cli`` turns it into a ``ConfigError``).

Example:
    >>> cfg = TrainConfig(storage_path="/tmp/runs", data=TrainDataConfig(root="/data/ReVOS", split="train"))
    >>> cfg.optim.lr, cfg.optim.betas, cfg.optim.warmup_steps, cfg.optim.clip_grad_norm
    (0.0003, (0.9, 0.95), 100, 1.0)
    >>> cfg.run_uri
    '/tmp/runs/vrshq-train'
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MODEL_PRESETS",
    "GroundingPretrainConfig",
    "ModelSpec",
    "OptimConfig",
    "SamplingConfig",
    "TrackPretrainConfig",
    "TrainConfig",
    "TrainDataConfig",
    "ValidationConfig",
    "VisionPretrainConfig",
    "focus_problems",
    "learnability_model_config",
    "learnability_model_config_256",
    "learnability_model_config_256_pos",
    "learnability_model_config_256_wide",
    "learnability_model_config_256_wide_pos",
    "learnability_model_config_256_pos_k2",
    "learnability_model_config_256_pos_p4",
    "learnability_model_config_256_wide_pos_k2",
    "learnability_model_config_t14",
    "learnability_model_config_t7",
    "model_config_from_spec",
]

#: Preset name -> function returning its ``VrshqConfig`` (``vrshq.builders`` or this module).
MODEL_PRESETS: dict[str, str] = {
    "tiny": "vrshq.builders:tiny_config",
    "learn": "pipelines.train_config:learnability_model_config",
    "learn-t14": "pipelines.train_config:learnability_model_config_t14",
    "learn-t7": "pipelines.train_config:learnability_model_config_t7",
    "learn-256": "pipelines.train_config:learnability_model_config_256",
    "learn-256-wide": "pipelines.train_config:learnability_model_config_256_wide",
    "learn-256-pos": "pipelines.train_config:learnability_model_config_256_pos",
    "learn-256-wide-pos": "pipelines.train_config:learnability_model_config_256_wide_pos",
    "learn-256-pos-k2": "pipelines.train_config:learnability_model_config_256_pos_k2",
    "learn-256-wide-pos-k2": "pipelines.train_config:learnability_model_config_256_wide_pos_k2",
    "learn-256-pos-p4": "pipelines.train_config:learnability_model_config_256_pos_p4",
    "learn-256-wide-pos-p4": "pipelines.train_config:learnability_model_config_256_wide_pos_p4",
    "vrshq-7b": "vrshq.builders:vrshq_7b_config",
}
_TRAINABLE = ("all", "lora")
TARGET_LOSSES = ("bce", "softmax")
"""Stage G's losses on the target head (``GroundingPretrainConfig.target_loss``)."""
LR_SCHEDULES = ("linear", "constant")
"""Stage G's learning-rate schedules after the warm-up (``GroundingPretrainConfig.lr_schedule``)."""
_FORMATS = ("revos", "mevis")


def _problems_to_error(owner: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{owner}: " + "; ".join(problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _range_problems(config: Any, *, ints: tuple[tuple[str, int], ...] = (),
                    non_negative: tuple[str, ...] = ()) -> list[str]:
    """One message per field of ``config`` out of range: ``ints`` are ``(name, minimum)`` of int fields,
    ``non_negative`` names the fields that must be finite numbers >= 0 (the pretraining stages' configs)."""
    problems = []
    for name, minimum in ints:
        value = getattr(config, name)
        if not _is_int(value) or value < minimum:
            problems.append(f"{name}={value!r}: must be an int >= {minimum}")
    for name in non_negative:
        value = getattr(config, name)
        if not _is_number(value) or value < 0:
            problems.append(f"{name}={value!r}: must be a finite number >= 0")
    return problems


def focus_problems(kinds: Any, share: Any) -> list[str]:
    """What is wrong with a focus setting (``pipelines.clip_sampling.focused_video``): kinds the synthetic grammar
    does not have, a share outside [0, 1], a share without kinds. Stage G's and stage 1's settings share it."""
    from vrshq.data.synthetic import EXPRESSION_KINDS

    problems = []
    if unknown := [k for k in kinds if k not in EXPRESSION_KINDS]:
        problems.append(f"focus_kinds={list(kinds)!r}: unknown kinds {unknown}, must be among {list(EXPRESSION_KINDS)}")
    if not _is_number(share) or not 0 <= share <= 1:
        problems.append(f"focus_share={share!r}: must be a number in [0, 1]")
    elif share and not kinds:
        problems.append(f"focus_share={share}: needs focus_kinds")
    return problems


def learnability_model_config(
    *, object_weight: float = 0.5, trainable: str = "all", cluster_counts: tuple[int, ...] = (16, 8, 4),
    sam2_image_size: int = 128, llm_hidden_size: int = 128, llm_layers: int = 2, tower_hidden_size: int = 32,
    centroid_position_scale: float = 0.0, knn_k: tuple[int, ...] = (5, 3, 3), tower_image_size: int = 56,
    tower_patch_size: int = 7,
):
    """The model of the learnability run: the tiny classes at a middle size that fits a < 20 MB
    checkpoint in bf16 (docs/research/learnability.md: d_model 128, Hiera embed_dim 48).

    LLaMA 2 layers hidden 128; SAM2 at 128 px with neck/memory-attention width 128, memory width 64;
    ~5.9M parameters (11.8 MB in bf16). The object-presence loss is on (docs/research/learnability.md: from random
    init SAM2 needs it). Videos of 64x64 are letterboxed up to 128 px, so the 32x32 low-res masks are
    at half the video resolution.

    Visual tokens: the 8x8 patches of a frame are merged by the method's three DPC-KNN levels to
    ``cluster_counts`` (default 16 + 8 + 4 = 28 tokens per frame, the tiny preset's). The presets
    ``learn-t14`` (8, 4, 2) and ``learn-t7`` (4, 2, 1) shorten the prompt (~200 / ~150 instead of
    ~400 tokens with 8-12 frames) for a random-init LLM that attends nearly uniformly; the merge has
    no parameters, so no weight shape changes. Measured (H200, 800 steps): no J&F gain from 14 tokens.
    ``knn_k`` is the merge's k per level (Chat-UniVi's 5, 3, 3), capped below each level's input count.
    """
    from vrshq.builders import tiny_config
    from vrshq.model.sam2_config import sam2_tiny
    from vrshq.model.vision_config import tiny_vision_tower

    cfg = tiny_config(
        hidden_size=llm_hidden_size, num_hidden_layers=llm_layers, sam2_image_size=128, sam2_d_model=128,
        trainable=trainable, object_weight=object_weight,
    )
    patches = (tower_image_size // tower_patch_size) ** 2
    knn_k = tuple(min(k, max(1, prev - 1)) for k, prev in zip(knn_k, (patches, *cluster_counts[:-1])))
    return dataclasses.replace(
        cfg,
        vision=tiny_vision_tower(projector_out_dim=llm_hidden_size, hidden_size=tower_hidden_size,
                                 cluster_counts=tuple(cluster_counts), knn_k=knn_k,
                                 centroid_position_scale=centroid_position_scale, image_size=tower_image_size,
                                 patch_size=tower_patch_size),
        sam2=sam2_tiny(image_size=sam2_image_size, d_model=128, embed_dim=48, mem_dim=64),
        name="tiny-learn",
    )


def learnability_model_config_256(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config` with SAM2 at 256 px: the same weights' shapes, a 16x16 memory grid
    instead of 8x8 (a small shape of the 64 px videos spans ~2 memory cells at 128 px), 4x the SAM2 compute."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256)


def learnability_model_config_256_wide(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256` with a larger text path for reasoning over motion: LLaMA 4 layers
    hidden 256 (2.8M parameters instead of 0.4M) and a vision tower of width 64; SAM2 unchanged (the same
    weight shapes as ``learn-256``'s SAM2, so a stage-0 SAM2 of either loads into both). 8.4M parameters,
    16.9 MB in bf16. Measured from the same stage 0, 1,800 stage-1 steps (64 held-out videos, CPU): J&F 0.595
    (reasoning 0.455) against 0.575 (0.418) for ``learn-256``; docs/research/learnability.md."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     llm_hidden_size=256, llm_layers=4, tower_hidden_size=64)


def learnability_model_config_256_pos(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256` whose visual tokens also carry their cluster's centroid (a fixed
    sine-cosine embedding, ``TokenMergeConfig.centroid_position_scale`` 1; no new weights). From-scratch aid:
    the random tower's merged tokens say where they are with R^2 0.09, with it 0.87 (linear probe), while the
    clusters stay those of the features."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     centroid_position_scale=1.0)


def learnability_model_config_256_wide_pos(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256_wide` with the centroid embedding of ``learn-256-pos``."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     llm_hidden_size=256, llm_layers=4, tower_hidden_size=64,
                                     centroid_position_scale=1.0)


def learnability_model_config_256_pos_k2(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256_pos` whose merge takes k = 2 nearest neighbours at every level instead
    of 5, 3, 3 (no weights change). Why: with k = 5 a small shape's 2-6 patches get the density of the background
    around them and only 41-46% of an object's patches land in a cluster mostly theirs; on the committed tower's
    tokens k = 2, 2, 2 lifts the centre probe's R^2 from 0.52 to 0.62 and its spread rule for "never moves" /
    "fastest" from 0.67 / 0.65 to 0.72 / 0.73 (docs/research/learnability.md). Measured
    with a stage G focused on the reasoning kinds (2,000 x 128 clips): stage 1 J&F 0.704 against the
    committed 0.717 (32 videos, bf16); the motion kinds were still not learnt (docs/research/learnability.md)."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     centroid_position_scale=1.0, knn_k=(2, 2, 2))


def learnability_model_config_256_pos_p4(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256_pos_k2` whose tower reads the 64 px frames unscaled in 4 px patches: a
    16x16 grid of 256 patches (Chat-UniVi's count) instead of 8x8 of 7 px patches at 56 px, merged to the same
    16 + 8 + 4 tokens. Why: an 8 px patch of a 64 px video mixes a small shape (radius 6-7 px) with the background,
    so the merged tokens say where a shape is only to ~4 px, too coarse for "never moves" against a slow shape
    (0.8 px a frame). Measured on the CPU (docs/research/learnability.md): with a stage-V tower a first-level cluster's
    centroid lies within 1.6 px of its object's centre (median; 4.3 px for the 7 px patches of a random tower),
    and the centre probe on the merged tokens reads R^2 0.80 against 0.62 for the committed tokens. SAM2 is
    ``learn-256``'s (the same weight shapes); the tower's patch embedding and position table change shape."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     centroid_position_scale=1.0, knn_k=(2, 2, 2), tower_image_size=64,
                                     tower_patch_size=4)


def learnability_model_config_256_wide_pos_p4(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256_pos_p4` with the text path of ``learn-256-wide`` (LLaMA 4 layers, hidden
    256). Why: with the 2-layer, 128-wide LLM stage G's picks of the occlusion kinds stall at ~0.7 from step 2,200 on
    while its loss still falls. Measured (docs/research/learnability.md): with this LLM stage G's motion kinds set in at
    step ~900 instead of ~1,450; but its picks end where the narrow run's do (0.89 at step 2,800 against 0.90 at 3,600)
    and stage 1 after it scores the same (J&F 0.765 on 32 videos, LLM frozen). The tower stays ``learn-256-pos-p4``'s
    (width 32), so that run's stage-V tower and any ``learn-256`` SAM2 load unchanged.
    8.4M parameters, 16.7 MB in bf16."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     llm_hidden_size=256, llm_layers=4, centroid_position_scale=1.0,
                                     knn_k=(2, 2, 2), tower_image_size=64, tower_patch_size=4)


def learnability_model_config_256_wide_pos_k2(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256_wide_pos` with the k = 2, 2, 2 merge of ``learn-256-pos-k2``."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     llm_hidden_size=256, llm_layers=4, tower_hidden_size=64,
                                     centroid_position_scale=1.0, knn_k=(2, 2, 2))


def learnability_model_config_t14(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config` with 14 visual tokens per frame (8, 4, 2): a shorter prompt."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, cluster_counts=(8, 4, 2))


def learnability_model_config_t7(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config` with 7 visual tokens per frame (4, 2, 1): the shortest prompt."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, cluster_counts=(4, 2, 1))


@dataclass(frozen=True)
class ModelSpec:
    """Which model trains and what of it trains (method §6)."""

    preset: str = field(default="tiny", metadata={"help": f"model preset: {' | '.join(MODEL_PRESETS)}"})
    trainable: str = field(default="all", metadata={"help": "all (from scratch, no LoRA) | lora (method §6)"})
    object_weight: float | None = field(
        default=None,
        metadata={"help": "object-presence loss weight (null: the preset's; > 0 for from-scratch, "
                          "docs/research/learnability.md)"},
    )
    init_checkpoint: str | None = field(
        default=None, metadata={"help": "full checkpoint to start from (vrshq.model.checkpoint); null: random init"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random init (the same on every worker)"})
    train_window: int | None = field(
        default=None,
        metadata={"help": "SAM2 frames per expression in training (null: the preset's, 3 as in the method; longer "
                          "windows are a from-scratch aid that trains the memory path over longer distances)"},
    )
    train_keyframe: str | None = field(
        default=None,
        metadata={"help": "training keyframe rule (null: the preset's, tda as in the method | largest_target: the "
                          "frame of the largest ground-truth target, a from-scratch aid: vrshq.model.tks)"},
    )

    def __post_init__(self) -> None:
        problems = []
        if self.train_window is not None and (not _is_int(self.train_window) or self.train_window < 1):
            problems.append(f"train_window={self.train_window!r}: must be a positive int or null")
        from vrshq.model.tks import TRAIN_KEYFRAME_RULES

        if self.train_keyframe is not None and self.train_keyframe not in TRAIN_KEYFRAME_RULES:
            problems.append(f"train_keyframe={self.train_keyframe!r}: must be one of {list(TRAIN_KEYFRAME_RULES)} "
                            "or null")
        if self.preset not in MODEL_PRESETS:
            problems.append(f"preset={self.preset!r}: must be one of {list(MODEL_PRESETS)}")
        if self.trainable not in _TRAINABLE:
            problems.append(f"trainable={self.trainable!r}: must be one of {list(_TRAINABLE)}")
        if self.object_weight is not None and (not _is_number(self.object_weight) or self.object_weight < 0):
            problems.append(f"object_weight={self.object_weight!r}: must be a finite number >= 0 or null")
        if not _is_int(self.seed):
            problems.append(f"seed={self.seed!r}: must be an int")
        _problems_to_error("ModelSpec", problems)


def model_config_from_spec(spec: ModelSpec):
    """The ``VrshqConfig`` of a preset with the spec's trainable set and object weight applied."""
    import importlib

    module_name, func_name = MODEL_PRESETS[spec.preset].split(":")
    cfg = getattr(importlib.import_module(module_name), func_name)()
    cfg = dataclasses.replace(cfg, trainable=dataclasses.replace(cfg.trainable, mode=spec.trainable))
    if spec.object_weight is not None:
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, object_weight=float(spec.object_weight)))
    if spec.train_window is not None:
        cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, train_window=spec.train_window))
    if spec.train_keyframe is not None:
        cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, train_keyframe=spec.train_keyframe))
    return cfg


@dataclass(frozen=True)
class TrackPretrainConfig:
    """Stage 0 of the learnability run: tracking pretraining of SAM2 (``pipelines.track_pretrain``)."""

    steps: int = field(default=2000, metadata={"help": "optimiser steps (0: no tracking stage)"})
    window: int = field(default=8, metadata={"help": "frames per window: the mask prompt + window-1 tracked"})
    clips_per_step: int = field(default=16, metadata={"help": "windows per optimiser step"})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (warm-up, then linear decay to 0)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    bce_weight: float = field(default=2.0, metadata={"help": "BCE weight (the method's mask loss weights)"})
    dice_weight: float = field(default=0.5, metadata={"help": "DICE weight"})
    object_weight: float = field(default=0.5, metadata={"help": "object-presence weight (occluded frames: absent)"})
    clip_grad_norm: float = field(default=1.0, metadata={"help": "max gradient norm"})
    attribute_weight: float = field(
        default=0.0,
        metadata={"help": "from-scratch aid: weight of a per-cell loss on SAM2's image embedding (a throw-away "
                          "linear head names the colour, shape and size of the object covering each cell, what "
                          "SA-1B training gives the real encoder); 0 = tracking losses only. Why: after stage 0 "
                          "alone the embedding gives shape at 63%% per cell, and the decoder finds 41%% of 'the "
                          "triangle'-style targets; with weight 1: 96%% and 91%%, tracking J 0.848 against "
                          "0.864"},
    )

    def __post_init__(self) -> None:
        problems = _range_problems(
            self, ints=(("steps", 0), ("warmup_steps", 0), ("window", 2), ("clips_per_step", 1)),
            non_negative=("lr", "bce_weight", "dice_weight", "object_weight", "clip_grad_norm", "attribute_weight"))
        _problems_to_error("TrackPretrainConfig", problems)


@dataclass(frozen=True)
class VisionPretrainConfig:
    """Stage V of the learnability run: pretraining of the random vision tower (``pipelines.vision_pretrain``),
    what CLIP pretraining gives the real tower: patch features that say where they are and what covers them."""

    steps: int = field(default=0, metadata={"help": "optimiser steps (0: no vision tower stage, the tower stays random)"})
    videos_per_step: int = field(default=8, metadata={"help": "synthetic videos per step (all their frames)"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (warm-up, then linear decay to 0)"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    position_weight: float = field(default=4.0, metadata={"help": "weight of the patch-position regression"})
    probe_videos: int = field(default=16, metadata={"help": "videos of the position probe before and after"})
    log_every: int = field(default=100, metadata={"help": "log a line every N steps"})

    def __post_init__(self) -> None:
        problems = _range_problems(
            self, ints=(("steps", 0), ("warmup_steps", 0), ("videos_per_step", 1), ("probe_videos", 2),
                        ("log_every", 1)),
            non_negative=("lr", "position_weight"))
        _problems_to_error("VisionPretrainConfig", problems)


@dataclass(frozen=True)
class GroundingPretrainConfig:
    """Stage G of the learnability run: grounding pretraining of the text path (``pipelines.grounding_pretrain``),
    what MLLM pretraining gives the real LLM: a TAK' that names the expression's targets."""

    steps: int = field(default=0, metadata={"help": "optimiser steps (0: no grounding stage)"})
    videos_per_step: int = field(default=64, metadata={"help": "synthetic video clips per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (warm-up, then lr_schedule)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the method's CE on the answer text"})
    clip_grad_norm: float = field(default=1.0, metadata={"help": "max gradient norm"})
    eval_every: int = field(default=250, metadata={"help": "score the held-out expressions every N steps"})
    heldout_videos: int = field(default=96, metadata={"help": "held-out videos scored (their sampled clips)"})
    head_seed: int = field(default=0, metadata={"help": "seed of the throw-away target head's init"})
    focus_kinds: tuple[str, ...] = field(
        default=(),
        metadata={"help": "expression kinds that focused clips keep (e.g. static fastest moving); the held-out "
                          "clips stay the whole task"},
    )
    focus_share: float = field(
        default=0.0,
        metadata={"help": "share of training clips that keep only the focus kinds' expressions (0: every clip is "
                          "sampled from all of its video's expressions)"},
    )
    focus_steps: int = field(
        default=0,
        metadata={"help": "the steps whose clips draw focus_share (0: every step); later steps draw "
                          "focus_share_after. A curriculum: stage G learnt the motion kinds only from clips of "
                          "them alone (share 1), and kept them while the other kinds came back at share 0.5 "
                          "(docs/research/learnability.md)"},
    )
    focus_share_after: float = field(
        default=0.0, metadata={"help": "focus share of the steps after focus_steps (needs focus_steps)"},
    )
    target_loss: str = field(
        default="bce",
        metadata={"help": "bce: a sigmoid BCE per present object (is it a target?) | softmax: a cross-entropy over "
                          "the present objects against the targets (shared equally), which asks which object rather "
                          "than whether each is one. In a probe of the LLM's size the BCE learnt \"never moves\" / "
                          "\"fastest\" later; in stage G itself (H200, 256 clips a step) the softmax learnt even "
                          "referring expressions ~2x later (docs/research/learnability.md)"},
    )
    lr_schedule: str = field(
        default="linear",
        metadata={"help": "linear: warm-up, then linear decay to 0 at the last step (the method's) | constant: "
                          "warm-up, then lr to the end, as the motion probe trains; a constant run's schedule does "
                          "not depend on steps, so raising steps continues it (docs/research/learnability.md)"},
    )

    def __post_init__(self) -> None:
        problems = _range_problems(
            self, ints=(("steps", 0), ("warmup_steps", 0), ("videos_per_step", 1), ("eval_every", 1),
                        ("heldout_videos", 1)))
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule={self.lr_schedule!r}: must be one of {list(LR_SCHEDULES)}")
        if self.target_loss not in TARGET_LOSSES:
            problems.append(f"target_loss={self.target_loss!r}: must be one of {list(TARGET_LOSSES)}")
        if not _is_int(self.head_seed):
            problems.append(f"head_seed={self.head_seed!r}: must be an int")
        problems += _range_problems(self, non_negative=("lr", "ce_weight", "clip_grad_norm"))
        problems += focus_problems(self.focus_kinds, self.focus_share)
        if not _is_int(self.focus_steps) or self.focus_steps < 0:
            problems.append(f"focus_steps={self.focus_steps!r}: must be an int >= 0")
        if not _is_number(self.focus_share_after) or not 0 <= self.focus_share_after <= 1:
            problems.append(f"focus_share_after={self.focus_share_after!r}: must be a number in [0, 1]")
        elif self.focus_share_after and not self.focus_steps:
            problems.append(f"focus_share_after={self.focus_share_after} has no effect without focus_steps "
                            "(focus_share holds for every step)")
        elif self.focus_share_after and not self.focus_kinds:
            problems.append(f"focus_share_after={self.focus_share_after}: needs focus_kinds")
        _problems_to_error("GroundingPretrainConfig", problems)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the warm-up/linear-decay schedule (method §6: lr 3e-4, betas 0.9/0.95, wd 0,
    100 warm-up steps, clipping 1.0).

    Per-group learning rates (docs/research/learnability.md): ``sam2_lr`` for every ``sam2.*`` parameter and
    ``text_lr`` for the text path (LLM, seg head, visual projector); null uses ``lr``. From scratch,
    one shared 3e-4 learns to segment every shape and ignores the text; 1e-4 / 1e-3 learns the text.
    """

    lr: float = field(default=3e-4, metadata={"help": "base learning rate (method §6)"})
    sam2_lr: float | None = field(default=None, metadata={"help": "learning rate of sam2.* (null: lr)"})
    text_lr: float | None = field(
        default=None, metadata={"help": "learning rate of LLM + seg head + projector (null: lr)"}
    )
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "AdamW betas"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps from 0 to the lr"})
    decay_steps: int | None = field(
        default=None, metadata={"help": "step at which the linear decay reaches 0 (null: max_steps)"}
    )
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    clip_grad_norm: float = field(default=1.0, metadata={"help": "max global gradient norm (0: no clipping)"})

    def __post_init__(self) -> None:
        problems = []
        for name in ("lr", "sam2_lr", "text_lr"):
            value = getattr(self, name)
            if value is None and name != "lr":
                continue
            if not _is_number(value) or value <= 0:
                problems.append(f"{name}={value!r}: must be a finite number > 0")
        if (
            not isinstance(self.betas, tuple)
            or len(self.betas) != 2
            or not all(_is_number(b) and 0 <= b < 1 for b in self.betas)
        ):
            problems.append(f"betas={self.betas!r}: must be two numbers in [0, 1)")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            problems.append(f"warmup_steps={self.warmup_steps!r}: must be an int >= 0")
        if self.decay_steps is not None and (not _is_int(self.decay_steps) or self.decay_steps < 1):
            problems.append(f"decay_steps={self.decay_steps!r}: must be a positive int or null")
        if not _is_int(self.grad_accum_steps) or self.grad_accum_steps < 1:
            problems.append(f"grad_accum_steps={self.grad_accum_steps!r}: must be a positive int")
        if not _is_number(self.clip_grad_norm) or self.clip_grad_norm < 0:
            problems.append(f"clip_grad_norm={self.clip_grad_norm!r}: must be >= 0 (0 disables clipping)")
        _problems_to_error("OptimConfig", problems)


@dataclass(frozen=True)
class SamplingConfig:
    """Clip sampling of one training sample (method §1.4, §6 data mix).

    T is drawn from ``[min_frames, max_frames]`` (method: "8,12"); the frames are one random index in
    each of T equal bins of the video (policy ``uniform``; all frames when the video has <= T);
    up to ``max_expressions`` expressions of the video (``num_classes_per_sample=3``), each masked
    with the union of its objects; the same T frames go to CLIP and SAM2.

    With probability ``image_ratio`` a sample is an *image sample* instead (the method mixes image
    segmentation datasets into training, §6): one random frame of the video and up to
    ``max_expressions`` of its ``image_expression_types`` expressions (referring by default: a
    reasoning expression about motion cannot be answered from one frame).
    """

    min_frames: int = field(default=8, metadata={"help": "shortest clip (method §1.4)"})
    max_frames: int = field(default=12, metadata={"help": "longest clip (method §1.4)"})
    max_expressions: int = field(default=3, metadata={"help": "expressions per sample (method §6)"})
    expression_types: tuple[int, ...] = field(
        default=(0, 1, 2), metadata={"help": "type_ids to train on (0 referring, 1 reasoning, 2 no-target)"}
    )
    min_video_frames: int = field(default=3, metadata={"help": "skip shorter videos (the SAM2 window is 3 frames)"})
    image_ratio: float = field(
        default=0.0,
        metadata={"help": "fraction of 1-frame image samples (method §6 mixes image datasets in): one frame of the "
                          "video with its image_expression_types expressions, no TDA fusion, SAM2 decode only"},
    )
    image_expression_types: tuple[int, ...] = field(
        default=(0,),
        metadata={"help": "type_ids an image sample may hold (0 referring: answerable from one frame)"},
    )

    def __post_init__(self) -> None:
        problems = []
        if not (_is_int(self.min_frames) and _is_int(self.max_frames) and 1 <= self.min_frames <= self.max_frames):
            problems.append(f"min_frames/max_frames=({self.min_frames!r}, {self.max_frames!r}): need 1 <= min <= max")
        if not _is_int(self.max_expressions) or self.max_expressions < 1:
            problems.append(f"max_expressions={self.max_expressions!r}: must be a positive int")
        if not isinstance(self.expression_types, tuple) or not self.expression_types or not set(
            self.expression_types
        ) <= {0, 1, 2}:
            problems.append(f"expression_types={self.expression_types!r}: must be a non-empty subset of (0, 1, 2)")
        if not _is_int(self.min_video_frames) or self.min_video_frames < 1:
            problems.append(f"min_video_frames={self.min_video_frames!r}: must be a positive int")
        if not _is_number(self.image_ratio) or not 0 <= self.image_ratio <= 1:
            problems.append(f"image_ratio={self.image_ratio!r}: must be a number in [0, 1]")
        if not isinstance(self.image_expression_types, tuple) or not self.image_expression_types or not set(
            self.image_expression_types
        ) <= {0, 1, 2}:
            problems.append(
                f"image_expression_types={self.image_expression_types!r}: must be a non-empty subset of (0, 1, 2)"
            )
        _problems_to_error("SamplingConfig", problems)


@dataclass(frozen=True)
class TrainDataConfig:
    """The training split, read by ``vrshq.data`` readers (local or any fsspec URI)."""

    format: str = field(default="revos", metadata={"help": "dataset layout: revos | mevis"})
    root: str = field(default="", metadata={"help": "dataset root URI (local path or s3://...)"})
    split: str = field(default="train", metadata={"help": "split name"})
    videos_per_batch: int = field(default=1, metadata={"help": "clips per micro-batch and worker"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shuffle_seed: int = field(default=0, metadata={"help": "seed of the per-epoch video order and clip draws"})
    num_cpus_per_task: float = field(default=1.0, metadata={"help": "CPUs per clip-sampling task"})

    def __post_init__(self) -> None:
        problems = []
        if self.format not in _FORMATS:
            problems.append(f"format={self.format!r}: must be one of {list(_FORMATS)}")
        if not isinstance(self.root, str) or not self.root:
            problems.append("root is required (the training dataset root URI)")
        if not isinstance(self.split, str) or not self.split:
            problems.append("split must be non-empty")
        if not _is_int(self.videos_per_batch) or self.videos_per_batch < 1:
            problems.append(f"videos_per_batch={self.videos_per_batch!r}: must be a positive int")
        if not isinstance(self.sampling, SamplingConfig):
            problems.append("sampling must be a SamplingConfig")
        if not _is_int(self.shuffle_seed):
            problems.append(f"shuffle_seed={self.shuffle_seed!r}: must be an int")
        if not _is_number(self.num_cpus_per_task) or self.num_cpus_per_task <= 0:
            problems.append(f"num_cpus_per_task={self.num_cpus_per_task!r}: must be > 0")
        _problems_to_error("TrainDataConfig", problems)


@dataclass(frozen=True)
class ValidationConfig:
    """Held-out J&F through the inference path (``VrshqModel.segment_video`` + ``vrshq.metrics``)."""

    every_steps: int = field(default=0, metadata={"help": "validate every N steps and at the end (0: never)"})
    format: str = field(default="revos", metadata={"help": "dataset layout: revos | mevis"})
    root: str | None = field(default=None, metadata={"help": "held-out dataset root URI"})
    split: str = field(default="valid", metadata={"help": "held-out split"})
    max_videos: int | None = field(default=None, metadata={"help": "first N videos only (null: all)"})
    expression_types: tuple[int, ...] = field(
        default=(0, 1), metadata={"help": "type_ids scored (ReVOS excludes type 2)"}
    )

    def __post_init__(self) -> None:
        problems = []
        if not _is_int(self.every_steps) or self.every_steps < 0:
            problems.append(f"every_steps={self.every_steps!r}: must be an int >= 0")
        if self.format not in _FORMATS:
            problems.append(f"format={self.format!r}: must be one of {list(_FORMATS)}")
        if self.every_steps and not self.root:
            problems.append("root is required when every_steps > 0")
        if self.max_videos is not None and (not _is_int(self.max_videos) or self.max_videos < 1):
            problems.append(f"max_videos={self.max_videos!r}: must be a positive int or null")
        if not isinstance(self.expression_types, tuple) or not set(self.expression_types) <= {0, 1, 2}:
            problems.append(f"expression_types={self.expression_types!r}: must be a subset of (0, 1, 2)")
        _problems_to_error("ValidationConfig", problems)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``jobs.train`` needs.

    Checkpoints go to ``<storage_path>/<name>/`` (Ray Train's run folder); the final full model
    (the format ``jobs.infer`` loads) to ``export_uri`` (default ``<storage_path>/<name>/final``).
    """

    storage_path: str = field(metadata={"help": "run storage: local path or s3://bucket/prefix"})
    data: TrainDataConfig = field(metadata={"help": "the training split"})
    name: str = field(default="vrshq-train", metadata={"help": "run name (its folder under storage_path)"})
    storage_options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "fsspec options for every URI (s3 endpoint, ...)"}
    )
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    max_steps: int = field(default=1000, metadata={"help": "optimiser steps of the whole run"})
    checkpoint_every: int = field(default=100, metadata={"help": "checkpoint every N steps (and at the end)"})
    num_to_keep: int | None = field(default=3, metadata={"help": "checkpoints kept (null: all)"})
    log_every: int = field(default=1, metadata={"help": "report metrics every N steps"})
    num_workers: int = field(default=1, metadata={"help": "Ray Train workers (DDP ranks)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker (bf16 autocast, NCCL)"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs reserved per worker"})
    max_failures: int = field(default=2, metadata={"help": "worker-group restarts from the last checkpoint"})
    stall_timeout_s: float = field(
        default=900.0,
        metadata={"help": "end the run when no worker changes stage or step for this long, naming the stalled "
                          "stage (0: never)"},
    )
    export_uri: str | None = field(default=None, metadata={"help": "final model folder (null: <run>/final)"})
    resume: bool = field(default=True, metadata={"help": "continue from the run's latest checkpoint if any"})
    fail_at_step: int | None = field(
        default=None, metadata={"help": "fault injection (tests): rank 1 (or 0) exits after this step ..."}
    )
    fail_marker: str | None = field(
        default=None, metadata={"help": "... only while this local marker file does not exist (it is created)"}
    )

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.storage_path, str) or not self.storage_path:
            problems.append("storage_path is required (local path or s3://bucket/prefix)")
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            problems.append(f"name={self.name!r}: must be a non-empty name without '/'")
        if not isinstance(self.storage_options, Mapping):
            problems.append("storage_options must be a mapping")
        for fname, cls in (("model", ModelSpec), ("optim", OptimConfig), ("data", TrainDataConfig),
                           ("validation", ValidationConfig)):
            if not isinstance(getattr(self, fname), cls):
                problems.append(f"{fname} must be a {cls.__name__}")
        for fname in ("max_steps", "checkpoint_every", "log_every", "num_workers"):
            value = getattr(self, fname)
            if not _is_int(value) or value < 1:
                problems.append(f"{fname}={value!r}: must be a positive int")
        if self.num_to_keep is not None and (not _is_int(self.num_to_keep) or self.num_to_keep < 1):
            problems.append(f"num_to_keep={self.num_to_keep!r}: must be a positive int or null")
        if not _is_number(self.cpus_per_worker) or self.cpus_per_worker <= 0:
            problems.append(f"cpus_per_worker={self.cpus_per_worker!r}: must be > 0")
        if not _is_number(self.stall_timeout_s) or self.stall_timeout_s < 0:
            problems.append(f"stall_timeout_s={self.stall_timeout_s!r}: must be a number >= 0 (0: no watchdog)")
        if not _is_int(self.max_failures) or self.max_failures < 0:
            problems.append(f"max_failures={self.max_failures!r}: must be an int >= 0")
        if (self.fail_at_step is None) != (self.fail_marker is None):
            problems.append("fail_at_step and fail_marker go together (fault injection for tests)")
        if self.fail_at_step is not None and (not _is_int(self.fail_at_step) or self.fail_at_step < 1):
            problems.append(f"fail_at_step={self.fail_at_step!r}: must be a positive int")
        _problems_to_error("TrainConfig", problems)

    @property
    def run_uri(self) -> str:
        """``<storage_path>/<name>``: where Ray Train writes this run's checkpoints."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def final_uri(self) -> str:
        """Where the final full model is exported."""
        return self.export_uri or f"{self.run_uri}/final"

    @property
    def decay_steps(self) -> int:
        """Step at which the learning rate reaches 0."""
        return self.optim.decay_steps or self.max_steps
