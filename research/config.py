"""Typed configuration of the learnability run and its pretraining stages (``research.learnability``).

Stage 0 tracks (``research.track_pretrain``), stage V pretrains the vision tower (``research.vision_pretrain``),
stage G grounds the text path (``research.grounding_pretrain``). Each config lists its problems (``problems()``) and
``__post_init__`` raises them all in one ``vrshq.validation.ConfigError``, as the product's training configs do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vrshq.validation import is_int, is_number, range_problems, Validated

__all__ = [
    "LR_SCHEDULES",
    "TARGET_LOSSES",
    "GroundingPretrainConfig",
    "LearnabilityConfig",
    "TrackPretrainConfig",
    "VisionPretrainConfig",
    "focus_problems",
]

TARGET_LOSSES = ("bce", "softmax")
"""Stage G's losses on the target head (``GroundingPretrainConfig.target_loss``)."""
LR_SCHEDULES = ("linear", "constant")
"""Stage G's learning-rate schedules after the warm-up (``GroundingPretrainConfig.lr_schedule``)."""




def focus_problems(kinds: Any, share: Any) -> list[str]:
    """What is wrong with a focus setting (``pipelines.training.clip_sampling.focused_video``): kinds the synthetic grammar
    does not have, a share outside [0, 1], a share without kinds. Stage G's and stage 1's settings share it."""
    from vrshq.data.synthetic import EXPRESSION_KINDS

    problems = []
    if unknown := [k for k in kinds if k not in EXPRESSION_KINDS]:
        problems.append(f"focus_kinds={list(kinds)!r}: unknown kinds {unknown}, must be among {list(EXPRESSION_KINDS)}")
    if not is_number(share) or not 0 <= share <= 1:
        problems.append(f"focus_share={share!r}: must be a number in [0, 1]")
    elif share and not kinds:
        problems.append(f"focus_share={share}: needs focus_kinds")
    return problems


@dataclass(frozen=True)
class TrackPretrainConfig(Validated):
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

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = range_problems(
            self, ints=(("steps", 0), ("warmup_steps", 0), ("window", 2), ("clips_per_step", 1)),
            non_negative=("lr", "bce_weight", "dice_weight", "object_weight", "clip_grad_norm", "attribute_weight"))
        return problems


@dataclass(frozen=True)
class VisionPretrainConfig(Validated):
    """Stage V of the learnability run: pretraining of the random vision tower (``research.vision_pretrain``),
    what CLIP pretraining gives the real tower: patch features that say where they are and what covers them."""

    steps: int = field(default=0, metadata={"help": "optimiser steps (0: no vision tower stage, the tower stays random)"})
    videos_per_step: int = field(default=8, metadata={"help": "synthetic videos per step (all their frames)"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (warm-up, then linear decay to 0)"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    position_weight: float = field(default=4.0, metadata={"help": "weight of the patch-position regression"})
    probe_videos: int = field(default=16, metadata={"help": "videos of the position probe before and after"})
    log_every: int = field(default=100, metadata={"help": "log a line every N steps"})

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = range_problems(
            self, ints=(("steps", 0), ("warmup_steps", 0), ("videos_per_step", 1), ("probe_videos", 2),
                        ("log_every", 1)),
            non_negative=("lr", "position_weight"))
        return problems


@dataclass(frozen=True)
class GroundingPretrainConfig(Validated):
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

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = range_problems(
            self, ints=(("steps", 0), ("warmup_steps", 0), ("videos_per_step", 1), ("eval_every", 1),
                        ("heldout_videos", 1)))
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule={self.lr_schedule!r}: must be one of {list(LR_SCHEDULES)}")
        if self.target_loss not in TARGET_LOSSES:
            problems.append(f"target_loss={self.target_loss!r}: must be one of {list(TARGET_LOSSES)}")
        if not is_int(self.head_seed):
            problems.append(f"head_seed={self.head_seed!r}: must be an int")
        problems += range_problems(self, non_negative=("lr", "ce_weight", "clip_grad_norm"))
        problems += focus_problems(self.focus_kinds, self.focus_share)
        if not is_int(self.focus_steps) or self.focus_steps < 0:
            problems.append(f"focus_steps={self.focus_steps!r}: must be an int >= 0")
        if not is_number(self.focus_share_after) or not 0 <= self.focus_share_after <= 1:
            problems.append(f"focus_share_after={self.focus_share_after!r}: must be a number in [0, 1]")
        elif self.focus_share_after and not self.focus_steps:
            problems.append(f"focus_share_after={self.focus_share_after} has no effect without focus_steps "
                            "(focus_share holds for every step)")
        elif self.focus_share_after and not self.focus_kinds:
            problems.append(f"focus_share_after={self.focus_share_after}: needs focus_kinds")
        return problems


@dataclass(frozen=True)
class LearnabilityConfig(Validated):
    """Settings of the learnability run. The committed checkpoint's recipe (research/recipes/tiny_synthetic.yaml)
    sets the preset, the schedule and the from-scratch aids it used explicitly (e.g. ``preset: learn-256-pos``,
    ``track: {attribute_weight: 1, steps: 3200}``, ``expression_word_weight: 1``, ``ema_decay: 0.999``)."""

    out: str = field(metadata={"help": "output folder (local)"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | cuda:N"})
    steps: int = field(default=3000, metadata={"help": "optimiser steps of the whole schedule"})
    seed: int = field(default=0, metadata={"help": "seed of the init, the data and the held-out set"})
    preset: str = field(default="learn", metadata={"help": "model preset (research.presets.PRESETS, or a product preset such as tiny)"})
    resume: str | None = field(default=None, metadata={"help": "training checkpoint folder to continue from"})
    init_model: str | None = field(
        default=None, metadata={"help": "full model folder (e.g. an earlier model/) to start a new schedule from"}
    )
    videos_per_step: int = field(default=16, metadata={"help": "clips per optimiser step"})
    image_ratio: float = field(
        default=0.5,
        metadata={"help": "fraction of 1-frame image samples (SamplingConfig.image_ratio; the method mixes image "
                          "datasets in): short prompts on one frame teach the text -> SAM2 prompt path"},
    )
    expression_types: tuple[int, ...] = field(
        default=(0, 1),
        metadata={"help": "type_ids trained on and held out (0 referring, 1 reasoning, 2 no-target). Default: the "
                          "held-out task. Why not 2: a no-target expression (13%% of the generator's) trains the "
                          "object score to say 'absent'; while the text path is weak the model hedges and SAM2's "
                          "gate empties whole expressions that the held-out set scores"},
    )
    focus_kinds: tuple[str, ...] = field(
        default=(),
        metadata={"help": "stage 1: expression kinds that focused clips keep (e.g. hides_behind covers static); the "
                          "held-out videos stay the whole task"},
    )
    focus_share: float = field(
        default=0.0,
        metadata={"help": "stage 1: share of training clips that keep only the focus kinds' expressions "
                          "(pipelines.training.clip_sampling.focused_video; 0: every clip samples all of its video's "
                          "expressions). Why: the mask decoder sees the kinds it fails on more often"},
    )
    video_frames: int = field(default=16, metadata={"help": "frames per synthetic video"})
    video_size: int = field(default=64, metadata={"help": "synthetic video height and width"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate of the other parameters"})
    sam2_lr: float = field(default=1e-4, metadata={"help": "learning rate of SAM2 (learnability.md)"})
    text_lr: float = field(default=1e-3, metadata={"help": "learning rate of the text path (learnability.md)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    seg_head_init_gain: float = field(
        default=1.0,
        metadata={"help": "from-scratch aid, not the method: initial scale of the seg head output, the TAK token "
                          "SAM2 reads (research.aids.scale_seg_head_init); 1 = plain init"},
    )
    object_weight: float = field(default=0.5, metadata={"help": "object-presence loss weight"})
    tak_separation_weight: float = field(
        default=0.0,
        metadata={"help": "from-scratch aid, not the method: weight of the TAK separation loss "
                          "(research.aids.tak_separation_loss); 0 trains the method's losses only"},
    )
    expression_word_weight: float = field(
        default=0.0,
        metadata={"help": "from-scratch aid, not the method: weight of the expression-word loss "
                          "(research.aids.expression_word_loss: half of the TAK mirrors the expression's "
                          "words, as a pretrained LLM's would); 0 trains the method's losses only"},
    )
    train_window: int = field(
        default=3,
        metadata={"help": "SAM2 frames per expression in training (the method: 3). From-scratch aid, not the method: "
                          "a longer window trains the memory path over the distances that inference propagates "
                          "(held-out videos of 16 frames); costs one batched track_step per extra frame"},
    )
    train_keyframe: str = field(
        default="tda",
        metadata={"help": "stage 1's training keyframe: tda (the method: argmax of the TDA weights) | largest_target "
                          "(from-scratch aid, not the method: the frame of the largest ground-truth target; for "
                          "\"hides behind\" the TDA weights peak where the target is half hidden, "
                          "vrshq.model.tks.largest_target_keyframe)"},
    )
    ema_decay: float = field(
        default=0.0,
        metadata={"help": "evaluate and export an exponential moving average of the weights with this decay (e.g. "
                          "0.999; research.aids.WeightEma): held-out scores swing by ~0.05 between evaluations "
                          "a few dozen steps apart; 0 = the raw weights"},
    )
    track: TrackPretrainConfig = field(
        default_factory=TrackPretrainConfig,
        metadata={"help": "stage 0, tracking pretraining of SAM2 from ground-truth first-frame masks "
                          "(research.track_pretrain; what SA-V gives the real SAM2); runs from random init only"},
    )
    vision: VisionPretrainConfig = field(
        default_factory=VisionPretrainConfig,
        metadata={"help": "stage V, pretraining of the random vision tower on synthetic frames (pipelines."
                          "vision_pretrain; what CLIP pretraining gives the real tower); runs from random init only"},
    )
    grounding: GroundingPretrainConfig = field(
        default_factory=GroundingPretrainConfig,
        metadata={"help": "stage G, grounding pretraining of the text path without SAM2 (research.grounding_pretrain;"
                          " what MLLM pretraining gives the real LLM): TAK' learns to name the targets; runs from "
                          "random init only, after stage V"},
    )
    sam2_init: str | None = field(
        default=None,
        metadata={"help": "SAM2 weights to start from instead of stage 0 (e.g. an earlier run's "
                          "track_pretrain/sam2.safetensors, or a model folder such as checkpoints/tiny-synthetic: "
                          "its SAM2); give it again with --resume: the parts of SAM2 that do not train are not in "
                          "the training checkpoint"},
    )
    sam2_trainable: str | None = field(
        default=None,
        metadata={"help": "SAM2 parts that train with the text path: mask_decoder (the method's trainable set, §6: "
                          "a tracking-trained image encoder and memory path stay as they are) | all; null: "
                          "mask_decoder when SAM2 comes from stage 0 or sam2_init, else all"},
    )
    vision_trainable: bool = field(
        default=False,
        metadata={"help": "train the MLLM's vision tower too (stage 1): from scratch there is no pretrained CLIP, "
                          "and a frozen random tower's merged tokens carry little of where the shapes are "
                          "(measured: no gain in 1,800 steps, docs/research/learnability.md)"},
    )
    freeze_llm: bool = field(
        default=False,
        metadata={"help": "freeze the LLM and the visual projector in stage 1: of the text path only the seg head "
                          "trains, so the grounding that stage G taught the LLM stays as it is (the method trains "
                          "the LLM through LoRA only)"},
    )
    heldout_videos: int = field(default=32, metadata={"help": "held-out synthetic videos"})
    eval_every: int = field(default=500, metadata={"help": "held-out evaluation every N steps (and at the end)"})
    max_minutes: float | None = field(default=None, metadata={"help": "stop training after this wall time"})
    stop_at_step: int | None = field(
        default=None,
        metadata={"help": "end training at this step of the --steps schedule (the learning rate still decays "
                          "over --steps): the reproducible form of a run that --max-minutes stopped"},
    )
    data_workers: int = field(
        default=4,
        metadata={"help": "DataLoader processes generating videos; each builds whole batches from its share of the "
                          "stream, so the batches (not the videos) depend on this number: part of a run's recipe"},
    )
    log_every: int = field(default=25, metadata={"help": "log a line every N steps"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (null: torch default)"})

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = range_problems(self, ints=(("steps", 1), ("videos_per_step", 1), ("video_frames", 1),
                                              ("video_size", 1), ("heldout_videos", 1), ("eval_every", 1),
                                              ("log_every", 1)))
        if not isinstance(self.train_window, int) or isinstance(self.train_window, bool) or not 1 <= self.train_window <= 8:
            problems.append(f"train_window={self.train_window!r}: must be an int in [1, 8] (clips have >= 8 frames)")
        from research.aids import TRAIN_KEYFRAME_RULES

        if self.train_keyframe not in TRAIN_KEYFRAME_RULES:
            problems.append(f"train_keyframe={self.train_keyframe!r}: must be one of {list(TRAIN_KEYFRAME_RULES)}")
        if (not isinstance(self.expression_types, tuple) or not self.expression_types
                or not set(self.expression_types) <= {0, 1, 2}):
            problems.append(f"expression_types={self.expression_types!r}: must be a non-empty subset of (0, 1, 2)")
        if self.video_frames < 3:
            problems.append("video_frames must be >= 3 (the SAM2 training window)")
        if self.video_size < 32:
            problems.append("video_size must be >= 32 (synthetic scenes)")
        if not isinstance(self.data_workers, int) or self.data_workers < 0:
            problems.append(f"data_workers={self.data_workers!r}: must be an int >= 0")
        if not isinstance(self.seg_head_init_gain, (int, float)) or not 0 < self.seg_head_init_gain < 1e6:
            problems.append(f"seg_head_init_gain={self.seg_head_init_gain!r}: must be a number > 0")
        if not isinstance(self.tak_separation_weight, (int, float)) or not 0 <= self.tak_separation_weight < 1e6:
            problems.append(f"tak_separation_weight={self.tak_separation_weight!r}: must be a number >= 0")
        if not isinstance(self.image_ratio, (int, float)) or not 0 <= self.image_ratio <= 1:
            problems.append(f"image_ratio={self.image_ratio!r}: must be a number in [0, 1]")
        problems += focus_problems(self.focus_kinds, self.focus_share)
        if not isinstance(self.expression_word_weight, (int, float)) or not 0 <= self.expression_word_weight < 1e6:
            problems.append(f"expression_word_weight={self.expression_word_weight!r}: must be a number >= 0")
        if not isinstance(self.ema_decay, (int, float)) or not (self.ema_decay == 0 or 0 < self.ema_decay < 1):
            problems.append(f"ema_decay={self.ema_decay!r}: must be 0 (off) or in (0, 1)")
        if self.stop_at_step is not None and (not isinstance(self.stop_at_step, int) or isinstance(self.stop_at_step, bool)
                                              or not 1 <= self.stop_at_step <= self.steps):
            problems.append(f"stop_at_step={self.stop_at_step!r}: must be an int in [1, steps] or null")
        if self.max_minutes is not None and not self.max_minutes > 0:
            problems.append(f"max_minutes={self.max_minutes!r}: must be > 0 or null")
        if not self.out:
            problems.append("out is required")
        if self.resume and self.init_model:
            problems.append("give resume (continue a schedule) or init_model (new schedule), not both")
        if self.sam2_trainable not in (None, "mask_decoder", "all"):
            problems.append(f"sam2_trainable={self.sam2_trainable!r}: must be mask_decoder, all or null")
        if self.track.steps and self.track.window > self.video_frames:
            problems.append(f"track.window={self.track.window} exceeds video_frames={self.video_frames}")
        if self.freeze_llm and not (self.grounding.steps or self.init_model or self.resume):
            problems.append("freeze_llm would freeze a random LLM: give grounding.steps (stage G trains it first) or "
                            "init_model (a trained model)")
        if self.track.attribute_weight and not self.track.steps:
            problems.append(f"track.attribute_weight={self.track.attribute_weight} has no effect with track.steps=0 "
                            "(the aid is part of stage 0)")
        if (self.grounding.focus_share or self.grounding.focus_steps) and not self.grounding.steps:
            problems.append(f"grounding.focus_share={self.grounding.focus_share} / grounding.focus_steps="
                            f"{self.grounding.focus_steps} have no effect with grounding.steps=0 "
                            "(they shape stage G's clips)")
        return problems
