"""Which files this process opens, lists, creates or removes: Python's audit events (PEP 578).

``open`` (builtins and ``os.open``), ``os.listdir``/``os.scandir``, ``os.mkdir``, ``os.rename``,
``os.remove``/``os.rmdir`` are raised by CPython itself for every caller, fsspec's local filesystem
included, so a test can assert that a job never touched a path outside its roots without trusting
the code under test to report it. Audit hooks cannot be removed: one hook is installed on first use
and records only while a :func:`record_file_access` block is active.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

__all__ = ["record_file_access"]

_EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir",
           "os.truncate", "shutil.rmtree", "shutil.copyfile"}
_STATE: dict = {"installed": False, "sinks": []}
_LOCK = threading.Lock()


def _hook(event: str, args: tuple) -> None:
    if event not in _EVENTS or not _STATE["sinks"]:
        return
    for arg in args[:2]:
        if isinstance(arg, (str, bytes, os.PathLike)):
            try:
                path = os.path.abspath(os.fsdecode(arg))
            except (TypeError, ValueError):
                continue
            for sink in _STATE["sinks"]:
                sink.append((event, path))


@contextlib.contextmanager
def record_file_access() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(event, absolute path)`` for every file access of this process inside the block."""
    with _LOCK:
        if not _STATE["installed"]:
            sys.addaudithook(_hook)
            _STATE["installed"] = True
    sink: list[tuple[str, str]] = []
    _STATE["sinks"].append(sink)
    try:
        yield sink
    finally:
        _STATE["sinks"].remove(sink)
