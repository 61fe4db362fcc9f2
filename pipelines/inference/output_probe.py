"""Is the output usable? Checked by writing to it, before any Ray work, and undone when the run is refused.

``exists`` and permission bits do not tell whether a job can write (read-only mounts, bucket
policies, an existing but read-only folder), so :func:`probe_output` writes a small hidden file
under the output and removes it again. The folders a refused run created are removed again
(:func:`remove_new_folders`), so a run that exits 2 leaves nothing behind.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.io.storage import filesystem_for, is_local
from vrshq.data.paths import contained_uri, is_within

__all__ = ["canonical_location", "missing_folders", "out_inside_root", "probe_output", "remove_new_folders"]

PROBE_PREFIX = ".vrshq-write-probe-"


def canonical_location(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """``(protocol, path)`` of ``uri`` with local paths made absolute and symlinks resolved."""
    fs, path = filesystem_for(uri, storage_options)
    if is_local(fs):
        return "file", os.path.realpath(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, path.rstrip("/")


def out_inside_root(out: str, root: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``out`` is ``root`` or a folder below it (on the same filesystem)."""
    out_protocol, out_path = canonical_location(out, storage_options)
    root_protocol, root_path = canonical_location(root, storage_options)
    return out_protocol == root_protocol and is_within(out_path, root_path)


def missing_folders(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The local folders of ``uri`` (itself and missing parents) that do not exist yet, deepest first.

    Object stores have no folders: an empty list.
    """
    fs, path = filesystem_for(uri, storage_options)
    if not is_local(fs):
        return []
    missing = []
    current = os.path.abspath(path)
    while not os.path.exists(current) and current != os.path.dirname(current):
        missing.append(current)
        current = os.path.dirname(current)
    return missing


def remove_new_folders(folders: Sequence[str]) -> None:
    """Remove the folders of :func:`missing_folders` again, deepest first, where they are still empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (something else wrote there) or already gone: leave it
            pass


def probe_output(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Create the output folder and write and remove a small file in it.

    Raises:
        OSError (or the filesystem's error): naming what failed; the caller removes the folders
            this created (:func:`missing_folders` before, :func:`remove_new_folders` after).
    """
    fs, path = filesystem_for(uri, storage_options)
    fs.makedirs(path, exist_ok=True)
    probe = contained_uri(path, f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}")
    fs.pipe_file(probe, b"vrshq write probe\n")
    fs.rm_file(probe)
