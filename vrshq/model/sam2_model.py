"""The stock ``sam2`` video model with the two changes VRS-HQ makes, plus its builder.

``VrshqSam2`` subclasses ``sam2.sam2_video_predictor.SAM2VideoPredictor`` (so the stock
``init_state``/``add_new_mask``/``propagate_in_video`` still work on it) and overrides only:

1. ``_forward_sam_heads``: a point-input dict may carry ``"prompt_embeds"`` (B, D); they are
   appended to the sparse prompt after the point tokens. With the dummy point (0,0; label -1)
   the prompt encoder pads a second not-a-point token, so the sparse prompt is
   ``[pad, pad, prompt]`` = (B, 3, D) exactly as VRS-HQ feeds the TAK embedding (method §5.2).
   Because the embedding travels inside ``point_inputs``, the real ``SAM2Base.track_step``
   carries it unchanged.
2. The object-score gate (mask → -1024 where the score is ≤ 0) runs in eval mode only, as in
   the official VRS-HQ code; stock sam2 1.1.0 gates in training too, which cuts the mask
   gradient of every "absent" frame (docs/research/learnability.md). ``track_step`` keeps
   ``object_score_logits`` in training as well, so a presence loss can use them.

One speed path, no change of result: when the memory bank asks for it
(``vrshq.model.projected_memory.USE_PROJECTED_MEMORY``, set by lockstep tracking),
``_prepare_memory_conditioned_features`` projects each memory frame's keys and values once instead
of at every frame that reads it.

Hole filling (``fill_hole_area``, method §5.3 step 2) needs sam2's CUDA extension ``sam2._C``,
which is usually not built; :func:`fill_holes_in_mask_scores` falls back to OpenCV connected
components (8-connectivity, the same rule) so CPU results follow the method.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from sam2.sam2_video_predictor import SAM2VideoPredictor

from vrshq.model.projected_memory import (
    USE_PROJECTED_MEMORY,
    condition_on_projected_memory,
    supports_projected_memory,
)
from vrshq.sam2_config import Sam2Config
from vrshq.storage import filesystem_for

__all__ = [
    "VrshqSam2",
    "Sam2CheckpointError",
    "build_sam2_model",
    "load_sam2_checkpoint",
    "connected_components",
    "fill_holes",
    "fill_holes_in_mask_scores",
    "fill_small_holes_on_device",
    "PROMPT_EMBEDS_KEY",
]

logger = logging.getLogger(__name__)

# Key of the extra sparse prompt embeddings inside a SAM2 ``point_inputs`` dict.
PROMPT_EMBEDS_KEY = "prompt_embeds"
# Score given to filled holes, as in sam2.utils.misc.fill_holes_in_mask_scores.
_HOLE_FILL_SCORE = 0.1
_HAS_SAM2_C = importlib.util.find_spec("sam2._C") is not None


class Sam2CheckpointError(RuntimeError):
    """A SAM2 checkpoint is missing, unreadable or does not match the model."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"SAM2 checkpoint {uri!r}: {reason}")
        self.uri = uri
        self.reason = reason


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-connected components of binary masks, with sam2's ``_C`` output convention.

    Args:
        mask: (N, 1, H, W) bool or 0/1 tensor; components are taken over the nonzero pixels.

    Returns:
        ``(labels, areas)``, both (N, 1, H, W) int32 on ``mask.device``: a component label
        (> 0) and that component's pixel count on nonzero pixels, 0 elsewhere.
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"connected_components: expected (N,1,H,W), got {tuple(mask.shape)}")
    if _HAS_SAM2_C and mask.is_cuda:
        from sam2.utils.misc import get_connected_components

        return get_connected_components(mask)
    binary = (mask != 0).to(torch.uint8).cpu().numpy()
    labels = np.zeros(binary.shape, dtype=np.int32)
    areas = np.zeros(binary.shape, dtype=np.int32)
    for i in range(binary.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(binary[i, 0], connectivity=8)
        area_of = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        area_of[0] = 0  # label 0 is the zero pixels of the input
        labels[i, 0] = lab
        areas[i, 0] = area_of[lab]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)


def fill_holes_in_mask_scores(mask: torch.Tensor, max_area: int) -> torch.Tensor:
    """Set background components (scores ≤ 0) of at most ``max_area`` pixels to 0.1.

    Same rule as ``sam2.utils.misc.fill_holes_in_mask_scores`` but without needing the
    CUDA extension. ``mask``: (N, 1, H, W) logits; returns a new tensor.
    """
    if max_area <= 0:
        return mask
    labels, areas = connected_components(mask <= 0)
    is_hole = (labels > 0) & (areas <= max_area)
    return torch.where(is_hole, _HOLE_FILL_SCORE, mask)


def fill_small_holes_on_device(mask: torch.Tensor, max_area: int) -> torch.Tensor:
    """``fill_holes_in_mask_scores`` with tensor ops only: no host copy, no sync, any device.

    Background components (logits <= 0, 8-connected) of at most ``max_area`` pixels get 0.1,
    exactly as the connected-components version. Only small components matter, so full labels
    are not needed: ``max_area - 1`` rounds of min-label propagation (3×3 min over background
    pixels, starting from each pixel's own index) make every component of at most ``max_area``
    pixels (graph diameter <= area - 1) carry one label. A pixel is a hole when its label's
    group has at most ``max_area`` pixels and is *closed*: no pixel of the group has a
    background neighbour with another label. A closed group is a whole component (it is closed
    under adjacency and all its pixels lie within reach of the one pixel whose index it
    carries), so large components are never filled, whatever their labels are at that point.

    Args:
        mask: (N, 1, H, W) mask logits.
        max_area: the largest hole area (``fill_hole_area``); <= 0 returns ``mask``.
    """
    if max_area <= 0:
        return mask
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"fill_small_holes_on_device: expected (N,1,H,W), got {tuple(mask.shape)}")
    n, _, h, w = mask.shape
    if h * w >= 2**24:  # labels are float32 (max pooling): exact up to 2**24
        raise ValueError(f"fill_small_holes_on_device: {h}x{w} masks are too large")
    device = mask.device
    background = mask <= 0
    inf = float("inf")
    index = torch.arange(1, h * w + 1, device=device, dtype=torch.float32).view(1, 1, h, w)
    labels = torch.where(background, index, inf)
    for _ in range(max(max_area - 1, 1)):
        labels = torch.where(background, -F.max_pool2d(-labels, 3, stride=1, padding=1), inf)
    lowest = -F.max_pool2d(-labels, 3, stride=1, padding=1)  # non-background pixels are +inf
    highest = F.max_pool2d(torch.where(background, labels, -inf), 3, stride=1, padding=1)
    differs = background & ((lowest != labels) | (highest != labels))
    # one counter per (image, label); non-background pixels go to the image's unused label 0
    key = torch.where(background, labels, 0.0).long() + (
        torch.arange(n, device=device) * (h * w + 1)
    ).view(n, 1, 1, 1)
    key = key.flatten()
    size = n * (h * w + 1)
    area = torch.zeros(size, dtype=torch.int32, device=device).index_add_(
        0, key, background.flatten().to(torch.int32)
    )
    open_ = torch.zeros(size, dtype=torch.int32, device=device).index_add_(
        0, key, differs.flatten().to(torch.int32)
    )
    hole = background & ((area[key] <= max_area) & (open_[key] == 0)).view_as(background)
    return torch.where(hole, _HOLE_FILL_SCORE, mask)


def fill_holes(mask: torch.Tensor, max_area: int) -> torch.Tensor:
    """Hole filling (method §5.3 step 2) with the fastest exact implementation for the device.

    sam2's CUDA extension where it is built, :func:`fill_small_holes_on_device` on other GPUs
    (the OpenCV fallback would copy every mask to the host and wait for it), OpenCV on the CPU.
    """
    if max_area <= 0:
        return mask
    if mask.device.type != "cpu" and not _HAS_SAM2_C:
        return fill_small_holes_on_device(mask, max_area)
    return fill_holes_in_mask_scores(mask, max_area)


class VrshqSam2(SAM2VideoPredictor):
    """``SAM2VideoPredictor`` with a prompt-embedding sparse token and an eval-only gate.

    Args:
        gate_masks_in_training: Also gate masks by the object score in training (stock
            sam2 behaviour). VRS-HQ: False.
        **kwargs: Passed to ``SAM2VideoPredictor`` (the sam2 YAML's model node).
    """

    def __init__(self, *, gate_masks_in_training: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate_masks_in_training = gate_masks_in_training

    @property
    def prompt_embed_dim(self) -> int:
        """Width D of a sparse prompt token (256 for Hiera-L; the neck ``d_model``)."""
        return self.sam_prompt_embed_dim

    def _prepare_memory_conditioned_features(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        output_dict: dict[str, Any],
        num_frames: int,
        track_in_reverse: bool = False,
    ) -> torch.Tensor:
        """The stock method, or :func:`condition_on_projected_memory` (same result, memory keys and
        values projected once per memory frame) when the bank asks for it and the model allows it."""
        if not is_init_cond_frame and output_dict.get(USE_PROJECTED_MEMORY) and supports_projected_memory(self):
            return condition_on_projected_memory(
                self,
                frame_idx=frame_idx,
                current_vision_feats=current_vision_feats,
                current_vision_pos_embeds=current_vision_pos_embeds,
                feat_sizes=feat_sizes,
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=track_in_reverse,
            )
        return super()._prepare_memory_conditioned_features(
            frame_idx,
            is_init_cond_frame,
            current_vision_feats,
            current_vision_pos_embeds,
            feat_sizes,
            output_dict,
            num_frames,
            track_in_reverse,
        )

    def _forward_sam_heads(
        self,
        backbone_features: torch.Tensor,
        point_inputs: dict[str, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        high_res_features: list[torch.Tensor] | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """``SAM2Base._forward_sam_heads`` (sam2 1.1.0) with the two VRS-HQ changes.

        Shapes as in sam2: backbone_features (B, D, H, W); point_inputs
        ``{"point_coords": (B,P,2), "point_labels": (B,P), "prompt_embeds": (B,D) optional}``;
        returns (low_res_multimasks, high_res_multimasks, ious, low_res_masks,
        high_res_masks, obj_ptr, object_score_logits).
        """
        B = backbone_features.size(0)
        device = backbone_features.device
        if backbone_features.shape[1:] != (
            self.sam_prompt_embed_dim,
            self.sam_image_embedding_size,
            self.sam_image_embedding_size,
        ):
            raise ValueError(
                f"backbone_features has shape {tuple(backbone_features.shape)}, expected "
                f"(B, {self.sam_prompt_embed_dim}, {self.sam_image_embedding_size}, "
                f"{self.sam_image_embedding_size})"
            )
        prompt_embeds = None
        if point_inputs is not None:
            sam_point_coords = point_inputs["point_coords"]
            sam_point_labels = point_inputs["point_labels"]
            prompt_embeds = point_inputs.get(PROMPT_EMBEDS_KEY)
        else:
            sam_point_coords = torch.zeros(B, 1, 2, device=device)
            sam_point_labels = -torch.ones(B, 1, dtype=torch.int32, device=device)

        if mask_inputs is not None:
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                sam_mask_prompt = F.interpolate(
                    mask_inputs.float(),
                    size=self.sam_prompt_encoder.mask_input_size,
                    align_corners=False,
                    mode="bilinear",
                    antialias=True,
                )
            else:
                sam_mask_prompt = mask_inputs
        else:
            sam_mask_prompt = None

        sparse_embeddings, dense_embeddings = self.sam_prompt_encoder(
            points=(sam_point_coords, sam_point_labels), boxes=None, masks=sam_mask_prompt
        )
        if prompt_embeds is not None:
            if prompt_embeds.shape != (B, self.sam_prompt_embed_dim):
                raise ValueError(
                    f"point_inputs[{PROMPT_EMBEDS_KEY!r}] has shape {tuple(prompt_embeds.shape)}, "
                    f"expected ({B}, {self.sam_prompt_embed_dim})"
                )
            sparse_embeddings = torch.cat(
                [sparse_embeddings, prompt_embeds[:, None].to(sparse_embeddings.dtype)], dim=1
            )
        low_res_multimasks, ious, sam_output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_embeddings,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        is_obj_appearing = object_score_logits > 0
        if self.pred_obj_scores and (not self.training or self.gate_masks_in_training):
            low_res_multimasks = torch.where(
                is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE
            )
        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )
        sam_output_token = sam_output_tokens[:, 0]
        if multimask_output:
            best_iou_inds = torch.argmax(ious, dim=-1)
            batch_inds = torch.arange(B, device=device)
            low_res_masks = low_res_multimasks[batch_inds, best_iou_inds].unsqueeze(1)
            high_res_masks = high_res_multimasks[batch_inds, best_iou_inds].unsqueeze(1)
            if sam_output_tokens.size(1) > 1:
                sam_output_token = sam_output_tokens[batch_inds, best_iou_inds]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks

        obj_ptr = self.obj_ptr_proj(sam_output_token)
        if self.pred_obj_scores:
            if self.soft_no_obj_ptr:
                lambda_is_obj_appearing = object_score_logits.sigmoid()
            else:
                lambda_is_obj_appearing = is_obj_appearing.float()
            if self.fixed_no_obj_ptr:
                obj_ptr = lambda_is_obj_appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - lambda_is_obj_appearing) * self.no_obj_ptr

        return (
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[torch.Tensor],
        current_vision_pos_embeds: list[torch.Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        output_dict: dict[str, dict[int, dict[str, Any]]],
        num_frames: int,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """``SAM2Base.track_step`` that keeps ``object_score_logits`` in training too."""
        current_out, sam_outputs, _, _ = self._track_step(
            frame_idx,
            is_init_cond_frame,
            current_vision_feats,
            current_vision_pos_embeds,
            feat_sizes,
            point_inputs,
            mask_inputs,
            output_dict,
            num_frames,
            track_in_reverse,
            prev_sam_mask_logits,
        )
        _, _, _, low_res_masks, high_res_masks, obj_ptr, object_score_logits = sam_outputs
        current_out["pred_masks"] = low_res_masks
        current_out["pred_masks_high_res"] = high_res_masks
        current_out["obj_ptr"] = obj_ptr
        current_out["object_score_logits"] = object_score_logits
        self._encode_memory_in_output(
            current_vision_feats,
            feat_sizes,
            point_inputs,
            run_mem_encoder,
            high_res_masks,
            object_score_logits,
            current_out,
        )
        return current_out


def load_sam2_checkpoint(
    model: torch.nn.Module, uri: str, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Load SAM2 weights strictly from an fsspec URI (``.pt``/``.pth`` or ``.safetensors``), or from
    a VRS-HQ model folder (its ``sam2.sam2.*`` weights).

    A ``.pt`` may hold ``{"model": state_dict}`` (the official SAM2 release) or a bare state
    dict; it is read with ``torch.load(weights_only=True)``. Why model folders: a run that starts
    from a trained model's SAM2 (``research.learnability --sam2-init out/learn/base/model``) should
    not need a separate export of it.

    Raises:
        Sam2CheckpointError: missing file, unreadable content, or missing/unexpected keys
            (all listed in the message).
    """
    try:
        fs, path = filesystem_for(uri, storage_options)
        exists = fs.exists(path)
    except Exception as exc:  # noqa: BLE001 - any fsspec/backend failure is reported with the uri
        raise Sam2CheckpointError(uri, f"cannot access it ({exc})") from exc
    if not exists:
        raise Sam2CheckpointError(
            uri,
            "file does not exist; set Sam2Config.checkpoint_uri to an existing SAM2 checkpoint "
            "or to None for random init",
        )
    if fs.isdir(path):
        state = _model_folder_sam2_state(uri, storage_options)
    else:
        state = _read_sam2_file(uri, fs, path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise Sam2CheckpointError(
            uri,
            f"does not match the model built from Sam2Config: missing keys "
            f"{result.missing_keys[:20]} ({len(result.missing_keys)} total), unexpected keys "
            f"{result.unexpected_keys[:20]} ({len(result.unexpected_keys)} total)",
        )
    logger.info("loaded SAM2 checkpoint %s", uri)


MODEL_FOLDER_SAM2_PREFIX = "sam2.sam2."
"""Where a VRS-HQ model's weights keep SAM2's (``VrshqModel.sam2`` is the segmenter, its ``.sam2`` sam2's model)."""


def _model_folder_sam2_state(uri: str, storage_options: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """The SAM2 weights of a VRS-HQ model folder, named as sam2's model names them. Only the weight files that
    hold SAM2 tensors are read (a 7B model's LLM shards are not)."""
    from vrshq.checkpoint.weight_files import open_weight_files

    prefix = MODEL_FOLDER_SAM2_PREFIX
    state: dict[str, torch.Tensor] = {}
    try:
        for weights in open_weight_files(uri, storage_options):
            if any(k.startswith(prefix) for k in weights.shapes):
                state.update({k[len(prefix):]: v for k, v in weights.read().items() if k.startswith(prefix)})
    except Exception as exc:  # noqa: BLE001 - a folder without a model's weights is reported with the uri
        raise Sam2CheckpointError(uri, f"is a folder but not a readable model folder ({exc})") from exc
    if not state:
        raise Sam2CheckpointError(uri, f"is a model folder without SAM2 weights (no {MODEL_FOLDER_SAM2_PREFIX}* "
                                       "keys; a trainable-only checkpoint may leave SAM2 out)")
    return state


def _read_sam2_file(uri: str, fs: Any, path: str) -> dict:
    """The state dict of one SAM2 weight file (``.safetensors``, or a ``.pt`` holding it or ``{"model": it}``)."""
    try:
        with fs.open(path, "rb") as f:
            if path.endswith(".safetensors"):
                from safetensors.torch import load as load_safetensors

                state = load_safetensors(f.read())
            else:
                state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise Sam2CheckpointError(uri, f"cannot be read ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise Sam2CheckpointError(uri, f"expected a state dict, found {type(state).__name__}")
    return state


def _compose_sam2_config(config_name: str, overrides: list[str]) -> Any:
    """Compose a sam2 package config with Hydra, whatever the global Hydra state is.

    ``import sam2`` initialises the global Hydra on sam2's config module; another library (or a
    Hydra app) may have initialised it differently. The global instance is cleared, sam2's
    config module is used for this one ``compose``, and the previous instance is put back.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import sam2  # noqa: F401 - importing sam2 makes its config module importable

    global_hydra = GlobalHydra.instance()
    previous = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        with initialize_config_module("sam2", version_base="1.2"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        global_hydra = GlobalHydra.instance()
        global_hydra.clear()
        if previous is not None:
            global_hydra.initialize(previous)


def build_sam2_model(cfg: Sam2Config, *, device: torch.device | str | None = None) -> VrshqSam2:
    """Build the SAM2 model from the sam2 package YAML plus ``cfg.hydra_overrides()``.

    Mirrors ``sam2.build_sam.build_sam2_video_predictor(..., apply_postprocessing=False)``
    (compose → resolve → instantiate → strict checkpoint load) but instantiates
    :class:`VrshqSam2`. Hydra is initialised on sam2's config module for the duration of the
    call and the previous global Hydra state is restored, so other Hydra users are unaffected.
    The model is returned in eval mode; random init when ``cfg.checkpoint_uri`` is None.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    hcfg = _compose_sam2_config(cfg.config_name, cfg.hydra_overrides())
    OmegaConf.resolve(hcfg)
    model = instantiate(hcfg.model, _recursive_=True)
    if not isinstance(model, VrshqSam2):
        raise TypeError(f"sam2 config built {type(model).__name__}, expected VrshqSam2")
    if cfg.checkpoint_uri is not None:
        load_sam2_checkpoint(
            model,
            cfg.checkpoint_uri,
            storage_options=dict(cfg.checkpoint_storage_options or {}),
        )
    if device is not None:
        model = model.to(device)
    return model.eval()
