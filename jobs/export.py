"""Write a benchmark-server submission zip from a masks table.

Layouts: ``mevis`` (MeViS ``valid``: ``<video>/<exp_id>/<frame>.png`` at the zip root) and
``refytvos`` (Ref-YouTube-VOS: ``Annotations/<video>/<exp_id>/<frame>.png``). The zip is
streamed one video at a time, written to a temporary name and moved into place at the end; an
existing zip is never replaced without ``--overwrite`` and nothing else is ever deleted.

Examples::

    python -m jobs.export --masks s3://bucket/runs/r1 --layout mevis --out s3://bucket/sub/mevis.zip \\
        --dataset.format mevis --dataset.root s3://bucket/MeViS --dataset.split valid
    ray job submit --working-dir . -- python -m jobs.export --masks s3://bucket/runs/r1 \\
        --layout refytvos --out s3://bucket/sub/refytvos.zip --partition-dataset refytvos --split valid

With ``--dataset.*`` every expression of the split must have a mask for every frame (servers
reject incomplete submissions); missing ones are listed and the exit status is 1.
Exit status: 0 complete, 1 incomplete (the zip is still written), 2 bad configuration.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from jobs._cli import (
    ConfigError,
    DatasetConfig,
    log_config,
    parse_job_config,
    range_problems,
    read_dataset,
    setup_logging,
)
from vrshq.validation import Validated, required_problems

__all__ = ["ExportConfig", "main", "run_export"]

_LOG = logging.getLogger("jobs.export")


@dataclasses.dataclass(frozen=True)
class ExportConfig(Validated):
    """Configuration of ``jobs.export``."""

    masks: str = dataclasses.field(default="", metadata={"help": "masks table URI (<run> or <run>/masks)"})
    out: str = dataclasses.field(default="", metadata={"help": "zip file URI to write"})
    layout: str = dataclasses.field(default="mevis", metadata={"help": "mevis | refytvos"})
    dataset: DatasetConfig | None = dataclasses.field(
        default=None, metadata={"help": "dataset split to check completeness against (optional)"})
    partition_dataset: str | None = dataclasses.field(
        default=None, metadata={"help": "dataset partition of the masks table (default: from --dataset)"})
    split: str | None = dataclasses.field(
        default=None, metadata={"help": "split partition of the masks table (default: from --dataset)"})
    storage_options: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"help": "fsspec options as JSON"})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "replace an existing zip at --out"})
    progress_every: int = dataclasses.field(default=50, metadata={"help": "log a progress line every N videos"})
    png_compress_level: int = dataclasses.field(
        default=6, metadata={"help": "PNG zlib level 0-9 (6: smallest zip; 1: ~3x faster)"})

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        from pipelines.evaluation.export import LAYOUTS

        problems = required_problems(self, masks="masks table URI", out="zip URI")
        if self.out and not self.out.endswith(".zip"):
            problems.append(f"out={self.out!r}: must end with .zip")
        if self.layout not in LAYOUTS:
            problems.append(f"layout={self.layout!r}: must be one of {sorted(LAYOUTS)}")
        problems += range_problems(self, ints=(("progress_every", 1),))
        if not 0 <= self.png_compress_level <= 9:
            problems.append(f"png_compress_level={self.png_compress_level}: must be in 0..9")
        return problems


def _preflight(cfg: ExportConfig) -> tuple[str, list[Any] | None, str | None, str | None]:
    from pipelines.io.storage import join_uri
    from pipelines.io.table_io import dataset_files, uri_exists

    problems: list[str] = []
    so = cfg.storage_options
    masks_uri = cfg.masks
    records = None
    try:
        if uri_exists(join_uri(cfg.masks, "masks"), storage_options=so):
            masks_uri = join_uri(cfg.masks, "masks")
        if not dataset_files(masks_uri, storage_options=so):
            problems.append(f"masks={cfg.masks!r}: no Parquet files under {masks_uri}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"masks={cfg.masks!r}: unreadable: {exc}")
    try:
        if uri_exists(cfg.out, storage_options=so) and not cfg.overwrite:
            problems.append(f"out={cfg.out!r} exists; pass --overwrite to replace it or choose another path")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"out={cfg.out!r}: unreadable: {exc}")
    if cfg.dataset is not None:
        try:
            records = read_dataset(cfg.dataset, storage_options=so)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"dataset {cfg.dataset.root!r} split {cfg.dataset.split!r} unreadable: {exc}")
    dataset = cfg.partition_dataset or (records[0].dataset if records else None)
    split = cfg.split or (records[0].split if records else None)
    if not problems and (dataset is None or split is None):
        partitions = sorted({tuple(p.split("/")[-3:-1]) for p in dataset_files(masks_uri, storage_options=so)})
        if len(partitions) > 1:
            problems.append(f"masks table holds several partitions {partitions}: choose one with "
                            "--partition-dataset and --split (or --dataset.*)")
    if problems:
        raise ConfigError(problems)
    return masks_uri, records, dataset, split


def run_export(cfg: ExportConfig):
    """Preflight and write the zip; returns :class:`pipelines.evaluation.export.ExportSummary`."""
    from pipelines.evaluation.export import export_zip

    masks_uri, records, dataset, split = _preflight(cfg)
    start = time.monotonic()

    def progress(done: int, video_id: str) -> None:
        if done % cfg.progress_every == 0:
            _LOG.info("progress: %d videos written (last %s), %.1f videos/s", done, video_id,
                      done / max(time.monotonic() - start, 1e-9))

    return export_zip(masks_uri, cfg.out, layout=cfg.layout, dataset=dataset, split=split, records=records,
                      storage_options=cfg.storage_options or None, overwrite=cfg.overwrite,
                      compress_level=cfg.png_compress_level, on_video=progress)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    setup_logging()
    try:
        cfg = parse_job_config(ExportConfig, argv, module="jobs.export", doc=__doc__)
        log_config(cfg)
        summary = run_export(cfg)
    except ConfigError as exc:
        _LOG.error("%s", exc)
        return 2
    print(f"wrote {summary.zip_uri}: {summary.videos} videos, {summary.expressions} expressions, "
          f"{summary.frames} frames ({cfg.layout} layout)", flush=True)
    for problem in summary.problems[:50]:
        _LOG.error("incomplete: %s", problem)
    if summary.problems:
        _LOG.error("%d problem(s): the submission is incomplete; exit status 1", len(summary.problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
