"""Typed configuration of the training pipeline (``jobs.train``, ``pipelines.training.run``).

Model hyperparameters live in ``vrshq/config.py``; this file holds the *training* settings: the
model preset and trainable set, the optimiser and schedule (method §6), clip sampling (method §1.4),
the data and validation splits, checkpointing, Ray Train scaling and fault tolerance. Every field is
read by the pipeline. Each config lists its problems (``problems()``) and ``__post_init__`` raises them all
in one ``vrshq.validation.ConfigError``.

Example:
    >>> cfg = TrainConfig(storage_path="/tmp/runs", data=TrainDataConfig(root="/data/ReVOS", split="train"))
    >>> cfg.optim.lr, cfg.optim.betas, cfg.optim.warmup_steps, cfg.optim.clip_grad_norm
    (0.0003, (0.9, 0.95), 100, 1.0)
    >>> cfg.run_uri
    '/tmp/runs/vrshq-train'
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vrshq.presets import PRESETS, is_function_path, preset_config
from vrshq.validation import is_int, is_number, range_problems, Validated

__all__ = [
    "ModelSpec",
    "OptimConfig",
    "SamplingConfig",
    "TrainConfig",
    "TrainDataConfig",
    "ValidationConfig",
    "model_config_from_spec",
]

_TRAINABLE = ("all", "lora")
_FORMATS = ("revos", "mevis")




@dataclass(frozen=True)
class ModelSpec(Validated):
    """Which model trains and what of it trains (method §6)."""

    preset: str = field(
        default="tiny",
        metadata={"help": f"model preset (vrshq.presets.PRESETS): {' | '.join(PRESETS)}, or "
                          "package.module:function returning a VrshqConfig"},
    )
    trainable: str = field(default="all", metadata={"help": "all (from scratch, no LoRA) | lora (method §6)"})
    object_weight: float | None = field(
        default=None,
        metadata={"help": "object-presence loss weight (null: the preset's; > 0 for from-scratch, "
                          "docs/research/learnability.md)"},
    )
    init_checkpoint: str | None = field(
        default=None, metadata={"help": "full checkpoint to start from (vrshq.checkpoint); null: random init"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random init (the same on every worker)"})
    train_window: int | None = field(
        default=None,
        metadata={"help": "SAM2 frames per expression in training (null: the preset's, 3 as in the method; longer "
                          "windows are a from-scratch aid that trains the memory path over longer distances)"},
    )

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = []
        if self.train_window is not None and (not is_int(self.train_window) or self.train_window < 1):
            problems.append(f"train_window={self.train_window!r}: must be a positive int or null")
        if self.preset not in PRESETS and not is_function_path(self.preset):
            problems.append(f"preset={self.preset!r}: must be one of {list(PRESETS)} or a "
                            "package.module:function path")
        if self.trainable not in _TRAINABLE:
            problems.append(f"trainable={self.trainable!r}: must be one of {list(_TRAINABLE)}")
        if self.object_weight is not None and (not is_number(self.object_weight) or self.object_weight < 0):
            problems.append(f"object_weight={self.object_weight!r}: must be a finite number >= 0 or null")
        if not is_int(self.seed):
            problems.append(f"seed={self.seed!r}: must be an int")
        return problems


def model_config_from_spec(spec: ModelSpec):
    """The ``VrshqConfig`` of a preset with the spec's trainable set and object weight applied."""
    cfg = preset_config(spec.preset)
    cfg = dataclasses.replace(cfg, trainable=dataclasses.replace(cfg.trainable, mode=spec.trainable))
    if spec.object_weight is not None:
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, object_weight=float(spec.object_weight)))
    if spec.train_window is not None:
        cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, train_window=spec.train_window))
    return cfg


@dataclass(frozen=True)
class OptimConfig(Validated):
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

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = []
        for name in ("lr", "sam2_lr", "text_lr"):
            value = getattr(self, name)
            if value is None and name != "lr":
                continue
            if not is_number(value) or value <= 0:
                problems.append(f"{name}={value!r}: must be a finite number > 0")
        if (
            not isinstance(self.betas, tuple)
            or len(self.betas) != 2
            or not all(is_number(b) and 0 <= b < 1 for b in self.betas)
        ):
            problems.append(f"betas={self.betas!r}: must be two numbers in [0, 1)")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay!r}: must be >= 0")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            problems.append(f"warmup_steps={self.warmup_steps!r}: must be an int >= 0")
        if self.decay_steps is not None and (not is_int(self.decay_steps) or self.decay_steps < 1):
            problems.append(f"decay_steps={self.decay_steps!r}: must be a positive int or null")
        if not is_int(self.grad_accum_steps) or self.grad_accum_steps < 1:
            problems.append(f"grad_accum_steps={self.grad_accum_steps!r}: must be a positive int")
        if not is_number(self.clip_grad_norm) or self.clip_grad_norm < 0:
            problems.append(f"clip_grad_norm={self.clip_grad_norm!r}: must be >= 0 (0 disables clipping)")
        return problems


@dataclass(frozen=True)
class SamplingConfig(Validated):
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

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = []
        if not (is_int(self.min_frames) and is_int(self.max_frames) and 1 <= self.min_frames <= self.max_frames):
            problems.append(f"min_frames/max_frames=({self.min_frames!r}, {self.max_frames!r}): need 1 <= min <= max")
        if not is_int(self.max_expressions) or self.max_expressions < 1:
            problems.append(f"max_expressions={self.max_expressions!r}: must be a positive int")
        if not isinstance(self.expression_types, tuple) or not self.expression_types or not set(
            self.expression_types
        ) <= {0, 1, 2}:
            problems.append(f"expression_types={self.expression_types!r}: must be a non-empty subset of (0, 1, 2)")
        if not is_int(self.min_video_frames) or self.min_video_frames < 1:
            problems.append(f"min_video_frames={self.min_video_frames!r}: must be a positive int")
        if not is_number(self.image_ratio) or not 0 <= self.image_ratio <= 1:
            problems.append(f"image_ratio={self.image_ratio!r}: must be a number in [0, 1]")
        if not isinstance(self.image_expression_types, tuple) or not self.image_expression_types or not set(
            self.image_expression_types
        ) <= {0, 1, 2}:
            problems.append(
                f"image_expression_types={self.image_expression_types!r}: must be a non-empty subset of (0, 1, 2)"
            )
        return problems


@dataclass(frozen=True)
class TrainDataConfig(Validated):
    """The training split, read by ``vrshq.data`` readers (local or any fsspec URI)."""

    format: str = field(default="revos", metadata={"help": "dataset layout: revos | mevis"})
    root: str = field(default="", metadata={"help": "dataset root URI (local path or s3://...)"})
    split: str = field(default="train", metadata={"help": "split name"})
    videos_per_batch: int = field(default=1, metadata={"help": "clips per micro-batch and worker"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shuffle_seed: int = field(default=0, metadata={"help": "seed of the per-epoch video order and clip draws"})
    num_cpus_per_task: float = field(default=1.0, metadata={"help": "CPUs per clip-sampling task"})

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = []
        if self.format not in _FORMATS:
            problems.append(f"format={self.format!r}: must be one of {list(_FORMATS)}")
        if not isinstance(self.root, str) or not self.root:
            problems.append("root is required (the training dataset root URI)")
        if not isinstance(self.split, str) or not self.split:
            problems.append("split must be non-empty")
        problems += range_problems(self, ints=(("videos_per_batch", 1),))
        if not isinstance(self.sampling, SamplingConfig):
            problems.append("sampling must be a SamplingConfig")
        if not is_int(self.shuffle_seed):
            problems.append(f"shuffle_seed={self.shuffle_seed!r}: must be an int")
        if not is_number(self.num_cpus_per_task) or self.num_cpus_per_task <= 0:
            problems.append(f"num_cpus_per_task={self.num_cpus_per_task!r}: must be > 0")
        return problems


@dataclass(frozen=True)
class ValidationConfig(Validated):
    """Held-out J&F through the inference path (``VrshqModel.segment_video`` + ``vrshq.metrics``)."""

    every_steps: int = field(default=0, metadata={"help": "validate every N steps and at the end (0: never)"})
    format: str = field(default="revos", metadata={"help": "dataset layout: revos | mevis"})
    root: str | None = field(default=None, metadata={"help": "held-out dataset root URI"})
    split: str = field(default="valid", metadata={"help": "held-out split"})
    max_videos: int | None = field(default=None, metadata={"help": "first N videos only (null: all)"})
    expression_types: tuple[int, ...] = field(
        default=(0, 1), metadata={"help": "type_ids scored (ReVOS excludes type 2)"}
    )

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = []
        if not is_int(self.every_steps) or self.every_steps < 0:
            problems.append(f"every_steps={self.every_steps!r}: must be an int >= 0")
        if self.format not in _FORMATS:
            problems.append(f"format={self.format!r}: must be one of {list(_FORMATS)}")
        if self.every_steps and not self.root:
            problems.append("root is required when every_steps > 0")
        if self.max_videos is not None and (not is_int(self.max_videos) or self.max_videos < 1):
            problems.append(f"max_videos={self.max_videos!r}: must be a positive int or null")
        if not isinstance(self.expression_types, tuple) or not set(self.expression_types) <= {0, 1, 2}:
            problems.append(f"expression_types={self.expression_types!r}: must be a subset of (0, 1, 2)")
        return problems


@dataclass(frozen=True)
class TrainConfig(Validated):
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
    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
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
        problems += range_problems(
            self, ints=(("max_steps", 1), ("checkpoint_every", 1), ("log_every", 1), ("num_workers", 1),
                        ("num_to_keep", 1), ("max_failures", 0)), optional=("num_to_keep",))
        if not is_number(self.cpus_per_worker) or self.cpus_per_worker <= 0:
            problems.append(f"cpus_per_worker={self.cpus_per_worker!r}: must be > 0")
        if not is_number(self.stall_timeout_s) or self.stall_timeout_s < 0:
            problems.append(f"stall_timeout_s={self.stall_timeout_s!r}: must be a number >= 0 (0: no watchdog)")
        return problems

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
