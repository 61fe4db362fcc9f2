"""Storage helpers for every URI the project reads or writes: a local path or any fsspec URL (``s3://...``).

One place for what every reader and writer needs, so that a local folder and an object store take the same code
path and remote paths never go through ``os.path``:

* :func:`filesystem_for` builds the fsspec filesystem of a URI where it is used. Ray tasks and actors run in
  other processes (often on other nodes), where the driver's environment (``AWS_ENDPOINT_URL``, a local
  ``~/.aws``) may not exist, so callers pass *storage options* and never a live filesystem object.
* :func:`join_uri` joins URI parts with exactly one ``/``.
* :func:`write_bytes_atomic` and :func:`write_json` write a file that readers see whole or not at all.

The library (``vrshq``) and the Ray building blocks (``pipelines.io.storage`` re-exports these) share it.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["filesystem_for", "is_local", "join_uri", "write_bytes_atomic", "write_json"]


def filesystem_for(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``uri`` and the path inside it (protocol and trailing ``/`` stripped).

    Args:
        uri: a local path, ``file://`` or any fsspec URL (``s3://bucket/key``).
        storage_options: fsspec options (ignored for local paths, so a config meant for S3 can
            still point its output at a local folder).
    """
    uri = str(uri)
    protocol = fsspec.core.split_protocol(uri)[0]
    if protocol in (None, "file", "local"):
        options: dict[str, Any] = {}
    else:
        # Fresh listings, always: resume, orphan cleanup and the lock decide from what a listing shows,
        # and fsspec's cached listings (shared by cached instances) would hide files written since.
        options = {"skip_instance_cache": True, "use_listings_cache": False, **dict(storage_options or {})}
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path.rstrip("/") or path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (where renames are atomic and a crash can leave partial files)."""
    return isinstance(fs, LocalFileSystem)


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...`` with exactly one ``/`` between parts; parts may hold ``/`` themselves (ReVOS video ids)."""
    pieces = [str(base).rstrip("/")] + [str(p).strip("/") for p in parts if p]
    return "/".join(pieces)


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

    On the local disk the bytes go to a hidden temporary file beside ``path`` (parent folders are created), then
    a rename replaces ``path``; on an object store one PUT (or a multipart upload) is visible only once complete.
    """
    if is_local(fs):
        folder, name = path.rsplit("/", 1)
        fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with fs.open(tmp, "wb") as handle:
                handle.write(data)
            fs.mv(tmp, path)  # os.rename: atomic on one file system, replaces an older version
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
    else:
        fs.pipe_file(path, data)


def write_json(uri: str, obj: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``obj`` as indented JSON (sorted keys, values JSON lacks as strings) to ``uri``, atomically."""
    fs, path = filesystem_for(uri, storage_options)
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_bytes_atomic(fs, path, text.encode())
