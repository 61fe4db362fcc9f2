"""Writing a checkpoint folder: safetensors shards, ``config.json`` and the tokenizer (see
:mod:`vrshq.checkpoint` for the layout)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from torch import nn

from vrshq.checkpoint.config_io import config_to_dict
from vrshq.checkpoint.state import checkpoint_state_dict
from vrshq.checkpoint.weight_files import CONFIG_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, list_keys
from vrshq.storage import filesystem_for, join_uri, write_json

__all__ = ["FORMAT_VERSION", "SavedCheckpoint", "save_vrshq_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SHARD_PATTERN = "model{suffix}.safetensors"
_SHARD_RE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")


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
    fs, root = filesystem_for(uri, storage_options)
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
            write_json(join_uri(uri, WEIGHTS_INDEX_NAME), index, storage_options)
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
    write_json(join_uri(uri, CONFIG_NAME), config_json, storage_options)
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
