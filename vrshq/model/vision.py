"""The MLLM's visual path (Chat-UniVi, method §1.5-1.6): uint8 frames -> LLM-sized visual tokens.

``VisualTokenizer`` = frozen ``transformers.CLIPVisionModel`` -> ``hidden_states[select_layer]`` with
CLS dropped -> DPC-KNN merge (:mod:`vrshq.model.token_merging`) -> ``projector =
Linear(hidden_size, projector_out_dim)`` (Chat-UniVi's ``mm_projector``). Every frame is processed on
its own ("image" branch of ``ChatUniViMetaForCausalLM.project``); there is no temporal merge. A batch
of N frames runs as one tower forward and one batched merge.

Checkpoint names: the tower is ``vision_tower`` (a ``CLIPVisionModel``, keys ``vision_tower.
vision_model.*``), the projector is ``projector`` (keys ``projector.weight``/``projector.bias``; the
official checkpoint calls it ``model.mm_projector``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from vrshq.model.clip_preprocess import clip_preprocess
from vrshq.model.token_merging import dpc_knn_merge, grid_position_embedding
from vrshq.vision_config import VisionTowerConfig

if TYPE_CHECKING:
    from transformers import CLIPVisionModel

__all__ = ["VisionWeightsError", "VisualTokenizer", "build_clip_vision_model", "check_local_weights_dir"]


class VisionWeightsError(FileNotFoundError):
    """A configured local weights directory is missing or incomplete (nothing is ever downloaded)."""


def check_local_weights_dir(path: str, *, field: str, what: str) -> None:
    """Raise :class:`VisionWeightsError` unless ``path`` is a local directory holding ``config.json``.

    Args:
        path: the configured directory.
        field: the config field that holds it (named in the message).
        what: the Hugging Face snapshot expected there (named in the message).
    """
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise VisionWeightsError(
            f"{field}={path!r}: no local Hugging Face snapshot there (need a directory with config.json and "
            f"model.safetensors or pytorch_model.bin). Put the files of {what} in that directory, or set "
            f"{field}=None for a random-init model. Weights are never downloaded."
        )


def build_clip_vision_model(cfg: VisionTowerConfig) -> CLIPVisionModel:
    """The tower: random init from ``cfg`` if ``cfg.weights_path`` is None, else loaded from that local dir.

    Raises:
        VisionWeightsError: the directory is missing or has no ``config.json``.
        ValueError: the checkpoint's sizes differ from ``cfg``.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if cfg.weights_path is None:
        hf_config = CLIPVisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
            hidden_act=cfg.hidden_act,
            layer_norm_eps=cfg.layer_norm_eps,
        )
        return CLIPVisionModel(hf_config)
    check_local_weights_dir(
        cfg.weights_path, field="VisionTowerConfig.weights_path", what="openai/clip-vit-large-patch14"
    )
    model = CLIPVisionModel.from_pretrained(cfg.weights_path, local_files_only=True)
    loaded = model.config
    mismatched = [
        f"{name}: config {getattr(cfg, name)} vs checkpoint {getattr(loaded, name)}"
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
        if getattr(cfg, name) != getattr(loaded, name)
    ]
    if mismatched:
        raise ValueError(
            f"VisionTowerConfig does not match the checkpoint in {cfg.weights_path!r}: " + "; ".join(mismatched)
        )
    return model


class VisualTokenizer(nn.Module):
    """Frames -> ``tokens_per_frame`` visual tokens of the LLM's hidden size (method §1.6).

    The tower is frozen (``requires_grad_(False)``) and always kept in eval mode, and it and the merge
    run without autograd, as in Chat-UniVi (``CLIPVisionTower.forward`` is ``@torch.no_grad``). The
    projector is an ordinary trainable ``nn.Linear``; the official recipe freezes it, which is the
    trainer's decision (``visual_tokenizer.projector.requires_grad_(False)``).
    :meth:`set_tower_trainable` lets a from-scratch run train the tower too (no pretrained CLIP exists
    there to freeze): then gradients flow through the tower and the cluster means of the merge, while the
    cluster assignment itself stays gradient-free.

    Args:
        cfg: tower, merge and projector sizes.

    Example:
        >>> from vrshq.vision_config import tiny_vision_tower
        >>> vt = VisualTokenizer(tiny_vision_tower())
        >>> frames = torch.zeros(3, 40, 60, 3, dtype=torch.uint8)
        >>> vt(vt.preprocess(frames)).shape
        torch.Size([3, 28, 32])
    """

    def __init__(self, cfg: VisionTowerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, VisionTowerConfig):
            raise TypeError(f"cfg must be a VisionTowerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.vision_tower = build_clip_vision_model(cfg)
        self.vision_tower.requires_grad_(False)
        self.vision_tower.eval()
        self.projector = nn.Linear(cfg.hidden_size, cfg.projector_out_dim)

    @property
    def tokens_per_frame(self) -> int:
        """Visual tokens per frame (112 for the real config)."""
        return self.cfg.tokens_per_frame

    @property
    def tower_trainable(self) -> bool:
        """Whether any tower weight trains (then the tower and the merge run with autograd)."""
        return any(p.requires_grad for p in self.vision_tower.parameters())

    def set_tower_trainable(self, trainable: bool) -> None:
        """Train the tower (from-scratch runs, where a random tower would otherwise stay random) or freeze it."""
        self.vision_tower.requires_grad_(trainable)

    def train(self, mode: bool = True) -> VisualTokenizer:
        """Set train/eval mode on the projector; the frozen tower always stays in eval mode."""
        super().train(mode)
        self.vision_tower.eval()
        return self

    def preprocess(self, frames: Tensor | np.ndarray) -> Tensor:
        """uint8 RGB ``(N, H, W, 3)`` -> normalised ``(N, 3, S, S)`` on this module's device and dtype.

        Equal (within one uint8 step) to ``CLIPImageProcessor`` of openai/clip-vit-large-patch14 for
        ``S = 224`` (shortest side S bicubic, centre crop S, CLIP mean/std), method §1.5.
        """
        weight = self.projector.weight
        return clip_preprocess(frames, self.cfg.image, device=weight.device, dtype=self.vision_tower.dtype)

    def encode_patches(self, pixel_values: Tensor) -> Tensor:
        """Tower features at ``select_layer`` without CLS: ``(N, 3, S, S)`` -> ``(N, num_patches, hidden)``."""
        self._check_pixels(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.tower_trainable):
            outputs = self.vision_tower(
                pixel_values=pixel_values.to(self.vision_tower.dtype), output_hidden_states=True
            )
            return outputs.hidden_states[self.cfg.select_layer][:, 1:]

    def merge(self, patches: Tensor) -> Tensor:
        """DPC-KNN merge: ``(N, num_patches, hidden)`` -> ``(N, tokens_per_frame, hidden)``."""
        merge_cfg = self.cfg.merge
        positions = None
        if merge_cfg.centroid_position_scale:
            grid = self.cfg.image_size // self.cfg.patch_size
            positions = merge_cfg.centroid_position_scale * grid_position_embedding(grid, patches.shape[-1])
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.tower_trainable):
            return dpc_knn_merge(patches, cluster_counts=merge_cfg.cluster_counts, knn_k=merge_cfg.knn_k,
                                 positions=positions)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Visual tokens for a batch of frames.

        Args:
            pixel_values: ``(N, 3, S, S)`` from :meth:`preprocess` (``S = cfg.image_size``).

        Returns:
            ``(N, tokens_per_frame, projector_out_dim)`` in the projector's dtype.
        """
        merged = self.merge(self.encode_patches(pixel_values))
        return self.projector(merged.to(self.projector.weight.dtype))

    def _check_pixels(self, pixel_values: Tensor) -> None:
        size = self.cfg.image_size
        if not isinstance(pixel_values, Tensor) or not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be a float tensor (N, 3, {size}, {size}) from VisualTokenizer.preprocess, "
                f"got {getattr(pixel_values, 'dtype', type(pixel_values).__name__)}"
            )
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"pixel_values must have shape (N, 3, {size}, {size}), got {tuple(pixel_values.shape)}; "
                "use VisualTokenizer.preprocess on uint8 (N, H, W, 3) frames"
            )
