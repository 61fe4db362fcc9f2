"""Scores -> the paper's table, breakdowns, plots and a Markdown + HTML report (what ``jobs.report`` runs).

:func:`build_report` reads the scores table (and errors, when present) of one (dataset, split) and writes
``report.md``, ``report.html``, ``summary.json``, ``per_video.csv``, ``breakdown_<name>.csv``,
``distributions.png``, ``breakdowns.png``, the TKS keyframe analysis (with ground truth) and the overlays to
``ReportConfig.out``. The tables and plots themselves come from :mod:`pipelines.evaluation.report`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.inference.config import DatasetConfig, read_dataset
from vrshq.validation import ConfigError, range_problems, Validated, required_problems

__all__ = ["ReportConfig", "build_report"]

_LOG = logging.getLogger("jobs.report")
_VIDEO_CHUNK = 32  # frames decoded at a time for --overlay-video


@dataclasses.dataclass(frozen=True)
class ReportConfig(Validated):
    """Configuration of ``jobs.report``."""

    scores: str = dataclasses.field(default="", metadata={"help": "scores table URI (<run> or <run>/scores)"})
    out: str = dataclasses.field(default="", metadata={"help": "folder URI for the report files"})
    errors: str | None = dataclasses.field(
        default=None, metadata={"help": "errors table URI (default: <run>/errors next to the scores)"})
    partition_dataset: str | None = dataclasses.field(
        default=None, metadata={"help": "dataset partition to report (needed when the table has several)"})
    split: str | None = dataclasses.field(default=None, metadata={"help": "split partition to report"})
    dataset: DatasetConfig | None = dataclasses.field(
        default=None, metadata={"help": "ground truth, for the TKS keyframe analysis and overlays"})
    masks: str | None = dataclasses.field(default=None, metadata={"help": "masks table URI, for overlays"})
    overlay: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "video_id:exp_id to draw (repeatable)"})
    overlay_frames: int = dataclasses.field(default=8, metadata={"help": "frames per overlay grid"})
    overlay_video: bool = dataclasses.field(
        default=False, metadata={"help": "also write overlays/<n>.mp4 over every frame of each --overlay"})
    bins: int = dataclasses.field(default=3, metadata={"help": "quantile bins of the numeric breakdowns"})
    title: str | None = dataclasses.field(default=None, metadata={"help": "report title"})
    storage_options: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"help": "fsspec options as JSON"})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "replace a report already at --out"})

    def problems(self) -> list[str]:
        """Every problem of this config's own fields (``vrshq.validation``)."""
        problems = required_problems(self, scores="scores table URI", out="report folder URI")
        for item in self.overlay:
            if ":" not in item or not item.rsplit(":", 1)[0] or not item.rsplit(":", 1)[1]:
                problems.append(f"overlay={item!r}: expected video_id:exp_id")
        if self.overlay and (self.masks is None or self.dataset is None):
            problems.append("overlay needs --masks and --dataset.* (frames and ground truth)")
        problems += range_problems(self, ints=(("overlay_frames", 1), ("bins", 1)))
        return problems


def _write(cfg: ReportConfig, name: str, data: bytes | str) -> str:
    from pipelines.io.storage import filesystem_for, join_uri, write_bytes_atomic

    uri = join_uri(cfg.out, name)
    fs, path = filesystem_for(uri, cfg.storage_options)
    write_bytes_atomic(fs, path, data.encode() if isinstance(data, str) else data)
    return uri


def _csv(table: pa.Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(["" if v is None else v for v in row.values()])
    return buffer.getvalue()


def _load(cfg: ReportConfig) -> tuple[pa.Table, pa.Table | None, str, str]:
    """Scores (and errors) of the chosen partition; ConfigError listing every problem."""
    from pipelines.io.storage import join_uri
    from pipelines.io.table_io import dataset_files, read_table, uri_exists
    from schemas import ERRORS_SCHEMA, SCORES_SCHEMA

    so = cfg.storage_options
    problems: list[str] = []
    scores_uri, errors_uri = cfg.scores, cfg.errors
    try:
        if uri_exists(join_uri(cfg.scores, "scores"), storage_options=so):
            scores_uri = join_uri(cfg.scores, "scores")
            errors_uri = errors_uri or join_uri(cfg.scores, "errors")
        elif cfg.scores.rstrip("/").endswith("/scores"):  # <run>/scores: errors are its sibling
            errors_uri = errors_uri or cfg.scores.rstrip("/")[: -len("scores")] + "errors"
        files = dataset_files(scores_uri, storage_options=so)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"scores={cfg.scores!r}: unreadable: {exc}") from exc
    if not files:
        raise ConfigError(f"scores={cfg.scores!r}: no Parquet files under {scores_uri}")
    partitions = sorted({tuple(p.split("/")[-3:-1]) for p in files})
    partitions = [(d.split("=", 1)[-1], s.split("=", 1)[-1]) for d, s in partitions]
    dataset = cfg.partition_dataset or (cfg.dataset.name or cfg.dataset.format if cfg.dataset else None)
    split = cfg.split or (cfg.dataset.split if cfg.dataset else None)
    if dataset is None or split is None:
        candidates = [p for p in partitions if dataset in (None, p[0]) and split in (None, p[1])]
        if len(candidates) == 1:
            dataset, split = candidates[0]
        elif not candidates:
            problems.append(f"scores have no partition with dataset={dataset or '*'} split={split or '*'} "
                            f"(present: {partitions})")
    if not problems and (dataset is None or split is None):
        problems.append(f"scores hold partitions {partitions}: choose one with --partition-dataset and --split")
    elif not problems and (dataset, split) not in partitions:
        problems.append(f"scores have no partition dataset={dataset} split={split} (present: {partitions})")
    try:
        if uri_exists(join_uri(cfg.out, "report.md"), storage_options=so) and not cfg.overwrite:
            problems.append(f"out={cfg.out!r} already holds a report; pass --overwrite or choose another folder")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"out={cfg.out!r}: unreadable: {exc}")
    if problems:
        raise ConfigError(problems)
    scores = read_table(scores_uri, SCORES_SCHEMA, dataset=dataset, split=split, storage_options=so)
    errors = None
    if errors_uri and dataset_files(errors_uri, dataset=dataset, split=split, storage_options=so):
        errors = read_table(errors_uri, ERRORS_SCHEMA, dataset=dataset, split=split, storage_options=so)
    return scores, errors, dataset, split


def _keyframe_table(cfg: ReportConfig, scores: pa.Table, records: list[Any]) -> pa.Table:
    """One row per expression with a TKS keyframe: the keyframe vs the largest-target frame."""
    from pipelines.evaluation.report import keyframe_rows
    from vrshq.data import load_expression_masks, load_mask_dict

    by_id = {r.video_id: r for r in records}
    mask_dicts: dict[str, Any] = {}
    rows = []
    wanted = scores.filter(pc.and_(pc.is_valid(scores.column("keyframe_index")),
                                   pc.not_equal(scores.column("type_id"), 2)))
    for item in wanted.select(["video_id", "exp_id", "keyframe_index"]).to_pylist():
        video = by_id.get(item["video_id"])
        if video is None or video.mask_dict_uri is None:
            continue
        if video.mask_dict_uri not in mask_dicts:
            mask_dicts[video.mask_dict_uri] = load_mask_dict(video.mask_dict_uri, storage_options=cfg.storage_options)
        gt = load_expression_masks(video, video.expression(item["exp_id"]), mask_dict=mask_dicts[video.mask_dict_uri],
                                   storage_options=cfg.storage_options)
        areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
        rows.append({**item, **keyframe_rows(int(item["keyframe_index"]), areas)})
    schema = pa.schema([("video_id", pa.string()), ("exp_id", pa.string()), ("keyframe_index", pa.int32()),
                        ("largest_frame", pa.int32()), ("visible", pa.bool_()), ("is_largest", pa.bool_()),
                        ("area_ratio", pa.float64()), ("frame_distance", pa.int32())])
    return pa.Table.from_pylist(rows, schema=schema)


def _overlays(cfg: ReportConfig, records: list[Any], dataset: str, split: str) -> list[tuple[str, str]]:
    from pipelines.evaluation.report import overlay_mp4, plot_overlay_grid
    from pipelines.evaluation.scoring import masks_from_table
    from pipelines.io.storage import join_uri
    from pipelines.io.table_io import open_dataset, uri_exists
    from vrshq.data import load_expression_masks, load_frames

    so = cfg.storage_options
    masks_uri = cfg.masks
    if uri_exists(join_uri(masks_uri, "masks"), storage_options=so):
        masks_uri = join_uri(masks_uri, "masks")
    arrow_dataset = open_dataset(masks_uri, storage_options=so)
    by_id = {r.video_id: r for r in records}
    written = []
    for n, item in enumerate(cfg.overlay):
        video_id, exp_id = item.rsplit(":", 1)
        video = by_id.get(video_id)
        if video is None or exp_id not in {e.exp_id for e in video.expressions}:
            _LOG.error("overlay %s: no such video/expression in the dataset; skipped", item)
            continue
        rows = arrow_dataset.to_table(filter=(pc.field("dataset") == dataset) & (pc.field("split") == split)
                                      & (pc.field("video_id") == video_id) & (pc.field("exp_id") == exp_id))
        predictions, keyframes = masks_from_table(rows, video)
        pred = predictions.get(exp_id)
        if pred is None or isinstance(pred, BaseException):
            _LOG.error("overlay %s: no usable masks (%s); skipped", item, pred)
            continue
        total = video.num_frames
        picks = sorted(set(np.linspace(0, total - 1, min(cfg.overlay_frames, total)).round().astype(int).tolist()))
        keyframe = keyframes.get(exp_id)
        if keyframe is not None and keyframe not in picks:
            picks = sorted([*picks[:-1], keyframe]) if len(picks) >= cfg.overlay_frames else sorted([*picks, keyframe])
        frames = load_frames(video, frame_indices=picks, storage_options=so)
        gt = None
        if video.mask_dict_uri is not None:
            gt = load_expression_masks(video, video.expression(exp_id), frame_indices=picks, storage_options=so)
        text = video.expression(exp_id).text
        png = plot_overlay_grid(frames, pred[picks], gt, frame_indices=picks, frame_names=video.frame_names,
                                keyframe=keyframe, title=f"{video_id} · expression {exp_id}: “{text}”")
        name = f"overlays/{n:03d}.png"
        _write(cfg, name, png)
        written.append((item, name))
        if cfg.overlay_video:
            expression = video.expression(exp_id)

            def chunks(video=video, pred=pred, expression=expression):
                for start in range(0, video.num_frames, _VIDEO_CHUNK):
                    indices = list(range(start, min(start + _VIDEO_CHUNK, video.num_frames)))
                    gt_chunk = None if video.mask_dict_uri is None else load_expression_masks(
                        video, expression, frame_indices=indices, storage_options=so)
                    yield load_frames(video, frame_indices=indices, storage_options=so), pred[indices], gt_chunk

            _write(cfg, f"overlays/{n:03d}.mp4", overlay_mp4(chunks()))
    return written


def build_report(cfg: ReportConfig) -> dict[str, Any]:
    """Read, aggregate, plot and write the report; returns the summary (also ``summary.json``)."""
    import json

    from pipelines.evaluation import report as rep

    scores, errors, dataset, split = _load(cfg)
    title = cfg.title or f"vrshq evaluation: {dataset} / {split}"
    records = read_dataset(cfg.dataset, storage_options=cfg.storage_options) if cfg.dataset else None
    summary = rep.summary_table(scores)
    breakdowns = {name: rep.breakdown(scores, name, bins=cfg.bins) for name in rep.BREAKDOWNS}
    per_video = rep.per_video(scores)
    convention = ("overall = mean of the referring and reasoning numbers (ReVOS), not a pooled mean"
                  if summary["convention"] == "revos" else "overall = mean over all expressions (MeViS/DAVIS)")
    notes = [f"J&F excludes no-target (type 2) expressions; {convention}. A and R are computed on bool "
             "masks (see vrshq/metrics/accuracy_robustness.py), not with the official uint8 arithmetic, which counts "
             "every correctly predicted target pixel as an error in A and wraps around on overlapping targets in R."]
    if summary.get("robustness") is None:
        notes.append("R is missing: the dataset has no mask_dict_foreground.json (or no foreground pixels).")
    sections: dict[str, Any] = {
        "title": title,
        "intro": f"{scores.num_rows} expressions in {len(set(scores.column('video_id').to_pylist()))} videos; "
                 f"{0 if errors is None else errors.num_rows} error rows.",
        "summary": summary, "breakdowns": breakdowns, "per_video": per_video, "notes": notes,
        "errors": errors.select(["video_id", "exp_id", "stage", "error_type", "message"]) if errors else None,
    }
    has_keyframes = scores.column("keyframe_index").null_count < scores.num_rows
    keyframes = None
    if records is not None and has_keyframes:
        keyframes = _keyframe_table(cfg, scores, records)
        sections["keyframes"] = rep.keyframe_summary(keyframes)
        _write(cfg, "keyframes.csv", _csv(keyframes))
        _write(cfg, "keyframes.png", rep.plot_keyframes(keyframes, title="TKS keyframe vs largest-target frame"))
    else:
        sections["keyframes_missing"] = (
            "Not computed: needs scores with keyframe_index (masks written by jobs.infer, which flags the TKS "
            "keyframe) and the ground truth (--dataset.*)." + ("" if has_keyframes else
                                                                " These scores have no keyframe_index."))
    if cfg.overlay:
        sections["overlays"] = _overlays(cfg, records or [], dataset, split)
    _write(cfg, "distributions.png", rep.plot_distributions(scores, title=title))
    _write(cfg, "breakdowns.png", rep.plot_breakdowns(breakdowns, title=f"J&F breakdowns · {dataset}/{split}"))
    _write(cfg, "per_video.csv", _csv(per_video))
    for name, table in breakdowns.items():
        _write(cfg, f"breakdown_{name}.csv", _csv(table))
    _write(cfg, "report.md", rep.render_markdown(sections))
    _write(cfg, "report.html", rep.render_html(sections))
    result = {"dataset": dataset, "split": split, "summary": summary,
              "breakdowns": {k: v.to_pylist() for k, v in breakdowns.items()},
              "keyframes": sections.get("keyframes"), "expressions": scores.num_rows,
              "errors": 0 if errors is None else errors.num_rows}
    _write(cfg, "summary.json", json.dumps(result, indent=2, default=str))
    return result
