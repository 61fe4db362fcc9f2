"""Typed configuration of the SAM2 half of VRS-HQ.

The architecture stays in the ``sam2`` package's own YAML (``configs/sam2/sam2_hiera_l.yaml``,
i.e. SAM 2.0, the weights VRS-HQ fine-tunes, method §5.1). This config only names that YAML
and lists Hydra override strings, the way ``sam2.build_sam`` builds its variants, so the YAML
is never forked:

* ``size_overrides`` shrink the model (the tiny test/learnability preset);
* ``method_overrides`` are the VRS-HQ flag changes of method §5.1 (single-mask output,
  hole filling, memory of 7, ...), applied on top of the YAML.

Everything that is not architecture (checkpoint, chunking, offloading, memory precision)
is a plain field read by :mod:`vrshq.model.sam2_segmenter`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vrshq.validation import range_problems, type_problem, Validated

__all__ = [
    "Sam2Config",
    "VRSHQ_SAM2_OVERRIDES",
    "SAM2_MODEL_TARGET",
    "sam2_hiera_large_vrshq",
    "sam2_tiny",
]

# The model class that Hydra instantiates: the stock SAM2VideoPredictor with the two VRS-HQ
# changes (prompt embedding as a sparse token, object-score gate in eval only).
SAM2_MODEL_TARGET = "vrshq.model.sam2_model.VrshqSam2"

# Method §5.1: the official `sam2_hiera_l.yaml` except these values (VRS-HQ builds the predictor
# in Python with them). Explicit even where the YAML already agrees, so that the method is
# readable here and a YAML change upstream cannot silently alter it.
VRSHQ_SAM2_OVERRIDES: tuple[str, ...] = (
    "++model.multimask_output_in_sam=false",
    "++model.multimask_output_for_tracking=false",
    "++model.use_multimask_token_for_obj_ptr=false",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=false",
    "++model.num_maskmem=7",
    "++model.sigmoid_scale_for_mem_enc=20.0",
    "++model.sigmoid_bias_for_mem_enc=-10.0",
    "++model.use_mask_input_as_output_without_sam=true",
    "++model.directly_add_no_mem_embed=true",
    "++model.use_high_res_features_in_sam=true",
    "++model.iou_prediction_use_sigmoid=true",
    "++model.use_obj_ptrs_in_encoder=true",
    "++model.max_obj_ptrs_in_encoder=16",
    "++model.add_tpos_enc_to_obj_ptrs=false",
    "++model.only_obj_ptrs_in_the_past_for_eval=true",
    "++model.pred_obj_scores=true",
    "++model.pred_obj_scores_mlp=true",
    "++model.fixed_no_obj_ptr=true",
    "++model.use_mlp_for_obj_ptr_proj=true",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
    "++model.memory_temporal_stride_for_eval=1",
    "++model.max_cond_frames_in_attn=-1",
    "++model.non_overlap_masks=false",
    "++model.clear_non_cond_mem_around_input=false",
)

_MEMORY_DTYPES = (None, "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Sam2Config(Validated):
    """How to build and run the SAM2 model of VRS-HQ.

    Args:
        config_name: Hydra config of the ``sam2`` package. VRS-HQ uses SAM 2.0 Hiera-L
            (method §5.1), so the default is ``configs/sam2/sam2_hiera_l.yaml``.
        image_size: Square input side S. Frames are letterboxed to S×S (method §1.5); the
            memory-attention RoPE grid is S/16 (set automatically).
        size_overrides: Hydra override strings that change model sizes (``++model.x=y``).
        method_overrides: VRS-HQ flag overrides (method §5.1); rarely changed.
        checkpoint_uri: fsspec URI of SAM2 weights (``.pt`` holding ``{"model": state_dict}``
            or a bare state dict, or ``.safetensors``). ``None`` keeps the random init.
        checkpoint_storage_options: fsspec options for ``checkpoint_uri``.
        encode_chunk_size: Frames per image-encoder batch in ``encode_video``.
        offload_features_to_cpu: Keep per-frame backbone features on the CPU and move one
            frame to the device when it is used (long videos; method §9 item 8).
        offload_features_min_frames: Videos of at least this many frames offload their features and
            tracked logits to the CPU whatever ``offload_features_to_cpu`` says (None: never on
            length alone). At SAM2-L, 1024 px, bf16 a frame's features take 8.4 MB and its logits
            256 KB per expression: 2,000 frames with 24 expressions would hold 17 GB + 12.6 GB of
            device memory beside the 7B model and the tracking memory, and did not fit on 80 GB.
        offload_memory_to_cpu: Keep the tracking memory bank on the CPU.
        memory_dtype: Storage dtype of memory features during tracking (``None`` = the
            compute dtype). ``"bfloat16"`` reproduces the stock predictor, which stores memory
            in bf16, and halves memory.
        gate_masks_in_training: Apply SAM2's object-score gate (mask → -1024) in training too.
            The official VRS-HQ code gates only in eval (docs/research/learnability.md), hence False.
        max_objects_per_track: Objects tracked together in one lockstep pass; more are tracked in
            successive passes (same result). Bounds tracking memory, which grows with the objects:
            ~0.3 GiB per object and direction at SAM2-L, 1024 px, bf16 (memory bank plus the
            projected keys and values of ``vrshq.model.projected_memory``; H200).
    """

    config_name: str = "configs/sam2/sam2_hiera_l.yaml"
    image_size: int = 1024
    size_overrides: tuple[str, ...] = ()
    method_overrides: tuple[str, ...] = VRSHQ_SAM2_OVERRIDES
    checkpoint_uri: str | None = None
    checkpoint_storage_options: Mapping[str, Any] | None = None
    encode_chunk_size: int = 8
    offload_features_to_cpu: bool = False
    offload_features_min_frames: int | None = 600
    offload_memory_to_cpu: bool = False
    memory_dtype: str | None = None
    gate_masks_in_training: bool = False
    max_objects_per_track: int = 64

    def offloads_features(self, num_frames: int) -> bool:
        """Whether a video of ``num_frames`` frames keeps its features and tracked logits on the CPU."""
        by_length = self.offload_features_min_frames is not None and num_frames >= self.offload_features_min_frames
        return self.offload_features_to_cpu or by_length

    def problems(self) -> list[str]:
        """Every problem of these fields (``vrshq.validation``)."""
        problems = []
        if self.offload_features_min_frames is not None and (
            not isinstance(self.offload_features_min_frames, int) or self.offload_features_min_frames < 1
        ):
            problems.append(f"offload_features_min_frames={self.offload_features_min_frames!r}: "
                            "must be an int >= 1 or None")
        if not isinstance(self.config_name, str) or not self.config_name.endswith(".yaml"):
            problems.append(
                f"config_name={self.config_name!r}: expected a sam2 package YAML such as "
                "'configs/sam2/sam2_hiera_l.yaml'"
            )
        if not isinstance(self.image_size, int) or self.image_size <= 0 or self.image_size % 64:
            problems.append(
                f"image_size={self.image_size!r}: must be a positive multiple of 64 "
                "(Hiera stride 32 plus the SAM2 4x/16x feature pyramid)"
            )
        for name in ("size_overrides", "method_overrides"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                problems.append(type_problem(f"{name} must be a tuple of str, got {value!r}"))
                continue
            bad = [v for v in value if "=" not in v]
            if bad:
                problems.append(f"{name} has entries that are not Hydra overrides ('key=value'): {bad}")
            clash = [v for v in value if v.lstrip("+~").startswith(("model.image_size=", "model._target_="))]
            if clash:
                problems.append(
                    f"{name} must not set model.image_size or model._target_ (use Sam2Config.image_size): {clash}"
                )
        if self.checkpoint_uri is not None and (not isinstance(self.checkpoint_uri, str) or not self.checkpoint_uri):
            problems.append(f"checkpoint_uri={self.checkpoint_uri!r}: expected a non-empty URI or None for random init")
        problems += range_problems(self, ints=(("encode_chunk_size", 1), ("max_objects_per_track", 1)))
        if self.memory_dtype not in _MEMORY_DTYPES:
            problems.append(f"memory_dtype={self.memory_dtype!r}: expected one of {_MEMORY_DTYPES}")
        return problems

    def hydra_overrides(self) -> list[str]:
        """All Hydra overrides for ``compose``: target class, image size, RoPE grid, sizes, method.

        The RoPE ``feat_sizes`` follow ``image_size/16``; VRS-HQ's [32,32] (method §9 item 19)
        is harmless because SAM2 recomputes the frequencies, so the correct value is used.
        """
        grid = self.image_size // 16
        base = [
            f"++model._target_={SAM2_MODEL_TARGET}",
            f"++model.image_size={self.image_size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]",
            f"++model.gate_masks_in_training={str(self.gate_masks_in_training).lower()}",
        ]
        return base + list(self.size_overrides) + list(self.method_overrides)


def sam2_hiera_large_vrshq(
    *, checkpoint_uri: str | None = None, **options: Any
) -> Sam2Config:
    """SAM 2.0 Hiera-L at 1024 px with the VRS-HQ overrides (method §5.1), official sizes."""
    return Sam2Config(
        config_name="configs/sam2/sam2_hiera_l.yaml",
        image_size=1024,
        checkpoint_uri=checkpoint_uri,
        **options,
    )


def sam2_tiny(
    image_size: int = 128,
    *,
    d_model: int = 64,
    embed_dim: int = 32,
    mem_dim: int = 32,
    **options: Any,
) -> Sam2Config:
    """A ~2M-parameter SAM2 built from the same Hiera-L YAML by overrides (docs/research/learnability.md).

    Hiera embed_dim 32 with stages [1,1,2,1] and one global block; hidden width ``d_model``
    through the FPN neck, memory attention (2 layers, ffn 4·d_model) and memory encoder
    (out_dim ``mem_dim``). The SAM prompt dimension equals ``d_model`` (sam2 ties it to the
    neck width), so prompt embeddings for this preset are ``d_model``-d, not 256-d.
    """
    if d_model % mem_dim:
        raise ValueError(f"sam2_tiny: d_model={d_model} must be a multiple of mem_dim={mem_dim}")
    channels = [embed_dim * 8, embed_dim * 4, embed_dim * 2, embed_dim]
    ma = "++model.memory_attention"
    me = "++model.memory_encoder"
    size = (
        f"++model.image_encoder.trunk.embed_dim={embed_dim}",
        "++model.image_encoder.trunk.num_heads=1",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        f"++model.image_encoder.neck.d_model={d_model}",
        f"++model.image_encoder.neck.backbone_channel_list=[{','.join(map(str, channels))}]",
        f"++model.image_encoder.neck.position_encoding.num_pos_feats={d_model}",
        f"{ma}.d_model={d_model}",
        f"{ma}.num_layers=2",
        f"{ma}.layer.d_model={d_model}",
        f"{ma}.layer.dim_feedforward={4 * d_model}",
        f"{ma}.layer.self_attention.embedding_dim={d_model}",
        f"{ma}.layer.cross_attention.embedding_dim={d_model}",
        f"{ma}.layer.cross_attention.kv_in_dim={mem_dim}",
        f"{me}.out_dim={mem_dim}",
        f"{me}.in_dim={d_model}",
        f"{me}.position_encoding.num_pos_feats={mem_dim}",
        f"{me}.mask_downsampler.embed_dim={d_model}",
        f"{me}.fuser.layer.dim={d_model}",
    )
    return Sam2Config(
        config_name="configs/sam2/sam2_hiera_l.yaml",
        image_size=image_size,
        size_overrides=size,
        **options,
    )
