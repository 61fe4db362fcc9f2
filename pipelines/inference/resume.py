"""What an output URI already holds, so that ``infer`` reruns only the missing work.

A (video, expression) pair is *done* when the scores table has its row (scores are written last in
every batch, see :mod:`pipelines.io.writers`), in a fresh part or in a compacted file
(:mod:`pipelines.io.compaction`). ``infer`` plans with Arrow kernels on the key columns
(:mod:`pipelines.inference.planning`), which it reads from the output's pair index
(:mod:`pipelines.io.pair_index`) and the scores parts that index does not cover yet.
Pairs that failed (``errors/`` rows only) are not done: a rerun tries them again, which also retries
transient storage failures.

Before a rerun, :func:`remove_orphans` deletes the masks files of batches that never committed
(the run died between the masks and the scores write); their pairs are pending again and are
written anew, so the masks table never holds a pair twice.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.io.pair_index import read_committed
from pipelines.io.storage import filesystem_for
from pipelines.io.writers import list_parts

__all__ = ["other_models", "remove_orphans"]


def other_models(output: str, model: str, *, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The models other than ``model`` that have scores rows under ``output`` (sorted; [] for a new output).

    Why: resume keys on (dataset, split, video, expression), not on the model, so a run of
    another model (other checkpoint, preset or seed) into the same output would skip every pair the
    first model did and leave one table with two models' rows. Reads the ``model`` column of the pair
    index (:mod:`pipelines.io.pair_index`) and of the scores parts it does not cover.
    """
    found = read_committed(output, pairs=False, models=True, storage_options=storage_options).models or []
    return [m for m in found if m != model]


def remove_orphans(output: str, *, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Delete masks files whose batch has no scores file (left by a crash); return their paths.

    Must only run while the caller holds the output lock (:mod:`pipelines.io.output_lock`): a batch
    of a live run is an orphan for the short time between its masks and its scores write.
    """
    committed = {(p.dataset, p.split, p.batch_id) for p in list_parts(output, "scores", storage_options=storage_options)}
    orphans = [
        part
        for part in list_parts(output, "masks", storage_options=storage_options)
        # compacted files hold committed rows only (pipelines.io.compaction); their batch ids differ per table
        if (part.dataset, part.split, part.batch_id) not in committed and not part.batch_id.startswith("compact-")
    ]
    if orphans:
        fs, _ = filesystem_for(output, storage_options)
        for part in orphans:
            fs.rm(part.path)
    return [part.path for part in orphans]
