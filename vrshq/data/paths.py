"""Containment: every path built from data stays under its root.

Video ids, frame names, mp4 names and output file names come from data (a meta JSON, a manifest, an
id in a table), and data must never choose where the job reads or writes. :func:`contained_uri`
is the one place where such a value becomes part of a path, for local folders and object stores
alike; readers (:mod:`vrshq.data.readers`, :mod:`vrshq.data.frames`) and writers
(:mod:`pipelines.io.writers`, :mod:`pipelines.io.output_lock`) all build their data-derived paths with it.

The rule is lexical, so it is the same on S3 (where ``..`` is an ordinary key character that some
clients normalise away and others do not) and on local disk:

* a part is a non-empty string of '/'-separated segments (ReVOS video ids contain '/');
* no segment is empty (no leading '/', no '//', no trailing '/'), ``.`` or ``..``;
* no part is absolute in any spelling: no leading '/' or '\\\\', no ``scheme://``, no ``C:``;
* no part holds a NUL or another control character (U+0000-U+001F, U+007F).

A value that breaks the rule raises :class:`PathEscapeError` (a :class:`~vrshq.data.DataError`),
which the pipelines turn into an ``errors/`` row for the record that holds it.

>>> contained_uri("s3://b/ReVOS/JPEGImages", "UVO/all/2E4T")
's3://b/ReVOS/JPEGImages/UVO/all/2E4T'
>>> contained_uri("/data/ReVOS/JPEGImages", "../../esc/v")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
PathEscapeError: /data/ReVOS/JPEGImages: '../../esc/v' leaves its root: a '..' segment
"""
from __future__ import annotations

import re

from vrshq.data.errors import DataError

__all__ = ["PathEscapeError", "contained_uri", "uri_problem", "path_part_problem", "is_within"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # s3://, file:, C: (a drive letter is absolute too)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathEscapeError(DataError):
    """A data-derived path part that would leave its root (``..``, absolute, control characters)."""


def path_part_problem(part: object) -> str | None:
    """Why ``part`` may not become part of a path under a root, or None when it may."""
    if not isinstance(part, str):
        return f"must be a string, got {type(part).__name__}"
    if not part:
        return "is empty"
    if _CONTROL.search(part):
        return "holds a NUL or control character"
    if part.startswith(("/", "\\")) or _SCHEME.match(part):
        return "is an absolute path"
    for segment in part.split("/"):
        if segment == "..":
            return "has a '..' segment"
        if segment == ".":
            return "has a '.' segment"
        if not segment:
            return "has an empty segment ('//' or a trailing '/')"
    return None


def contained_uri(root: str, *parts: str, what: str = "path") -> str:
    """``root/part/...`` after checking that no part can leave ``root`` (see the module rules).

    Args:
        root: the folder or prefix the result must stay under (local path or any URI).
        parts: data-derived parts (ids, names); each may hold '/'-separated segments.
        what: what the parts are, for the message (``"video id"``, ``"frame name"``...).

    Raises:
        PathEscapeError: naming ``root``, the offending part and why.
    """
    for part in parts:
        problem = path_part_problem(part)
        if problem is not None:
            raise PathEscapeError(root, f"{what} {part!r} leaves its root: it {problem}")
    base = str(root).rstrip("/") or "/"
    joined = "/".join(parts)
    return f"{base.rstrip('/')}/{joined}" if joined else base


def uri_problem(uri: object) -> str | None:
    """Why a data-given whole URI (a manifest's ``frames_uri``...) is unsafe, or None.

    A whole URI may be absolute, but no segment of its path may be ``.`` or ``..`` and it may hold
    no control character: such a URI names a place other than the one it spells.
    """
    if not isinstance(uri, str) or not uri:
        return "must be a non-empty string"
    if _CONTROL.search(uri):
        return "holds a NUL or control character"
    path = uri.split("://", 1)[-1]
    segments = path.split("/")
    if any(segment in (".", "..") for segment in segments):
        return "has a '.' or '..' segment"
    return None


def is_within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it, segment-wise (``/a/bc`` is not within ``/a/b``)."""
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/") or root == ""
