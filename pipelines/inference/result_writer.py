"""The last stage of the inference pipeline: score against ground truth and write, per batch of videos.

A small CPU actor pool (``map_batches(ResultWriter, batch_size=videos_per_file, ...)``) turns the
model stage's rows (:data:`pipelines.inference.segment_actor.RESULT_SCHEMA`) into MASKS, SCORES and ERRORS
rows, scores them with :func:`pipelines.evaluation.scoring.score_video_masks` (``vrshq.metrics`` J, F, A, R)
where the manifest names ground truth, and writes them with :func:`pipelines.io.writers.write_batch`
(atomic per file, scores last). It returns one small summary row per video, which is all the
driver ever sees: the driver's memory does not grow with the number of videos or frames.

Expressions the model actor already scored on its device (``compute.score_on = "actor"``: the
result's ``frame_scores``) are neither decoded nor compared with the ground truth here: their per-frame
J and F and pixel counts are reduced to the scores row (``vrshq.metrics.score_from_frames``, the same
numbers), and only R's foreground is read here. Expressions it left unscored are scored here from
their RLE, as with ``score_on = "writer"``.

The split's ``mask_dict.json`` and ``mask_dict_foreground.json`` are parsed once per actor and
kept (keyed by URI), not once per video, and ``mask_dict.json`` only when an expression needs it.

Each summary row carries the video's time split (``stage_seconds_json``): the actor's stages plus
``writer_score`` (this video's scoring here) and ``writer_write`` (its share of the batch's writes).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.inference.config import InferenceConfig
from pipelines.inference.device_scoring import frame_scores_from_row
from pipelines.io.rle import decode_masks
from pipelines.inference.video_io import item_from_json
from pipelines.io.writers import batch_id_for, write_batch
from schemas import ERRORS_SCHEMA, MASKS_SCHEMA, SCORES_SCHEMA, WRITE_SUMMARY_SCHEMA

__all__ = ["SUMMARY_SCHEMA", "ResultWriter", "rows_for_video"]

_LOG = logging.getLogger(__name__)

#: One row per video: what the driver counts (defined in ``schemas``).
SUMMARY_SCHEMA = WRITE_SUMMARY_SCHEMA

#: Stages of the writers in the time split: scoring (with its ground-truth reads) and writing.
WRITER_SCORE_STAGE = "writer_score"
WRITER_WRITE_STAGE = "writer_write"

_CACHE_SIZE = 2  # parsed annotation files kept per actor (one split at a time, plus one)


class _AnnotationError(Exception):
    def __init__(self, message: str, *, uri: str | None, error_type: str):
        super().__init__(message)
        self.uri = uri
        self.error_type = error_type


def name_expressions(rows: list[dict[str, Any]], video: Any, scored: set[str]) -> list[dict[str, Any]]:
    """Rows of a whole-video failure (null ``exp_id``) made one per expression it cost, each naming it.

    The expressions it cost are the video's pending ones without a scores row; when every one was
    scored (e.g. only the robustness score is missing), the row names each of them.
    """
    pending = [e.exp_id for e in video.expressions if e.exp_id not in scored] or [e.exp_id for e in video.expressions]
    out: list[dict[str, Any]] = []
    for row in rows:
        if row.get("exp_id") is None and pending:
            out += [{**row, "exp_id": exp_id} for exp_id in pending]
        else:
            out.append(row)
    return out


def _fragments(video: Any, errors_json: str) -> list[dict[str, Any]]:
    keys = {"dataset": video.dataset, "split": video.split, "video_id": video.video_id}
    return [{**keys, **fragment} for fragment in json.loads(errors_json)]


class _Cache:
    """A tiny LRU of parsed annotation files (they can be hundreds of MB for a full split)."""

    def __init__(self, size: int):
        self._size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str, load: Any) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        self._items[key] = value
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return value


def rows_for_video(
    result: dict[str, Any],
    *,
    run_fields: dict[str, str],
    mask_dict: Any = None,
    foreground: np.ndarray | None = None,
    storage_options: dict[str, Any] | None = None,
    score_errors: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """MASKS, SCORES and ERRORS rows of one video's model result (a RESULT_SCHEMA row as a dict).

    A (video, expression) gets masks and scores rows only when it fully succeeded (model and
    scoring); otherwise it gets an errors row, so it stays pending and a rerun retries it.
    """
    from pipelines.evaluation.scoring import score_video_masks

    video = item_from_json(result["item_json"])
    keys = {"dataset": video.dataset, "split": video.split, "video_id": video.video_id}
    errors = [{**keys, **e, **run_fields} for e in json.loads(result["errors_json"])]
    errors += [{**keys, **e, **run_fields} for e in (score_errors or [])]
    if not result["results"]:
        return [], [], errors
    height, width = int(result["height"]), int(result["width"])
    predictions: dict[str, Any] = {}
    frame_scores: dict[str, Any] = {}
    keyframes: dict[str, int] = {}
    seconds: dict[str, float] = {}
    by_exp = {r["exp_id"]: r for r in result["results"]}
    for exp_id, res in by_exp.items():
        scored = frame_scores_from_row(res.get("frame_scores"), (len(res["rle_counts"]), height, width))
        if scored is not None:  # scored by the model actor: its masks need no decoding here
            frame_scores[exp_id] = scored
        else:
            try:
                predictions[exp_id] = decode_masks(res["rle_counts"], height=height, width=width)
            except ValueError as exc:
                predictions[exp_id] = exc
        keyframes[exp_id] = res["keyframe_index"]
        seconds[exp_id] = res["seconds"]
    done = set(by_exp)
    scored_video = dataclasses.replace(video, expressions=tuple(e for e in video.expressions if e.exp_id in done))
    scores = score_video_masks(
        scored_video, predictions, mask_dict=mask_dict, foreground=foreground, keyframes=keyframes,
        seconds=seconds, storage_options=storage_options, frame_scores=frame_scores,
    )
    errors += [{**e, **run_fields} for e in scores.errors]
    score_rows = [{**row, **run_fields} for row in scores.scores]
    scored = {row["exp_id"] for row in score_rows}
    mask_rows: list[dict[str, Any]] = []
    for exp_id in sorted(scored):
        res = by_exp[exp_id]
        keyframe = res["keyframe_index"]
        object_scores = res["object_scores"]
        for index, (name, counts) in enumerate(zip(video.frame_names, res["rle_counts"])):
            mask_rows.append({
                **keys, "exp_id": exp_id, "frame_index": index, "frame_name": name, "height": height,
                "width": width, "rle_counts": counts,
                "score": float(object_scores[index]) if index < len(object_scores) else float("nan"),
                "is_keyframe": index == keyframe, **run_fields,
            })
    return mask_rows, score_rows, errors


class ResultWriter:
    """Ray Data UDF: score and write a batch of videos; returns :data:`SUMMARY_SCHEMA` rows.

    Args:
        cfg: the inference config (output URI, storage options).
        run_fields: ``run_id``, ``model``, ``code_version`` stamped on every row.
        write_retries: attempts of a batch write before it is reported as failed.
    """

    def __init__(self, cfg: InferenceConfig, *, run_fields: dict[str, str], write_retries: int = 3):
        self._cfg = cfg
        self._run_fields = dict(run_fields)
        self._retries = max(1, int(write_retries))
        self._mask_dicts = _Cache(_CACHE_SIZE)
        self._foregrounds = _Cache(_CACHE_SIZE)

    def _ground_truth(self, video: Any, *, need_mask_dict: bool = True
                      ) -> tuple[Any, np.ndarray | None, list[dict[str, Any]]]:
        from vrshq.data import load_foreground_masks, load_mask_dict
        from vrshq.data.masks import load_foreground_dict

        options = self._cfg.storage_options
        errors: list[dict[str, Any]] = []
        mask_dict = foreground = None
        if video.mask_dict_uri is not None and need_mask_dict:
            try:
                mask_dict = self._mask_dicts.get(
                    video.mask_dict_uri, lambda: load_mask_dict(video.mask_dict_uri, storage_options=options)
                )
            except Exception as exc:  # noqa: BLE001 - every pending expression of the video fails
                raise _AnnotationError(
                    f"cannot read the ground truth of video {video.video_id!r}: {exc}",
                    uri=getattr(exc, "uri", video.mask_dict_uri), error_type=type(exc).__name__,
                ) from exc
        if video.foreground_uri is not None:
            try:
                fg_dict = self._foregrounds.get(
                    video.foreground_uri, lambda: load_foreground_dict(video.foreground_uri, storage_options=options)
                )
                foreground, _ = load_foreground_masks(video, storage_options=options, foreground_dict=fg_dict)
            except Exception as exc:  # noqa: BLE001 - R becomes null, the reason an errors row
                errors.append({"exp_id": None, "stage": "annotation", "error_type": type(exc).__name__,
                               "message": f"robustness not computed: {exc}", "uri": getattr(exc, "uri", video.foreground_uri)})
        return mask_dict, foreground, errors

    def __call__(self, batch: pa.Table) -> pa.Table:
        masks: list[dict[str, Any]] = []
        scores: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        summary: list[dict[str, Any]] = []
        for result in batch.to_pylist():
            video = item_from_json(result["item_json"])
            counts = [len(masks), len(scores), len(errors)]
            video_began = time.perf_counter()
            try:
                mask_dict = foreground = None
                gt_errors: list[dict[str, Any]] = []
                if result["results"]:
                    # the actor's frame_scores need no mask_dict here; only expressions it left unscored do
                    mask_dict, foreground, gt_errors = self._ground_truth(
                        video, need_mask_dict=any(r.get("frame_scores") is None for r in result["results"]))
                m, s, e = rows_for_video(result, run_fields=self._run_fields, mask_dict=mask_dict,
                                         foreground=foreground, storage_options=self._cfg.storage_options,
                                         score_errors=gt_errors)
            except _AnnotationError as exc:  # the split's mask_dict.json is unreadable
                m, s = [], []
                e = [{"dataset": video.dataset, "split": video.split, "video_id": video.video_id,
                      "exp_id": None, "stage": "annotation", "error_type": exc.error_type,
                      "message": str(exc), "uri": exc.uri, **self._run_fields}]
                e += [{**row, **self._run_fields} for row in _fragments(video, result["errors_json"])]
            except Exception as exc:  # noqa: BLE001 - a scoring bug must not lose the other videos
                _LOG.exception("scoring failed on video %s", video.video_id)
                m, s = [], []
                e = [{"dataset": video.dataset, "split": video.split, "video_id": video.video_id,
                      "exp_id": None, "stage": "score", "error_type": type(exc).__name__,
                      "message": str(exc) or repr(exc), "uri": getattr(exc, "uri", None), **self._run_fields}]
            masks += m
            scores += s
            errors += name_expressions(e, video, {row["exp_id"] for row in s})
            stages = json.loads(result.get("stage_seconds_json") or "{}")
            stages[WRITER_SCORE_STAGE] = time.perf_counter() - video_began
            summary.append({"dataset": video.dataset, "split": video.split, "video_id": video.video_id,
                            "num_expressions": len(video.expressions), "masks_rows": len(masks) - counts[0],
                            "scores_rows": len(scores) - counts[1], "errors_rows": len(errors) - counts[2],
                            "write_error": "", "pending_exp_ids": [x.exp_id for x in video.expressions],
                            "stage_seconds_json": stages})
        scored = time.perf_counter()
        write_error = self._write(masks, scores, errors, summary)
        write_share = (time.perf_counter() - scored) / max(len(summary), 1)
        for row in summary:
            row["stage_seconds_json"] = json.dumps({**row["stage_seconds_json"], WRITER_WRITE_STAGE: write_share})
        if write_error:  # nothing of the batch is committed; the driver records one "write" error per video
            for row in summary:
                row.update(masks_rows=0, scores_rows=0, errors_rows=0, write_error=write_error)
        return pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA)

    def _write(self, masks: list, scores: list, errors: list, summary: list) -> str:
        keys = [(r["dataset"], r["split"], r["video_id"]) for r in summary]
        keys += [(r["dataset"], r["split"], r["video_id"], r["exp_id"]) for r in scores]
        batch_id = batch_id_for(self._run_fields["run_id"], keys)
        tables = {
            "masks": pa.Table.from_pylist(masks, schema=MASKS_SCHEMA),
            "scores": pa.Table.from_pylist(scores, schema=SCORES_SCHEMA),
            "errors": pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA),
        }
        last: Exception | None = None
        for attempt in range(self._retries):
            try:
                write_batch(self._cfg.out, tables, batch_id=batch_id, storage_options=self._cfg.storage_options)
                return ""
            except OSError as exc:  # transient storage error: back off and retry
                last = exc
                _LOG.warning("writing batch %s failed (attempt %d/%d): %s", batch_id, attempt + 1, self._retries, exc)
                time.sleep(min(2.0**attempt, 10.0))
            except Exception as exc:  # noqa: BLE001 - schema violations etc. are not transient
                last = exc
                break
        message = f"{type(last).__name__}: {last}"
        _LOG.error("batch %s was not written: %s", batch_id, message)
        return message or "write failed"
