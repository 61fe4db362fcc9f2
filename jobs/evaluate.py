"""Score masks that already exist against a dataset's ground truth.

Input: our masks table (``<run>/masks``, hive-partitioned Parquet) or a folder of per-frame PNGs in
the official layout ``[Annotations/]<video>/<exp_id>/<frame>.png`` — so other methods' outputs are
scored on equal terms with ours. Output, under ``--out``:
``scores/dataset=<d>/split=<s>/*.parquet``, ``errors/...`` (one row per missing or unusable
prediction or annotation) and ``evaluate.json`` (config, counts and the summary table).

Run locally or on a Ray cluster::

    python -m jobs.evaluate --dataset.root s3://bucket/ReVOS --dataset.split valid \\
        --masks s3://bucket/runs/r1 --out s3://bucket/runs/r1
    ray job submit --working-dir . -- python -m jobs.evaluate --engine ray \\
        --dataset.root s3://bucket/ReVOS --pngs s3://bucket/other_method --out s3://bucket/eval/other

Exit status: 0 when every expression was scored, 1 when error rows were written, 2 on a bad
configuration (nothing is read or written then).
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jobs._cli import (
    ConfigError,
    DatasetConfig,
    code_version,
    config_to_dict,
    init_ray,
    log_config,
    new_run_id,
    parse_job_config,
    range_problems,
    read_dataset,
    setup_logging,
)
from vrshq.validation import Validated, required_problems

if TYPE_CHECKING:
    from pipelines.evaluation.run import EvaluationSummary

__all__ = ["EvaluateConfig", "evaluate", "main"]

_LOG = logging.getLogger("jobs.evaluate")
_ENGINES = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(Validated):
    """Configuration of ``jobs.evaluate`` (every field is a ``--flag`` or ``key=value`` override)."""

    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    out: str = dataclasses.field(default="", metadata={"help": "output URI for scores/, errors/, evaluate.json"})
    masks: str | None = dataclasses.field(
        default=None, metadata={"help": "masks table URI (<run> or <run>/masks); or give --pngs"})
    pngs: str | None = dataclasses.field(
        default=None, metadata={"help": "folder of <video>/<exp_id>/<frame>.png (or its parent with Annotations/)"})
    engine: str = dataclasses.field(default="local", metadata={"help": "local (in-process) | ray (Ray Data)"})
    concurrency: int = dataclasses.field(default=2, metadata={"help": "Ray scoring actors (engine=ray)"})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "model name for the rows (default: the masks' model, or 'external')"})
    run_id: str | None = dataclasses.field(default=None, metadata={"help": "run id of the rows (default: new)"})
    storage_options: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"help": "fsspec options as JSON, e.g. '{\"anon\": false}'"})
    overwrite: bool = dataclasses.field(
        default=False,
        metadata={"help": "replace an earlier evaluate's scores/errors of this split under --out "
                          "(files of other jobs are never touched)"})
    progress_every: int = dataclasses.field(default=50, metadata={"help": "log a progress line every N videos"})
    flush_every: int = dataclasses.field(default=1000, metadata={"help": "write a Parquet part every N videos"})
    ray_address: str | None = dataclasses.field(default=None, metadata={"help": "Ray address (default: auto)"})

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = required_problems(self, out="output URI")
        if (self.masks is None) == (self.pngs is None):
            problems.append("give exactly one of masks (masks table) or pngs (PNG folder)")
        if self.engine not in _ENGINES:
            problems.append(f"engine={self.engine!r}: must be one of {list(_ENGINES)}")
        problems += range_problems(self, ints=(("concurrency", 1), ("progress_every", 1), ("flush_every", 1)))
        return problems


def _preflight(cfg: EvaluateConfig) -> tuple[list[Any], str | None, str | None]:
    """Check inputs and outputs before any work; raise one ConfigError listing every problem."""
    from pipelines.evaluation.run import OWN_FILE_PREFIXES, resolve_masks_uri
    from pipelines.evaluation.png_masks import resolve_png_root
    from pipelines.io.storage import join_uri
    from pipelines.io.table_io import dataset_files, uri_exists

    problems: list[str] = []
    so = cfg.storage_options
    records: list[Any] = []
    try:
        records = read_dataset(cfg.dataset, storage_options=so)
    except Exception as exc:  # noqa: BLE001 - reported as a config problem, with its cause
        problems.append(f"dataset {cfg.dataset.root!r} split {cfg.dataset.split!r} unreadable: {exc}")
    if records and all(r.mask_dict_uri is None for r in records):
        problems.append(
            f"dataset {cfg.dataset.root!r} split {cfg.dataset.split!r} has no ground truth (no mask_dict.json): "
            "it is scored by its online server; use jobs.export to write the submission zip")
    if not records and not problems:
        problems.append(f"dataset {cfg.dataset.root!r} split {cfg.dataset.split!r} has no videos")
    masks_uri = png_root = None
    if cfg.masks is not None:
        masks_uri = resolve_masks_uri(cfg.masks, so)
        try:
            if not dataset_files(masks_uri, storage_options=so):
                problems.append(f"masks={cfg.masks!r}: no Parquet files under {masks_uri}")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"masks={cfg.masks!r}: unreadable: {exc}")
    if cfg.pngs is not None:
        try:
            if not uri_exists(cfg.pngs, storage_options=so):
                problems.append(f"pngs={cfg.pngs!r}: no such folder")
            else:
                png_root = resolve_png_root(cfg.pngs, storage_options=so)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"pngs={cfg.pngs!r}: unreadable: {exc}")
    if records:
        first = records[0]
        for table in ("scores", "errors"):
            try:
                existing = dataset_files(join_uri(cfg.out, table), dataset=first.dataset, split=first.split,
                                         storage_options=so)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"out={cfg.out!r}: unreadable: {exc}")
                break
            foreign = [f for f in existing if not f.rsplit("/", 1)[-1].startswith(OWN_FILE_PREFIXES)]
            if foreign:
                problems.append(
                    f"out={cfg.out!r} has {table} for dataset={first.dataset} split={first.split} written by "
                    f"another job (e.g. {foreign[0].rsplit('/', 1)[-1]}, from jobs.infer?); evaluate never mixes "
                    "its rows with them nor deletes them: choose another --out")
            elif existing and not cfg.overwrite:
                problems.append(
                    f"out={cfg.out!r} already has {table} for dataset={first.dataset} split={first.split} "
                    f"from an earlier evaluate ({len(existing)} file(s)); pass --overwrite to replace them "
                    "or choose another --out")
    if problems:
        raise ConfigError(problems)
    return records, masks_uri, png_root


def evaluate(cfg: EvaluateConfig) -> EvaluationSummary:
    """Check the inputs and outputs (:func:`_preflight`), then run the evaluation; see the module docstring."""
    from pipelines.evaluation.run import run_evaluation

    records, masks_uri, png_root = _preflight(cfg)
    if cfg.engine == "ray":
        init_ray(cfg.ray_address)
    return run_evaluation(
        records, out=cfg.out, masks_uri=masks_uri, png_root=png_root,
        run={"run_id": cfg.run_id or new_run_id("eval"), "code_version": code_version()},
        config={**config_to_dict(cfg), "storage_options": "<not recorded>"},
        model=cfg.model or ("external" if cfg.pngs is not None else None),
        engine=cfg.engine, concurrency=cfg.concurrency, overwrite=cfg.overwrite,
        progress_every=cfg.progress_every, flush_every=cfg.flush_every, storage_options=cfg.storage_options,
    )


def _format_summary(summary: EvaluationSummary) -> str:
    from pipelines.evaluation.report import format_summary_table

    return (f"evaluated {summary.videos} videos: {summary.expressions_scored} expressions scored, "
            f"{summary.errors} errors\n" + format_summary_table(summary.table))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, validate, evaluate, print the summary; returns the exit status."""
    setup_logging()
    try:
        cfg = parse_job_config(EvaluateConfig, argv, module="jobs.evaluate", doc=__doc__)
        log_config(cfg)
        summary = evaluate(cfg)
    except ConfigError as exc:
        _LOG.error("%s", exc)
        return 2
    print(_format_summary(summary), flush=True)
    if summary.errors:
        _LOG.error("%d error row(s) written under %s/errors; the exit status is 1", summary.errors, cfg.out)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
