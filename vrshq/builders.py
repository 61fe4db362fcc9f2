"""The builder of `VrshqModel`; the preset configs it builds from live in `vrshq.presets` (re-exported here).

* `build_vrshq(cfg, *, device=None, dtype=None)` - builds every part (random init; weights are loaded
  afterwards by the checkpoint code). `device=torch.device("meta")` builds without allocating memory.
"""

from __future__ import annotations

import torch

from vrshq.config import LlmConfig, VrshqConfig
from vrshq.model.tokenizer import TINY_EXPRESSION_WORDS, build_tiny_tokenizer, load_llama_tokenizer
from vrshq.model.tokens import VrshqTokenIds, add_vrshq_tokens
from vrshq.presets import PRESETS, preset_config, tiny_config, vrshq_7b_config, vrshq_7b_tinytok_config

__all__ = ["PRESETS", "build_vrshq", "preset_config", "tiny_config", "vrshq_7b_config", "vrshq_7b_tinytok_config"]

_NUM_ADDED_TOKENS = 2  # [SEG] and [TAK] (method §1.1)


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
