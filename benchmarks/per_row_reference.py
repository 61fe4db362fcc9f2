"""The per-row planner that ``infer`` used before :mod:`pipelines.inference.planning`: the reference of
``benchmarks/orchestration_scale.py`` and of the planning tests.

Every committed pair becomes a Python tuple in a set (:func:`done_pairs`, read from every scores part),
every input video a record, and every pending video one JSON work item (:func:`plan_work`). Correct,
and simple to check against, but it costs about 1 GB of driver memory per 100k pairs and grows with
frame names and expression texts; the product plans with Arrow kernels on the key columns instead.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.io.writers import read_output

__all__ = ["PairKey", "WorkPlan", "done_pairs", "plan_work"]

#: (dataset, split, video_id, exp_id)
PairKey = tuple[str, str, str, str]
_KEY_COLUMNS = ["dataset", "split", "video_id", "exp_id"]


def done_pairs(output: str, *, storage_options: Mapping[str, Any] | None = None) -> set[PairKey]:
    """The (dataset, split, video_id, exp_id) keys that have a scores row under ``output``, read from every
    scores file (the pair index is not used)."""
    keys = read_output(output, "scores", columns=_KEY_COLUMNS, storage_options=storage_options)
    columns = [keys.column(name).to_pylist() for name in _KEY_COLUMNS]
    return set(zip(*columns))


@dataclass(frozen=True)
class WorkPlan:
    """What a run will do: one work item per video with pending expressions, and the pair counts."""

    items: list[dict[str, str]]  # dataset, split, video_id, item_json
    pairs_total: int
    pairs_done: int
    pairs_pending: int


def plan_work(records: Iterable[Any], *, done: set[PairKey], max_videos: int | None = None) -> WorkPlan:
    """Work items for the pending (video, expression) pairs, one item per video."""
    from pipelines.inference.video_io import item_to_json

    items, total, skipped = [], 0, 0
    for video in records:
        pending = tuple(e for e in video.expressions
                        if (video.dataset, video.split, video.video_id, e.exp_id) not in done)
        total += len(video.expressions)
        skipped += len(video.expressions) - len(pending)
        if not pending or (max_videos is not None and len(items) >= max_videos):
            continue
        item = dataclasses.replace(video, expressions=pending)
        items.append({"dataset": video.dataset, "split": video.split, "video_id": video.video_id,
                      "item_json": item_to_json(item)})
    pending_pairs = sum(len(json.loads(i["item_json"])["expressions"]) for i in items)
    return WorkPlan(items=items, pairs_total=total, pairs_done=skipped, pairs_pending=pending_pairs)
