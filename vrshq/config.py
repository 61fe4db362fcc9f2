"""Typed, frozen configuration of the whole VRS-HQ model.

`VrshqConfig` groups the sub-configs of the vision path (`vrshq.vision_config`), the SAM2 path
(`vrshq.sam2_config`) and the ones defined here: the LLaMA LLM, the method constants, the loss
weights and the trainable set. Every VRS-HQ constant is a named field whose comment cites its section
of the method reference in `docs/model.md`. Presets live in `vrshq.builders`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from vrshq.sam2_config import Sam2Config
from vrshq.validation import int_problems, range_problems, type_problem, Validated
from vrshq.vision_config import AnchorConfig, VisionTowerConfig

__all__ = [
    "LlmConfig",
    "LossConfig",
    "MethodConfig",
    "TrainableConfig",
    "VrshqConfig",
]

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LlmConfig(Validated):
    """The LLaMA language model (`transformers.LlamaForCausalLM`) and its tokenizer (method §0, §1.1).

    Attributes:
        vocab_size: base vocabulary size before `[SEG]`/`[TAK]` (32000 for LLaMA, method §1.1); the
            built embedding has `vocab_size + 2` rows.
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
            max_position_embeddings, rms_norm_eps, rope_theta: `LlamaConfig` fields (LLaMA-7B: 4096,
            11008, 32, 32, 32; Vicuna-v1.5 positions/eps; read them from the checkpoint's config.json).
        attn_implementation: "sdpa" (PyTorch scaled-dot-product attention) or "eager".
        tokenizer: "llama" = the real LLaMA tokenizer read from `tokenizer_path`; "tiny" = built in code
            (`vrshq.model.tokenizer.build_tiny_tokenizer`).
        tokenizer_path: local folder of the LLaMA tokenizer; None builds the model without a tokenizer
            (e.g. on the meta device) with `[SEG]`/`[TAK]` at ids `vocab_size`, `vocab_size + 1`.
        gradient_checkpointing: recompute LLaMA activations in training (on in the official run, §6).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    tokenizer: Literal["llama", "tiny"] = "llama"
    tokenizer_path: str | None = None
    gradient_checkpointing: bool = False

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings")
        problems = int_problems(self, sizes)
        problems += range_problems(self, non_negative=("rms_norm_eps", "rope_theta"))
        if self.attn_implementation not in ("sdpa", "eager"):
            problems.append(f"attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}")
        if self.tokenizer not in ("llama", "tiny"):
            problems.append(f"tokenizer must be 'llama' or 'tiny', got {self.tokenizer!r}")
        if self.tokenizer_path is not None and (not isinstance(self.tokenizer_path, str) or not self.tokenizer_path):
            problems.append(f"tokenizer_path must be a non-empty local path or None, got {self.tokenizer_path!r}")
        elif self.tokenizer == "tiny" and self.tokenizer_path is not None:
            problems.append("tokenizer='tiny' is built in code; tokenizer_path must be None")
        if problems:  # the head checks below need valid sizes
            return problems
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}"
            )
        elif (self.hidden_size // self.num_attention_heads) % 2:
            problems.append(f"the head size {self.hidden_size // self.num_attention_heads} must be even (RoPE)")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        return problems


@dataclass(frozen=True)
class MethodConfig(Validated):
    """The VRS-HQ method constants; defaults are the official values.

    Attributes:
        tda_alpha: TAK' = TAK + alpha * Σ w_t SEG_t (method §3; 0.1, formerly 0.25).
        max_frames: frames fed to the MLLM at inference, `max_image_token` (method §1.4, hard-coded 12).
        train_window: SAM2 frames per expression in training around the keyframe (method §4, 3). Longer
            windows (a from-scratch aid, not the method) train the memory path over longer distances.
        tks_sam_weight: weight of softmax(object-score logits) in the inference keyframe score (method §4, 1.0).
        tks_token_weight: weight of the TDA weights in the inference keyframe score (method §4, 1.0).
        seg_embed_dim: output of the shared SEG/TAK MLP = SAM2 prompt dimension (method §2, 256).
        seg_head_dropout: dropout after the MLP (method §2, 0.0).
        mask_threshold: final masks are logits > this (method §5.3 step 6, 0).
        train_num_frames: (min, max) clip length T of a training sample (method §1.4, "8,12").
    """

    tda_alpha: float = 0.1
    max_frames: int = 12
    train_window: int = 3
    tks_sam_weight: float = 1.0
    tks_token_weight: float = 1.0
    seg_embed_dim: int = 256
    seg_head_dropout: float = 0.0
    mask_threshold: float = 0.0
    train_num_frames: tuple[int, int] = (8, 12)

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        problems = range_problems(self, non_negative=("tda_alpha", "tks_sam_weight", "tks_token_weight"))
        problems += int_problems(self, ("train_window", "seg_embed_dim"))
        problems += int_problems(self, ("max_frames",), minimum=2)  # stride ceil(T/(max_frames-1))
        if not problems and self.tks_sam_weight == 0 and self.tks_token_weight == 0:
            problems.append("tks_sam_weight and tks_token_weight cannot both be 0")
        if not isinstance(self.seg_head_dropout, (int, float)) or not 0 <= self.seg_head_dropout < 1:
            problems.append(f"seg_head_dropout must be in [0, 1), got {self.seg_head_dropout!r}")
        if not isinstance(self.mask_threshold, (int, float)) or not math.isfinite(self.mask_threshold):
            problems.append(f"mask_threshold must be finite, got {self.mask_threshold!r}")
        lo_hi = self.train_num_frames
        if (
            not isinstance(lo_hi, tuple)
            or len(lo_hi) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in lo_hi)
            or not isinstance(self.train_window, int)
            or not self.train_window <= lo_hi[0] <= lo_hi[1]
        ):
            problems.append(f"train_num_frames must be (min, max) ints with train_window <= min <= max, got {lo_hi!r}")
        return problems


@dataclass(frozen=True)
class LossConfig(Validated):
    """Loss weights and DICE constants (method §6).

    Attributes:
        ce_weight, bce_weight, dice_weight: 1.0, 2.0, 0.5 (argparse defaults of the official train.py).
        object_weight: object-presence BCE on SAM2 object scores; 0 in the method, > 0 for from-scratch
            training (docs/research/learnability.md).
        dice_scale, dice_eps: the /1000 scaling and 1e-6 of the DICE loss.
    """

    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    object_weight: float = 0.0
    dice_scale: float = 1000.0
    dice_eps: float = 1e-6

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        return range_problems(
            self, non_negative=("ce_weight", "bce_weight", "dice_weight", "object_weight", "dice_eps"),
            positive=("dice_scale",))


@dataclass(frozen=True)
class TrainableConfig(Validated):
    """Which parameters train (method §6).

    Attributes:
        mode: "lora" = the official set: LoRA on the LLaMA q/v projections, plus fully trainable
            `lm_head`, `embed_tokens`, the SAM2 mask decoder (with conv_s0/conv_s1) and the seg head;
            "all" = every parameter trains (from-scratch tiny models, no LoRA);
            "none" = everything frozen (inference).
        lora_r, lora_alpha, lora_dropout: 8, 16, 0.05, bias none (method §6).
        lora_target_modules: LLaMA linear layers that get LoRA ("q_proj", "v_proj").
    """

    mode: Literal["lora", "all", "none"] = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        problems = []
        if self.mode not in ("lora", "all", "none"):
            problems.append(f"mode must be 'lora', 'all' or 'none', got {self.mode!r}")
        problems += int_problems(self, ("lora_r", "lora_alpha"))
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not isinstance(self.lora_target_modules, tuple) or not self.lora_target_modules:
            problems.append(f"lora_target_modules must be a non-empty tuple of names, got {self.lora_target_modules!r}")
        return problems


@dataclass(frozen=True)
class VrshqConfig(Validated):
    """Everything needed to build a `VrshqModel`.

    Attributes:
        vision: the MLLM's CLIP-224 tower, DPC-KNN merge and projector (method §1.6).
        anchor: the CLIP-336 anchor-frame scorer (method §1.4).
        llm: the LLaMA LLM and tokenizer.
        sam2: the SAM2 model (method §5).
        method: TDA/TKS/frame constants.
        loss: loss weights (method §6).
        trainable: trainable parameter set (method §6).
        autocast_dtype: compute dtype of autocast on CUDA (bf16 in the official code, method §5.3); CPU
            always runs float32.
        name: preset name recorded in outputs ("vrshq-7b", "tiny").
    """

    vision: VisionTowerConfig
    anchor: AnchorConfig
    llm: LlmConfig
    sam2: Sam2Config
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    autocast_dtype: str = "bfloat16"
    name: str = "custom"

    def problems(self) -> list[str]:
        """Every problem of these fields and of how the parts fit together (``vrshq.validation``)."""
        problems = []
        for name, cls in (
            ("vision", VisionTowerConfig),
            ("anchor", AnchorConfig),
            ("llm", LlmConfig),
            ("sam2", Sam2Config),
            ("method", MethodConfig),
            ("loss", LossConfig),
            ("trainable", TrainableConfig),
        ):
            value = getattr(self, name)
            if not isinstance(value, cls):
                problems.append(type_problem(f"{name} must be a {cls.__name__}, got {type(value).__name__}"))
        if self.autocast_dtype not in _DTYPES:
            problems.append(f"autocast_dtype must be one of {_DTYPES}, got {self.autocast_dtype!r}")
        if not isinstance(self.name, str) or not self.name:
            problems.append(f"name must be a non-empty string, got {self.name!r}")
        if problems:  # the checks below read the parts
            return problems
        if self.vision.projector_out_dim != self.llm.hidden_size:
            problems.append(
                f"vision.projector_out_dim={self.vision.projector_out_dim} must equal "
                f"llm.hidden_size={self.llm.hidden_size} (the projector feeds the LLM)"
            )
        if self.anchor.max_frames != self.method.max_frames:
            problems.append(
                f"anchor.max_frames={self.anchor.max_frames} and method.max_frames={self.method.max_frames} "
                "must agree (both are the MLLM frame cap of method §1.4)"
            )
        return problems
