"""Rewrite an output's small Parquet parts into large files sorted by (video_id, exp_id, frame).

``infer`` writes one small part per batch of videos in masks, scores and errors; this job rewrites
each ``dataset=<d>/split=<s>`` partition of the three tables into files of about
``--target-bytes`` (default 256 MiB), sorted, with row-group statistics and a page index, so a query
for one video reads a few row groups instead of listing and opening every part. Partitioning stays
dataset/split; ``infer``'s resume, ``jobs.evaluate``, ``jobs.report`` and ``jobs.export`` read
compacted and fresh parts alike.

It holds the output lock (``<out>/_lock.json``: no ``infer`` writes meanwhile), works one partition
at a time, atomically (a journal under ``<out>/_compact/`` is the commit record), and a rerun after
a kill finishes or rolls back what was interrupted; no row is ever lost or duplicated (see
:mod:`pipelines.io.compaction`). At the end it folds the compacted scores files into the output's
pair index (:mod:`pipelines.io.pair_index`), so ``infer``'s next resume reads the index alone. Run it
after ``infer`` on a schedule, e.g. nightly::

    python -m jobs.compact --out s3://bucket/runs/vrshq-7b-revos
    python -m jobs.compact --out /data/runs/r1 --dataset revos --split valid --target-bytes 134217728

Exit status: 0 done (or nothing to do); 2 bad configuration; 3 the output is locked by a run.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import Any

from jobs._cli import ConfigError, log_config, new_run_id, parse_job_config, range_problems, setup_logging
from vrshq.validation import Validated, required_problems

__all__ = ["CompactConfig", "main", "run_compact"]

_LOG = logging.getLogger("jobs.compact")


@dataclasses.dataclass(frozen=True)
class CompactConfig(Validated):
    """Configuration of ``jobs.compact``."""

    out: str = dataclasses.field(
        default="", metadata={"help": "output URI of jobs.infer (holds masks/, scores/, errors/)"})
    target_bytes: int = dataclasses.field(default=256 * 2**20, metadata={"help": "size of each compacted file"})
    row_group_rows: int = dataclasses.field(
        default=65_536, metadata={"help": "rows per row group (the unit a one-video query reads)"})
    dataset: str | None = dataclasses.field(default=None, metadata={"help": "compact only this dataset partition"})
    split: str | None = dataclasses.field(default=None, metadata={"help": "compact only this split partition"})
    storage_options: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"help": "fsspec options as JSON (never logged)"})
    break_lock: bool = dataclasses.field(
        default=False, metadata={"help": "take over the output lock even if its holder seems alive"})
    lock_stale_after_s: float = dataclasses.field(
        default=300.0, metadata={"help": "a lock whose heartbeat is older than this is stale"})

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = required_problems(self, out="output URI")
        problems += range_problems(self, ints=(("target_bytes", 1), ("row_group_rows", 1)),
                                   positive=("lock_stale_after_s",))
        return problems


def run_compact(cfg: CompactConfig) -> list[Any]:
    """Compact ``cfg.out`` under its lock; returns one :class:`pipelines.io.compaction.CompactionResult` per partition.

    Raises:
        ConfigError: ``out`` holds no output tables.
        pipelines.io.output_lock.OutputLockedError: a live run holds the output.
    """
    from pipelines.io.compaction import compact_output, partitions
    from pipelines.io.output_lock import OutputLock

    so = cfg.storage_options
    if not partitions(cfg.out, storage_options=so):
        raise ConfigError([f"out={cfg.out!r} holds no masks/scores/errors parts"])

    def only(dataset: str, split: str) -> bool:
        return cfg.dataset in (None, dataset) and cfg.split in (None, split)

    with OutputLock(cfg.out, run_id=new_run_id("compact"), storage_options=so,
                    stale_after_s=cfg.lock_stale_after_s, break_lock=cfg.break_lock):
        return compact_output(cfg.out, target_bytes=cfg.target_bytes, row_group_rows=cfg.row_group_rows,
                              only=only, storage_options=so, log=_LOG.info)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    from pipelines.io.output_lock import OutputLockedError

    setup_logging()
    try:
        cfg = parse_job_config(CompactConfig, argv, module="jobs.compact", doc=__doc__)
        log_config(cfg, logger=_LOG, secret_keys=("storage_options",))
        results = run_compact(cfg)
    except ConfigError as exc:
        print(f"jobs.compact: {exc}", file=sys.stderr)
        return 2
    except OutputLockedError as exc:
        print(f"jobs.compact: {exc}", file=sys.stderr)
        return 3
    done = [r for r in results if not r.skipped]
    print(f"compacted {len(done)} partition(s), {len(results) - len(done)} already compact", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
