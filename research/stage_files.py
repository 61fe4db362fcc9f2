"""JSON files of a local training-stage folder (``research.track_pretrain``, ``research.vision_pretrain``):
summaries are written whole or not at all (``vrshq.storage.write_json``: a kill mid-write leaves the previous
file), a folder without one reads as "no such stage yet", and a saved stage continues only under the settings it
was written with."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

__all__ = ["read_json_if_exists", "same_settings"]


def read_json_if_exists(path: str) -> Any | None:
    """The parsed JSON file at ``path``, or None when there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def same_settings(saved: dict[str, Any] | None, cfg: Any) -> bool:
    """Whether a stage summary's ``config`` (as written from ``dataclasses.asdict``) is the dataclass ``cfg``.

    Settings added since the summary was written read as their defaults, so older folders still match; both sides
    are compared as JSON holds them (tuples become lists)."""
    if saved is None:
        return False
    as_json = lambda value: json.loads(json.dumps(value))  # noqa: E731
    defaults = dataclasses.asdict(type(cfg)())
    return as_json({**defaults, **saved.get("config", {})}) == as_json(dataclasses.asdict(cfg))
