"""Score predicted masks against ground truth: masks (RLE table or PNG folder) -> SCORES rows.

Three layers, each usable alone:

* :func:`score_video_masks` — one video, predictions already as arrays. Pure (no Ray, no table
  I/O); the inference pipeline calls it inside its actors.
* :class:`VideoScorer` — holds a split's ground truth (records, ``mask_dict``, foreground), loaded
  once, and scores one video from a masks-table slice or from a PNG folder. Used by the local engine
  of ``jobs.evaluate`` and wrapped by the Ray Data UDFs below.
* :func:`score_with_ray` — the streaming Ray Data version: masks table grouped by video
  (``groupby(...).map_groups`` with an actor pool) or the video list ``map_batches``-ed over PNG
  reads. Masks never reach the driver; only the small per-expression score rows do.

Every (video, expression) of the ground truth ends up either as a scores row or as an errors row:
a missing prediction is an error, never a silent skip (that would inflate J&F).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pipelines.evaluation.png_masks import MissingPredictionError, read_png_masks
from pipelines.io.table_io import open_dataset, partition_filter
from schemas import EXPRESSION_TYPES, VIDEO_SCORES_SCHEMA
from vrshq import metrics
from vrshq.data import (
    DataError,
    VideoRecord,
    decode_rle,
    load_expression_masks,
    load_foreground_dict,
    load_foreground_masks,
    load_mask_dict,
)

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "VideoScores",
    "VideoScorer",
    "iter_video_masks",
    "masks_from_table",
    "score_video_masks",
    "score_with_ray",
]

_LOG = logging.getLogger(__name__)
_KEY_COLUMNS = ("dataset", "split", "video_id")


# --------------------------------------------------------------------------- per-video scoring


@dataclasses.dataclass(frozen=True)
class VideoScores:
    """Result of scoring one video.

    Attributes:
        scores: one dict per scored expression with the SCORES_SCHEMA columns except the run fields
            (``run_id``, ``model``, ``code_version``), which the caller adds.
        errors: one dict per failed expression (or per video when ``exp_id`` is None) with the
            ERRORS_SCHEMA columns except the run fields.
    """

    scores: list[dict[str, Any]]
    errors: list[dict[str, Any]]


def _error_row(video: VideoRecord, exp_id: str | None, stage: str, exc: BaseException) -> dict[str, Any]:
    return {
        "dataset": video.dataset,
        "split": video.split,
        "video_id": video.video_id,
        "exp_id": exp_id,
        "stage": stage,
        "error_type": type(exc).__name__,
        "message": str(exc) or repr(exc),
        "uri": getattr(exc, "uri", None),
    }


def score_video_masks(
    video: VideoRecord,
    predictions: Mapping[str, np.ndarray | BaseException],
    *,
    mask_dict: Mapping[str, Any] | None = None,
    foreground: np.ndarray | None = None,
    keyframes: Mapping[str, int | None] | None = None,
    seconds: Mapping[str, float | None] | None = None,
    storage_options: dict[str, Any] | None = None,
    frame_scores: Mapping[str, metrics.FrameScores] | None = None,
) -> VideoScores:
    """Score every expression of ``video`` against its ground truth.

    Args:
        video: the video and its expressions (``vrshq.data.VideoRecord``).
        predictions: ``exp_id -> bool (T, H, W)`` predicted masks over all ``video.frame_names``;
            a value may be an exception (reading that prediction failed), which becomes an error row.
        mask_dict: the split's parsed ``mask_dict.json`` (load it once per worker); None reads
            ``video.mask_dict_uri``. Videos with neither get score rows with null J/F/A/R.
        foreground: bool (T, H, W) foreground of the video from ``mask_dict_foreground.json``, or
            None (then robustness R is null, not a number).
        keyframes: ``exp_id -> TKS keyframe index`` when known (model output), else null.
        seconds: ``exp_id -> model seconds`` when known.
        frame_scores: ``exp_id -> vrshq.metrics.FrameScores`` of expressions already scored against
            their ground truth where the masks were made (the inference actor's device); these need
            neither a prediction nor the ground truth here, and their rows hold the same numbers as
            scoring the masks here would give. Ignored for videos without ground truth.

    Returns:
        :class:`VideoScores`. An expression of ``video`` without a prediction is an error row
        (stage ``score``, ``MissingPredictionError``); a prediction for an expression the video
        does not have is an error row too.
    """
    has_gt = mask_dict is not None or video.mask_dict_uri is not None
    scored_elsewhere = dict(frame_scores or {}) if has_gt else {}
    scores: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    if mask_dict is None and video.mask_dict_uri is not None and any(
            e.exp_id not in scored_elsewhere for e in video.expressions):
        try:  # once per video, not once per expression
            mask_dict = load_mask_dict(video.mask_dict_uri, storage_options=storage_options)
        except (DataError, OSError, ValueError) as exc:
            return VideoScores([], [_error_row(video, e.exp_id, "annotation", exc) for e in video.expressions])
    known = {e.exp_id for e in video.expressions}
    for exp_id in sorted((set(predictions) | set(scored_elsewhere)) - known):
        errors.append(_error_row(video, exp_id, "score", ValueError(
            f"prediction for expression {exp_id!r} which video {video.video_id!r} does not have "
            f"(its expressions: {sorted(known)})")))
    for expression in video.expressions:
        exp_id = expression.exp_id
        pred = predictions.get(exp_id)
        done = scored_elsewhere.get(exp_id)
        if done is not None:
            pred = np.broadcast_to(np.False_, done.shape)  # a view of its shape only: the masks were scored already
        if pred is None:
            errors.append(_error_row(video, exp_id, "score", MissingPredictionError(
                f"no predicted masks for video {video.video_id!r} expression {exp_id!r}", uri=None)))
            continue
        if isinstance(pred, BaseException):
            stage = "read" if isinstance(pred, (OSError, MissingPredictionError)) else "decode"
            errors.append(_error_row(video, exp_id, stage, pred))
            continue
        num_frames = len(video.frame_names)
        if pred.ndim != 3 or pred.shape[0] != num_frames:
            errors.append(_error_row(video, exp_id, "score", ValueError(
                f"prediction for video {video.video_id!r} expression {exp_id!r} has shape "
                f"{pred.shape}, expected ({num_frames}, H, W): one mask per frame")))
            continue
        row: dict[str, Any] = {
            "dataset": video.dataset,
            "split": video.split,
            "video_id": video.video_id,
            "exp_id": exp_id,
            "expression": expression.text,
            "type_id": int(expression.type_id),
            "expression_type": EXPRESSION_TYPES.get(int(expression.type_id), str(expression.type_id)),
            "num_frames": num_frames,
            "num_objects": len(set(expression.obj_ids)),
            "j": None, "f": None, "jf": None, "accuracy": None, "robustness": None,
            "keyframe_index": (keyframes or {}).get(exp_id),
            "mean_target_area": None,
            "seconds": (seconds or {}).get(exp_id),
        }
        if done is not None:
            row.update(_metrics_from_frames(done, foreground))
        elif has_gt:
            try:
                gt = load_expression_masks(video, expression, mask_dict=mask_dict, storage_options=storage_options)
            except (DataError, OSError, ValueError, KeyError) as exc:
                errors.append(_error_row(video, exp_id, "annotation", exc))
                continue
            if gt.shape != pred.shape:
                errors.append(_error_row(video, exp_id, "score", ValueError(
                    f"prediction for video {video.video_id!r} expression {exp_id!r} has shape "
                    f"{pred.shape} but the ground truth has {gt.shape}")))
                continue
            pred = pred.astype(bool, copy=False)
            row.update(_expression_metrics(gt, pred, foreground))
        scores.append(row)
    return VideoScores(scores=scores, errors=errors)


def _expression_metrics(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray | None) -> dict[str, Any]:
    """J, F, J&F, A, R (``vrshq.metrics.score_expression``) and the mean target area of one expression."""
    if foreground is not None and foreground.shape != gt.shape:
        foreground = None  # a foreground of another size cannot be this video's: R stays null
    result = metrics.score_expression(gt, pred, foreground=foreground)
    return {
        "j": float(result.j), "f": float(result.f), "jf": float(result.jf),
        "accuracy": float(result.accuracy),
        "robustness": None if result.robustness is None else float(result.robustness),
        "mean_target_area": float(gt.mean()),
    }


def _metrics_from_frames(frames: metrics.FrameScores, foreground: np.ndarray | None) -> dict[str, Any]:
    """:func:`_expression_metrics` of an expression scored elsewhere (same numbers, same rules)."""
    if foreground is not None and foreground.shape != frames.shape:
        foreground = None  # a foreground of another size cannot be this video's: R stays null
    result = metrics.score_from_frames(
        frames, foreground_pixels=None if foreground is None else int(np.count_nonzero(foreground)))
    return {
        "j": float(result.j), "f": float(result.f), "jf": float(result.jf),
        "accuracy": float(result.accuracy),
        "robustness": None if result.robustness is None else float(result.robustness),
        "mean_target_area": frames.mean_target_area,
    }


# --------------------------------------------------------------------------- masks table -> arrays


def masks_from_table(
    table: pa.Table, video: VideoRecord
) -> tuple[dict[str, np.ndarray | BaseException], dict[str, int | None]]:
    """Decode one video's rows of the masks table into per-expression (T, H, W) arrays.

    Returns:
        ``(predictions, keyframes)``: ``exp_id -> masks`` (or the exception explaining why that
        expression's rows are unusable: missing/duplicate frames, frame names that do not match
        the video, undecodable RLE) and ``exp_id -> keyframe index`` (None when no row is flagged).
    """
    columns = table.select(["exp_id", "frame_index", "frame_name", "height", "width", "rle_counts",
                            "is_keyframe"]).to_pydict()
    by_exp: dict[str, list[int]] = {}
    for i, exp_id in enumerate(columns["exp_id"]):
        by_exp.setdefault(exp_id, []).append(i)
    frame_names = video.frame_names
    predictions: dict[str, np.ndarray | BaseException] = {}
    keyframes: dict[str, int | None] = {}
    for exp_id, rows in by_exp.items():
        rows.sort(key=lambda i: columns["frame_index"][i])
        indices = [columns["frame_index"][i] for i in rows]
        where = f"masks table, video {video.video_id!r} expression {exp_id!r}"
        if len(set(indices)) != len(indices):
            dupes = sorted({x for x in indices if indices.count(x) > 1})
            predictions[exp_id] = ValueError(f"{where}: duplicate rows for frame_index {dupes[:5]}")
            continue
        if indices != list(range(len(frame_names))):
            missing = sorted(set(range(len(frame_names))) - set(indices))
            extra = sorted(set(indices) - set(range(len(frame_names))))
            predictions[exp_id] = MissingPredictionError(
                f"{where}: has {len(indices)} of {len(frame_names)} frames"
                + (f"; missing frame_index {missing[:5]}" if missing else "")
                + (f"; frame_index out of range {extra[:5]}" if extra else ""), uri=None)
            continue
        names = [columns["frame_name"][i] for i in rows]
        if tuple(names) != tuple(frame_names):
            bad = next(k for k, (a, b) in enumerate(zip(names, frame_names)) if a != b)
            predictions[exp_id] = ValueError(
                f"{where}: frame_index {bad} is named {names[bad]!r} but the dataset's frame is "
                f"{frame_names[bad]!r}")
            continue
        sizes = {(columns["height"][i], columns["width"][i]) for i in rows}
        if len(sizes) != 1:
            predictions[exp_id] = ValueError(f"{where}: frames have different sizes {sorted(sizes)}")
            continue
        ((height, width),) = sizes
        try:
            # vrshq.data.decode_rle checks that the counts cover exactly height*width pixels:
            # pycocotools alone decodes a wrong-size or truncated RLE into garbage without a word.
            predictions[exp_id] = np.stack([
                decode_rle({"size": [height, width], "counts": columns["rle_counts"][i]}, height=height, width=width,
                           uri="masks table", where=f"{where}, frame_index {columns['frame_index'][i]}")
                for i in rows])
        except DataError as exc:
            predictions[exp_id] = ValueError(f"cannot decode RLE: {exc.reason}")
            continue
        flagged = [columns["frame_index"][i] for i in rows if columns["is_keyframe"][i]]
        keyframes[exp_id] = int(flagged[0]) if len(flagged) == 1 else None
    return predictions, keyframes


def iter_video_masks(
    masks_uri: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    storage_options: dict[str, Any] | None = None,
    rows_per_batch: int = 4096,
) -> Iterator[tuple[tuple[str, str, str], pa.Table]]:
    """Stream the masks dataset one video at a time: yields ``((dataset, split, video_id), rows)``.

    pyarrow prunes the partitions and streams the rows; DuckDB sorts them by (dataset, split, video_id, exp_id,
    frame_index), spilling to disk when needed, so memory holds one video's rows however large the table is.
    DuckDB gets a stream of batches, not the dataset: given a dataset, DuckDB 2.x starts its scan with
    ``Scanner.to_reader``, which holds the GIL while the scan's fsspec-backed reads wait for it (a deadlock,
    seen in CI); ``Dataset.to_batches`` releases the GIL while it scans.
    """
    import tempfile

    import duckdb

    arrow_dataset = open_dataset(masks_uri, storage_options=storage_options)
    batches = arrow_dataset.to_batches(filter=partition_filter(dataset, split), batch_size=rows_per_batch)
    spill = tempfile.TemporaryDirectory(prefix="vrshq-duckdb-")
    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory = '{spill.name}'")
        con.register("masks", pa.RecordBatchReader.from_batches(arrow_dataset.schema, batches))
        relation = con.sql("SELECT * FROM masks ORDER BY dataset, split, video_id, exp_id, frame_index")
        # duckdb 2.x names it to_arrow_reader; 1.x fetch_record_batch. Both stream.
        reader = (relation.to_arrow_reader(rows_per_batch) if hasattr(relation, "to_arrow_reader")
                  else relation.fetch_record_batch(rows_per_batch))
        pending: list[pa.RecordBatch] = []
        key: tuple[str, str, str] | None = None
        for batch in reader:
            if batch.num_rows == 0:
                continue
            keys = list(zip(*(batch.column(c).to_pylist() for c in _KEY_COLUMNS)))
            start = 0
            for i in range(1, len(keys) + 1):
                if i == len(keys) or keys[i] != keys[start]:
                    if key is not None and keys[start] != key:
                        yield key, pa.Table.from_batches(pending)
                        pending = []
                    key = keys[start]
                    pending.append(batch.slice(start, i - start))
                    start = i
        if key is not None and pending:
            yield key, pa.Table.from_batches(pending)
    finally:
        con.close()
        spill.cleanup()


# --------------------------------------------------------------------------- split-level scorer


class VideoScorer:
    """Scores videos of one split; loads the split's ground truth once.

    Args:
        records: the split's videos (from ``vrshq.data.read_revos``/``read_mevis``).
        storage_options: fsspec options for the annotation files.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        storage_options: dict[str, Any] | None = None,
    ):
        self.records = {r.video_id: r for r in records}
        self.storage_options = storage_options
        self._mask_dicts: dict[str, Any] = {}
        self._foreground_dicts: dict[str, Any] = {}

    def _mask_dict(self, video: VideoRecord) -> Mapping[str, Any] | None:
        uri = video.mask_dict_uri
        if uri is None:
            return None
        if uri not in self._mask_dicts:
            self._mask_dicts[uri] = load_mask_dict(uri, storage_options=self.storage_options)
        return self._mask_dicts[uri]

    def _foreground(self, video: VideoRecord) -> np.ndarray | None:
        uri = video.foreground_uri
        if uri is None:
            return None
        if uri not in self._foreground_dicts:
            self._foreground_dicts[uri] = load_foreground_dict(uri, storage_options=self.storage_options)
        masks, _ = load_foreground_masks(video, foreground_dict=self._foreground_dicts[uri],
                                         storage_options=self.storage_options)
        return masks

    def score(
        self,
        video: VideoRecord,
        predictions: Mapping[str, np.ndarray | BaseException],
        *,
        keyframes: Mapping[str, int | None] | None = None,
    ) -> VideoScores:
        """Score one video, turning ground-truth read failures into error rows."""
        try:
            mask_dict = self._mask_dict(video)
        except (DataError, OSError, ValueError) as exc:
            return VideoScores([], [_error_row(video, None, "annotation", exc)])
        try:
            foreground = self._foreground(video)
        except (DataError, OSError, ValueError) as exc:
            _LOG.warning("video %s: foreground unreadable, robustness left null: %s", video.video_id, exc)
            foreground = None
        return score_video_masks(video, predictions, mask_dict=mask_dict, foreground=foreground,
                                 keyframes=keyframes, storage_options=self.storage_options)

    def score_table(self, video_id: str, rows: pa.Table) -> VideoScores:
        """Score one video from its rows of the masks table."""
        video = self.records.get(video_id)
        if video is None:
            return VideoScores([], [{
                "dataset": rows.column("dataset")[0].as_py(), "split": rows.column("split")[0].as_py(),
                "video_id": video_id, "exp_id": None, "stage": "score", "error_type": "KeyError",
                "message": f"masks table has video {video_id!r} which the dataset does not have",
                "uri": None}])
        predictions, keyframes = masks_from_table(rows, video)
        return self.score(video, predictions, keyframes=keyframes)

    def score_png(self, video_id: str, png_root: str) -> VideoScores:
        """Score one video from PNGs ``<png_root>/<video>/<exp_id>/<frame>.png``."""
        video = self.records[video_id]
        predictions: dict[str, np.ndarray | BaseException] = {}
        for expression in video.expressions:
            try:
                predictions[expression.exp_id] = read_png_masks(
                    png_root, video.video_id, expression.exp_id, video.frame_names,
                    storage_options=self.storage_options)
            except (MissingPredictionError, OSError, ValueError) as exc:
                predictions[expression.exp_id] = exc
        return self.score(video, predictions)

    def missing_video(self, video_id: str) -> VideoScores:
        """Error rows for a dataset video with no predictions at all (one per expression)."""
        return self.score(self.records[video_id], {})


# --------------------------------------------------------------------------- Ray Data version


class _ScoreTableGroups:
    """Ray Data UDF: one group = one video's masks rows -> serialized score/error rows."""

    def __init__(self, records: Sequence[VideoRecord], storage_options: dict[str, Any] | None):
        self.scorer = VideoScorer(records, storage_options=storage_options)

    def __call__(self, rows: pa.Table) -> pa.Table:
        video_id = rows.column("video_id")[0].as_py()
        model = rows.column("model")[0].as_py() if "model" in rows.column_names else None
        return _rows_table(video_id, self.scorer.score_table(video_id, rows), model=model)


class _ScorePngVideos:
    """Ray Data UDF: a batch of video ids -> serialized score/error rows read from PNGs."""

    def __init__(self, records: Sequence[VideoRecord], png_root: str, storage_options: dict[str, Any] | None):
        self.scorer = VideoScorer(records, storage_options=storage_options)
        self.png_root = png_root

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [_rows_table(v, self.scorer.score_png(v, self.png_root))
                  for v in batch.column("video_id").to_pylist()]
        return pa.concat_tables(tables) if tables else _rows_table("", VideoScores([], []))


def _rows_table(video_id: str, result: VideoScores, *, model: str | None = None) -> pa.Table:
    """Score and error rows of one video as a ``schemas.VIDEO_SCORES_SCHEMA`` table (kind, video_id, model, row
    as JSON).

    The two outputs have different schemas; carrying them as JSON through one Ray dataset avoids
    running the pipeline twice, and the rows are small (one per expression). ``model`` is the
    masks' model column (provenance), None for PNG input.
    """
    import json

    kinds = ["score"] * len(result.scores) + ["error"] * len(result.errors)
    payload = [json.dumps(r) for r in (*result.scores, *result.errors)]
    return pa.table({"kind": kinds, "video_id": [video_id] * len(kinds), "model": [model] * len(kinds),
                     "row": payload}, schema=VIDEO_SCORES_SCHEMA)


def score_with_ray(
    records: Sequence[VideoRecord],
    *,
    masks_uri: str | None = None,
    png_root: str | None = None,
    storage_options: dict[str, Any] | None = None,
    concurrency: int = 2,
    num_cpus: float = 1.0,
) -> Iterator[tuple[str, VideoScores, dict[str, str]]]:
    """Score a split with Ray Data, streaming; yields ``(video_id, VideoScores, provenance)``.

    ``provenance`` is ``{"model": <the masks' model column>}`` for masks-table input, else ``{}``.

    Exactly one of ``masks_uri`` (masks Parquet dataset) or ``png_root`` (PNG folder) is given.
    Videos of ``records`` absent from the masks table are *not* yielded here: the caller reports
    them (it sees which video ids came back).
    """
    import json

    import ray

    if (masks_uri is None) == (png_root is None):
        raise ValueError("score_with_ray needs exactly one of masks_uri or png_root")
    if not records:
        return
    first = records[0]
    udf_kwargs: dict[str, Any] = {"records": list(records), "storage_options": storage_options}
    ds: ray.data.Dataset
    if masks_uri is not None:
        from pipelines.io.table_io import dataset_files, ray_filesystem

        files = dataset_files(masks_uri, dataset=first.dataset, split=first.split, storage_options=storage_options)
        if not files:
            return
        # The listed files of this split only (no in-flight hidden files); Ray's default hive
        # partitioning restores the dataset/split columns from their paths.
        ds = ray.data.read_parquet(files, filesystem=ray_filesystem(masks_uri, storage_options))
        # One shuffle partition per ~len(records)/50 videos keeps blocks small on big splits
        # without 200 empty partitions on small ones.
        out = ds.groupby("video_id", num_partitions=max(1, min(200, len(records) // 50))).map_groups(
            _ScoreTableGroups, fn_constructor_kwargs=udf_kwargs, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus)
    else:
        ds = ray.data.from_items([{"video_id": r.video_id} for r in records])
        out = ds.map_batches(
            _ScorePngVideos, fn_constructor_kwargs={**udf_kwargs, "png_root": png_root},
            batch_format="pyarrow", batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_cpus=num_cpus)
    current: str | None = None
    provenance: dict[str, str] = {}
    scores: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        columns = (batch.column(c).to_pylist() for c in ("kind", "video_id", "model", "row"))
        for kind, video_id, model, row in zip(*columns):
            if current is not None and video_id != current:
                yield current, VideoScores(scores, errors), provenance
                scores, errors = [], []
            current = video_id
            provenance = {"model": model} if model is not None else {}
            (scores if kind == "score" else errors).append(json.loads(row))
    if current is not None:
        yield current, VideoScores(scores, errors), provenance
