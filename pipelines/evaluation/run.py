"""One evaluation of existing masks: score every video of a split, write the ``scores/`` and ``errors/`` tables
and ``evaluate-<dataset>-<split>.json``, and return the counts and the summary table (``jobs.evaluate`` checks the
inputs first and prints the result).

The masks come from our masks table (``<run>/masks``) or a folder of per-frame PNGs in the official layout; videos
are scored in this process or by Ray Data actors (``engine="ray"``, :func:`pipelines.evaluation.scoring.score_with_ray`). Rows
go through the one writer of output tables (:func:`pipelines.io.writers.write_batch`: validated, atomic per file,
scores last) every ``flush_every`` videos.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

__all__ = ["OWN_FILE_PREFIXES", "EvaluationSummary", "clear_partition", "resolve_masks_uri", "run_evaluation"]

_LOG = logging.getLogger(__name__)
#: Name prefix of the files an evaluation writes; ``overwrite`` only ever deletes files with it.
_BATCH_PREFIX = "evaluate-"
#: File-name prefix of evaluate's parts (``pipelines.io.writers`` names files ``part-<batch id>``); infer's
#: batch ids are hashes, so the prefix tells evaluate's files from infer's in one output folder.
_FILE_PREFIX = "part-" + _BATCH_PREFIX
#: Prefixes of evaluate's own files, including those of earlier versions (named "evaluate-...").
OWN_FILE_PREFIXES = (_FILE_PREFIX, _BATCH_PREFIX)


@dataclasses.dataclass(frozen=True)
class EvaluationSummary:
    """What an evaluation did: counts, the ReVOS-style summary table and where it wrote."""

    videos: int
    expressions_scored: int
    errors: int
    table: dict[str, Any]
    outputs: dict[str, list[str]]


def resolve_masks_uri(uri: str, storage_options: Mapping[str, Any] | None) -> str:
    """``<uri>/masks`` when ``uri`` is a run folder that holds one, else ``uri`` (the masks table itself)."""
    from pipelines.io.storage import join_uri
    from pipelines.io.table_io import uri_exists

    candidate = join_uri(uri, "masks")
    return candidate if uri_exists(candidate, storage_options=storage_options) else uri


def clear_partition(out: str, dataset: str, split: str, storage_options: Mapping[str, Any] | None) -> None:
    """Delete an earlier evaluation's scores and errors of one split under ``out`` (only files it named)."""
    from pipelines.io.storage import filesystem_for, join_uri
    from pipelines.io.table_io import dataset_files

    for table in ("scores", "errors"):
        files = [f for f in dataset_files(join_uri(out, table), dataset=dataset, split=split,
                                          storage_options=storage_options)
                 if f.rsplit("/", 1)[-1].startswith(OWN_FILE_PREFIXES)]  # only our own (preflight checked)
        if files:
            _LOG.info("--overwrite: removing %d old %s file(s) of %s/%s", len(files), table, dataset, split)
            fs, _ = filesystem_for(out, storage_options)
            fs.rm(files)


def _iter_results(records: list[Any], *, masks_uri: str | None, png_root: str | None,
                  storage_options: dict[str, Any] | None, engine: str,
                  concurrency: int) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """Yield ``(video_id, VideoScores, provenance)`` for every video of ``records``."""
    from pipelines.evaluation.scoring import VideoScorer, iter_video_masks, score_with_ray

    scorer = VideoScorer(records, storage_options=storage_options)
    first = records[0]
    seen: set[str] = set()
    if engine == "ray":
        for video_id, result, provenance in score_with_ray(records, masks_uri=masks_uri, png_root=png_root,
                                                           storage_options=storage_options,
                                                           concurrency=concurrency):
            seen.add(video_id)
            yield video_id, result, provenance
    elif masks_uri is not None:
        for (_, _, video_id), rows in iter_video_masks(masks_uri, dataset=first.dataset, split=first.split,
                                                       storage_options=storage_options):
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


def run_evaluation(
    records: list[Any],
    *,
    out: str,
    masks_uri: str | None,
    png_root: str | None,
    run: dict[str, str],
    config: dict[str, Any],
    model: str | None = None,
    engine: str = "local",
    concurrency: int = 2,
    overwrite: bool = False,
    progress_every: int = 50,
    flush_every: int = 1000,
    storage_options: dict[str, Any] | None = None,
) -> EvaluationSummary:
    """Score ``records`` (one split) and write the tables and the run's JSON under ``out``.

    Args:
        records: the split's ``VideoRecord``s, with ground truth (checked by the caller).
        masks_uri / png_root: exactly one: the masks table, or the folder of per-frame PNGs.
        run: ``run_id`` and ``code_version``, written into every row and the JSON.
        config: the job's settings as JSON, recorded in the JSON (without credentials).
        model: the rows' model name (default: the masks' own model column, else ``"unknown"``).
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data actors on a running Ray).
        overwrite: first delete an earlier evaluation's files of this split.
    """
    from pipelines.evaluation.report import summary_table
    from pipelines.io.storage import join_uri, write_json
    from pipelines.io.writers import part_uri, write_batch
    from schemas import ERRORS_SCHEMA, SCORES_SCHEMA

    so = storage_options or None
    first = records[0]
    if overwrite:
        clear_partition(out, first.dataset, first.split, storage_options)
    run_token = re.sub(r"[^A-Za-z0-9_-]", "_", run["run_id"])[:40]  # file-name safe part of the batch id
    _LOG.info("scoring %d videos of %s/%s from %s (engine=%s)", len(records), first.dataset, first.split,
              masks_uri or png_root, engine)
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
        written = write_batch(out, tables, batch_id=batch_id, storage_options=storage_options)
        for name in tables:
            if written[name]:
                outputs[name].append(part_uri(out, name, dataset=first.dataset, split=first.split,
                                              batch_id=batch_id))
        pending_scores, pending_errors = [], []
        part += 1

    results = _iter_results(records, masks_uri=masks_uri, png_root=png_root, storage_options=so, engine=engine,
                            concurrency=concurrency)
    for _video_id, result, provenance in results:
        fields = {**run, "model": model or provenance.get("model") or "unknown"}
        pending_scores += [{**row, **fields} for row in result.scores]
        pending_errors += [{**row, **fields} for row in result.errors]
        counts["videos"] += 1
        counts["scored"] += len(result.scores)
        counts["errors"] += len(result.errors)
        if counts["videos"] % progress_every == 0:
            elapsed = time.monotonic() - start
            _LOG.info("progress: %d/%d videos, %d expressions scored, %d errors, %.1f videos/s",
                      counts["videos"], len(records), counts["scored"], counts["errors"],
                      counts["videos"] / max(elapsed, 1e-9))
        if counts["videos"] % flush_every == 0:
            flush()
    flush()
    scores = pa.concat_tables(all_scores) if all_scores else SCORES_SCHEMA.empty_table()
    table = summary_table(scores)
    summary = EvaluationSummary(videos=counts["videos"], expressions_scored=counts["scored"],
                                errors=counts["errors"], table=table, outputs=outputs)
    write_json(join_uri(out, f"evaluate-{first.dataset}-{first.split}.json"),
               {"config": config, **run, "counts": counts, "seconds": round(time.monotonic() - start, 3),
                "summary": table},
               storage_options)
    return summary
