"""The model presets of the learnability research: the tiny classes at the sizes the from-scratch runs use.

Each preset is a function returning a ``VrshqConfig``; :data:`PRESETS` maps their names to them, as
``vrshq.presets.PRESETS`` does for the product's. The product's training config takes one as
``ModelSpec(preset=model_preset("learn-256-pos"))``: a ``package.module:function`` path, so the product
never imports this package.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType

__all__ = [
    "PRESETS",
    "learnability_model_config",
    "learnability_model_config_256",
    "learnability_model_config_256_pos",
    "learnability_model_config_256_pos_k2",
    "learnability_model_config_256_pos_p4",
    "learnability_model_config_256_wide",
    "learnability_model_config_256_wide_pos",
    "learnability_model_config_256_wide_pos_k2",
    "learnability_model_config_256_wide_pos_p4",
    "learnability_model_config_t14",
    "learnability_model_config_t7",
    "model_preset",
    "research_model_config",
]

def learnability_model_config(
    *, object_weight: float = 0.5, trainable: str = "all", cluster_counts: tuple[int, ...] = (16, 8, 4),
    sam2_image_size: int = 128, llm_hidden_size: int = 128, llm_layers: int = 2, tower_hidden_size: int = 32,
    centroid_position_scale: float = 0.0, knn_k: tuple[int, ...] = (5, 3, 3), tower_image_size: int = 56,
    tower_patch_size: int = 7,
):
    """The model of the learnability run: the tiny classes at a middle size that fits a < 20 MB
    checkpoint in bf16 (learnability.md "Size": d_model 128, Hiera embed_dim 48).

    LLaMA 2 layers hidden 128; SAM2 at 128 px with neck/memory-attention width 128, memory width 64;
    ~5.9M parameters (11.8 MB in bf16). The object-presence loss is on (learnability.md: from random
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
    from vrshq.sam2_config import sam2_tiny
    from vrshq.vision_config import tiny_vision_tower

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
    (reasoning 0.455) against 0.575 (0.418) for ``learn-256``; docs/research/learnability.md, "What limits
    reasoning"."""
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
    "fastest" from 0.67 / 0.65 to 0.72 / 0.73 (docs/research/learnability.md, "Longer tracking, and what motion
    needs"). Measured with a stage G focused on the reasoning kinds (2,000 x 128 clips): stage 1 J&F 0.704 against
    the committed 0.717 (32 videos, bf16); the motion kinds were still not learnt (docs/research/learnability.md,
    "Focused grounding")."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     centroid_position_scale=1.0, knn_k=(2, 2, 2))


def learnability_model_config_256_pos_p4(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256_pos_k2` whose tower reads the 64 px frames unscaled in 4 px patches: a
    16x16 grid of 256 patches (Chat-UniVi's count) instead of 8x8 of 7 px patches at 56 px, merged to the same
    16 + 8 + 4 tokens. Why: an 8 px patch of a 64 px video mixes a small shape (radius 6-7 px) with the background,
    so the merged tokens say where a shape is only to ~4 px, too coarse for "never moves" against a slow shape
    (0.8 px a frame). Measured on the CPU (docs/research/learnability.md, "Finer patches"): with a stage-V tower a
    first-level cluster's centroid lies within 1.6 px of its object's centre (median; 4.3 px for the 7 px patches of
    a random tower), and the centre probe on the merged tokens reads R^2 0.80 against 0.62 for the committed tokens.
    SAM2 is ``learn-256``'s (the same weight shapes); the tower's patch embedding and position table change shape."""
    return learnability_model_config(object_weight=object_weight, trainable=trainable, sam2_image_size=256,
                                     centroid_position_scale=1.0, knn_k=(2, 2, 2), tower_image_size=64,
                                     tower_patch_size=4)


def learnability_model_config_256_wide_pos_p4(*, object_weight: float = 0.5, trainable: str = "all"):
    """:func:`learnability_model_config_256_pos_p4` with the text path of ``learn-256-wide`` (LLaMA 4 layers, hidden
    256). Why: with the 2-layer, 128-wide LLM stage G's picks of the occlusion kinds stall at ~0.7 from step 2,200
    on while its loss still falls. Measured (docs/research/learnability.md): with this LLM stage G's motion kinds set
    in at step ~900 instead of ~1,450; but its picks end where the narrow run's do (0.89 at step 2,800 against 0.90
    at 3,600) and stage 1 after it scores the same (J&F 0.765 on 32 videos, LLM frozen). The tower
    stays ``learn-256-pos-p4``'s (width 32), so that run's stage-V tower and any ``learn-256`` SAM2 load unchanged.
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


#: Preset name -> the builder of its ``VrshqConfig`` (``model_preset`` gives its ``package.module:function`` path).
PRESETS: Mapping[str, Callable[[], object]] = MappingProxyType({
    "learn": learnability_model_config,
    "learn-t14": learnability_model_config_t14,
    "learn-t7": learnability_model_config_t7,
    "learn-256": learnability_model_config_256,
    "learn-256-wide": learnability_model_config_256_wide,
    "learn-256-pos": learnability_model_config_256_pos,
    "learn-256-wide-pos": learnability_model_config_256_wide_pos,
    "learn-256-pos-k2": learnability_model_config_256_pos_k2,
    "learn-256-wide-pos-k2": learnability_model_config_256_wide_pos_k2,
    "learn-256-pos-p4": learnability_model_config_256_pos_p4,
    "learn-256-wide-pos-p4": learnability_model_config_256_wide_pos_p4,
})


def model_preset(name: str) -> str:
    """What ``ModelSpec.preset`` takes for ``name``: a research preset's function path, else ``name`` itself
    (a product preset such as ``tiny``, which ``ModelSpec`` checks)."""
    if name not in PRESETS:
        return name
    builder = PRESETS[name]
    return f"{builder.__module__}:{builder.__name__}"


def research_model_config(name: str):
    """The ``VrshqConfig`` of the research preset ``name``.

    Raises:
        ValueError: ``name`` is not a research preset.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown research preset {name!r}; known: {list(PRESETS)}")
    return PRESETS[name]()
