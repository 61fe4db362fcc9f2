"""The tensors a checkpoint holds: the full state dict, LoRA folded into its base weights, or the
trainable parameters only (see :mod:`vrshq.checkpoint`)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["CONTENTS", "LORA_KEY_RE", "checkpoint_state_dict", "strip_peft"]

CONTENTS = ("full", "merged", "trainable")

_PEFT_PREFIX = "base_model.model."
LORA_KEY_RE = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")


def strip_peft(key: str) -> str:
    """Name of ``key`` in the model without peft wrappers (``base_model.model.`` and ``.base_layer`` gone)."""
    return key.replace(_PEFT_PREFIX, "").replace(".base_layer.", ".")


def checkpoint_state_dict(
    model: nn.Module,
    *,
    content: str = "full",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors :func:`save_vrshq_checkpoint` writes for ``content`` (see the module docstring).

    Args:
        model: any module; peft LoRA layers inside it are recognised for ``content="merged"``.
        content: ``"full"``, ``"merged"`` or ``"trainable"``.
        dtype: cast floating-point tensors to this dtype (e.g. ``torch.bfloat16`` to halve a 7B
            checkpoint); ``None`` keeps each tensor's dtype.

    Returns:
        name -> detached tensor (shares memory with the model unless merged or cast).
    """
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
    state = model.state_dict(keep_vars=True)
    if content == "trainable":
        trainable = {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
        if not trainable:
            raise ValueError("trainable_only=True but the model has no parameter with requires_grad=True")
        state = {k: v for k, v in state.items() if k in trainable}
    elif content == "merged":
        state = _merged_lora_state(model, state)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[key] = tensor
    return out


def _merged_lora_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold every active LoRA adapter into its base weight and drop the peft names, without
    changing ``model`` (peft's ``merge_and_unload`` would mutate it and copy nothing less)."""
    folded: dict[str, torch.Tensor] = {}  # plain weight name -> W + sum of adapter deltas
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft absent: a model cannot hold LoRA layers then
        LoraLayer = ()  # type: ignore[assignment]  # noqa: N806
    for name, module in model.named_modules():
        if LoraLayer and isinstance(module, LoraLayer):
            with torch.no_grad():
                weight = module.get_base_layer().weight.detach().clone()
                for adapter in module.active_adapters:
                    if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                        weight += module.get_delta_weight(adapter).to(weight.dtype)
            folded[strip_peft(f"{name}.weight")] = weight
    merged: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if LORA_KEY_RE.search(key):
            continue
        plain = strip_peft(key)
        if plain in merged:
            raise ValueError(f"two model keys map to {plain!r} once peft names are removed; cannot merge")
        merged[plain] = folded.get(plain, tensor)
    return merged

