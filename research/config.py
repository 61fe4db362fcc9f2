"""Typed configuration of the learnability research's pretraining stages (``research.learnability``).

Stage 0 tracks (``research.track_pretrain``), stage V pretrains the vision tower (``research.vision_pretrain``),
stage G grounds the text path (``research.grounding_pretrain``). Each ``__post_init__`` collects every problem of
its config and raises one ``ValueError`` listing them, as the product's training configs do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LR_SCHEDULES",
    "TARGET_LOSSES",
    "GroundingPretrainConfig",
    "TrackPretrainConfig",
    "VisionPretrainConfig",
    "focus_problems",
]

TARGET_LOSSES = ("bce", "softmax")
"""Stage G's losses on the target head (``GroundingPretrainConfig.target_loss``)."""
LR_SCHEDULES = ("linear", "constant")
"""Stage G's learning-rate schedules after the warm-up (``GroundingPretrainConfig.lr_schedule``)."""


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


@dataclass(frozen=True)
class TrackPretrainConfig:
    """Stage 0 of the learnability run: tracking pretraining of SAM2 (``research.track_pretrain``)."""

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
    """Stage V of the learnability run: pretraining of the random vision tower (``research.vision_pretrain``),
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
    """Stage G of the learnability run: grounding pretraining of the text path (``research.grounding_pretrain``),
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
                          "(docs/research/learnability.md, \"Stage G learns motion\")"},
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
                          "referring expressions ~2x later (docs/research/learnability.md, \"Finer patches\")"},
    )
    lr_schedule: str = field(
        default="linear",
        metadata={"help": "linear: warm-up, then linear decay to 0 at the last step (the method's) | constant: "
                          "warm-up, then lr to the end, as the motion probe trains; a constant run's schedule does "
                          "not depend on steps, so raising steps continues it (docs/research/learnability.md, \"Stage G learns motion\")"},
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
