"""Checks of the input that need no model: which records can run, and an ``errors/`` row for each that cannot.

They run on the driver before Ray starts (``jobs.infer``), so that

* a bad record (empty text, unknown type, malformed ids, a video with no frames or bad size fields,
  an id or file name that would leave its root) costs an ``errors/`` row, never the whole job;
* an annotation file that cannot be parsed at all stops the run up front (exit 2), and an
  expression whose ground truth is missing from it (unknown ``anno_id``, a mask list of the wrong
  length) gets its error row before the model pass, instead of a model pass whose masks are then
  thrown away.

Rows are ERRORS_SCHEMA dicts without the run fields (``run_id``, ``model``, ``code_version``), stage
``read`` for records and ``annotation`` for ground truth. A problem of a whole video is written
once per expression it costs, each naming its ``exp_id``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vrshq.data import DataError, VideoRecord
from vrshq.data.paths import path_part_problem, uri_problem
from vrshq.data.readers import MAX_FRAME_SIDE, RecordProblem

__all__ = ["AnnotationFileError", "check_annotations", "manifest_video_problems", "problem_rows", "video_error_rows"]


class AnnotationFileError(DataError):
    """An annotation file (``mask_dict.json``, ``mask_dict_foreground.json``) that cannot be parsed at all."""


def video_error_rows(dataset: str, split: str, video_id: str, exp_ids: Sequence[str | None], *, stage: str,
                     error_type: str, message: str, uri: str | None) -> list[dict[str, Any]]:
    """One ERRORS row per expression a video-level problem costs (one row with a null exp_id if none is known)."""
    names = list(dict.fromkeys(exp_ids)) or [None]
    return [{"dataset": dataset, "split": split, "video_id": video_id, "exp_id": exp_id, "stage": stage,
             "error_type": error_type, "message": message, "uri": uri} for exp_id in names]


def problem_rows(problems: Iterable[RecordProblem], *, dataset: str, split: str) -> list[dict[str, Any]]:
    """ERRORS rows (stage ``read``) of the records a reader left out, one per expression they cost."""
    rows: list[dict[str, Any]] = []
    for problem in problems:
        rows += video_error_rows(dataset, split, problem.video_id, problem.exp_ids, stage="read",
                                 error_type=problem.error_type, message=f"{problem.uri}: {problem.reason}",
                                 uri=problem.uri)
    return rows


def manifest_video_problems(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(error_type, message)`` for each problem of the video fields of a manifest row (empty: fine).

    The URIs of a manifest are whole and may be absolute, but may not hold ``.``/``..`` segments;
    frame names are resolved under ``frames_uri`` and must stay there.
    """
    where = f"video {row.get('video_id')!r}"
    found: list[tuple[str, str]] = []
    if not row.get("video_id"):
        found.append(("InvalidRecord", "the video id is empty"))
    names = row.get("frame_names") or []
    if not names:
        found.append(("InvalidRecord", f"{where} has no frames (frame_names is empty)"))
    elif len(set(names)) != len(names):
        found.append(("InvalidRecord", f"{where}: frame_names lists a frame more than once"))
    bad = next(((n, why) for n in names if (why := path_part_problem(n)) is not None), None)
    if bad is not None:
        found.append(("PathEscapeError", f"{where}: frame name {bad[0]!r} {bad[1]} (frames are resolved under "
                                         "frames_uri)"))
    for key in ("frames_uri", "video_uri", "annotation_uri", "foreground_uri"):
        value = row.get(key)
        if value is not None and (why := uri_problem(value)) is not None:
            found.append(("PathEscapeError", f"{where}: {key} {value!r:.200} {why}"))
    for key in ("height", "width"):
        value = row.get(key)
        if value is not None and not 0 < value <= MAX_FRAME_SIDE:
            found.append(("InvalidRecord", f"{where}: {key} must be in 1..{MAX_FRAME_SIDE}, got {value!r}"))
    return found


def _summarise_mask_dict(data: Mapping[str, Any]) -> dict[str, int | None]:
    """anno_id -> number of per-frame masks (None when the entry is not a list): all the checks need."""
    return {str(key): (len(value) if isinstance(value, list) else None) for key, value in data.items()}


def check_annotations(
    records: Sequence[VideoRecord], *, storage_options: Mapping[str, Any] | None = None,
    unreadable_files: str = "fail",
) -> tuple[list[VideoRecord], list[dict[str, Any]]]:
    """Parse each annotation file of ``records`` once; drop the expressions whose ground truth is missing.

    Args:
        records: the videos to check.
        storage_options: fsspec options of the files.
        unreadable_files: ``"fail"``: an annotation file that is missing, not JSON or not an object
            raises (a dataset split has one for all of its videos: nothing could be scored);
            ``"rows"``: the expressions that need it get error rows instead (a manifest names a
            file per video: the other videos still run).

    Returns:
        ``(records, rows)``: the records without the expressions that cannot be scored, and one
        ERRORS row (stage ``annotation``) for each such expression.

    Raises:
        AnnotationFileError: with ``unreadable_files="fail"``, naming every unreadable file.
    """
    from vrshq.data import load_foreground_dict, load_mask_dict

    if unreadable_files not in ("fail", "rows"):
        raise ValueError(f"unreadable_files must be 'fail' or 'rows', got {unreadable_files!r}")
    summaries: dict[str, dict[str, int | None]] = {}
    unreadable: dict[str, str] = {}
    for uri in sorted({r.mask_dict_uri for r in records if r.mask_dict_uri is not None}):
        try:
            summaries[uri] = _summarise_mask_dict(load_mask_dict(uri, storage_options=storage_options))
        except DataError as exc:
            unreadable[uri] = str(exc)
    for uri in sorted({r.foreground_uri for r in records if r.foreground_uri is not None}):
        try:
            load_foreground_dict(uri, storage_options=storage_options)
        except DataError as exc:
            unreadable[uri] = str(exc)
    if unreadable and unreadable_files == "fail":
        first = next(iter(unreadable))
        raise AnnotationFileError(first, "annotation file(s) cannot be parsed: " + "; ".join(unreadable.values()))
    kept: list[VideoRecord] = []
    rows: list[dict[str, Any]] = []
    for video in records:
        broken = [unreadable[u] for u in (video.mask_dict_uri, video.foreground_uri) if u in unreadable]
        if broken:  # its ground truth cannot be read: none of its expressions could be scored
            uri = video.mask_dict_uri if video.mask_dict_uri in unreadable else video.foreground_uri
            rows += video_error_rows(video.dataset, video.split, video.video_id, [e.exp_id for e in video.expressions],
                                     stage="annotation", error_type="DataError", message="; ".join(broken), uri=uri)
            continue
        summary = summaries.get(video.mask_dict_uri) if video.mask_dict_uri is not None else None
        if summary is None:
            kept.append(video)
            continue
        good = []
        for expression in video.expressions:
            problem = None
            for anno_id in expression.anno_ids:
                length = summary.get(str(anno_id), -1)
                if length == -1:
                    problem = f"anno_id {anno_id} is not in the mask dict"
                elif length != video.num_frames:
                    got = "not a list" if length is None else f"{length} per-frame masks"
                    problem = f"anno_id {anno_id} has {got}, expected {video.num_frames} (one per frame)"
                if problem:
                    break
            if problem is None:
                good.append(expression)
                continue
            rows += video_error_rows(
                video.dataset, video.split, video.video_id, [expression.exp_id], stage="annotation",
                error_type="DataError", uri=video.mask_dict_uri,
                message=f"{video.mask_dict_uri}: video {video.video_id!r}, expression {expression.exp_id!r}: "
                        f"{problem}; its masks would not be scored, so it is not segmented")
        kept.append(dataclasses.replace(video, expressions=tuple(good)) if len(good) != len(video.expressions)
                    else video)
    return kept, rows
