"""Offline inference at scale: dataset or manifest -> masks, scores and errors Parquet datasets.

Ray Data streams every stage; the driver only plans and counts::

    manifest Parquet (or a dataset reader's records, as one in memory)
      -> pending pairs: Arrow kernels on the key columns      driver: keys only (pipelines.inference.planning)
      -> one work item per video, one video per block         CPU tasks, one per manifest row group
      -> read + decode + resize frames                        CPU tasks   (pipelines.inference.video_io)
      -> VrshqModel.segment_video, RLE inside the actor       actor pool  (pipelines.inference.segment_actor)
      -> score vs ground truth, write masks/errors/scores     CPU actors  (pipelines.inference.result_writer)
      -> one summary row per video                            driver: progress lines, counts

Guarantees (see :mod:`pipelines.io.writers` and :mod:`pipelines.inference.resume`):

* idempotent and resumable: a rerun skips (video, expression) pairs that have a scores row; a
  killed run loses at most the videos in flight; a manifest of new videos appends;
* bad input becomes ``errors/`` rows naming video, expression and cause; the run finishes the
  other videos and reports the count (``jobs.infer`` exits nonzero);
* a bad config or checkpoint fails in :func:`preflight`, before any Ray work;
* one writer per output: ``<output>/_lock.json`` (:mod:`pipelines.io.output_lock`);
* bounded memory: nothing collects the dataset on the driver; frames travel at the model's
  working resolution, and videos too large even then are read by the model actor itself.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io.compaction import finish_compaction
from pipelines.inference.dataset import build_dataset
from pipelines.inference.config import InferenceConfig, is_safe_partition_value, read_dataset
from pipelines.inference.input_check import (AnnotationFileError, check_annotations, manifest_video_problems,
                                              problem_rows, video_error_rows)
from pipelines.io.output_lock import OutputLock
from pipelines.inference.resume import remove_orphans
from pipelines.io.run_records import mark_interrupted, run_record_uri
from pipelines.io.storage import filesystem_for, join_uri, write_bytes_atomic
from pipelines.io.writers import batch_id_for, write_batch
from schemas import ERRORS_SCHEMA, MANIFEST_SCHEMA, validate_table

__all__ = [
    "InferenceSummary",
    "PreflightError",
    "build_dataset",
    "load_input",
    "preflight",
    "records_from_manifest",
    "run_inference",
]

_LOG = logging.getLogger("pipelines.inference.run")

#: Rows per row group of the in-memory manifest of a dataset input (one manifest-reading task each).
_PLAN_ROW_GROUP_ROWS = 20_000


class PreflightError(ValueError):
    """The run cannot start (unreadable input, unusable checkpoint, unwritable output); lists every problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("inference cannot start:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class InferenceSummary:
    """Counts of a run (also written to ``run.json``)."""

    run_id: str
    status: str = "running"
    videos_pending: int = 0
    videos_processed: int = 0
    videos_with_errors: int = 0
    pairs_total: int = 0
    pairs_skipped: int = 0
    pairs_pending: int = 0
    masks_rows: int = 0
    scores_rows: int = 0
    errors_rows: int = 0
    write_failures: int = 0
    orphans_removed: int = 0
    seconds: float = 0.0
    #: seconds per stage summed over the videos: the model actor's (its model stages, ``masks_rle``,
    #: ``score``; CUDA-event times on a GPU) and the writers' (``writer_score``, ``writer_write``)
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.errors_rows == 0 and self.write_failures == 0 and self.status == "completed"


# --------------------------------------------------------------------------- input and planning


def _error_row(dataset: str, split: str, video_id: str, exp_id: str | None, stage: str, exc: BaseException | str,
               uri: str | None = None, error_type: str | None = None) -> dict[str, Any]:
    return {
        "dataset": dataset, "split": split, "video_id": video_id, "exp_id": exp_id, "stage": stage,
        "error_type": error_type or (type(exc).__name__ if isinstance(exc, BaseException) else "ValueError"),
        "message": str(exc), "uri": uri if uri is not None else getattr(exc, "uri", None),
    }


def records_from_manifest(table: pa.Table) -> tuple[list[Any], list[dict[str, Any]]]:
    """Group manifest rows into ``VideoRecord``s, one bad row never sinking its video.

    Rows are grouped by (dataset, split, video_id); the video fields come from the first row. An
    expression row that is invalid (empty text, unknown type) or repeats an ``exp_id`` becomes an
    error (stage ``read``), and the rest of the video goes on.

    Returns:
        ``(records, errors)``: records in (dataset, split, video_id) order; ERRORS rows without run fields.
    """
    from vrshq.data import ExpressionRecord, VideoRecord

    rows = table.to_pylist()
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["split"], row["video_id"]), []).append(row)
    records, errors = [], []
    for (dataset, split, video_id), group in sorted(groups.items()):
        if not (is_safe_partition_value(dataset) and is_safe_partition_value(split)):
            _LOG.error("manifest rows with unsafe dataset/split %r/%r skipped", dataset, split)
            continue
        first = group[0]
        exp_ids = [row["exp_id"] for row in group]
        video_problems = manifest_video_problems(first)
        if video_problems:  # the video cannot run: one row per expression it costs
            for error_type, message in video_problems:
                errors += video_error_rows(dataset, split, video_id, exp_ids, stage="read", error_type=error_type,
                                           message=message, uri=first["frames_uri"] or first["video_uri"])
            continue
        expressions, seen = [], set()
        for row in group:
            exp_id = row["exp_id"]
            if exp_id in seen:
                errors.append(_error_row(dataset, split, video_id, exp_id, "read",
                                         f"duplicate manifest row for video {video_id!r} expression {exp_id!r}; "
                                         "the first row is used"))
                continue
            seen.add(exp_id)
            try:
                expressions.append(ExpressionRecord(
                    exp_id=exp_id, text=row["expression"], obj_ids=tuple(row["obj_ids"]),
                    anno_ids=tuple(row["anno_ids"]), type_id=int(row["type_id"])))
            except (TypeError, ValueError) as exc:
                errors.append(_error_row(dataset, split, video_id, exp_id, "read", exc))
        try:
            records.append(VideoRecord(
                dataset=dataset, split=split, video_id=video_id, frame_names=tuple(first["frame_names"]),
                frames_uri=first["frames_uri"], video_uri=first["video_uri"], height=first["height"],
                width=first["width"], expressions=tuple(expressions), mask_dict_uri=first["annotation_uri"],
                foreground_uri=first["foreground_uri"]))
        except (TypeError, ValueError) as exc:
            errors += video_error_rows(dataset, split, video_id, exp_ids, stage="read", error_type=type(exc).__name__,
                                       message=str(exc), uri=first["frames_uri"] or first["video_uri"])
    return records, errors


def load_input(cfg: InferenceConfig) -> tuple[list[Any], list[dict[str, Any]]]:
    """The input videos that can run, and an errors row for every record that cannot.

    Reads the dataset's meta (or the manifest) and its annotation files once. Bad records (empty
    text, unknown type, malformed ids, no frames, bad sizes, ids or names that would leave their
    root) and expressions without ground truth in the annotation become rows
    (:mod:`pipelines.inference.input_check`); the rest runs.

    Raises:
        PreflightError: when the input cannot be read at all: a meta or manifest file that is missing
            or cannot be parsed, a manifest with the wrong schema, or a dataset's annotation file
            that cannot be parsed (a manifest's annotation files cost only their videos' rows).
    """
    records, errors = _load_records(cfg)
    try:  # a split's annotation file serves every video: unreadable, nothing could be scored (exit 2)
        records, annotation_errors = check_annotations(
            records, storage_options=cfg.storage_options, unreadable_files="rows" if cfg.manifest else "fail")
    except AnnotationFileError as exc:
        raise PreflightError([str(exc)]) from exc
    return records, errors + annotation_errors


def _load_records(cfg: InferenceConfig) -> tuple[list[Any], list[dict[str, Any]]]:
    if cfg.manifest is not None:
        fs, path = filesystem_for(cfg.manifest, cfg.storage_options)
        try:
            table = pq.read_table(path, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as exc:
            raise PreflightError([f"manifest {cfg.manifest!r} is not readable Parquet: {exc}"]) from exc
        try:
            table = validate_table(table, MANIFEST_SCHEMA, what=f"manifest {cfg.manifest}")
        except ValueError as exc:
            raise PreflightError([str(exc)]) from exc
        return records_from_manifest(table)
    spec = cfg.dataset
    assert spec is not None  # InferenceConfig: exactly one of manifest / dataset
    problems: list[Any] = []
    try:
        records = read_dataset(spec, storage_options=cfg.storage_options, problems=problems)
    except Exception as exc:  # noqa: BLE001 - whatever the reader raises, the run cannot start
        raise PreflightError([f"cannot read dataset {spec.format!r} at {spec.root!r} split {spec.split!r}: {exc}"]
                             ) from exc
    return records, problem_rows(problems, dataset=spec.table_name, split=spec.split)


def preflight(cfg: InferenceConfig) -> Any:
    """Every check of the config that can fail before Ray starts: model source, an output that is
    written to (a probe file written and removed) and not inside the dataset root (unless
    ``allow_out_in_dataset``), and that an existing output holds results of this run's model only
    (a rerun resumes it). When it fails, the output folders it created are removed again.

    Returns:
        The model's ``VrshqConfig`` (for the working resolution).

    Raises:
        PreflightError: listing every problem found.
    """
    from pipelines.inference.model_loader import ModelLoadError, check_model_source
    from pipelines.inference.output_probe import missing_folders, out_inside_root, probe_output, remove_new_folders

    problems: list[str] = []
    model_cfg = None
    try:
        model_cfg = check_model_source(cfg)
    except ModelLoadError as exc:
        problems.append(str(exc))
    if cfg.dataset is not None and not cfg.allow_out_in_dataset:
        try:
            if out_inside_root(cfg.out, cfg.dataset.root, cfg.storage_options):
                problems.append(f"out={cfg.out!r} is inside dataset.root={cfg.dataset.root!r}: the results would land "
                                "among the dataset's files; write elsewhere, or pass allow_out_in_dataset=true")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"out={cfg.out!r}: cannot compare it with dataset.root: {exc}")
    created: list[str] = []
    try:
        created = missing_folders(cfg.out, cfg.storage_options)
        probe_output(cfg.out, cfg.storage_options)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"out={cfg.out!r} is not writable: {type(exc).__name__}: {exc}")
    for name, uri in (("manifest", cfg.manifest), ("dataset.root", cfg.dataset.root if cfg.dataset else None)):
        if uri is None:
            continue
        try:
            fs, path = filesystem_for(uri, cfg.storage_options)
            if not fs.exists(path):
                problems.append(f"{name} {uri!r} does not exist")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name} {uri!r} is not readable: {exc}")
    if not problems:
        from pipelines.inference.resume import other_models

        try:
            others = other_models(cfg.out, cfg.model_name, storage_options=cfg.storage_options)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"out={cfg.out!r}: cannot read its scores table to check what it holds: {exc}")
        else:
            if others:
                problems.append(
                    f"out={cfg.out!r} holds results of model {', '.join(map(repr, others))}, and this run's model is "
                    f"{cfg.model_name!r}: a rerun there resumes, so it would count their (video, expression) pairs "
                    "as done and mix two models in one table; write to another out, or delete that output first"
                )
    if problems:
        remove_new_folders(created)
        raise PreflightError(problems)
    return model_cfg


# --------------------------------------------------------------------------- the Ray Data pipeline


def _plan(cfg: InferenceConfig, run_id: str,
          loaded: tuple[list[Any], list[dict[str, Any]]] | None) -> tuple[Any, list[dict[str, Any]]]:
    """The run's :class:`pipelines.inference.planning.ManifestPlan` and the input errors.

    Records already read (``loaded``: a dataset input, always read by its ``vrshq.data`` reader, or a
    manifest a caller read) become a manifest Parquet in memory, which reaches the manifest-reading
    tasks through the object store; a manifest not read streams from its files. Both inputs then
    flow into the pipeline the same way.
    """
    from pipelines.inference.manifest import records_to_manifest
    from pipelines.inference.planning import ManifestPlanError, plan_manifest

    manifest: str | bytes | None = cfg.manifest
    input_errors: list[dict[str, Any]] = []
    if loaded is not None:
        records, input_errors = loaded
        sink = io.BytesIO()
        pq.write_table(records_to_manifest(records), sink, compression="zstd", row_group_size=_PLAN_ROW_GROUP_ROWS)
        del records
        manifest = sink.getvalue()
    try:
        plan = plan_manifest(manifest, cfg.out, max_videos=cfg.max_videos, storage_options=cfg.storage_options,
                             fold_index=True)
    except ManifestPlanError as exc:
        raise PreflightError([str(exc)]) from exc
    for key in plan.duplicates.to_pylist():  # only the duplicated rows become Python objects
        input_errors.append(_error_row(key["dataset"], key["split"], key["video_id"], key["exp_id"], "read",
                                       f"duplicate manifest row for video {key['video_id']!r} expression "
                                       f"{key['exp_id']!r}; the first row is used"))
    if not plan.clustered:
        _LOG.warning("manifest %s does not list each video's rows together: a video may be segmented in several "
                     "model calls (correct, but its frames are read more than once); sort it by video", plan.manifest)
    return plan, input_errors


def _counts(summary: InferenceSummary) -> dict[str, Any]:
    counts = dataclasses.asdict(summary)
    for key in ("run_id", "status"):
        counts.pop(key)
    return counts


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_run_json(cfg: InferenceConfig, record: dict[str, Any]) -> None:
    data = json.dumps(record, indent=2, sort_keys=False, default=str).encode()
    for uri in (join_uri(cfg.out, "run.json"), run_record_uri(cfg.out, record["run_id"])):
        fs, path = filesystem_for(uri, cfg.storage_options)
        write_bytes_atomic(fs, path, data)


def _write_driver_errors(cfg: InferenceConfig, rows: list[dict[str, Any]], run_fields: Mapping[str, str],
                         tag: str) -> int:
    if not rows:
        return 0
    table = pa.Table.from_pylist([{**r, **run_fields} for r in rows], schema=ERRORS_SCHEMA)
    keys = [(r["dataset"], r["split"], r["video_id"], str(r["exp_id"]), r["message"]) for r in rows]
    write_batch(cfg.out, {"errors": table}, batch_id=f"{tag}-" + batch_id_for(run_fields["run_id"], keys)[:16],
                storage_options=cfg.storage_options)
    return len(rows)


def _num_gpus(cfg: InferenceConfig) -> float:
    if cfg.compute.num_gpus_per_actor is not None:
        return float(cfg.compute.num_gpus_per_actor)
    if cfg.device == "cpu":
        return 0.0
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def run_inference(
    cfg: InferenceConfig, *, log: Callable[[str], None] | None = None, model_config: Any = None,
    loaded_input: tuple[list[Any], list[dict[str, Any]]] | None = None,
) -> InferenceSummary:
    """Run the whole job on the current Ray cluster (``ray.init`` must have been called).

    Args:
        cfg: the run's config.
        log: where progress lines go (default: this module's logger at INFO).
        model_config: the result of :func:`preflight` when the caller already ran it (else it runs here).
        loaded_input: the result of :func:`load_input` when the caller already read the input before
            Ray started (else it is read here): the meta and annotation files are parsed once.

    Returns:
        The run's :class:`InferenceSummary` (also in ``<output>/run.json``).

    Raises:
        PreflightError: bad input, checkpoint or output, before any Ray work.
        pipelines.io.output_lock.OutputLockedError: another run writes the same output.
    """
    from pipelines.inference.video_io import working_max_side

    say = log or _LOG.info
    started = time.perf_counter()
    model_cfg = model_config if model_config is not None else preflight(cfg)
    max_side = working_max_side(cfg.max_side, model_cfg.sam2.image_size)
    run_id = cfg.run_id or (_dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6])
    version = cfg.code_version or "unknown"  # jobs.infer fills it from git / the package version
    run_fields = {"run_id": run_id, "model": cfg.model_name, "code_version": version}
    summary = InferenceSummary(run_id=run_id)
    record: dict[str, Any] = {
        "run_id": run_id, "status": "running", "started_at": _now(), "finished_at": None,
        "code_version": version, "model": cfg.model_name, "preset": cfg.preset, "checkpoint": cfg.checkpoint,
        "seed": cfg.seed if cfg.checkpoint is None else None, "working_max_side": max_side,
        "config": cfg.public_dict(), "counts": {},
    }
    # A dataset's records are read here unless the caller read them before Ray started; a manifest
    # that was not read streams from its Parquet files into the pipeline (pipelines.inference.planning).
    loaded = loaded_input if loaded_input is not None or cfg.manifest is not None else load_input(cfg)
    with OutputLock(cfg.out, run_id=run_id, storage_options=cfg.storage_options,
                    stale_after_s=cfg.lock_stale_after_s, break_lock=cfg.break_lock) as lock:
        # before anything is written: a refused run leaves only the lock, which the exit removes
        check_cluster_fits(cfg, num_gpus=_num_gpus(cfg), resources=_cluster_resources())
        for holder in lock.taken_over:
            mark_interrupted(cfg.out, holder, by=run_id, storage_options=cfg.storage_options)
        orphans = remove_orphans(cfg.out, storage_options=cfg.storage_options)
        if orphans:
            say(f"removed {len(orphans)} uncommitted masks file(s) of an interrupted run")
        compactions = finish_compaction(cfg.out, storage_options=cfg.storage_options)
        if compactions:
            say(f"finished {compactions} compaction(s) of an interrupted jobs.compact")
        plan, input_errors = _plan(cfg, run_id, loaded)
        del loaded
        summary.orphans_removed = len(orphans)
        summary.pairs_total, summary.pairs_skipped = plan.pairs_total, plan.pairs_done
        summary.pairs_pending, summary.videos_pending = plan.pairs_pending, plan.videos_pending
        summary.errors_rows += _write_driver_errors(cfg, input_errors, run_fields, "input")
        record["counts"] = _counts(summary)
        _write_run_json(cfg, record)
        say(f"run {run_id}: {summary.videos_pending} video(s) / {summary.pairs_pending} expression(s) to do, "
            f"{summary.pairs_skipped} already done, {len(input_errors)} input error(s); "
            f"model {cfg.model_name}, working max side {max_side}, output {cfg.out}")
        try:
            if plan.videos_pending:
                _execute(cfg, plan, summary, max_side=max_side, run_fields=run_fields, say=say, started=started)
                _fold_index(cfg, say)
            summary.status = "completed"
        except BaseException:
            summary.status = "failed"
            raise
        finally:
            summary.seconds = time.perf_counter() - started
            record.update(status=summary.status, finished_at=_now(), counts=_counts(summary))
            try:
                _write_run_json(cfg, record)
            except Exception:  # noqa: BLE001 - never hide the original failure
                _LOG.exception("could not write run.json")
    say(
        f"run {run_id} {summary.status} in {summary.seconds:.1f} s: {summary.videos_processed} video(s), "
        f"{summary.scores_rows} expression(s) scored, {summary.masks_rows} mask row(s), "
        f"{summary.errors_rows} error row(s), {summary.pairs_skipped} pair(s) skipped as already done"
    )
    return summary


def _fold_index(cfg: InferenceConfig, say: Callable[[str], None]) -> None:
    """Fold the run's scores parts into the output's pair index (:mod:`pipelines.io.pair_index`), so the next
    resume reads one file; a failure costs the next resume time, never the run."""
    from pipelines.io.pair_index import fold_index

    try:
        say(f"pair index: {fold_index(cfg.out, storage_options=cfg.storage_options).parts} scores file(s) covered")
    except Exception:  # noqa: BLE001 - the index is a cache: the next resume reads the parts instead
        _LOG.exception("could not fold this run's scores parts into the pair index")


def _cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def check_cluster_fits(cfg: InferenceConfig, *, num_gpus: float, resources: Mapping[str, float]) -> None:
    """Refuse a compute config that the cluster can never schedule.

    The model and writer actor pools hold their CPUs for the whole run, so a frame-reading task
    must still fit beside them; otherwise Ray Data waits forever with the reads "backpressured".
    Failing here names the numbers and the fix instead of hanging.

    Raises:
        PreflightError: listing what the pipeline needs and what the cluster has.
    """
    compute = cfg.compute
    cpus_needed = (compute.num_actors * compute.num_cpus_per_actor
                   + compute.num_writers * compute.writer_num_cpus + compute.read_num_cpus)
    problems = []
    if cpus_needed > resources.get("CPU", 0.0) + 1e-9:
        problems.append(
            f"the pipeline needs {cpus_needed:g} CPUs at once (compute.num_actors x num_cpus_per_actor "
            f"{compute.num_actors} x {compute.num_cpus_per_actor:g} + num_writers x writer_num_cpus "
            f"{compute.num_writers} x {compute.writer_num_cpus:g} + read_num_cpus {compute.read_num_cpus:g}) "
            f"but the cluster has {resources.get('CPU', 0.0):g}: lower those compute.* values or add nodes"
        )
    if num_gpus and compute.num_actors * num_gpus > resources.get("GPU", 0.0) + 1e-9:
        problems.append(
            f"compute.num_actors={compute.num_actors} actors x {num_gpus:g} GPU need "
            f"{compute.num_actors * num_gpus:g} GPUs but the cluster has {resources.get('GPU', 0.0):g}"
        )
    if problems:
        raise PreflightError(problems)


def _execute(cfg: InferenceConfig, plan: Any, summary: InferenceSummary, *, max_side: int,
             run_fields: Mapping[str, str], say: Callable[[str], None], started: float) -> None:
    import ray

    num_gpus = _num_gpus(cfg)
    check_cluster_fits(cfg, num_gpus=num_gpus, resources=ray.cluster_resources())
    ds = build_dataset(plan, cfg, max_side=max_side, run_fields=run_fields, num_gpus=num_gpus)
    write_failures: list[dict[str, Any]] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            summary.videos_processed += 1
            summary.masks_rows += row["masks_rows"]
            summary.scores_rows += row["scores_rows"]
            summary.errors_rows += row["errors_rows"]
            for stage, seconds in json.loads(row.get("stage_seconds_json") or "{}").items():
                summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds
            if row["errors_rows"]:
                summary.videos_with_errors += 1
            if row["write_error"]:
                summary.write_failures += 1
                write_failures += video_error_rows(row["dataset"], row["split"], row["video_id"],
                                                   row["pending_exp_ids"] or [], stage="write",
                                                   error_type="WriteError", message=row["write_error"], uri=None)
            if summary.videos_processed % cfg.progress_every == 0 or summary.videos_processed == summary.videos_pending:
                elapsed = time.perf_counter() - started
                rate = summary.videos_processed / max(elapsed, 1e-9)
                eta = (summary.videos_pending - summary.videos_processed) / max(rate, 1e-9)
                say(f"progress: {summary.videos_processed}/{summary.videos_pending} videos, "
                    f"{summary.scores_rows} expressions scored, {summary.errors_rows} errors, "
                    f"{rate:.2f} videos/s, eta {eta:.0f} s")
        if len(write_failures) >= 100:  # keep driver memory bounded even if storage is down
            summary.errors_rows += _try_write_errors(cfg, write_failures, run_fields)
            write_failures = []
    summary.errors_rows += _try_write_errors(cfg, write_failures, run_fields)
    from pipelines.inference.planning import count_input_errors  # rows the manifest-reading tasks wrote (bad expressions)

    summary.errors_rows += count_input_errors(cfg.out, run_fields["run_id"], storage_options=cfg.storage_options)


def _try_write_errors(cfg: InferenceConfig, rows: list[dict[str, Any]], run_fields: Mapping[str, str]) -> int:
    try:
        return _write_driver_errors(cfg, rows, run_fields, "write")
    except Exception:  # noqa: BLE001 - the summary still counts the failures
        _LOG.exception("could not record %d write failure(s)", len(rows))
        return 0

