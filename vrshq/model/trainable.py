"""The trainable parameter sets of VRS-HQ (method §6) and the LoRA adapters through `peft`.

"lora" (the official recipe): LoRA r=8, alpha=16, dropout 0.05, bias none on the LLaMA `q_proj`/`v_proj`
of every layer (only inside the LLM, so never in the vision tower, projector, seg head or SAM2); fully
trainable `lm_head`, `embed_tokens`, the SAM2 mask decoder (with conv_s0/conv_s1) and the seg head;
everything else frozen. "all": every parameter that takes part in autograd trains, for from-scratch
training of small models (the CLIP towers run without autograd by design and stay frozen). "none":
inference.

LoRA is injected in place (`peft.inject_adapter_in_model`), so parameter names stay those of the module
tree plus `.base_layer` / `.lora_A.default` / `.lora_B.default` on the adapted projections.
"""

from __future__ import annotations

from torch import nn

from vrshq.config import TrainableConfig

__all__ = [
    "apply_lora",
    "configure_trainable",
    "has_lora",
    "merge_lora",
    "trainable_parameter_groups",
    "trainable_parameter_names",
]


def has_lora(module: nn.Module) -> bool:
    """True if LoRA adapters were injected anywhere in `module`."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def apply_lora(llm: nn.Module, cfg: TrainableConfig) -> nn.Module:
    """Inject LoRA adapters into the `cfg.lora_target_modules` linear layers of `llm` (in place)."""
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(llm):
        return llm
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        bias="none",
        target_modules=list(cfg.lora_target_modules),
    )
    return inject_adapter_in_model(lora, llm)


def merge_lora(module: nn.Module) -> int:
    """Merge every LoRA adapter into its base weight and put the plain base layer back.

    Afterwards the parameter names are the plain ones again (`...q_proj.weight`), as in the released,
    merged VRS-HQ weights. Returns the number of merged layers.
    """
    from peft.tuners.lora import LoraLayer

    targets = [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in targets:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return len(targets)


def configure_trainable(model: nn.Module, cfg: TrainableConfig) -> list[str]:
    """Set `requires_grad` on a `VrshqModel` for `cfg.mode`; returns the trainable parameter names.

    Args:
        model: a `VrshqModel` (attributes `vision`, `anchor`, `mllm`, `seg_head`, `sam2`).
        cfg: the trainable set.
    """
    if not isinstance(cfg, TrainableConfig):
        raise TypeError(f"cfg must be a TrainableConfig, got {type(cfg).__name__}")
    model.requires_grad_(False)
    if cfg.mode == "none":
        model.sam2.set_trainable("none")
    elif cfg.mode == "all":
        if has_lora(model.mllm.llm):
            raise ValueError("mode 'all' trains the LLM fully; build the model without LoRA (mode 'lora' injected it)")
        model.mllm.requires_grad_(True)
        model.seg_head.requires_grad_(True)
        model.vision.projector.requires_grad_(True)
        model.sam2.set_trainable("all")
    else:
        apply_lora(model.mllm.llm, cfg)
        model.mllm.requires_grad_(False)
        for name, param in model.mllm.llm.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
        model.mllm.llm.get_input_embeddings().requires_grad_(True)
        model.mllm.llm.get_output_embeddings().requires_grad_(True)
        model.seg_head.requires_grad_(True)
        model.sam2.set_trainable("mask_decoder")
    return trainable_parameter_names(model)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters with `requires_grad`."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def trainable_parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters split into the SAM2 part and the text path (LLM, seg head, projector).

    From-scratch training needs a separate learning rate for each (docs/research/learnability.md: one shared rate
    makes the model segment every object and ignore the text). Use as
    `AdamW([{"params": g["sam2"], "lr": 1e-4}, {"params": g["text"], "lr": 1e-3}])`.
    """
    groups: dict[str, list[nn.Parameter]] = {"sam2": [], "text": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["sam2" if name.startswith("sam2.") else "text"].append(param)
    return groups
