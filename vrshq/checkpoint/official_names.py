"""Parameter names of the released VRS-HQ checkpoint -> vrshq names, declared as data.

The official model (``SitongGong/VRS-HQ``, ``model/VISA_multiseg.py`` and
``model/VISA_multiseg_cliptree_bf16.py``) is ``VrshqForCausalLM``, a subclass of Chat-UniVi's
``ChatUniViLlamaForCausalLM`` (``model/univi/model/language_model/llama.py``). Its ``state_dict`` has:

=====================================================  ==============================================
official key (after wrappers are removed)               what it is
=====================================================  ==============================================
``model.embed_tokens.*``, ``model.layers.N.*``,         the LLaMA-7B decoder (``LlamaModel`` fields of
``model.norm.*``, ``lm_head.*``                         ``ChatUniViLlamaModel``) and its LM head
``model.vision_tower.vision_tower.vision_model.*``      CLIP ViT-L/14-224: ``CLIPVisionTower`` (Chat-UniVi
                                                        ``multimodal_encoder/clip_encoder.py``) holding a
                                                        ``CLIPVisionModel`` as ``.vision_tower`` (names of
                                                        transformers 4.31, which kept ``vision_model.``)
``model.mm_projector.{weight,bias}``                    ``Linear(1024, 4096)`` (``arch.py: MetaModel``)
``model.text_hidden_fcs.0.{0,2}.{weight,bias}``         the shared [SEG]/[TAK] MLP: ``ModuleList([Sequential(
                                                        Linear, ReLU, Linear, Dropout)])`` (method §2)
``model.visual_model.*``                                SAM2 (``sam2/build_sam.py: _build_sam2_``, a
                                                        ``SAM2VideoPredictor``; ``SAM2Base`` names)
``clip_model.*``                                        CLIP ViT-L/14-336 ``CLIPModel`` of the keyframe
                                                        anchor (``initialize_clip_modules``); only present
                                                        if a checkpoint was saved after that call
=====================================================  ==============================================

Wrappers seen on the same names and removed first (:data:`OFFICIAL_WRAPPER_PREFIXES`):
``base_model.model.`` (a peft ``PeftModel``: the training checkpoint, and the evaluation script wraps
the merged model in a no-op LoRA again, method §9.9) and ``module.`` (DeepSpeed / DDP). Unmerged LoRA
adapters (``X.lora_A[.default].weight``, ``X.lora_B[.default].weight`` next to ``X.weight`` or
``X.base_layer.weight``, peft 0.4 and newer) are folded into ``X.weight`` with scale
``lora_alpha / r`` (the official r=8, alpha=16, method §6) before renaming.

Keys that hold no learned value are dropped, but only those declared in :data:`OFFICIAL_IGNORED_KEYS`
(RoPE ``inv_freq`` and CLIP ``position_ids`` buffers that older transformers versions saved). Every
other key that no rule maps is reported: :func:`convert_official_state_dict` raises
:class:`UnknownOfficialKeysError` naming them unless ``unknown="keep"``.

The released HF folder (``pytorch_model-0000i-of-0000n.bin`` + ``pytorch_model.bin.index.json``, or
safetensors) is read by :func:`load_official_checkpoint` with ``torch.load(weights_only=True)`` only,
one shard at a time (local pickles are memory-mapped), so a model built on empty weights fills shard
by shard without a second copy of the weights in host memory. The CLIP-336 anchor folder and a SAM2
checkpoint, which the release does not hold or which replace its part, load in the same strict pass.

:func:`to_official_state_dict` is the inverse mapping: it writes a vrshq state dict under the
official names (release-format fixtures and benchmarks).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from vrshq.checkpoint.load import LoadReport, load_files_into
from vrshq.checkpoint.weight_files import WeightFile, as_uris, open_weight_files

__all__ = [
    "OFFICIAL_IGNORED_KEYS",
    "OFFICIAL_KEY_MAP",
    "OFFICIAL_LORA_ALPHA",
    "OFFICIAL_WRAPPER_PREFIXES",
    "OFFICIAL_ANCHOR_PREFIX",
    "OFFICIAL_SAM2_PREFIX",
    "UnknownOfficialKeysError",
    "VRSHQ_ANCHOR_PREFIX",
    "convert_official_state_dict",
    "load_official_checkpoint",
    "merge_lora_weights",
    "to_official_state_dict",
]

logger = logging.getLogger(__name__)

# Where each part lives in vrshq's VrshqModel (its attribute paths).
VRSHQ_LLM_PREFIX = "mllm.llm."
"""``transformers.LlamaForCausalLM``: ``model.embed_tokens``, ``model.layers``, ``model.norm``, ``lm_head``."""
VRSHQ_VISION_PREFIX = "vision."
"""``VisualTokenizer``: ``vision_tower`` (a ``CLIPVisionModel``, whose keys have no ``vision_model.``
level in transformers >= 5, e.g. ``vision.vision_tower.encoder.layers.0...``) and ``projector``."""
VRSHQ_SEG_HEAD_PREFIX = "seg_head."
"""The shared SEG/TAK MLP."""
VRSHQ_SAM2_PREFIX = "sam2.sam2."
"""``Sam2Segmenter.sam2``, a ``VrshqSam2`` (``SAM2Base`` parameter names)."""
VRSHQ_ANCHOR_PREFIX = "anchor.clip_model."
"""``AnchorFrameSampler.clip_model``, a ``transformers.CLIPModel``."""

OFFICIAL_ANCHOR_PREFIX = "clip_model."
"""Official root of the CLIP-336 anchor; the tensors of an ``openai/clip-vit-large-patch14-336``
folder get it to load as the anchor."""
OFFICIAL_SAM2_PREFIX = "model.visual_model."
"""Official root of SAM2; the tensors of a SAM2 checkpoint get it to load as the segmenter."""

OFFICIAL_WRAPPER_PREFIXES: tuple[str, ...] = (r"^module\.", r"^base_model\.model\.")
"""Removed from every key, in this order, before the rules (DeepSpeed/DDP, then peft)."""

OFFICIAL_KEY_MAP: tuple[tuple[str, str], ...] = (
    # LLaMA decoder and head (transformers LlamaForCausalLM names on both sides).
    (r"^model\.embed_tokens\.", VRSHQ_LLM_PREFIX + "model.embed_tokens."),
    (r"^model\.layers\.(\d+)\.", VRSHQ_LLM_PREFIX + r"model.layers.\1."),
    (r"^model\.norm\.", VRSHQ_LLM_PREFIX + "model.norm."),
    (r"^lm_head\.", VRSHQ_LLM_PREFIX + "lm_head."),
    # Chat-UniVi visual path: CLIPVisionTower.vision_tower is the CLIPVisionModel (4.31 names).
    # transformers >= 5 names CLIPVisionModel's tensors without the "vision_model." level.
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", VRSHQ_VISION_PREFIX + "vision_tower."),
    (r"^model\.mm_projector\.", VRSHQ_VISION_PREFIX + "projector."),
    # text_hidden_fcs[0] = Sequential(Linear 0, ReLU 1, Linear 2, Dropout 3).
    (r"^model\.text_hidden_fcs\.0\.0\.", VRSHQ_SEG_HEAD_PREFIX + "mlp.0."),
    (r"^model\.text_hidden_fcs\.0\.2\.", VRSHQ_SEG_HEAD_PREFIX + "mlp.2."),
    # SAM2: the same SAM2Base names under both roots.
    (r"^model\.visual_model\.", VRSHQ_SAM2_PREFIX),
    # CLIP-336 anchor model, if the checkpoint has it.
    (r"^clip_model\.", VRSHQ_ANCHOR_PREFIX),
)
"""``(regex, replacement)`` rules, HF ``_checkpoint_conversion_mapping`` style: the first rule whose
regex matches a key rewrites it with ``re.sub(regex, replacement, key, count=1)``."""

OFFICIAL_IGNORED_KEYS: tuple[str, ...] = (
    r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$",  # RoPE buffer, recomputed from the config
    r"(^|\.)embeddings\.position_ids$",  # CLIP arange buffer (persistent in transformers < 4.31)
)
"""Keys dropped on purpose (buffers derived from the config, not learned); matched after unwrapping."""

OFFICIAL_LORA_ALPHA = 16.0
"""LoRA alpha of the official training run (method §6, ``--lora_alpha 16``); r is read from the tensors."""

_LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


class UnknownOfficialKeysError(ValueError):
    """Official checkpoint keys that no rule of :data:`OFFICIAL_KEY_MAP` maps (listed in ``keys``)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        shown = ", ".join(self.keys[:100]) + (f", ... and {len(self.keys) - 100} more" if len(self.keys) > 100 else "")
        super().__init__(
            f"{len(self.keys)} key(s) of the official checkpoint match no rule of OFFICIAL_KEY_MAP: [{shown}]. "
            "If they belong to a known part, add a rule; pass unknown='keep' to keep them unmapped "
            "(strict loading then reports them as unexpected)."
        )


def merge_lora_weights(state_dict: Mapping[str, torch.Tensor], *, lora_alpha: float = OFFICIAL_LORA_ALPHA
                       ) -> dict[str, torch.Tensor]:
    """Fold unmerged LoRA pairs into their base weights: ``W + (lora_alpha / r) * B @ A`` (peft's merge
    for ``nn.Linear`` without ``fan_in_fan_out``), and rename ``X.base_layer.weight`` to ``X.weight``.

    Args:
        state_dict: names as saved by a peft model (wrapper prefixes may be present or not).
        lora_alpha: the LoRA alpha of the run; ``r`` is ``A.shape[0]``.

    Raises:
        ValueError: a LoRA pair without its partner or its base weight, or inconsistent shapes.
    """
    pairs: dict[str, dict[str, list[torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        m = _LORA_RE.match(key)
        if m:
            pairs.setdefault(m["module"], {"A": [], "B": []})[m["ab"]].append(tensor)
        else:
            out[key.replace(".base_layer.", ".")] = tensor
    for module, ab in sorted(pairs.items()):
        if len(ab["A"]) != len(ab["B"]):
            raise ValueError(f"LoRA adapter of {module!r} has {len(ab['A'])} lora_A but {len(ab['B'])} lora_B tensors")
        weight_key = f"{module}.weight"
        if weight_key not in out:
            raise ValueError(f"LoRA adapter of {module!r} has no base weight ({weight_key} or "
                             f"{module}.base_layer.weight) in the state dict")
        merged = out[weight_key].float()
        for a, b in zip(ab["A"], ab["B"]):
            r = a.shape[0]
            if b.shape[1] != r or (b.shape[0], a.shape[1]) != tuple(merged.shape):
                raise ValueError(f"LoRA shapes of {module!r} do not fit: A {list(a.shape)}, B {list(b.shape)}, "
                                 f"weight {list(merged.shape)}")
            merged = merged + (lora_alpha / r) * (b.float() @ a.float())
        out[weight_key] = merged.to(out[weight_key].dtype)
    return out


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    lora_alpha: float = OFFICIAL_LORA_ALPHA,
    unknown: Literal["raise", "keep"] = "raise",
) -> dict[str, torch.Tensor]:
    """Rename an official VRS-HQ state dict to vrshq's ``VrshqModel`` names.

    Steps: remove :data:`OFFICIAL_WRAPPER_PREFIXES`; fold LoRA adapters (:func:`merge_lora_weights`);
    drop :data:`OFFICIAL_IGNORED_KEYS`; rename with the first matching rule of :data:`OFFICIAL_KEY_MAP`.

    Args:
        state_dict: the official tensors (any of the variants in the module docstring).
        lora_alpha: LoRA alpha used to fold unmerged adapters (official: 16).
        unknown: ``"raise"``: unmapped keys raise :class:`UnknownOfficialKeysError`; ``"keep"``: they
            are kept under their unwrapped name (and logged).

    Returns:
        vrshq name -> tensor (the same tensor objects unless LoRA was folded).

    Raises:
        UnknownOfficialKeysError: keys no rule maps (with ``unknown="raise"``).
        ValueError: two official keys map to the same vrshq key, or broken LoRA pairs.

    Example:
        >>> import torch
        >>> sd = {"base_model.model.model.mm_projector.bias": torch.zeros(2), "lm_head.weight": torch.zeros(2, 2)}
        >>> sorted(convert_official_state_dict(sd))
        ['mllm.llm.lm_head.weight', 'vision.projector.bias']
    """
    if unknown not in ("raise", "keep"):
        raise ValueError(f"unknown must be 'raise' or 'keep', got {unknown!r}")
    wrappers = [re.compile(p) for p in OFFICIAL_WRAPPER_PREFIXES]
    unwrapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        plain = key
        for w in wrappers:
            plain = w.sub("", plain, count=1)
        if plain in unwrapped:
            raise ValueError(f"official keys collide once wrappers are removed: {plain!r}")
        unwrapped[plain] = tensor
    merged = merge_lora_weights(unwrapped, lora_alpha=lora_alpha)
    ignored = [re.compile(p) for p in OFFICIAL_IGNORED_KEYS]
    rules = [(re.compile(p), r) for p, r in OFFICIAL_KEY_MAP]
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in merged.items():
        if any(p.search(key) for p in ignored):
            continue
        new = next((p.sub(r, key, count=1) for p, r in rules if p.match(key)), None)
        if new is None:
            unmapped.append(key)
            new = key
        if new in out:
            raise ValueError(f"two official keys map to {new!r}")
        out[new] = tensor
    if unmapped:
        if unknown == "raise":
            raise UnknownOfficialKeysError(sorted(unmapped))
        logger.warning("%d official key(s) kept unmapped: %s", len(unmapped), sorted(unmapped)[:50])
    return out


# vrshq prefix -> official prefix, the inverse of OFFICIAL_KEY_MAP (longest vrshq prefix first).
_INVERSE_PREFIXES: tuple[tuple[str, str], ...] = (
    (VRSHQ_LLM_PREFIX + "model.", "model."),
    (VRSHQ_LLM_PREFIX + "lm_head.", "lm_head."),
    (VRSHQ_VISION_PREFIX + "vision_tower.", "model.vision_tower.vision_tower.vision_model."),
    (VRSHQ_VISION_PREFIX + "projector.", "model.mm_projector."),
    (VRSHQ_SEG_HEAD_PREFIX + "mlp.0.", "model.text_hidden_fcs.0.0."),
    (VRSHQ_SEG_HEAD_PREFIX + "mlp.2.", "model.text_hidden_fcs.0.2."),
    (VRSHQ_SAM2_PREFIX, OFFICIAL_SAM2_PREFIX),
    (VRSHQ_ANCHOR_PREFIX, OFFICIAL_ANCHOR_PREFIX),
)


def to_official_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a vrshq state dict (or a name -> anything mapping) to the official names, the inverse of
    :func:`convert_official_state_dict` on a merged checkpoint: ``convert(to_official(sd)) == sd``.

    Raises:
        ValueError: a key under no part of the official model (listed).

    Example:
        >>> sorted(to_official_state_dict({"vision.projector.bias": 0, "mllm.llm.lm_head.weight": 1}))
        ['lm_head.weight', 'model.mm_projector.bias']
    """
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        new = next((official + key[len(ours):] for ours, official in _INVERSE_PREFIXES if key.startswith(ours)), None)
        if new is None:
            unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) belong to no part of the official model: {sorted(unknown)[:50]}")
    return out


@dataclasses.dataclass
class _ConvertedFile(WeightFile):
    """A weight file whose tensors get an official prefix, then the official -> vrshq names."""

    prefix: str = ""
    lora_alpha: float = OFFICIAL_LORA_ALPHA

    def read(self) -> dict[str, Any]:
        tensors = super().read()
        return convert_official_state_dict({self.prefix + k: v for k, v in tensors.items()}, lora_alpha=self.lora_alpha)


def _converted(wf: WeightFile, *, prefix: str, lora_alpha: float) -> _ConvertedFile:
    shapes = convert_official_state_dict({prefix + k: v for k, v in wf.shapes.items()}, lora_alpha=lora_alpha)
    fields = {f.name: getattr(wf, f.name) for f in dataclasses.fields(WeightFile)}
    return _ConvertedFile(**{**fields, "shapes": shapes}, prefix=prefix, lora_alpha=lora_alpha)


def load_official_checkpoint(
    model: nn.Module,
    uri: str | Sequence[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    strict: bool = True,
    lora_alpha: float = OFFICIAL_LORA_ALPHA,
    anchor_uri: str | None = None,
    sam2_uri: str | None = None,
    allow_missing_anchor: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LoadReport:
    """Load the released VRS-HQ weights (the published folder, local or fsspec: ``s3://``, ``hf://``)
    into a ``VrshqModel`` built with the ``vrshq-7b`` preset (or a smaller one of the same layout).

    Keys and shapes of every file are checked before any tensor is copied; then the files are read
    one at a time (pickles with ``weights_only=True``, local ones memory-mapped) and each tensor is
    copied into the model, or, for a model built on empty (meta) weights, materialised on ``device``
    in ``dtype``: a 7B load holds one shard and the model, never two copies of the weights.

    The release has no ``clip_model.*``: the CLIP-336 anchor comes from ``anchor_uri`` (a folder in
    the ``openai/clip-vit-large-patch14-336`` layout, whose tensors load as ``clip_model.*``), or was
    built from ``AnchorConfig.weights_path``, or stays random with ``allow_missing_anchor=True``.
    ``sam2_uri`` (a SAM2 ``.pt``/``.safetensors`` file, e.g. ``sam2_hiera_large.pt``) loads as
    ``model.visual_model.*``, after the checkpoint, so it replaces the release's SAM2 where both exist.

    Args:
        model: the model to fill (built normally, or with parameters on the meta device).
        uri: the release folder, its index or a weight file (or a sequence, later ones overriding).
        storage_options: fsspec options for every URI.
        strict: raise on any missing, unexpected or mismatched key.
        lora_alpha: LoRA alpha to fold unmerged adapters (training checkpoints).
        anchor_uri: the CLIP-336 anchor folder, or None.
        sam2_uri: a SAM2 checkpoint, or None.
        allow_missing_anchor: the anchor's keys may stay missing although the model's anchor was not
            built from weights (an explicitly random anchor).
        device, dtype: where and in which dtype tensors of a meta-device model are materialised
            (default: the CPU, the checkpoint's dtype); tensors of a built model keep theirs.

    Raises:
        CheckpointNotFoundError, UnsafeCheckpointError, UnknownOfficialKeysError, CheckpointMismatchError.
    """
    files = [wf for one in as_uris(uri) for wf in open_weight_files(one, storage_options)]
    if any(_LORA_RE.match(k) for wf in files for k in wf.shapes):
        # LoRA pairs may sit in different shards: fold them over the whole state dict at once.
        tensors: dict[str, torch.Tensor] = {}
        for wf in files:
            tensors.update(wf.read())
        merged = WeightFile(uri=", ".join(as_uris(uri)), shapes={k: tuple(v.shape) for k, v in tensors.items()},
                            content=None, fs=None, path="", tensors=tensors)
        files = [merged]
    converted = [_converted(wf, prefix="", lora_alpha=lora_alpha) for wf in files]
    has_anchor = any(k.startswith(VRSHQ_ANCHOR_PREFIX) for wf in converted for k in wf.shapes)
    if anchor_uri is not None:
        converted += [_converted(wf, prefix=OFFICIAL_ANCHOR_PREFIX, lora_alpha=lora_alpha)
                      for wf in open_weight_files(anchor_uri, storage_options)]
        has_anchor = True
    if sam2_uri is not None:
        converted += [_converted(wf, prefix=OFFICIAL_SAM2_PREFIX, lora_alpha=lora_alpha)
                      for wf in open_weight_files(sam2_uri, storage_options)]
    ignore_missing: tuple[str, ...] = ()
    if not has_anchor:
        anchor_cfg = getattr(getattr(model, "cfg", None), "anchor", None)
        if getattr(anchor_cfg, "weights_path", None) is None and not allow_missing_anchor:
            logger.warning("the checkpoint has no clip_model.* and no anchor folder was given: the CLIP-336 "
                           "anchor keeps its random weights (pass anchor_uri=<openai/clip-vit-large-patch14-336 "
                           "folder>)")
        ignore_missing = (re.escape(VRSHQ_ANCHOR_PREFIX),)
    return load_files_into(model, converted, strict=strict, ignore_missing=ignore_missing,
                           source=", ".join(as_uris(uri)), device=device, dtype=dtype)
