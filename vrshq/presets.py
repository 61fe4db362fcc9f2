"""The model presets: one registry of names and the thin builders of their configs (torchtune style).

* `vrshq_7b_config()` - the official sizes: CLIP ViT-L/14-224 tower + 112 tokens + Linear(1024, 4096),
  LLaMA-7B (32 layers, hidden 4096, vocab 32000 + 2), shared MLP 4096 -> 4096 -> 256, SAM 2.0 Hiera-L at
  1024 px, CLIP ViT-L/14-336 anchor.
* `vrshq_7b_tinytok_config()` - the official sizes with the tiny tokenizer built in code: a random-init
  7B model that can run `segment_video` without LLaMA tokenizer files (benchmarks, GPU smoke runs).
* `tiny_config()` - the same classes at toy sizes for CPU tests and from-scratch experiments.

:data:`PRESETS` maps each public name to its builder; inference, training, the demo and the benchmarks all
read it, so a preset is named the same way everywhere. Experiments outside the product give their own
builders as ``package.module:function`` paths (:func:`preset_config`), so the library never imports them.
This module imports only the config modules: checking a preset name costs no torch import.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

from vrshq.config import LlmConfig, LossConfig, MethodConfig, TrainableConfig, VrshqConfig
from vrshq.sam2_config import sam2_hiera_large_vrshq, sam2_tiny
from vrshq.vision_config import clip_vit_l14_224_tower, clip_vit_l14_336_anchor, tiny_anchor, tiny_vision_tower

__all__ = [
    "PRESETS",
    "is_function_path",
    "preset_config",
    "tiny_config",
    "vrshq_7b_config",
    "vrshq_7b_tinytok_config",
]


def vrshq_7b_config(
    *,
    tokenizer_path: str | None = None,
    clip_path: str | None = None,
    anchor_clip_path: str | None = None,
    sam2_checkpoint_uri: str | None = None,
    trainable: str = "none",
    select_layer: int = -2,
) -> VrshqConfig:
    """The official VRS-HQ sizes (Chat-UniVi-7B + SAM 2.0 Hiera-L), method §0-§6.

    Args:
        tokenizer_path: local folder with the LLaMA tokenizer of the released weights (None: no tokenizer,
            e.g. for a meta-device build).
        clip_path: local CLIP ViT-L/14 (224) snapshot for the MLLM tower, or None (random init).
        anchor_clip_path: local CLIP ViT-L/14-336 snapshot for the anchor, or None.
        sam2_checkpoint_uri: SAM2 weights, or None.
        trainable: "none" (inference with merged weights), "lora" (the official training recipe) or "all".
        select_layer: `mm_vision_select_layer` from the checkpoint config (Chat-UniVi: -2).
    """
    return VrshqConfig(
        vision=clip_vit_l14_224_tower(weights_path=clip_path, select_layer=select_layer, projector_out_dim=4096),
        anchor=clip_vit_l14_336_anchor(weights_path=anchor_clip_path, max_frames=12),
        llm=LlmConfig(tokenizer="llama", tokenizer_path=tokenizer_path),
        sam2=sam2_hiera_large_vrshq(checkpoint_uri=sam2_checkpoint_uri),
        method=MethodConfig(),
        loss=LossConfig(),
        trainable=TrainableConfig(mode=trainable),
        name="vrshq-7b",
    )


def vrshq_7b_tinytok_config() -> VrshqConfig:
    """`vrshq_7b_config()` (random init) with the tiny word-level tokenizer built in code.

    A host without the LLaMA tokenizer files (a GPU benchmark machine without network) cannot run
    `segment_video` on `vrshq_7b_config()`. A random-init model does not care which tokenizer reads
    the prompt, and prompt lengths are dominated by the 112 visual tokens per frame (>= 1,100 of
    ~1,200 tokens), so every size and every timing stays that of the 7B model. The embedding table
    keeps the LLaMA vocabulary size (the tiny tokenizer uses its first rows).
    """
    cfg = vrshq_7b_config()
    return dataclasses.replace(
        cfg, llm=dataclasses.replace(cfg.llm, tokenizer="tiny", tokenizer_path=None), name="vrshq-7b-tinytok"
    )


def tiny_config(
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    sam2_image_size: int = 64,
    sam2_d_model: int = 64,
    trainable: str = "all",
    object_weight: float = 0.0,
    max_frames: int = 12,
) -> VrshqConfig:
    """Toy sizes with the same classes: 2-layer LLaMA (hidden 64), 56-px CLIP tower with 28 tokens per
    frame, tiny CLIP anchor, ~2M-parameter SAM2 at 64 px whose prompt size is `sam2_d_model`.

    The tokenizer is built in code (`build_tiny_tokenizer`); the LLM vocabulary is its size.
    """
    from vrshq.model.tokenizer import build_tiny_tokenizer

    vocab = len(build_tiny_tokenizer())
    return VrshqConfig(
        vision=tiny_vision_tower(projector_out_dim=hidden_size),
        anchor=tiny_anchor(max_frames=max_frames),
        llm=LlmConfig(
            vocab_size=vocab,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            tokenizer="tiny",
        ),
        sam2=sam2_tiny(image_size=sam2_image_size, d_model=sam2_d_model),
        method=MethodConfig(seg_embed_dim=sam2_d_model, max_frames=max_frames),
        loss=LossConfig(object_weight=object_weight),
        trainable=TrainableConfig(mode=trainable),
        name="tiny",
    )



#: Preset name -> the builder of its ``VrshqConfig`` (no arguments). Read-only: one registry for every job.
PRESETS: Mapping[str, Callable[[], VrshqConfig]] = MappingProxyType({
    "tiny": tiny_config,
    "vrshq-7b": vrshq_7b_config,
    # The 7B sizes, random init, with the tokenizer built in code (benchmarks without LLaMA files).
    "vrshq-7b-tinytok": vrshq_7b_tinytok_config,
})


def is_function_path(value: object) -> bool:
    """Whether ``value`` reads ``package.module:function`` (dotted identifiers, one colon).

    >>> is_function_path("research.presets:learnability_model_config"), is_function_path("tiny")
    (True, False)
    """
    if not isinstance(value, str) or value.count(":") != 1:
        return False
    module, func = value.split(":")
    return bool(module) and all(part.isidentifier() for part in module.split(".")) and func.isidentifier()


def preset_config(preset: str) -> VrshqConfig:
    """The ``VrshqConfig`` of a :data:`PRESETS` name, or of a ``package.module:function`` builder path.

    Raises:
        ValueError: ``preset`` is neither a known name nor a function path.

    Example:
        >>> preset_config("tiny").name
        'tiny'
    """
    if preset in PRESETS:
        return PRESETS[preset]()
    if not is_function_path(preset):
        raise ValueError(f"preset={preset!r}: must be one of {list(PRESETS)} or a package.module:function path")
    module_name, func_name = preset.split(":")
    return getattr(importlib.import_module(module_name), func_name)()
