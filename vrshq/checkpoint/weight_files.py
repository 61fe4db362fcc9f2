"""Reading weight files of any supported layout, local or fsspec, without unpickling.

Layouts: a vrshq/HF safetensors folder (``model.safetensors`` or shards plus
``model.safetensors.index.json``), an HF pickle folder (``pytorch_model.bin`` or shards plus
``pytorch_model.bin.index.json``, as the official VRS-HQ release), an index file, or a single
``.safetensors``/``.bin``/``.pt``/``.pth``/``.ckpt`` file. Safetensors shapes come from the file
header (two small reads, also on S3) so that strictness can be checked before any tensor is read;
pickle files are read with ``torch.load(weights_only=True)`` only, and refused if they hold more
than tensors. Used by :mod:`vrshq.checkpoint`, which holds the public API.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem

from vrshq.storage import filesystem_for, join_uri

__all__ = [
    "CONFIG_NAME",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "LAYOUT_HELP",
    "UnsafeCheckpointError",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "WeightFile",
    "as_uris",
    "list_keys",
    "list_weight_files",
    "open_weight_files",
    "read_state_dict",
]

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Folder layouts of other writers that hold plain tensor dicts (an HF `save_pretrained` with pickles,
# as the official VRS-HQ release): read with weights_only=True.
_FOREIGN_INDEX_NAMES = ("pytorch_model.bin.index.json",)
_FOREIGN_WEIGHT_NAMES = ("pytorch_model.bin",)
_MAX_LISTED_KEYS = 200
LAYOUT_HELP = (
    f"a vrshq checkpoint is a folder holding {CONFIG_NAME}, the weights as {WEIGHTS_NAME} (or shards "
    f"model-0000i-of-0000n.safetensors plus {WEIGHTS_INDEX_NAME}) and the tokenizer files; "
    "a single .safetensors file, or an HF folder with pytorch_model*.bin (read with weights_only=True), also loads. "
    "Write one with vrshq.checkpoint.save.save_vrshq_checkpoint(model, uri)"
)


class CheckpointError(Exception):
    """A checkpoint could not be read or written.

    Attributes:
        uri: the file or folder concerned.
        reason: what is wrong and how to fix it.
    """

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The URI holds no checkpoint; the message says which files a checkpoint folder holds."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle file holds Python objects other than tensors, so loading it would run code: refused."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the model (strict loading).

    Attributes:
        missing: model keys that no checkpoint file provides.
        unexpected: checkpoint keys that the model does not have.
        mismatched: ``(key, checkpoint_shape, model_shape)`` for each shape disagreement.
    """

    def __init__(
        self,
        uri: str,
        *,
        missing: Sequence[str],
        unexpected: Sequence[str],
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]],
        hint: str = "",
    ) -> None:
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)
        parts = ["the checkpoint does not match the model (strict loading)"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s) (in the model, not in the checkpoint): "
                         + list_keys(self.missing))
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s) (in the checkpoint, not in the model): "
                         + list_keys(self.unexpected))
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} shape mismatch(es): " + list_keys(
                [f"{key}: checkpoint {list(c)} vs model {list(m)}" for key, c, m in self.mismatched]))
        if hint:
            parts.append(hint)
        super().__init__(uri, "; ".join(parts))


def list_keys(keys: Sequence[str]) -> str:
    """``[a, b, ...]`` for error messages, at most 200 keys then a count of the rest."""
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


@dataclasses.dataclass
class WeightFile:
    """One weight file: its tensor shapes (known before any data is read) and a reader for its tensors."""

    uri: str
    shapes: dict[str, tuple[int, ...]]
    content: str | None
    fs: Any  # fsspec filesystem of the file (None for tensors already in memory)
    path: str
    tensors: dict[str, torch.Tensor] | None = None  # in memory already (pickle files are read whole)
    pickle_path: str | None = None  # a local pickle, memory-mapped again by each read

    def read(self) -> dict[str, torch.Tensor]:
        """All tensors of the file on the CPU (a remote safetensors file goes through a temporary copy;
        a local pickle is memory-mapped, so its pages are read when a tensor is used and released
        when the caller drops the tensors)."""
        if self.tensors is not None:
            return self.tensors
        if self.pickle_path is not None:
            return _load_pickle_weights_only(self.fs, self.pickle_path, self.uri)
        from safetensors.torch import load_file

        if isinstance(self.fs, LocalFileSystem):
            return load_file(self.path)
        with tempfile.TemporaryDirectory(prefix="vrshq-ckpt-") as tmp:
            local = os.path.join(tmp, "shard.safetensors")
            self.fs.get_file(self.path, local)
            return load_file(local)


def open_weight_files(uri: str, storage_options: Mapping[str, Any] | None) -> list[WeightFile]:
    """The weight files of a checkpoint folder, index or single file, with their shapes read.

    Raises:
        CheckpointNotFoundError: nothing at ``uri``, no weights in the folder, or a listed file absent.
        UnsafeCheckpointError: a pickle file holds more than tensors.
        CheckpointError: an unreadable file or index.
    """
    fs, path = filesystem_for(uri, storage_options)
    path = path.rstrip("/") or path
    fs.invalidate_cache(path)  # a listing cached before the checkpoint was written must not hide it
    if not fs.exists(path):
        raise CheckpointNotFoundError(uri, f"nothing at this path; {LAYOUT_HELP}")
    if fs.isdir(path):
        names = _weight_names_in_folder(fs, path, uri)
        return [_open_file(fs, f"{path}/{n}", join_uri(uri, n)) for n in names]
    if path.endswith(".json"):
        folder = path.rsplit("/", 1)[0]
        return [_open_file(fs, f"{folder}/{n}", join_uri(uri.rsplit("/", 1)[0], n))
                for n in _names_from_index(fs, path, uri)]
    return [_open_file(fs, path, uri)]


def _weight_names_in_folder(fs: Any, path: str, uri: str) -> list[str]:
    for index in (WEIGHTS_INDEX_NAME, *_FOREIGN_INDEX_NAMES):
        if fs.isfile(f"{path}/{index}"):
            return _names_from_index(fs, f"{path}/{index}", join_uri(uri, index))
    for name in (WEIGHTS_NAME, *_FOREIGN_WEIGHT_NAMES):
        if fs.isfile(f"{path}/{name}"):
            return [name]
    present = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    raise CheckpointNotFoundError(uri, f"the folder holds no weights (it has: {present[:20]}); {LAYOUT_HELP}")


def _names_from_index(fs: Any, path: str, uri: str) -> list[str]:
    try:
        with fs.open(path, "r") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(uri, f"not a valid index (expected JSON with a 'weight_map' object): {exc}") from exc
    names = sorted(set(weight_map.values())) if isinstance(weight_map, Mapping) else None
    if not names or any(not isinstance(n, str) or "/" in n or "\\" in n or n in (".", "..") for n in names):
        raise CheckpointError(uri, f"not a valid index: 'weight_map' must map tensor names to file names in the "
                                   f"same folder, got {str(weight_map)[:200]}")
    return names


def list_weight_files(uri: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """URIs of the weight files of a checkpoint folder, index or file, each checked to exist; no
    tensor is read (a preflight check that costs a listing and the index, also for a 15 GB release).

    Raises:
        CheckpointNotFoundError, CheckpointError: as :func:`open_weight_files`.
    """
    fs, path = filesystem_for(uri, storage_options)
    path = path.rstrip("/") or path
    fs.invalidate_cache(path)
    if not fs.exists(path):
        raise CheckpointNotFoundError(uri, f"nothing at this path; {LAYOUT_HELP}")
    if fs.isdir(path):
        pairs = [(f"{path}/{n}", join_uri(uri, n)) for n in _weight_names_in_folder(fs, path, uri)]
    elif path.endswith(".json"):
        folder = path.rsplit("/", 1)[0]
        pairs = [(f"{folder}/{n}", join_uri(uri.rsplit("/", 1)[0], n)) for n in _names_from_index(fs, path, uri)]
    else:
        pairs = [(path, uri)]
    for file_path, file_uri in pairs:
        if not fs.isfile(file_path):
            raise CheckpointNotFoundError(file_uri, f"weight file listed by the index is missing; {LAYOUT_HELP}")
    return [file_uri for _, file_uri in pairs]


def _open_file(fs: Any, path: str, uri: str) -> WeightFile:
    if not fs.isfile(path):
        raise CheckpointNotFoundError(uri, f"weight file listed by the index is missing; {LAYOUT_HELP}")
    if path.endswith(".safetensors"):
        shapes, content = _read_safetensors_header(fs, path, uri)
        return WeightFile(uri=uri, shapes=shapes, content=content, fs=fs, path=path)
    if path.endswith(_PICKLE_SUFFIXES):
        tensors = _load_pickle_weights_only(fs, path, uri)
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        if isinstance(fs, LocalFileSystem):  # memory-mapped: map it again when read, hold nothing now
            del tensors
            return WeightFile(uri=uri, shapes=shapes, content=None, fs=fs, path=path, pickle_path=path)
        return WeightFile(uri=uri, shapes=shapes, content=None, fs=fs, path=path, tensors=tensors)
    raise CheckpointError(uri, f"unknown weight file type; expected .safetensors or {'/'.join(_PICKLE_SUFFIXES)}")


def _read_safetensors_header(fs: Any, path: str, uri: str) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """Shapes from the safetensors header (8-byte little-endian length + JSON), without the data:
    strictness is checked before any tensor is read, also on S3 (two small range reads)."""
    with fs.open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(uri, "truncated safetensors file (shorter than its 8-byte header length)")
        size = int.from_bytes(head, "little")
        if size > 100 * 2**20:
            raise CheckpointError(uri, f"not a safetensors file (header length {size} bytes is implausible)")
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(uri, f"not a safetensors file (unreadable header: {exc})") from exc
    meta = header.pop("__metadata__", None) or {}
    return {k: tuple(v["shape"]) for k, v in header.items()}, meta.get("vrshq_content")


_UNSUPPORTED_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _torch_load(fs: Any, path: str) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped where it can be: a local file in the zip format
    (every ``torch.save`` since torch 1.6) maps its storages instead of reading them; a remote one is
    copied to a temporary file first, mapped, and the file removed (the mapping stays valid)."""
    if not isinstance(fs, LocalFileSystem):
        with tempfile.TemporaryDirectory(prefix="vrshq-ckpt-") as tmp:
            local = os.path.join(tmp, "weights.bin")
            fs.get_file(path, local)
            return _torch_load(LocalFileSystem(), local)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zipfile" not in str(exc) and "zip" not in str(exc):
            raise
    with open(path, "rb") as f:  # the legacy (pre-zip) format cannot be mapped
        return torch.load(f, map_location="cpu", weights_only=True, mmap=False)


def _load_pickle_weights_only(fs: Any, path: str, uri: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``: only tensors and plain containers are rebuilt, so a
    malicious ``__reduce__`` is never called; anything else is refused with a clear error."""
    try:
        obj = _torch_load(fs, path)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL_RE.search(str(exc))
        if found is None:  # not a pickle of Python objects at all
            raise CheckpointError(uri, "not a readable torch file (the weights-only unpickler rejected its "
                                       "bytes); is it truncated or of another format?") from exc
        raise UnsafeCheckpointError(
            uri, f"refused: this pickle file holds a Python object other than tensors ({found[1]}), and "
            "unpickling it could run arbitrary code. vrshq reads pickles only with torch.load(weights_only=True) "
            "and never allow-lists globals. Convert the file to safetensors with code you trust, or get a "
            ".safetensors release.") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(uri, f"not a readable torch file: {exc}") from exc
    return _tensor_dict(obj, uri)


def _tensor_dict(obj: Any, uri: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded pickle: itself, or under 'model'/'state_dict'/'module' (sam2, DeepSpeed)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise CheckpointError(uri, "no state dict found (expected a dict of tensors, possibly under 'model', "
                               "'state_dict' or 'module')")


def read_state_dict(uri: str | Sequence[str], *, storage_options: Mapping[str, Any] | None = None
                    ) -> dict[str, torch.Tensor]:
    """All tensors of one or more checkpoints (folder, index or single file), later URIs overriding
    earlier ones. Pickle files are read with ``weights_only=True`` only.

    Raises:
        CheckpointNotFoundError: a URI holds no checkpoint.
        UnsafeCheckpointError: a pickle file holds more than tensors.
    """
    out: dict[str, torch.Tensor] = {}
    for one in as_uris(uri):
        for wf in open_weight_files(one, storage_options):
            out.update(wf.read())
    return out


def as_uris(uri: str | os.PathLike | Sequence[str]) -> list[str]:
    """One URI or a non-empty sequence of them, as a list of strings."""
    if isinstance(uri, (str, os.PathLike)):
        return [os.fspath(uri)]
    uris = [os.fspath(u) for u in uri]
    if not uris:
        raise ValueError("uri must be a path/URI or a non-empty sequence of them")
    return uris


