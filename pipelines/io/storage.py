"""Storage of the Ray building blocks: the library's storage helpers (:mod:`vrshq.storage`) and Arrow's view of a
filesystem.

Every Ray UDF of the pipeline receives the *storage options* and builds its filesystem itself with
:func:`filesystem_for`; nothing passes a live filesystem object between processes.
"""
from __future__ import annotations

import fsspec

from vrshq.storage import filesystem_for, is_local, join_uri, write_bytes_atomic, write_json

__all__ = ["arrow_filesystem", "filesystem_for", "is_local", "join_uri", "write_bytes_atomic", "write_json"]


def arrow_filesystem(fs: fsspec.AbstractFileSystem):
    """A ``pyarrow.fs`` wrapper of an fsspec filesystem (for ``pyarrow.dataset``)."""
    import pyarrow.fs as pafs

    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
