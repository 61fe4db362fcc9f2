"""Presets and the builder of `VrshqModel` (thin functions of literal sizes, torchtune style).

* `vrshq_7b_config()` - the official sizes: CLIP ViT-L/14-224 tower + 112 tokens + Linear(1024, 4096),
  LLaMA-7B (32 layers, hidden 4096, vocab 32000 + 2), shared MLP 4096 -> 4096 -> 256, SAM 2.0 Hiera-L at
  1024 px, CLIP ViT-L/14-336 anchor.
* `vrshq_7b_tinytok_config()` - the official sizes with the tiny tokenizer built in code: a random-init
  7B model that can run `segment_video` without LLaMA tokenizer files (benchmarks, GPU smoke runs).
* `tiny_config()` - the same classes at toy sizes for CPU tests and from-scratch experiments.
* `build_vrshq(cfg, *, device=None, dtype=None)` - builds every part (random init; weights are loaded
  afterwards by the checkpoint code). `device=torch.device("meta")` builds without allocating memory.
"""

from __future__ import annotations

import dataclasses

import torch

from vrshq.config import LlmConfig, LossConfig, MethodConfig, TrainableConfig, VrshqConfig
from vrshq.sam2_config import sam2_hiera_large_vrshq, sam2_tiny
from vrshq.model.tokenizer import TINY_EXPRESSION_WORDS, build_tiny_tokenizer, load_llama_tokenizer
from vrshq.model.tokens import VrshqTokenIds, add_vrshq_tokens
from vrshq.vision_config import clip_vit_l14_224_tower, clip_vit_l14_336_anchor, tiny_anchor, tiny_vision_tower

__all__ = ["build_vrshq", "tiny_config", "vrshq_7b_config", "vrshq_7b_tinytok_config"]

_NUM_ADDED_TOKENS = 2  # [SEG] and [TAK] (method §1.1)


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


def _llm_tokenizer(cfg: LlmConfig):
    if cfg.tokenizer == "tiny":
        return build_tiny_tokenizer()
    if cfg.tokenizer_path is not None:
        return load_llama_tokenizer(cfg.tokenizer_path)
    return None


def _clip_tokenizer(cfg: VrshqConfig):
    if cfg.anchor.resolved_tokenizer_path is not None:
        return None  # AnchorFrameSampler loads it from the path
    from vrshq.model.clip_preprocess import build_tiny_clip_tokenizer

    # Random-init anchors (tiny models, meta builds) get a word-level stand-in tokenizer.
    return build_tiny_clip_tokenizer(TINY_EXPRESSION_WORDS)


def _build_sam2(segmenter_cls, cfg: VrshqConfig, device: torch.device):
    if device.type != "meta":
        return segmenter_cls(cfg.sam2)
    # sam2's Hiera calls Tensor.item() in __init__ (drop-path schedule), which meta tensors refuse:
    # build it on the CPU and move the parameters to the meta device.
    with torch.device("cpu"):
        return segmenter_cls(cfg.sam2).to(device)


def build_vrshq(
    cfg: VrshqConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    tokenizer=None,
    clip_tokenizer=None,
):
    """Build a `VrshqModel` from a config (random init for everything without a local weight path).

    Args:
        cfg: the model config (`vrshq_7b_config()`, `tiny_config()`, or custom).
        device: where to create the parameters (default CPU); `torch.device("meta")` allocates nothing.
        dtype: parameter dtype (default float32; bf16 halves memory on GPU).
        tokenizer: an LLM tokenizer to use instead of the configured one (`[SEG]`/`[TAK]` are added).
        clip_tokenizer: a CLIP tokenizer for the anchor instead of the configured one.

    Returns:
        The `VrshqModel`, in eval mode, with `cfg.trainable` applied.

    Raises:
        ValueError: if the tokenizer does not fit the configured vocabulary.

    Example:
        >>> model = build_vrshq(tiny_config())
        >>> model.mllm.llm.config.num_hidden_layers
        2
    """
    from vrshq.model.frame_sampling import AnchorFrameSampler
    from vrshq.model.mllm import VrshqMLLM, build_llama
    from vrshq.model.sam2_segmenter import Sam2Segmenter
    from vrshq.model.seg_head import SegHead
    from vrshq.model.trainable import configure_trainable
    from vrshq.model.vision import VisualTokenizer
    from vrshq.model.vrshq_model import VrshqModel

    if not isinstance(cfg, VrshqConfig):
        raise TypeError(f"cfg must be a VrshqConfig, got {type(cfg).__name__}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    llm_cfg = cfg.llm
    num_embeddings = llm_cfg.vocab_size + _NUM_ADDED_TOKENS
    if tokenizer is None:
        tokenizer = _llm_tokenizer(llm_cfg)
    if tokenizer is not None:
        token_ids = add_vrshq_tokens(tokenizer)
        if len(tokenizer) > num_embeddings:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens with [SEG]/[TAK] but LlmConfig.vocab_size="
                f"{llm_cfg.vocab_size} gives only {num_embeddings} embedding rows; set vocab_size to "
                f"{len(tokenizer) - _NUM_ADDED_TOKENS}"
            )
    else:
        token_ids = VrshqTokenIds(seg_token_id=llm_cfg.vocab_size, tak_token_id=llm_cfg.vocab_size + 1)
    if clip_tokenizer is None:
        clip_tokenizer = _clip_tokenizer(cfg)

    with device:
        vision = VisualTokenizer(cfg.vision)
        anchor = AnchorFrameSampler(cfg.anchor, tokenizer=clip_tokenizer)
        llm = build_llama(
            vocab_size=num_embeddings,
            hidden_size=llm_cfg.hidden_size,
            intermediate_size=llm_cfg.intermediate_size,
            num_hidden_layers=llm_cfg.num_hidden_layers,
            num_attention_heads=llm_cfg.num_attention_heads,
            num_key_value_heads=llm_cfg.num_key_value_heads,
            max_position_embeddings=llm_cfg.max_position_embeddings,
            rms_norm_eps=llm_cfg.rms_norm_eps,
            rope_theta=llm_cfg.rope_theta,
            attn_implementation=llm_cfg.attn_implementation,
        )
        mllm = VrshqMLLM(llm, token_ids=token_ids, tokens_per_frame=cfg.vision.tokens_per_frame)
        seg_head = SegHead(llm_cfg.hidden_size, cfg.method.seg_embed_dim, dropout=cfg.method.seg_head_dropout)
        sam2 = _build_sam2(Sam2Segmenter, cfg, device)
        model = VrshqModel(
            cfg=cfg, vision=vision, anchor=anchor, mllm=mllm, seg_head=seg_head, sam2=sam2, tokenizer=tokenizer
        )
        configure_trainable(model, cfg.trainable)
    if llm_cfg.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if dtype is not None:
        model.to(dtype=dtype)
    return model.eval()
