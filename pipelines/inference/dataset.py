"""The inference job's Ray Data graph: work items -> frame readers -> model actors -> writers.

``build_dataset`` only builds the lazy dataset; :mod:`pipelines.inference.run` plans the work, iterates it
(which runs the job) and counts the summary rows.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.inference.config import InferenceConfig

__all__ = ["build_dataset"]


def build_dataset(
    items: Any,
    cfg: InferenceConfig,
    *,
    max_side: int,
    run_fields: Mapping[str, str],
    num_gpus: float,
) -> Any:
    """The lazy Ray Data pipeline over ``items``; iterating it runs the job and yields summary rows.

    ``items`` is a :class:`pipelines.inference.planning.ManifestPlan` (the manifest streams in: one task per
    row group, blocks of many videos) or a Ray Dataset of work items (``planning.ITEM_SCHEMA`` rows).
    """
    import ray.data
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from pipelines.inference.planning import ManifestPlan, manifest_items
    from pipelines.inference.result_writer import ResultWriter
    from pipelines.inference.segment_actor import SegmentActor
    from pipelines.inference.video_io import read_frames_batch

    compute = cfg.compute
    if isinstance(items, ManifestPlan):
        # One row per row group goes in (what the driver puts in the object store is that and the
        # pending-row array); the work items come out in small blocks (:data:`MAX_BLOCK_BYTES`), and every
        # later stage calls its UDF once per video (batch_size=1).
        ds = _small_blocks(ray.data.from_items(items.chunks, override_num_blocks=max(1, len(items.chunks))))
        ds = ds.map_batches(
            manifest_items,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"manifest": items.manifest, "pending_rows": ray.put(items.pending_rows),
                       "manifest_data": None if items.data is None else ray.put(items.data),
                       "rows_per_block": compute.manifest_rows_per_block, "output": cfg.out,
                       "run_fields": dict(run_fields), "storage_options": dict(cfg.storage_options)},
            num_cpus=0,  # Parquet reads of a few MB: never waits for the CPUs the actor pools hold
            compute=TaskPoolStrategy(size=max(1, compute.read_concurrency // 2)),
            ray_remote_args_fn=dict,  # a stage of its own: fused into the frame readers, one task would read
            # the frames of a whole row group's videos one after another
        )
    else:
        ds = _small_blocks(items)
    ds = ds.map_batches(
        read_frames_batch,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"max_side": max_side, "max_inline_frame_bytes": compute.max_inline_frame_bytes,
                   "storage_options": dict(cfg.storage_options)},
        num_cpus=compute.read_num_cpus,
        compute=TaskPoolStrategy(size=compute.read_concurrency),
    )
    ds = ds.map_batches(
        SegmentActor,
        fn_constructor_kwargs={"cfg": cfg, "max_side": max_side},
        batch_size=1,
        batch_format="numpy",
        compute=(ActorPoolStrategy(size=compute.num_actors) if compute.max_actors is None
                 else ActorPoolStrategy(min_size=compute.num_actors, max_size=compute.max_actors)),
        num_gpus=num_gpus,
        num_cpus=compute.num_cpus_per_actor,
    )
    return ds.map_batches(
        ResultWriter,
        fn_constructor_kwargs={"cfg": cfg, "run_fields": dict(run_fields)},
        batch_size=compute.videos_per_file,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=compute.num_writers),
        num_cpus=compute.writer_num_cpus,
    )


#: Ray Data's target block size in the inference dataset. Ray merges a task's outputs into blocks of up to
#: its target (128 MiB by default) and a pool hands out whole blocks: the frames of many small videos would
#: travel as one block and one model actor would segment them all in turn while the others idle (the
#: 16-video demo ran on one of its two actors). At 64 KiB a block holds the frames of one video (16 frames
#: at 64x64 are already 196 KB) while the work items of about 20 videos still share one, so a large run's
#: per-block overhead stays where it was (one block per video cost 30 ms of orchestration a video
#: against 3.6 ms, ``benchmarks.orchestration_scale`` at 10k videos).
MAX_BLOCK_BYTES = 64 * 1024


def _small_blocks(ds: Any) -> Any:
    """``ds``, whose stages emit blocks of at most about :data:`MAX_BLOCK_BYTES` (a block exceeds it by at
    most one row). The setting is the dataset's own context, inherited by the stages built on it."""
    ds.context.target_max_block_size = MAX_BLOCK_BYTES
    return ds
