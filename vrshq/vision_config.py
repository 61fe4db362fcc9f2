"""Typed configs for the MLLM's visual path and the CLIP-336 anchor-frame scorer.

Three frozen dataclasses, each validated in ``__post_init__`` (``vrshq.validation``):

- :class:`TokenMergeConfig`: Chat-UniVi's parameter-free DPC-KNN merge (cluster counts and k per level).
- :class:`VisionTowerConfig`: the CLIP ViT tower of the MLLM (sizes, the hidden-state layer that is read,
  the projector's output size, its preprocessing and the merge config). ``tokens_per_frame`` is derived
  from the merge config; nothing else in vrshq may hard-code 112.
- :class:`AnchorConfig`: the CLIP ViT-L/14-336 text+vision model that picks the anchor frame per
  expression at inference, and the frame cap (method §1.4).

Presets are thin functions of literal hyperparameters (torchtune style): :func:`clip_vit_l14_224_tower`,
:func:`clip_vit_l14_336_anchor`, :func:`tiny_vision_tower`, :func:`tiny_anchor`.

Section numbers ("method §N") refer to the method reference in ``docs/model.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from vrshq.validation import int_problems, type_problem, Validated

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "AnchorConfig",
    "ClipImageConfig",
    "TokenMergeConfig",
    "VisionTowerConfig",
    "chat_univi_select_layer",
    "clip_vit_l14_224_tower",
    "clip_vit_l14_336_anchor",
    "effective_knn_k",
    "tiny_anchor",
    "tiny_vision_tower",
]

# OpenAI CLIP normalisation (transformers.image_utils.OPENAI_CLIP_MEAN / _STD), method §1.5.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _optional_path_problems(config: object, *names: str) -> list[str]:
    problems = []
    for name in names:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(type_problem(f"{name} must be a non-empty local directory path or None, got {value!r}"))
    return problems


def effective_knn_k(knn_k: int, num_clusters: int) -> int:
    """The k that Chat-UniVi's ``CTM.forward`` actually uses for one merge level.

    ``CTM`` replaces k by ``min(3, max(num_clusters // 2, 1))`` when k exceeds the cluster count
    (``ChatUniVi/model/cluster.py: CTM.forward``). It never triggers for the real 64/32/16 levels
    (k 5/3/3) but does for tiny presets, so the rule is kept to stay faithful at every size.

    Example:
        >>> effective_knn_k(5, 64), effective_knn_k(3, 2)
        (5, 1)
    """
    return min(3, max(num_clusters // 2, 1)) if knn_k > num_clusters else knn_k


@dataclass(frozen=True)
class TokenMergeConfig(Validated):
    """Chat-UniVi spatial DPC-KNN merge levels (method §1.6).

    Level ``i`` clusters the tokens of level ``i-1`` (the CLIP patch tokens for level 0) into
    ``cluster_counts[i]`` clusters using ``knn_k[i]`` nearest neighbours for the local density; a
    cluster's feature is the mean of its members. The outputs of all levels are concatenated, so a
    frame yields ``sum(cluster_counts)`` tokens (64 + 32 + 16 = 112 for Chat-UniVi).

    Attributes:
        cluster_counts: clusters per level, e.g. ``(64, 32, 16)`` (``spatial_cluster_rate0..2``).
        centroid_position_scale: from-scratch aid, not Chat-UniVi (0 = off, the method): every token also gets
            this times the fixed 2-D sinusoidal embedding of its cluster's centroid on the patch grid, averaged
            with the same assignment as the features, so the clusters themselves stay those of the features.
            Why: a pretrained CLIP's patch features say where they are; a random tower's hardly do (the merged
            tokens' centroid R^2 0.06), and without where, motion ("the fastest") cannot be read.
        knn_k: k of the k-nearest-neighbour density per level, e.g. ``(5, 3, 3)`` (``CTM(k=...)``).
    """

    cluster_counts: tuple[int, ...] = (64, 32, 16)
    knn_k: tuple[int, ...] = (5, 3, 3)
    centroid_position_scale: float = 0.0

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        problems = []
        scale = self.centroid_position_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            problems.append(f"centroid_position_scale must be a finite number >= 0, got {scale!r}")
        for name in ("cluster_counts", "knn_k"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value:
                problems.append(type_problem(f"{name} must be a non-empty tuple of ints, got {value!r}"))
                continue
            for index, item in enumerate(value):
                if isinstance(item, bool) or not isinstance(item, int):
                    problems.append(type_problem(f"{name}[{index}] must be an int, got {type(item).__name__} {item!r}"))
                elif item < 1:
                    problems.append(f"{name}[{index}] must be >= 1, got {item}")
        if problems:  # the level checks below need tuples of ints
            return problems
        if len(self.cluster_counts) != len(self.knn_k):
            problems.append(
                f"cluster_counts {self.cluster_counts} and knn_k {self.knn_k} must have one entry "
                "per merge level (same length)"
            )
        for level in range(1, len(self.cluster_counts)):
            previous, current = self.cluster_counts[level - 1], self.cluster_counts[level]
            if current > previous:
                problems.append(
                    f"cluster_counts[{level}]={current} exceeds the {previous} tokens of level "
                    f"{level - 1}; each level must merge into at most as many clusters as it receives"
                )
        return problems

    @property
    def tokens_per_frame(self) -> int:
        """Number of visual tokens per frame fed to the LLM (sum over levels; 112 for Chat-UniVi)."""
        return sum(self.cluster_counts)

    def input_token_problems(self, num_tokens: int) -> list[str]:
        """Why ``num_tokens`` input tokens cannot feed these levels (empty when they can).

        Every level needs at least as many input tokens as clusters, and at least the effective k
        input tokens for its k-nearest-neighbour density.
        """
        available = num_tokens
        for level, (count, k) in enumerate(zip(self.cluster_counts, self.knn_k, strict=True)):
            if count > available:
                return [f"merge level {level} asks for {count} clusters but receives only "
                        f"{available} tokens; lower cluster_counts or raise the patch count"]
            k_used = effective_knn_k(k, count)
            if k_used > available:
                return [f"merge level {level} uses k={k_used} nearest neighbours but receives only "
                        f"{available} tokens; lower knn_k"]
            available = count
        return []

    def check_input_tokens(self, num_tokens: int, *, owner: str = "TokenMergeConfig") -> None:
        """Raise ValueError if ``num_tokens`` input tokens cannot feed these levels (:meth:`input_token_problems`)."""
        for problem in self.input_token_problems(num_tokens):
            raise ValueError(f"{owner}: {problem}")


@dataclass(frozen=True)
class ClipImageConfig(Validated):
    """CLIP image preprocessing: shortest side to ``shortest_edge`` (bicubic), centre crop, mean/std.

    Equals ``CLIPImageProcessor`` of the openai checkpoints (method §1.5): 224/224 for the MLLM tower,
    336/336 for the anchor model.
    """

    shortest_edge: int = 224
    crop_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        problems = int_problems(self, ("shortest_edge", "crop_size"))
        if not problems and self.crop_size > self.shortest_edge:
            problems.append(
                f"crop_size={self.crop_size} must be <= shortest_edge={self.shortest_edge} "
                "(the crop is taken from the resized frame, it never pads)"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != 3:
                problems.append(type_problem(f"{name} must be a tuple of 3 floats (RGB), got {value!r}"))
            elif name == "std" and any(s <= 0 for s in value):
                problems.append(f"std must be positive, got {self.std}")
        return problems


@dataclass(frozen=True)
class VisionTowerConfig(Validated):
    """The MLLM's CLIP vision tower, the feature layer it is read at, and the projector (method §1.6).

    Attributes:
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, patch_size, image_size,
        hidden_act, layer_norm_eps: ``transformers.CLIPVisionConfig`` fields (ViT-L/14-224: 1024, 4096,
            24, 16, 14, 224, quick_gelu, 1e-5).
        select_layer: index into ``hidden_states`` of the tower (``mm_vision_select_layer`` in the
            checkpoint config; Chat-UniVi uses -2). ``hidden_states`` has ``num_hidden_layers + 1``
            entries (embeddings first).
        projector_out_dim: output size of ``mm_projector = Linear(hidden_size, projector_out_dim)``,
            i.e. the LLM hidden size (4096 for 7B).
        weights_path: local directory with a Hugging Face CLIP snapshot (``config.json`` +
            ``model.safetensors``) to load the tower from, or None for random init. Never downloaded.
        image: preprocessing of the uint8 frames (shortest side + centre crop = ``image_size``).
        merge: the DPC-KNN merge levels; ``tokens_per_frame`` comes from it.
    """

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    select_layer: int = -2
    projector_out_dim: int = 4096
    weights_path: str | None = None
    image: ClipImageConfig = field(default_factory=ClipImageConfig)
    merge: TokenMergeConfig = field(default_factory=TokenMergeConfig)

    def problems(self) -> list[str]:
        """Every problem of these fields and of how image, patches and merge fit together (``vrshq.validation``)."""
        problems = int_problems(self, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                       "patch_size", "image_size", "projector_out_dim"))
        if isinstance(self.select_layer, bool) or not isinstance(self.select_layer, int):
            problems.append(type_problem(f"select_layer must be an int, got {self.select_layer!r}"))
        problems += _optional_path_problems(self, "weights_path")
        if not isinstance(self.image, ClipImageConfig):
            problems.append(type_problem(f"image must be a ClipImageConfig, got {type(self.image).__name__}"))
        if not isinstance(self.merge, TokenMergeConfig):
            problems.append(type_problem(f"merge must be a TokenMergeConfig, got {type(self.merge).__name__}"))
        if problems:  # the checks below need valid sizes and parts
            return problems
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            problems.append(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        num_states = self.num_hidden_layers + 1
        if not -num_states <= self.select_layer < num_states:
            problems.append(
                f"select_layer={self.select_layer} is out of range for {num_states} hidden states "
                f"(num_hidden_layers={self.num_hidden_layers} + embeddings); use a value in "
                f"[{-num_states}, {num_states - 1}]"
            )
        if self.image.crop_size != self.image_size:
            problems.append(
                f"image.crop_size={self.image.crop_size} must equal image_size={self.image_size} "
                "(the tower's position embeddings are built for image_size)"
            )
        return problems + self.merge.input_token_problems(self.num_patches)

    @property
    def num_patches(self) -> int:
        """Patch tokens per frame after dropping CLS ((224/14)^2 = 256 for ViT-L/14-224)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_frame(self) -> int:
        """Visual tokens per frame fed to the LLM (112 for Chat-UniVi); the only source of that number."""
        return self.merge.tokens_per_frame


@dataclass(frozen=True)
class AnchorConfig(Validated):
    """CLIP text+vision model that scores every frame against an expression (method §1.4 step 1).

    The anchor (argmax over frames of ``softmax(logits_per_image)``) seeds the strided frame sampling
    of :func:`vrshq.model.frame_sampling.sample_frame_indices`.

    Attributes:
        text_*: ``transformers.CLIPTextConfig`` fields (ViT-L/14-336: vocab 49408, hidden 768, 12 layers,
            12 heads, 77 positions). ``text_eos_token_id`` selects the pooled token; 2 means the legacy
            rule "argmax of input ids" that the openai checkpoints' configs carry.
        vision_*: ``transformers.CLIPVisionConfig`` fields (1024 hidden, 24 layers, 16 heads, patch 14,
            image 336).
        projection_dim: joint embedding size (768).
        weights_path: local directory with a Hugging Face ``CLIPModel`` snapshot (openai/
            clip-vit-large-patch14-336), or None for random init. Never downloaded.
        tokenizer_path: local directory with the matching ``CLIPTokenizer`` files; defaults to
            ``weights_path``. With both None a tokenizer object must be passed to the sampler.
        max_frames: cap of frames fed to the MLLM (``max_image_token``, hard-coded 12 in the official code,
            §9 items 5/6); it sets the stride ``ceil(T / (max_frames - 1))``.
        text_max_length: texts are truncated to this many tokens (including BOS/EOS). The official
            code does not truncate and long reasoning queries crash (§9 item 7).
        image_batch_size: frames encoded per CLIP forward (bounds memory on long videos).
        image: preprocessing (shortest side 336, centre crop 336 for the real model).
    """

    text_vocab_size: int = 49408
    text_hidden_size: int = 768
    text_intermediate_size: int = 3072
    text_num_hidden_layers: int = 12
    text_num_attention_heads: int = 12
    text_max_position_embeddings: int = 77
    text_bos_token_id: int = 49406
    text_eos_token_id: int = 2
    text_pad_token_id: int = 1
    vision_hidden_size: int = 1024
    vision_intermediate_size: int = 4096
    vision_num_hidden_layers: int = 24
    vision_num_attention_heads: int = 16
    vision_patch_size: int = 14
    vision_image_size: int = 336
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    logit_scale_init_value: float = 2.6592
    weights_path: str | None = None
    tokenizer_path: str | None = None
    max_frames: int = 12
    text_max_length: int = 77
    image_batch_size: int = 64
    image: ClipImageConfig = field(default_factory=lambda: ClipImageConfig(shortest_edge=336, crop_size=336))

    def problems(self) -> list[str]:
        """Every problem of these fields and of how text, vision and image fit together (``vrshq.validation``)."""
        problems = int_problems(self, (
            "text_vocab_size", "text_hidden_size", "text_intermediate_size", "text_num_hidden_layers",
            "text_num_attention_heads", "text_max_position_embeddings", "vision_hidden_size",
            "vision_intermediate_size", "vision_num_hidden_layers", "vision_num_attention_heads", "vision_patch_size",
            "vision_image_size", "projection_dim", "max_frames", "text_max_length", "image_batch_size"))
        problems += int_problems(self, ("text_bos_token_id", "text_eos_token_id", "text_pad_token_id"), minimum=0)
        problems += _optional_path_problems(self, "weights_path", "tokenizer_path")
        if not isinstance(self.image, ClipImageConfig):
            problems.append(type_problem(f"image must be a ClipImageConfig, got {type(self.image).__name__}"))
        if not isinstance(self.logit_scale_init_value, (int, float)) or not math.isfinite(self.logit_scale_init_value):
            problems.append(f"logit_scale_init_value must be finite, got {self.logit_scale_init_value}")
        if problems:  # the checks below need valid sizes and parts
            return problems
        for prefix in ("text", "vision"):
            hidden = getattr(self, f"{prefix}_hidden_size")
            heads = getattr(self, f"{prefix}_num_attention_heads")
            if hidden % heads:
                problems.append(
                    f"{prefix}_hidden_size={hidden} must be divisible by {prefix}_num_attention_heads={heads}"
                )
        if self.vision_image_size % self.vision_patch_size:
            problems.append(
                f"vision_image_size={self.vision_image_size} must be a multiple of "
                f"vision_patch_size={self.vision_patch_size}"
            )
        if self.text_max_length > self.text_max_position_embeddings:
            problems.append(
                f"text_max_length={self.text_max_length} exceeds the text model's "
                f"text_max_position_embeddings={self.text_max_position_embeddings}; texts longer than the "
                "position table crash CLIP (method §9 item 7)"
            )
        if self.text_max_length < 2:
            problems.append(f"text_max_length must leave room for BOS and EOS (>= 2), got {self.text_max_length}")
        if self.image.crop_size != self.vision_image_size:
            problems.append(
                f"image.crop_size={self.image.crop_size} must equal vision_image_size={self.vision_image_size}"
            )
        return problems

    @property
    def resolved_tokenizer_path(self) -> str | None:
        """Where the real tokenizer is read from: ``tokenizer_path``, else ``weights_path``."""
        return self.tokenizer_path if self.tokenizer_path is not None else self.weights_path


def chat_univi_select_layer(checkpoint_config: Mapping[str, object]) -> int:
    """The tower layer a Chat-UniVi / VRS-HQ checkpoint was trained with (``mm_vision_select_layer``).

    Chat-UniVi reads it from the checkpoint's ``config.json`` rather than hard-coding it (method §1.6,
    §10); pass that dict and feed the result to :func:`clip_vit_l14_224_tower` (``select_layer=``).

    Raises:
        KeyError: the key is absent (the message names the file field to check).
        TypeError: the value is not an int.

    Example:
        >>> chat_univi_select_layer({"mm_vision_select_layer": -2})
        -2
    """
    if "mm_vision_select_layer" not in checkpoint_config:
        raise KeyError(
            "checkpoint config has no 'mm_vision_select_layer'; it must be the config.json of a "
            "Chat-UniVi / VRS-HQ LLM checkpoint (Chat-UniVi-7B uses -2)"
        )
    value = checkpoint_config["mm_vision_select_layer"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"mm_vision_select_layer must be an int, got {value!r}")
    return value


def clip_vit_l14_224_tower(
    *, weights_path: str | None = None, select_layer: int = -2, projector_out_dim: int = 4096
) -> VisionTowerConfig:
    """Chat-UniVi-7B's tower: openai/clip-vit-large-patch14 (224 px), 256 patches -> 64+32+16 = 112 tokens.

    Example:
        >>> cfg = clip_vit_l14_224_tower()
        >>> cfg.num_patches, cfg.tokens_per_frame
        (256, 112)
    """
    return VisionTowerConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
        select_layer=select_layer,
        projector_out_dim=projector_out_dim,
        weights_path=weights_path,
        image=ClipImageConfig(shortest_edge=224, crop_size=224),
        merge=TokenMergeConfig(cluster_counts=(64, 32, 16), knn_k=(5, 3, 3)),
    )


def clip_vit_l14_336_anchor(
    *, weights_path: str | None = None, tokenizer_path: str | None = None, max_frames: int = 12
) -> AnchorConfig:
    """The anchor scorer of the official inference: openai/clip-vit-large-patch14-336 (method §1.4)."""
    return AnchorConfig(weights_path=weights_path, tokenizer_path=tokenizer_path, max_frames=max_frames)


def tiny_vision_tower(
    *,
    projector_out_dim: int = 32,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    image_size: int = 56,
    patch_size: int = 7,
    cluster_counts: tuple[int, ...] = (16, 8, 4),
    knn_k: tuple[int, ...] = (5, 3, 3),
    select_layer: int = -2,
    centroid_position_scale: float = 0.0,
) -> VisionTowerConfig:
    """Random-init toy tower for CPU tests and the tiny trainable preset.

    Default: 56 px frames, patch 7 -> 8x8 = 64 patches, merged 64 -> 16 -> 8 -> 4 (the same 4x, 2x, 2x
    reductions as the real 256 -> 64 -> 32 -> 16), i.e. 28 tokens per frame instead of 112, which keeps
    the tiny LLM's sequences short. For the exact 256-patch, 112-token structure on a toy model use
    ``image_size=32, patch_size=2, cluster_counts=(64, 32, 16)``.

    Example:
        >>> tiny_vision_tower().tokens_per_frame
        28
    """
    return VisionTowerConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        patch_size=patch_size,
        image_size=image_size,
        select_layer=select_layer,
        projector_out_dim=projector_out_dim,
        weights_path=None,
        image=ClipImageConfig(shortest_edge=image_size, crop_size=image_size),
        merge=TokenMergeConfig(cluster_counts=cluster_counts, knn_k=knn_k,
                               centroid_position_scale=centroid_position_scale),
    )


def tiny_anchor(
    *,
    vocab_size: int = 128,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
    max_position_embeddings: int = 77,
    text_max_length: int = 77,
    max_frames: int = 12,
    bos_token_id: int = 0,
    eos_token_id: int = 1,
    pad_token_id: int = 1,
    image_batch_size: int = 64,
) -> AnchorConfig:
    """Random-init toy CLIP text+vision model for CPU tests.

    The token ids default to those of :func:`vrshq.model.clip_preprocess.build_tiny_clip_tokenizer`
    (``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1, also the pad token, ``[UNK]`` = 2). The EOS id must
    not be 2: transformers reads ``eos_token_id == 2`` as the legacy openai rule "pool at the largest
    id", which only works for the real BPE vocabulary. ``vocab_size`` must cover ``len(tokenizer)``
    (checked when the sampler is built).
    """
    return AnchorConfig(
        text_vocab_size=vocab_size,
        text_hidden_size=hidden_size,
        text_intermediate_size=2 * hidden_size,
        text_num_hidden_layers=num_hidden_layers,
        text_num_attention_heads=num_attention_heads,
        text_max_position_embeddings=max_position_embeddings,
        text_bos_token_id=bos_token_id,
        text_eos_token_id=eos_token_id,
        text_pad_token_id=pad_token_id,
        vision_hidden_size=hidden_size,
        vision_intermediate_size=2 * hidden_size,
        vision_num_hidden_layers=num_hidden_layers,
        vision_num_attention_heads=num_attention_heads,
        vision_patch_size=patch_size,
        vision_image_size=image_size,
        projection_dim=projection_dim,
        weights_path=None,
        tokenizer_path=None,
        max_frames=max_frames,
        text_max_length=text_max_length,
        image_batch_size=image_batch_size,
        image=ClipImageConfig(shortest_edge=image_size, crop_size=image_size),
    )
