"""Weights I/O for vrshq models: safetensors through fsspec, strict by default, never unpickling.

A checkpoint is a self-contained folder, local or remote (any fsspec URI such as ``s3://bucket/run/step-100``)::

    <uri>/
      config.json                      the model's VrshqConfig and the checkpoint layout (CONFIG_NAME)
      model.safetensors                the weights (WEIGHTS_NAME), or for big models
      model-00001-of-00003.safetensors ... plus model.safetensors.index.json (WEIGHTS_INDEX_NAME), HF layout
      tokenizer.json, tokenizer_config.json, ...   the tokenizer (with [SEG]/[TAK]), if one was given

Three kinds of content are written (``content`` in the safetensors metadata and in ``config.json``):

* ``"full"``: every entry of ``model.state_dict()`` under its own name;
* ``"merged"``: the same with every LoRA adapter folded into its base weight (``W + scale * B @ A``)
  and the peft names (``base_model.model.``, ``.base_layer``, ``lora_*``) removed, so a model built
  without LoRA loads it;
* ``"trainable"``: only the parameters with ``requires_grad`` (what training changes: LoRA, heads, ...).
  Training writes these; inference loads ``[base_uri, trainable_uri]`` in one call, later files
  overriding earlier ones, and strictness is checked on the union.

Loading is strict (sam2's ``_load_checkpoint`` trait, but the keys are in the message): missing and
unexpected keys and shape mismatches (with both shapes) are collected first, from the safetensors
headers alone, and reported in one :class:`CheckpointMismatchError` before any weight is copied.
Pickle files (``.bin``/``.pt``/``.pth``/``.ckpt``, e.g. an official release) are read only with
``torch.load(weights_only=True)`` (memory-mapped where the file is local, so its pages are read as
tensors are copied); a file holding anything but tensors is refused with
:class:`UnsafeCheckpointError` and nothing in it is executed.

The released VRS-HQ weights use the official module names; load them with
:func:`vrshq.model.official_names.load_official_checkpoint`, which renames them first.

Example (tiny preset; on S3 pass ``storage_options`` and an ``s3://`` URI)::

    model = build_vrshq(tiny_config(trainable="lora"))
    save_vrshq_checkpoint(model, "/ckpt/step-100", trainable_only=True)      # training
    load_vrshq_checkpoint(model, ["/ckpt/base", "/ckpt/step-100"])           # inference
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from torch import nn

from vrshq.model.config_io import config_from_dict, config_to_dict
from vrshq.model.weight_files import (
    CONFIG_NAME,
    LAYOUT_HELP,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    WeightFile,
    as_uris,
    join_uri,
    list_keys,
    open_weight_files,
    read_state_dict,
)

__all__ = [
    "CONFIG_NAME",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "LoadReport",
    "SavedCheckpoint",
    "UnsafeCheckpointError",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "checkpoint_state_dict",
    "config_from_dict",
    "config_to_dict",
    "inspect_checkpoint",
    "load_files_into",
    "load_state_dict_into",
    "load_vrshq_checkpoint",
    "load_vrshq_config",
    "load_vrshq_tokenizer",
    "read_state_dict",
    "save_vrshq_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SHARD_PATTERN = "model{suffix}.safetensors"
_SHARD_RE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")
_CONTENTS = ("full", "merged", "trainable")
# Roots that only the official VRS-HQ module tree has (see vrshq.model.official_names).
_OFFICIAL_NAME_RE = re.compile(r"^(module\.)?(base_model\.model\.)?model\.(visual_model|text_hidden_fcs|mm_projector)\.")


@dataclasses.dataclass(frozen=True)
class SavedCheckpoint:
    """What :func:`save_vrshq_checkpoint` wrote.

    Attributes:
        uri: the checkpoint folder.
        content: ``"full"``, ``"merged"`` or ``"trainable"``.
        weight_files: names of the safetensors files, relative to ``uri``.
        num_tensors: number of tensors written.
        num_bytes: total tensor bytes written.
        tokenizer_files: names of the tokenizer files written, relative to ``uri``.
    """

    uri: str
    content: str
    weight_files: tuple[str, ...]
    num_tensors: int
    num_bytes: int
    tokenizer_files: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_vrshq_checkpoint` loaded (with ``strict=False`` the lists may be non-empty).

    Attributes:
        loaded: model keys that received a checkpoint tensor.
        missing: model keys that no file provided (kept as they were).
        unexpected: checkpoint keys the model does not have (ignored).
        mismatched: ``(key, checkpoint_shape, model_shape)``, not loaded.
        still_meta: parameters/buffers of a meta-device model that are still on the meta device after
            loading (missing keys, or non-persistent buffers that no checkpoint holds).
        read_seconds: time spent reading the files (for memory-mapped pickles, mapping them; their
            pages are read during the copy).
        copy_seconds: time spent copying tensors into the model (materialising them on their device).
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    still_meta: tuple[str, ...] = ()
    read_seconds: float = 0.0
    copy_seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------
# State dicts: full, merged-LoRA, trainable-only.

_PEFT_PREFIX = "base_model.model."
_LORA_KEY_RE = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")


def _strip_peft(key: str) -> str:
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
    if content not in _CONTENTS:
        raise ValueError(f"content must be one of {_CONTENTS}, got {content!r}")
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
            folded[_strip_peft(f"{name}.weight")] = weight
    merged: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if _LORA_KEY_RE.search(key):
            continue
        plain = _strip_peft(key)
        if plain in merged:
            raise ValueError(f"two model keys map to {plain!r} once peft names are removed; cannot merge")
        merged[plain] = folded.get(plain, tensor)
    return merged


# ---------------------------------------------------------------------------------------------------
# Saving.


def save_vrshq_checkpoint(
    model: nn.Module,
    uri: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    config: Any = None,
    tokenizer: Any = None,
    trainable_only: bool = False,
    merge_lora: bool = False,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> SavedCheckpoint:
    """Write ``model``'s weights, its config and its tokenizer to the folder ``uri`` (local or fsspec).

    Args:
        model: the model (``VrshqModel`` or any ``nn.Module``).
        uri: destination folder, e.g. ``/ckpt/run1`` or ``s3://bucket/run1/step-100``.
        storage_options: fsspec options for ``uri`` (e.g. s3 endpoint and keys).
        config: the ``VrshqConfig`` to write as ``config.json``; default ``model.cfg`` (or ``model.config``)
            if that is a dataclass; without one, config.json holds only the layout. Fields named
            ``*storage_options`` (credentials) are written as null.
        tokenizer: a HF tokenizer to save beside the weights; ``None`` (default): ``model.tokenizer``
            if the model has one; ``False``: write no tokenizer.
        trainable_only: write only parameters with ``requires_grad`` (LoRA adapters, heads); load them
            with their base: ``load_vrshq_checkpoint(model, [base_uri, uri])``.
        merge_lora: fold LoRA adapters into the base weights and write plain (peft-free) names.
        dtype: cast floating tensors (e.g. ``torch.bfloat16``); ``None`` keeps the model's dtypes.
        max_shard_size: shard size limit (bytes or ``"5GB"``); above it the HF sharded layout with
            ``model.safetensors.index.json`` is written.
        overwrite: replace the weight files of an existing checkpoint at ``uri`` (only those files).

    Returns:
        A :class:`SavedCheckpoint` describing what was written.

    Raises:
        ValueError: both ``trainable_only`` and ``merge_lora``; a checkpoint already at ``uri``
            without ``overwrite``; a model on the meta device.
    """
    from safetensors.torch import save_file

    if trainable_only and merge_lora:
        raise ValueError("trainable_only=True and merge_lora=True exclude each other: merged weights are a "
                         "full checkpoint; save the adapters with trainable_only=True and the base separately")
    content = "trainable" if trainable_only else "merged" if merge_lora else "full"
    fs, root = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    root = root.rstrip("/")
    existing = _existing_weight_files(fs, root)
    if existing and not overwrite:
        raise ValueError(f"{uri} already holds a checkpoint ({', '.join(existing)}); pass overwrite=True to "
                         "replace its weight files, or choose a new folder")
    state = checkpoint_state_dict(model, content=content)  # references; cast shard by shard below
    meta = [k for k, t in state.items() if t.is_meta]
    if meta:
        raise ValueError(f"cannot save tensors on the meta device (no data): {list_keys(meta)}")
    state = _unshare(state)
    shards = _plan_shards(state, dtype=dtype, max_bytes=_parse_size(max_shard_size))
    metadata = {"format": "pt", "vrshq_content": content, "vrshq_format_version": str(FORMAT_VERSION)}

    fs.makedirs(root, exist_ok=True)
    for name in existing:
        fs.rm(f"{root}/{name}")
    local = isinstance(fs, LocalFileSystem)
    num_bytes = 0
    with tempfile.TemporaryDirectory(prefix="vrshq-ckpt-") as staging:
        for filename, names in shards.items():
            tensors = {n: _cast(state[n], dtype).contiguous() for n in names}
            num_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
            target = f"{root}/{filename}" if local else os.path.join(staging, filename)
            save_file(tensors, target, metadata=metadata)
            del tensors
            if not local:
                fs.put_file(target, f"{root}/{filename}")
                os.remove(target)
        if len(shards) > 1:  # the HF index layout, so HF tools read the folder too
            weight_map = {n: filename for filename, names in shards.items() for n in names}
            index = {"metadata": {"total_size": num_bytes, **metadata}, "weight_map": weight_map}
            _write_json(fs, f"{root}/{WEIGHTS_INDEX_NAME}", index)
        if tokenizer is None:
            tokenizer = getattr(model, "tokenizer", None)
        tokenizer_files: tuple[str, ...] = ()
        if tokenizer is not None and tokenizer is not False:
            tok_dir = os.path.join(staging, "tokenizer")
            tokenizer.save_pretrained(tok_dir)
            encoder = getattr(tokenizer, "vrshq_piece_encoder", None)
            if encoder is not None:  # the slow LLaMA tokenizer: keep its SentencePiece model and legacy flag
                encoder.save(tok_dir)
            tokenizer_files = tuple(sorted(os.listdir(tok_dir)))
            for name in tokenizer_files:
                fs.put_file(os.path.join(tok_dir, name), f"{root}/{name}")
    if config is None:  # VrshqModel keeps its VrshqConfig as `cfg`; HF-style modules as `config`
        config = next((c for c in (getattr(model, "cfg", None), getattr(model, "config", None))
                       if dataclasses.is_dataclass(c) and not isinstance(c, type)), None)
    config_json: dict[str, Any] = {
        "vrshq_format_version": FORMAT_VERSION,
        "content": content,
        "weight_files": sorted(shards),
        "tokenizer_files": list(tokenizer_files),
    }
    if config is not None and (dataclasses.is_dataclass(config) or hasattr(config, "to_dict")):
        config_json["config_class"] = f"{type(config).__module__}.{type(config).__qualname__}"
        config_json["config"] = config_to_dict(config)
    _write_json(fs, f"{root}/{CONFIG_NAME}", config_json)
    logger.info("saved %s checkpoint (%d tensors, %.1f MB) to %s", content, len(state), num_bytes / 1e6, uri)
    return SavedCheckpoint(uri=uri, content=content, weight_files=tuple(sorted(shards)),
                           num_tensors=len(state), num_bytes=num_bytes, tokenizer_files=tokenizer_files)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _parse_size(size: int | str) -> int:
    """``5_000_000_000``, ``"5GB"`` or ``"500MiB"`` -> bytes (HF convention: GB = 10**9)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B|)\s*", str(size), flags=re.IGNORECASE)
    if isinstance(size, str) and m and float(m[1]) > 0:
        return int(float(m[1]) * _SIZE_UNITS[m[2].upper()])
    raise ValueError(f"max_shard_size must be a positive byte count or a string like '5GB' or '500MiB', got {size!r}")


def _plan_shards(state: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None, max_bytes: int
                 ) -> dict[str, list[str]]:
    """Greedy split in key order (as HF's): a shard takes tensors until the next one would pass
    ``max_bytes`` (sizes counted in the saved dtype); a larger tensor gets a shard of its own.
    File names follow HF: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors``."""
    groups: list[list[str]] = [[]]
    used = 0
    for key, tensor in state.items():
        saved_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        size = tensor.numel() * saved_dtype.itemsize
        if groups[-1] and used + size > max_bytes:
            groups.append([])
            used = 0
        groups[-1].append(key)
        used += size
    if len(groups) == 1:
        return {WEIGHTS_NAME: groups[0]}
    n = len(groups)
    return {_SHARD_PATTERN.format(suffix=f"-{i + 1:05d}-of-{n:05d}"): g for i, g in enumerate(groups)}


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give later aliases their own copy,
    so that every state-dict key stays in the file and strict loading needs no tie bookkeeping."""
    seen: set[tuple[torch.device, int]] = set()
    out = {}
    for key, tensor in state.items():
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if tensor.numel() and storage in seen:  # also views into another tensor's storage
            tensor = tensor.clone()
        seen.add(storage)
        out[key] = tensor
    return out


def _existing_weight_files(fs: Any, root: str) -> list[str]:
    if not fs.isdir(root):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    return sorted(n for n in names if _SHARD_RE.match(n) or n == WEIGHTS_INDEX_NAME)


def _write_json(fs: Any, path: str, obj: Any) -> None:
    with fs.open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------------------------------
# Loading into a model.


def load_vrshq_checkpoint(
    model: nn.Module,
    uri: str | os.PathLike | Sequence[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    strict: bool = True,
    ignore_missing: Sequence[str] = (),
) -> LoadReport:
    """Load weights into ``model`` in place from one checkpoint or a sequence (base first, then
    trainable-only ones; later files override earlier ones for shared keys).

    Keys and shapes are checked against the model from the safetensors headers before any tensor is
    read; with ``strict`` every model key must be provided, no unexpected key may appear and every
    shape must match, else :class:`CheckpointMismatchError` lists them all and nothing is loaded.
    Names written without peft wrappers (a merged or base checkpoint) load into a model that holds
    LoRA layers: ``...q_proj.weight`` fills ``...q_proj.base_layer.weight``. Values are copied into
    the existing tensors, so the model's devices and dtypes are kept. Tensors of a meta-device model
    are materialised on the CPU; with ``strict``, any tensor still on the meta device afterwards
    (non-persistent buffers are never saved) raises. Shards are read one at a time.

    Args:
        model: the model to fill.
        uri: checkpoint folder, index or file; or a sequence of them, e.g. ``[base_uri, trainable_uri]``.
        storage_options: fsspec options for the URIs.
        strict: raise on any mismatch; with ``False`` they are only reported in the returned value.
        ignore_missing: regexes (``re.match``) of model keys that may be missing even with ``strict``,
            because they come from elsewhere (e.g. the CLIP-336 anchor loaded from its own snapshot);
            they are still listed in the report's ``missing``.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointNotFoundError, UnsafeCheckpointError, CheckpointMismatchError, CheckpointError.

    Example:
        >>> import tempfile, torch
        >>> src, dst = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_vrshq_checkpoint(src, d + "/ck")
        ...     report = load_vrshq_checkpoint(dst, d + "/ck")
        >>> report.loaded, torch.equal(src.weight, dst.weight)
        (('bias', 'weight'), True)
    """
    uris = as_uris(uri)
    files = [wf for one in uris for wf in open_weight_files(one, storage_options)]
    return _load_files(model, files, strict=strict, ignore_missing=ignore_missing, source=", ".join(uris))


def load_state_dict_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    ignore_missing: Sequence[str] = (),
    source: str = "<state dict>",
) -> LoadReport:
    """:func:`load_vrshq_checkpoint` for tensors already in memory (e.g. a converted official state
    dict): the same strict checks, error messages, peft aliasing and meta-device handling.

    Args:
        source: named in error messages (e.g. the URI the tensors came from).
    """
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    wf = WeightFile(uri=source, shapes=shapes, content=None, fs=None, path="", tensors=dict(state_dict))
    return _load_files(model, [wf], strict=strict, ignore_missing=ignore_missing, source=source)


def load_files_into(
    model: nn.Module,
    files: Sequence[WeightFile],
    *,
    strict: bool = True,
    ignore_missing: Sequence[str] = (),
    source: str = "<weight files>",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LoadReport:
    """:func:`load_vrshq_checkpoint` for weight files already opened (e.g. renamed official shards):
    strictness is checked on the union of their shapes first, then the files are read one at a time,
    so only one file's tensors are held at once.

    Args:
        device, dtype: where and in which (floating) dtype the tensors of a meta-device model are
            materialised; default: the CPU and the model's dtype. Tensors of a built model keep theirs.
    """
    return _load_files(model, list(files), strict=strict, ignore_missing=ignore_missing, source=source,
                       device=device, dtype=dtype)


def _load_files(model: nn.Module, files: list[WeightFile], *, strict: bool, ignore_missing: Sequence[str],
                source: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None
                ) -> LoadReport:
    target = model.state_dict(keep_vars=True)
    alias = _peft_aliases(target)
    provided: dict[str, tuple[int, ...]] = {}
    for wf in files:
        provided.update(wf.shapes)
    resolved = {k: k if k in target else alias.get(k) for k in provided}
    unexpected = sorted(k for k, r in resolved.items() if r is None)
    covered = {r for r in resolved.values() if r is not None}
    allowed = [re.compile(p) for p in ignore_missing]
    missing = sorted(k for k in target if k not in covered)
    not_allowed = [k for k in missing if not any(p.match(k) for p in allowed)]
    mismatched = sorted((k, provided[k], tuple(target[r].shape)) for k, r in resolved.items()
                        if r is not None and tuple(target[r].shape) != provided[k])
    if strict and (not_allowed or unexpected or mismatched):
        contents = {wf.content for wf in files}
        hint = ""
        if not_allowed and contents == {"trainable"}:
            hint = ("this is a trainable-only checkpoint: load it together with its base, "
                    "load_vrshq_checkpoint(model, [base_uri, trainable_uri])")
        elif any(_OFFICIAL_NAME_RE.match(k) for k in unexpected):
            hint = ("these are the official VRS-HQ parameter names: load the release with "
                    "vrshq.model.official_names.load_official_checkpoint(model, uri)")
        elif unexpected and any(_LORA_KEY_RE.search(k) for k in unexpected):
            hint = "the checkpoint holds LoRA adapters: apply the same LoRA to the model before loading"
        raise CheckpointMismatchError(source, missing=not_allowed, unexpected=unexpected,
                                      mismatched=mismatched, hint=hint)
    skip = {k for k, _, _ in mismatched}
    loaded: set[str] = set()
    read_s = copy_s = 0.0
    with torch.no_grad():
        for wf in files:
            start = time.perf_counter()
            tensors = wf.read()
            owned = tensors is not wf.tensors  # a dict made by read(): each tensor is dropped once copied
            read_s += time.perf_counter() - start
            start = time.perf_counter()
            for key in list(tensors):
                tensor = tensors.pop(key) if owned else tensors[key]
                name = resolved.get(key)
                if name is None or key in skip:
                    continue
                _copy_into(target[name], tensor, model, name, device=device, dtype=dtype)
                loaded.add(name)
                del tensor
            del tensors
            if wf.fs is not None:  # a file this module read (e.g. a remote pickle held whole): release it
                wf.tensors = None
            copy_s += time.perf_counter() - start
    still_meta = tuple(name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta)
    unexplained = [n for n in still_meta if not any(p.match(n) for p in allowed)]  # allowed: filled by the caller
    if strict and unexplained and loaded:
        raise CheckpointError(source, f"after loading, {len(unexplained)} tensor(s) are still on the meta device: "
                              f"{list_keys(unexplained)}. Non-persistent buffers (RoPE inv_freq, CLIP position_ids) "
                              "are never in a checkpoint: build the model on a real device before loading")
    return LoadReport(loaded=tuple(sorted(loaded)), missing=tuple(missing), unexpected=tuple(unexpected),
                      mismatched=tuple(mismatched), still_meta=still_meta, read_seconds=read_s, copy_seconds=copy_s)


def _peft_aliases(target: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Plain name -> model name for model keys that carry peft wrappers (LoRA base layers)."""
    out = {}
    for key in target:
        plain = _strip_peft(key)
        if plain != key and not _LORA_KEY_RE.search(key):
            out[plain] = key
    return out


def _copy_into(dest: torch.Tensor, src: torch.Tensor, model: nn.Module, name: str, *,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
    if dest.is_meta:
        # A model built on the meta device has no storage to copy into: materialise this tensor.
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        target_dtype = dtype if dtype is not None and dest.is_floating_point() else dest.dtype
        value = src.to(device=device or "cpu", dtype=target_dtype, copy=True)
        if isinstance(dest, nn.Parameter):
            setattr(module, attr, nn.Parameter(value, requires_grad=dest.requires_grad))
        else:
            module._buffers[attr] = value
        return
    dest.copy_(src)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found, without reading any safetensors tensor data.

    Attributes:
        uri: the checkpoint as given.
        weight_files: URIs of the weight files.
        content: ``"full"``, ``"merged"``, ``"trainable"``, or ``None`` (not written by vrshq).
        shapes: tensor name -> shape, over all weight files.
        has_config: whether the folder has a ``config.json`` with a model config.
        tokenizer_files: tokenizer files listed in ``config.json``.
    """

    uri: str
    weight_files: tuple[str, ...]
    content: str | None
    shapes: Mapping[str, tuple[int, ...]]
    has_config: bool
    tokenizer_files: tuple[str, ...]


def inspect_checkpoint(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> CheckpointInfo:
    """Check that ``uri`` holds a readable checkpoint and describe it, cheaply: only the
    safetensors headers and ``config.json`` are read (a preflight check before any model is built).
    Pickle files (``.bin``/``.pt``) have no header and are read whole, with ``weights_only=True``.

    Raises:
        CheckpointNotFoundError, UnsafeCheckpointError, CheckpointError: as :func:`load_vrshq_checkpoint`.
    """
    files = open_weight_files(uri, storage_options)
    shapes: dict[str, tuple[int, ...]] = {}
    for wf in files:
        shapes.update(wf.shapes)
    contents = {wf.content for wf in files}
    try:
        config_json = _read_config_json(uri, storage_options)
    except (CheckpointNotFoundError, NotADirectoryError):
        config_json = {}
    return CheckpointInfo(
        uri=uri,
        weight_files=tuple(wf.uri for wf in files),
        content=contents.pop() if len(contents) == 1 else None,
        shapes=shapes,
        has_config="config" in config_json,
        tokenizer_files=tuple(config_json.get("tokenizer_files") or ()),
    )


# Deprecated private name used by pipelines/model_loader.py before inspect_checkpoint existed.
_open_weight_files = open_weight_files


# ---------------------------------------------------------------------------------------------------
# Config and tokenizer beside the weights.


def _read_config_json(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    cfg_path = f"{path.rstrip('/')}/{CONFIG_NAME}"
    if not fs.isfile(cfg_path):
        raise CheckpointNotFoundError(join_uri(uri, CONFIG_NAME), f"no {CONFIG_NAME}; {LAYOUT_HELP}")
    with fs.open(cfg_path, "r") as f:
        return json.load(f)


def load_vrshq_config(uri: str, *, storage_options: Mapping[str, Any] | None = None, config_class: type | None = None
                      ) -> Any:
    """The config stored in a checkpoint folder's ``config.json`` (a ``VrshqConfig`` by default).

    Raises:
        CheckpointNotFoundError: no config.json; CheckpointError: it holds no model config.
    """
    data = _read_config_json(uri, storage_options)
    if "config" not in data:
        raise CheckpointError(join_uri(uri, CONFIG_NAME), "holds no model config (saved without config=)")
    if config_class is None:
        from vrshq.config import VrshqConfig as config_class  # noqa: N813
    return config_from_dict(config_class, data["config"])


def load_vrshq_tokenizer(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The tokenizer saved beside the weights (with ``[SEG]``/``[TAK]``), via
    :func:`vrshq.model.tokenizer.load_tokenizer` on a local copy of its files, or
    :func:`vrshq.model.tokenizer.load_llama_tokenizer` when they hold a slow LLaMA ``tokenizer.model``.

    Raises:
        CheckpointNotFoundError: the checkpoint was saved without a tokenizer.
    """
    from vrshq.model.tokenizer import load_llama_tokenizer, load_tokenizer

    names: Iterable[str] = list(_read_config_json(uri, storage_options).get("tokenizer_files") or [])
    if not names:
        raise CheckpointNotFoundError(uri, "the checkpoint holds no tokenizer files; save it with "
                                           "save_vrshq_checkpoint(model, uri, tokenizer=tokenizer)")
    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    with tempfile.TemporaryDirectory(prefix="vrshq-tok-") as tmp:
        for name in names:
            fs.get_file(f"{path.rstrip('/')}/{name}", os.path.join(tmp, name))
        # A slow LLaMA tokenizer (saved with its tokenizer.model) keeps the 4.31 prompt ids.
        return load_llama_tokenizer(tmp) if "tokenizer.model" in names else load_tokenizer(tmp)
