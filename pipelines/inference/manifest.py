"""Records <-> manifest table (``schemas.MANIFEST_SCHEMA``: one row per (video, expression)).

The manifest is what a Ray Data job reads: it is built once from a dataset's meta files
(:func:`vrshq.data.read_revos` / :func:`vrshq.data.read_mevis`), written as Parquet, and turned
back into :class:`~vrshq.data.VideoRecord` objects, grouped by video, by the workers. Videos
without expressions have no rows and do not survive the round trip.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.io.storage import filesystem_for
from schemas import EXPRESSION_TYPES, MANIFEST_SCHEMA, validate_table
from vrshq.data import ExpressionRecord, VideoRecord

__all__ = [
    "ManifestError",
    "records_to_manifest",
    "manifest_to_records",
    "read_manifest",
    "write_manifest",
]

_VIDEO_COLUMNS = ("video_uri", "frames_uri", "frame_names", "height", "width", "annotation_uri", "foreground_uri")
_MAX_LISTED = 20


class ManifestError(ValueError):
    """A manifest whose rows cannot be turned into records (duplicates, inconsistent video rows)."""


def records_to_manifest(records: Iterable[VideoRecord]) -> pa.Table:
    """One row per (video, expression), validated against ``MANIFEST_SCHEMA``.

    Raises:
        ManifestError: the same (dataset, split, video_id, exp_id) twice (the message lists them).
    """
    rows: dict[str, list] = {name: [] for name in MANIFEST_SCHEMA.names}
    for video in records:
        for expression in video.expressions:
            values = {
                "dataset": video.dataset,
                "split": video.split,
                "video_id": video.video_id,
                "video_uri": video.video_uri,
                "frames_uri": video.frames_uri,
                "frame_names": list(video.frame_names),
                "height": video.height,
                "width": video.width,
                "exp_id": expression.exp_id,
                "expression": expression.text,
                "expression_type": EXPRESSION_TYPES[expression.type_id],
                "type_id": expression.type_id,
                "obj_ids": list(expression.obj_ids),
                "anno_ids": list(expression.anno_ids),
                "annotation_uri": video.mask_dict_uri,
                "foreground_uri": video.foreground_uri,
            }
            for name in MANIFEST_SCHEMA.names:
                rows[name].append(values[name])
    table = pa.Table.from_pydict(rows, schema=MANIFEST_SCHEMA)
    _check_duplicates(table, what="records")
    return validate_table(table, MANIFEST_SCHEMA, what="manifest built from records")


def manifest_to_records(table: pa.Table, *, what: str = "manifest") -> list[VideoRecord]:
    """Group manifest rows by (dataset, split, video_id) into records, in first-appearance order.

    Raises:
        SchemaValidationError: the table does not match ``MANIFEST_SCHEMA``.
        ManifestError: duplicate (video, exp_id) rows, or rows of one video that disagree on a
            video-level column (frames, URIs, size), or an expression_type that contradicts type_id.
    """
    table = validate_table(table, MANIFEST_SCHEMA, what=what)
    _check_duplicates(table, what=what)
    videos: dict[tuple[str, str, str], dict[str, Any]] = {}
    problems: list[str] = []
    for row in table.to_pylist():
        key = (row["dataset"], row["split"], row["video_id"])
        if EXPRESSION_TYPES.get(row["type_id"]) != row["expression_type"]:
            problems.append(
                f"{'/'.join(key)} exp {row['exp_id']!r}: expression_type {row['expression_type']!r} "
                f"does not match type_id {row['type_id']}"
            )
        video = videos.get(key)
        if video is None:
            videos[key] = video = {name: row[name] for name in _VIDEO_COLUMNS}
            video["expressions"] = []
        else:
            for name in _VIDEO_COLUMNS:
                if video[name] != row[name]:
                    problems.append(f"{'/'.join(key)}: rows disagree on {name!r} (exp {row['exp_id']!r})")
        try:
            video["expressions"].append(
                ExpressionRecord(
                    exp_id=row["exp_id"], text=row["expression"], obj_ids=tuple(row["obj_ids"]),
                    anno_ids=tuple(row["anno_ids"]), type_id=int(row["type_id"]),
                )
            )
        except (TypeError, ValueError) as exc:
            problems.append(f"{'/'.join(key)}: {exc}")
    if problems:
        raise ManifestError(f"{what}: {len(problems)} problem(s): " + "; ".join(problems[:_MAX_LISTED]))
    return [
        VideoRecord(
            dataset=dataset, split=split, video_id=video_id, frame_names=tuple(v["frame_names"]),
            frames_uri=v["frames_uri"], video_uri=v["video_uri"], height=v["height"], width=v["width"],
            expressions=tuple(v["expressions"]), mask_dict_uri=v["annotation_uri"], foreground_uri=v["foreground_uri"],
        )
        for (dataset, split, video_id), v in videos.items()
    ]


def read_manifest(
    uri: str,
    *,
    filesystem: fsspec.AbstractFileSystem | pa.fs.FileSystem | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Read a manifest Parquet file (or folder of files) from any URI and validate it.

    Args:
        uri: ``.parquet`` file or folder; local path or e.g. ``s3://bucket/manifest.parquet``.
        filesystem: an fsspec or pyarrow filesystem (then ``uri`` may omit the protocol).
        storage_options: fsspec options, used when ``filesystem`` is None.

    Raises:
        SchemaValidationError: the table does not match ``MANIFEST_SCHEMA``.
        ManifestError: duplicate (video, exp_id) rows.
        FileNotFoundError: nothing at ``uri``.
    """
    if filesystem is None:
        filesystem, path = filesystem_for(uri, storage_options)
    else:
        # pyarrow filesystems take paths without a scheme ("bucket/key")
        path = filesystem._strip_protocol(uri) if isinstance(filesystem, fsspec.AbstractFileSystem) else uri.split("://", 1)[-1]
    table = pq.read_table(path, filesystem=filesystem, partitioning=None)
    table = validate_table(table, MANIFEST_SCHEMA, what=uri)
    _check_duplicates(table, what=uri)
    return table


def write_manifest(
    records_or_table: Iterable[VideoRecord] | pa.Table,
    uri: str,
    *,
    filesystem: fsspec.AbstractFileSystem | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Validate and write a manifest as one Parquet file; returns the table written."""
    table = records_or_table if isinstance(records_or_table, pa.Table) else records_to_manifest(records_or_table)
    table = validate_table(table, MANIFEST_SCHEMA, what=uri)
    _check_duplicates(table, what=uri)
    if filesystem is None:
        filesystem, path = filesystem_for(uri, storage_options)
    else:
        path = filesystem._strip_protocol(uri)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        filesystem.makedirs(parent, exist_ok=True)
    with filesystem.open(path, "wb") as handle:
        pq.write_table(table, handle)
    return table


def _check_duplicates(table: pa.Table, *, what: str) -> None:
    keys = table.select(["dataset", "split", "video_id", "exp_id"])
    counts = keys.group_by(keys.column_names).aggregate([([], "count_all")])
    duplicated = counts.filter(pc.greater(counts["count_all"], 1)).to_pylist()
    if duplicated:
        listed = [f"{d['dataset']}/{d['split']}/{d['video_id']} exp {d['exp_id']!r} (x{d['count_all']})" for d in duplicated]
        more = f" and {len(listed) - _MAX_LISTED} more" if len(listed) > _MAX_LISTED else ""
        raise ManifestError(
            f"{what}: {len(duplicated)} duplicate (video, exp_id) row(s): {', '.join(listed[:_MAX_LISTED])}{more}"
        )
