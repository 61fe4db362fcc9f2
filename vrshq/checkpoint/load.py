"""Reading a checkpoint into a model: strict by default, every mismatch named before any weight
is copied; also the config, the tokenizer and a header-only summary of a folder (see
:mod:`vrshq.checkpoint` for the layout)."""

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

import torch
from torch import nn

from vrshq.checkpoint.config_io import config_from_dict
from vrshq.checkpoint.state import LORA_KEY_RE, strip_peft
from vrshq.checkpoint.weight_files import (
    CONFIG_NAME,
    LAYOUT_HELP,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    WeightFile,
    as_uris,
    list_keys,
    open_weight_files,
)
from vrshq.storage import filesystem_for, join_uri

__all__ = [
    "CheckpointInfo",
    "LoadReport",
    "inspect_checkpoint",
    "load_files_into",
    "load_state_dict_into",
    "load_vrshq_checkpoint",
    "load_vrshq_config",
    "load_vrshq_tokenizer",
]

logger = logging.getLogger(__name__)

# Roots that only the official VRS-HQ module tree has (see vrshq.checkpoint.official_names).
_OFFICIAL_NAME_RE = re.compile(r"^(module\.)?(base_model\.model\.)?model\.(visual_model|text_hidden_fcs|mm_projector)\.")



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
                    "vrshq.checkpoint.official_names.load_official_checkpoint(model, uri)")
        elif unexpected and any(LORA_KEY_RE.search(k) for k in unexpected):
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
        plain = strip_peft(key)
        if plain != key and not LORA_KEY_RE.search(key):
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


# Deprecated private name used by pipelines/inference/model_loader.py before inspect_checkpoint existed.
_open_weight_files = open_weight_files


# ---------------------------------------------------------------------------------------------------
# Config and tokenizer beside the weights.


def _read_config_json(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    fs, path = filesystem_for(uri, storage_options)
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
    fs, path = filesystem_for(uri, storage_options)
    with tempfile.TemporaryDirectory(prefix="vrshq-tok-") as tmp:
        for name in names:
            fs.get_file(f"{path.rstrip('/')}/{name}", os.path.join(tmp, name))
        # A slow LLaMA tokenizer (saved with its tokenizer.model) keeps the 4.31 prompt ids.
        return load_llama_tokenizer(tmp) if "tokenizer.model" in names else load_tokenizer(tmp)
