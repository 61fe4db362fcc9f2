"""Small fsspec helpers shared by the readers and the synthetic writer (URIs and filesystems: :mod:`vrshq.storage`).

Every path in :mod:`vrshq.data` is a URI opened through fsspec, so one code path serves a local
folder and ``s3://bucket/prefix``. Remote paths never go through ``os.path``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from vrshq.data.errors import DataError
from vrshq.storage import filesystem_for

__all__ = ["JsonObject", "canonical_uri", "read_bytes", "read_json", "exists", "cat_many", "write_many"]


def canonical_uri(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``uri`` without a trailing '/', made absolute for local paths (records must not depend on the cwd)."""
    fs, path = filesystem_for(uri, storage_options)
    if isinstance(fs, LocalFileSystem):
        return path.rstrip("/") or "/"
    return fs.unstrip_protocol(path.rstrip("/"))


def exists(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = filesystem_for(uri, storage_options)
    return bool(fs.exists(path))


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None, *, what: str = "file") -> bytes:
    """Read a whole file; a missing file becomes a :class:`DataError` naming it."""
    fs, path = filesystem_for(uri, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise DataError(uri, f"{what} not found") from None
    except IsADirectoryError:
        raise DataError(uri, f"expected a {what}, found a folder") from None


class JsonObject(dict):
    """A parsed JSON object that remembers the keys its text listed more than once (the last value is kept).

    JSON parsers keep the last of two equal keys silently; a meta file that lists a video or an
    expression twice would lose the first without a word, so the readers ask for
    :attr:`duplicate_keys` and report them.
    """

    duplicate_keys: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicate_keys = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def read_json(uri: str, storage_options: Mapping[str, Any] | None = None, *, what: str = "json file",
              note_duplicates: bool = False) -> Any:
    """Read and parse a JSON file; bad JSON becomes a :class:`DataError` with the parser's position.

    With ``note_duplicates`` objects come back as :class:`JsonObject` (a ``dict``) naming their
    duplicated keys (slower: meant for meta files, not for large annotation files).
    """
    data = read_bytes(uri, storage_options, what=what)
    try:
        return json.loads(data, object_pairs_hook=_object_pairs if note_duplicates else None)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(uri, f"{what} is not valid JSON: {exc}") from None


def cat_many(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> dict[str, bytes | Exception]:
    """Fetch many whole files in one call (concurrent for async filesystems such as s3fs).

    Uses ``cat_ranges`` rather than ``cat`` so that names holding glob characters ('[', '*') are
    read literally. Returns a dict path -> bytes, or the exception raised for that path, so that
    the caller can name the first missing file instead of losing all of them to one error.
    """
    paths = list(paths)
    if not paths:
        return {}
    results = fs.cat_ranges(paths, None, None, on_error="return")
    return dict(zip(paths, results))


def write_many(fs: fsspec.AbstractFileSystem, files: Mapping[str, bytes]) -> None:
    """Write many files in one call (``pipe``: concurrent on s3fs); creates local parent folders."""
    if not files:
        return
    if isinstance(fs, LocalFileSystem):
        for parent in {p.rsplit("/", 1)[0] for p in files}:
            fs.makedirs(parent, exist_ok=True)
    fs.pipe(dict(files))
