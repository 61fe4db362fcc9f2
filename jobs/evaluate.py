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
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from jobs._cli import (
    ConfigError,
    DatasetConfig,
    code_version,
    config_to_dict,
    init_ray,
    log_config,
    new_run_id,
    parse_config,
    read_dataset,
    setup_logging,
)

__all__ = ["EvaluateConfig", "EvaluationSummary", "evaluate", "main"]

_LOG = logging.getLogger("jobs.evaluate")
_ENGINES = ("local", "ray")
#: Name prefix of the files this job writes; ``--overwrite`` only ever deletes files with it.
_BATCH_PREFIX = "evaluate-"
#: File-name prefix of evaluate's parts (``pipelines.writers`` names files ``part-<batch id>``); infer's
#: batch ids are hashes, so the prefix tells evaluate's files from infer's in one output folder.
_FILE_PREFIX = "part-" + _BATCH_PREFIX
#: Prefixes of evaluate's own files, including those of earlier versions (named "evaluate-...").
_OWN_FILE_PREFIXES = (_FILE_PREFIX, _BATCH_PREFIX)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
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

    def __post_init__(self) -> None:
        problems = []
        if not self.out:
            problems.append("out is required (output URI)")
        if (self.masks is None) == (self.pngs is None):
            problems.append("give exactly one of masks (masks table) or pngs (PNG folder)")
        if self.engine not in _ENGINES:
            problems.append(f"engine={self.engine!r}: must be one of {list(_ENGINES)}")
        for name in ("concurrency", "progress_every", "flush_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be >= 1")
        if problems:
            raise ConfigError(problems)


@dataclasses.dataclass(frozen=True)
class EvaluationSummary:
    """What an evaluation did: counts, the ReVOS-style summary table and where it wrote."""

    videos: int
    expressions_scored: int
    errors: int
    table: dict[str, Any]
    outputs: dict[str, list[str]]


def _resolve_masks_uri(uri: str, storage_options: dict[str, Any]) -> str:
    from pipelines.storage import join_uri
    from pipelines.table_io import uri_exists

    candidate = join_uri(uri, "masks")
    return candidate if uri_exists(candidate, storage_options=storage_options) else uri


def _preflight(cfg: EvaluateConfig) -> tuple[list[Any], str | None, str | None]:
    """Check inputs and outputs before any work; raise one ConfigError listing every problem."""
    from pipelines.png_masks import resolve_png_root
    from pipelines.storage import join_uri
    from pipelines.table_io import dataset_files, uri_exists

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
        masks_uri = _resolve_masks_uri(cfg.masks, so)
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
            foreign = [f for f in existing if not f.rsplit("/", 1)[-1].startswith(_OWN_FILE_PREFIXES)]
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


def _clear_partition(cfg: EvaluateConfig, dataset: str, split: str) -> None:
    from pipelines.storage import filesystem_for, join_uri
    from pipelines.table_io import dataset_files

    for table in ("scores", "errors"):
        files = [f for f in dataset_files(join_uri(cfg.out, table), dataset=dataset, split=split,
                                          storage_options=cfg.storage_options)
                 if f.rsplit("/", 1)[-1].startswith(_OWN_FILE_PREFIXES)]  # only our own (preflight checked)
        if files:
            _LOG.info("--overwrite: removing %d old %s file(s) of %s/%s", len(files), table, dataset, split)
            fs, _ = filesystem_for(cfg.out, cfg.storage_options)
            fs.rm(files)


def _iter_results(cfg: EvaluateConfig, records: list[Any], masks_uri: str | None,
                  png_root: str | None) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """Yield ``(video_id, VideoScores, provenance)`` for every video of ``records``."""
    from pipelines.scoring import VideoScorer, iter_video_masks, score_with_ray

    so = cfg.storage_options or None
    scorer = VideoScorer(records, storage_options=so)
    first = records[0]
    seen: set[str] = set()
    if cfg.engine == "ray":
        init_ray(cfg.ray_address)
        for video_id, result, provenance in score_with_ray(records, masks_uri=masks_uri, png_root=png_root,
                                                           storage_options=so, concurrency=cfg.concurrency):
            seen.add(video_id)
            yield video_id, result, provenance
    elif masks_uri is not None:
        for (_, _, video_id), rows in iter_video_masks(masks_uri, dataset=first.dataset, split=first.split,
                                                       storage_options=so):
            seen.add(video_id)
            provenance = {"model": rows.column("model")[0].as_py()} if "model" in rows.column_names else {}
            yield video_id, scorer.score_table(video_id, rows), provenance
    else:
        for record in records:
            seen.add(record.video_id)
            yield record.video_id, scorer.score_png(record.video_id, png_root), {}
    for record in records:
        if record.video_id not in seen:
            yield record.video_id, scorer.missing_video(record.video_id), {}


def evaluate(cfg: EvaluateConfig) -> EvaluationSummary:
    """Run the evaluation described by ``cfg`` (after :func:`_preflight`); see the module docstring."""
    from pipelines.report import summary_table
    from pipelines.storage import join_uri, write_json
    from pipelines.writers import part_uri, write_batch
    from schemas import ERRORS_SCHEMA, SCORES_SCHEMA

    records, masks_uri, png_root = _preflight(cfg)
    first = records[0]
    if cfg.overwrite:
        _clear_partition(cfg, first.dataset, first.split)
    run = {"run_id": cfg.run_id or new_run_id("eval"), "code_version": code_version()}
    run_token = re.sub(r"[^A-Za-z0-9_-]", "_", run["run_id"])[:40]  # file-name safe part of the batch id
    default_model = cfg.model or ("external" if cfg.pngs is not None else None)
    _LOG.info("scoring %d videos of %s/%s from %s (engine=%s)", len(records), first.dataset, first.split,
              masks_uri or png_root, cfg.engine)
    outputs: dict[str, list[str]] = {"scores": [], "errors": []}
    all_scores: list[pa.Table] = []
    pending_scores: list[dict[str, Any]] = []
    pending_errors: list[dict[str, Any]] = []
    counts = {"videos": 0, "scored": 0, "errors": 0}
    part = 0
    start = time.monotonic()

    def flush() -> None:
        nonlocal part, pending_scores, pending_errors
        batch_id = f"{_BATCH_PREFIX}{run_token}-{part:05d}"
        tables = {name: pa.Table.from_pylist(rows, schema=schema)
                  for name, rows, schema in (("scores", pending_scores, SCORES_SCHEMA),
                                             ("errors", pending_errors, ERRORS_SCHEMA)) if rows}
        if "scores" in tables:
            all_scores.append(tables["scores"])
        # the one writer of output tables (as jobs.infer): validated, atomic per file, scores last
        written = write_batch(cfg.out, tables, batch_id=batch_id, storage_options=cfg.storage_options)
        for name in tables:
            if written[name]:
                outputs[name].append(part_uri(cfg.out, name, dataset=first.dataset, split=first.split,
                                              batch_id=batch_id))
        pending_scores, pending_errors = [], []
        part += 1

    for video_id, result, provenance in _iter_results(cfg, records, masks_uri, png_root):
        fields = {**run, "model": default_model or provenance.get("model") or "unknown"}
        pending_scores += [{**row, **fields} for row in result.scores]
        pending_errors += [{**row, **fields} for row in result.errors]
        counts["videos"] += 1
        counts["scored"] += len(result.scores)
        counts["errors"] += len(result.errors)
        if counts["videos"] % cfg.progress_every == 0:
            elapsed = time.monotonic() - start
            _LOG.info("progress: %d/%d videos, %d expressions scored, %d errors, %.1f videos/s",
                      counts["videos"], len(records), counts["scored"], counts["errors"],
                      counts["videos"] / max(elapsed, 1e-9))
        if counts["videos"] % cfg.flush_every == 0:
            flush()
    flush()
    scores = pa.concat_tables(all_scores) if all_scores else SCORES_SCHEMA.empty_table()
    table = summary_table(scores)
    summary = EvaluationSummary(videos=counts["videos"], expressions_scored=counts["scored"],
                                errors=counts["errors"], table=table, outputs=outputs)
    write_json(join_uri(cfg.out, f"evaluate-{first.dataset}-{first.split}.json"),
               {"config": {**config_to_dict(cfg), "storage_options": "<not recorded>"}, **run,
                "counts": counts, "seconds": round(time.monotonic() - start, 3), "summary": table},
               cfg.storage_options)
    return summary


def _format_summary(summary: EvaluationSummary) -> str:
    from pipelines.report import format_summary_table

    return (f"evaluated {summary.videos} videos: {summary.expressions_scored} expressions scored, "
            f"{summary.errors} errors\n" + format_summary_table(summary.table))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, validate, evaluate, print the summary; returns the exit status."""
    setup_logging()
    try:
        cfg = parse_config(EvaluateConfig, argv, prog="python -m jobs.evaluate",
                           description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
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
