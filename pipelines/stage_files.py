"""JSON files of a local training-stage folder (``pipelines.track_pretrain``, ``pipelines.vision_pretrain``):
summaries are written whole or not at all (a kill mid-write leaves the previous file), and a folder without one
reads as "no such stage yet"."""
from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["read_json_if_exists", "write_json_atomic"]


def read_json_if_exists(path: str) -> Any | None:
    """The parsed JSON file at ``path``, or None when there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json_atomic(path: str, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` through a temporary file and an atomic rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
