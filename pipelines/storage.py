"""URIs to fsspec filesystems, built where they are used.

Ray tasks and actors run in other processes (often on other nodes), where the driver's
environment (``AWS_ENDPOINT_URL``, a local ``~/.aws``) may not exist. Every Ray UDF of the
pipeline therefore receives the *storage options* and builds its filesystem itself with
:func:`filesystem_for`; nothing passes a live filesystem object between processes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["filesystem_for", "join_uri", "is_local", "arrow_filesystem"]


def filesystem_for(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``uri`` and the path inside it (protocol stripped).

    Args:
        uri: a local path, ``file://`` or any fsspec URL (``s3://bucket/key``).
        storage_options: fsspec options (ignored for local paths, so a config meant for S3 can
            still point its output at a local folder).
    """
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
    """``base/part/...`` with exactly one ``/`` between parts (never ``os.path`` on a URI)."""
    pieces = [base.rstrip("/")] + [p.strip("/") for p in parts if p]
    return "/".join(pieces)


def arrow_filesystem(fs: fsspec.AbstractFileSystem):
    """A ``pyarrow.fs`` wrapper of an fsspec filesystem (for ``pyarrow.dataset``)."""
    import pyarrow.fs as pafs

    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
