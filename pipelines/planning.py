"""Planning a run from a manifest Parquet with Arrow joins, so the driver's cost stays flat.

The driver reads only the four key columns of the manifest and of the scores table (``dataset,
split, video_id, exp_id``: tens of bytes per pair) and decides with vectorised Arrow operations:

* duplicates: a (video, expression) listed twice keeps its first row; the others become error rows;
* done pairs: a left anti-join of the manifest's pairs with the committed scores keys (a pair is
  done when it has a scores row, whether in a fresh part or in a compacted file);
* ``max_videos``: the first N pending videos in manifest order.

What leaves the driver is a sorted ``int64`` array of the pending manifest rows (8 bytes per
pending pair, in the object store) and one small work unit per manifest row group. The rows
themselves (frame names, expression texts) are read by Ray Data tasks, which turn each slice of
``rows_per_block`` manifest rows into one block of work items (one row per video: the model stage
still takes one video per call). No per-pair Python object is ever built on the driver.

A video whose manifest rows are not contiguous (or straddle two slices) becomes two work items;
both are correct (each pair is segmented once), only the frames are read twice. Manifests written
by :func:`pipelines.manifest.write_manifest` list each video's rows together.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.storage import arrow_filesystem, filesystem_for
from pipelines.writers import read_output
from schemas import MANIFEST_SCHEMA, validate_table

__all__ = ["ITEM_SCHEMA", "KEY_COLUMNS", "ManifestPlan", "ManifestPlanError", "count_input_errors", "done_keys",
           "input_error_tag", "manifest_items", "pending_keys", "plan_manifest"]

_LOG = logging.getLogger(__name__)

#: The key of a (video, expression) pair in every table.
KEY_COLUMNS = ["dataset", "split", "video_id", "exp_id"]
_ROW = "__row"

#: One work item per video: what the frame-reading stage takes.
ITEM_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in ("dataset", "split", "video_id", "item_json")])


class ManifestPlanError(ValueError):
    """The manifest cannot be planned (unreadable, wrong schema); the message names the file."""


@dataclasses.dataclass(frozen=True)
class ManifestPlan:
    """What a run will do, as arrays and counts (no per-pair Python objects).

    Attributes:
        manifest: the manifest URI.
        files: the manifest's Parquet files (filesystem paths), in row order.
        chunks: one dict per row group holding pending rows: ``path``, ``row_group``, ``first_row``.
        pending_rows: sorted global row numbers of the pending pairs' manifest rows.
        duplicates: key rows (KEY_COLUMNS) of manifest rows that repeat an earlier (video, expression).
        clustered: whether every video's manifest rows are contiguous.
    """

    manifest: str
    files: list[str]
    chunks: list[dict[str, Any]]
    pending_rows: np.ndarray
    duplicates: pa.Table
    pairs_total: int
    pairs_done: int
    pairs_pending: int
    videos_pending: int
    clustered: bool
    seconds_done: float = 0.0


def done_keys(output: str, *, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """The KEY_COLUMNS of every scores row under ``output`` (an Arrow table; duplicates possible)."""
    return read_output(output, "scores", columns=KEY_COLUMNS, storage_options=storage_options)


def pending_keys(manifest_keys: pa.Table, done: pa.Table) -> pa.Table:
    """The rows of ``manifest_keys`` whose KEY_COLUMNS are not in ``done`` (a hash anti-join, order kept)."""
    if done.num_rows == 0 or manifest_keys.num_rows == 0:
        return manifest_keys
    done = done.select(KEY_COLUMNS).cast(pa.schema([pa.field(c, pa.string()) for c in KEY_COLUMNS]))
    kept = manifest_keys.join(done, keys=KEY_COLUMNS, join_type="left anti", use_threads=True)
    return kept.sort_by(_ROW) if _ROW in kept.column_names else kept


def _manifest_files(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, list[str]]:
    fs, path = filesystem_for(uri, storage_options)
    try:
        if fs.isdir(path):
            files = sorted(p for p in fs.find(path) if p.endswith(".parquet")
                           and not p.rsplit("/", 1)[-1].startswith((".", "_")))
        else:
            files = [path]
    except OSError as exc:
        raise ManifestPlanError(f"manifest {uri!r} is not readable: {exc}") from exc
    if not files:
        raise ManifestPlanError(f"manifest {uri!r} holds no Parquet file")
    return fs, files


def _read_keys(fs: Any, files: list[str], uri: str) -> tuple[pa.Table, list[dict[str, Any]]]:
    """KEY_COLUMNS plus the global row number of every manifest row; the row groups with their first row."""
    tables, groups, first = [], [], 0
    filesystem = arrow_filesystem(fs)
    for path in files:
        try:
            handle = pq.ParquetFile(path, filesystem=filesystem)
            validate_table(handle.schema_arrow.empty_table(), MANIFEST_SCHEMA, what=f"manifest {uri}")
            keys = handle.read(columns=KEY_COLUMNS)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ManifestPlanError(f"manifest {uri!r} is not readable Parquet ({path}): {exc}") from exc
        except ValueError as exc:  # SchemaValidationError
            raise ManifestPlanError(str(exc)) from exc
        for index in range(handle.metadata.num_row_groups):
            rows = handle.metadata.row_group(index).num_rows
            groups.append({"path": path, "row_group": index, "first_row": first, "num_rows": rows})
            first += rows
        tables.append(keys.cast(pa.schema([pa.field(c, pa.string()) for c in KEY_COLUMNS])))
    keys = pa.concat_tables(tables)
    return keys.append_column(_ROW, pa.array(np.arange(keys.num_rows, dtype=np.int64))), groups


def plan_manifest(
    manifest: str,
    output: str,
    *,
    max_videos: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ManifestPlan:
    """Plan the pending pairs of ``manifest`` against what ``output`` has committed.

    Raises:
        ManifestPlanError: the manifest is missing, not Parquet, or not of ``MANIFEST_SCHEMA``.
    """
    from pipelines.config import is_safe_partition_value

    fs, files = _manifest_files(manifest, storage_options)
    keys, groups = _read_keys(fs, files, manifest)
    # First row of every (video, expression); later rows of the same pair are duplicates.
    firsts = keys.group_by(KEY_COLUMNS, use_threads=False).aggregate([(_ROW, "min")]).rename_columns(
        [*KEY_COLUMNS, _ROW])
    duplicates = pa.table({c: pa.array([], pa.string()) for c in KEY_COLUMNS})
    if firsts.num_rows != keys.num_rows:
        is_first = pc.is_in(keys[_ROW], value_set=firsts[_ROW])
        duplicates = keys.filter(pc.invert(is_first)).select(KEY_COLUMNS)
    # Partition values become folder names: rows with unsafe ones are never planned.
    partitions = firsts.group_by(["dataset", "split"]).aggregate([]).to_pylist()  # one row per partition
    unsafe = [p for p in partitions if not (is_safe_partition_value(p["dataset"]) and is_safe_partition_value(p["split"]))]
    for part in unsafe:
        _LOG.error("manifest rows with unsafe dataset/split %r/%r skipped", part["dataset"], part["split"])
        firsts = firsts.filter(pc.invert(pc.and_(pc.equal(firsts["dataset"], part["dataset"]),
                                                 pc.equal(firsts["split"], part["split"]))))
    started = time.perf_counter()
    done = done_keys(output, storage_options=storage_options)
    pending = pending_keys(firsts, done).sort_by(_ROW)
    seconds_done = time.perf_counter() - started
    pairs_total = firsts.num_rows
    pairs_done = pairs_total - pending.num_rows
    videos = pending.group_by(["dataset", "split", "video_id"], use_threads=False).aggregate([(_ROW, "min")])
    if max_videos is not None and videos.num_rows > max_videos:
        keep = videos.sort_by(f"{_ROW}_min").slice(0, max_videos).select(["dataset", "split", "video_id"])
        pending = pending.join(keep, keys=["dataset", "split", "video_id"], join_type="left semi").sort_by(_ROW)
        videos = keep
    rows = pending[_ROW].to_numpy()
    # Clustered: the pending rows of each video form one run in manifest order.
    vid = pc.binary_join_element_wise(pending["dataset"], pending["split"], pending["video_id"], "\x1f")
    runs = 1 + int(pc.sum(pc.not_equal(vid.slice(1), vid.slice(0, max(0, len(vid) - 1)))).as_py() or 0) if len(vid) else 0
    starts = np.array([g["first_row"] for g in groups], dtype=np.int64)
    ends = starts + np.array([g["num_rows"] for g in groups], dtype=np.int64)
    chunks = [
        {"path": g["path"], "row_group": g["row_group"], "first_row": g["first_row"]}
        for g, lo, hi in zip(groups, starts, ends)
        if np.searchsorted(rows, hi) > np.searchsorted(rows, lo)
    ]
    return ManifestPlan(
        manifest=manifest, files=files, chunks=chunks, pending_rows=rows, duplicates=duplicates,
        pairs_total=pairs_total, pairs_done=pairs_done, pairs_pending=len(rows), videos_pending=videos.num_rows,
        clustered=runs == videos.num_rows, seconds_done=seconds_done,
    )


def input_error_tag(run_id: str) -> str:
    """The batch-id prefix of the errors parts that :func:`manifest_items` writes for ``run_id``."""
    return "input-" + hashlib.sha1(run_id.encode()).hexdigest()[:8]


def manifest_items(
    batch: dict[str, np.ndarray],
    *,
    manifest: str,
    pending_rows: Any,
    rows_per_block: int,
    output: str,
    run_fields: Mapping[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[pa.Table]:
    """Ray Data UDF over ``ManifestPlan.chunks``: the work items (:data:`ITEM_SCHEMA`) of each row group.

    Reads ``rows_per_block`` manifest rows at a time, keeps the pending ones, groups them by video
    with :func:`pipelines.inference.records_from_manifest` (which also turns invalid expression rows
    into error rows, written here under :func:`input_error_tag`) and yields one block per slice.
    ``pending_rows`` is the plan's row array or an ``ObjectRef`` to it.
    """
    import ray

    rows = ray.get(pending_rows) if isinstance(pending_rows, ray.ObjectRef) else pending_rows
    filesystem = arrow_filesystem(filesystem_for(manifest, storage_options)[0])
    error_tag = input_error_tag(run_fields["run_id"])
    for path, row_group, first_row in zip(batch["path"], batch["row_group"], batch["first_row"]):
        handle = pq.ParquetFile(str(path), filesystem=filesystem)
        row = int(first_row)
        carried: pa.Table | None = None  # the last video of a slice: its rows may go on in the next slice
        batches = handle.iter_batches(batch_size=rows_per_block, row_groups=[int(row_group)])
        record_batch = next(batches, None)
        while record_batch is not None:
            following = next(batches, None)
            numbers = np.arange(row, row + record_batch.num_rows, dtype=np.int64)
            row += record_batch.num_rows
            positions = np.searchsorted(rows, numbers)
            keep = (positions < len(rows)) & (rows[np.minimum(positions, max(len(rows) - 1, 0))] == numbers)
            table = pa.Table.from_batches([record_batch]).filter(pa.array(keep))
            if carried is not None:
                table = pa.concat_tables([carried, table])
                carried = None
            if following is not None and table.num_rows:
                table, carried = _split_last_video(table)
            if table.num_rows:
                yield from _items(table, path=str(path), tag=f"{error_tag}-" + hashlib.sha1(
                    f"{path}\x1f{row_group}\x1f{row}".encode()).hexdigest()[:16], output=output,
                    run_fields=run_fields, storage_options=storage_options)
            record_batch = following


def _split_last_video(table: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """``table`` without the trailing rows of its last video, and those rows."""
    keys = [table.column(c).to_numpy(zero_copy_only=False) for c in ("dataset", "split", "video_id")]
    last = tuple(k[-1] for k in keys)
    start = table.num_rows
    while start > 0 and tuple(k[start - 1] for k in keys) == last:
        start -= 1
    return table.slice(0, start), table.slice(start)


def _items(table: pa.Table, *, path: str, tag: str, output: str, run_fields: Mapping[str, str],
           storage_options: Mapping[str, Any] | None) -> Iterator[pa.Table]:
    from pipelines.inference import plan_work, records_from_manifest
    from pipelines.writers import write_batch
    from schemas import ERRORS_SCHEMA

    table = validate_table(table, MANIFEST_SCHEMA, what=path)
    records, errors = records_from_manifest(table)
    if errors:
        rows = pa.Table.from_pylist([{**e, **run_fields} for e in errors], schema=ERRORS_SCHEMA)
        write_batch(output, {"errors": rows}, batch_id=tag, storage_options=storage_options)
    items = plan_work(records, done=set()).items
    if items:
        yield pa.Table.from_pylist(items, schema=ITEM_SCHEMA)


def count_input_errors(output: str, run_id: str, *, storage_options: Mapping[str, Any] | None = None) -> int:
    """Rows of the errors parts :func:`manifest_items` wrote for ``run_id`` (from Parquet footers only)."""
    from pipelines.writers import list_parts

    tag = input_error_tag(run_id)
    fs, _ = filesystem_for(output, storage_options)
    filesystem = arrow_filesystem(fs)
    return sum(pq.ParquetFile(p.path, filesystem=filesystem).metadata.num_rows
               for p in list_parts(output, "errors", storage_options=storage_options) if p.batch_id.startswith(tag))
